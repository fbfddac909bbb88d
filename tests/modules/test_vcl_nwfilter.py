"""The VMs' traffic filter: the nwfilter definitions (module_utils/vcl_nwfilter.py) and the domain template's
reference to it. libvirt's test driver has no nwfilter driver: the filter's real definition and its effect on
a guest are proven on the simulated lab (tests/lab/test_hostile_guest.py)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import jinja2
import pytest
from ansible_collections.vcl.lab.plugins.module_utils.vcl_nwfilter import FilterInputError, build, canonical
from hypothesis import given
from hypothesis import strategies as st

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "roles" / "vm" / "templates"
ARGS = {"name": "vcl-vm", "vm_gateway": "10.9.1.1", "vm_subnet": "10.9.1.0/24", "lab_networks": ["10.9.0.0/24"],
        "gateway_mac": "02:00:0A:09:00:0A"}  # fmt: skip


def rules(xml: str) -> list[tuple[str, int, dict]]:
    root = ET.fromstring(xml)
    return [(r.get("action"), int(r.get("priority")), dict(r.find("ip").attrib)) for r in root.findall("rule")]


def test_two_filters_clean_traffic_first_then_vcls_chain():
    filters = build(**ARGS)
    assert set(filters) == {"vcl-vm", "vcl-vm-ipv4"}
    root = ET.fromstring(filters["vcl-vm"])
    assert [f.get("filter") for f in root.findall("filterref")] == ["clean-traffic", "vcl-vm-ipv4"]
    chain = ET.fromstring(filters["vcl-vm-ipv4"])
    # Between clean-traffic's source check (ipv4-ip, -710) and its accept of outgoing IPv4 (-650).
    assert chain.get("chain") == "ipv4-vcl" and -710 < int(chain.get("priority")) < -650


def test_the_rules_in_order():
    got = rules(build(**ARGS)["vcl-vm-ipv4"])
    assert [r[1] for r in got] == sorted(r[1] for r in got)
    returns = [r[2] for r in got if r[0] == "return"]
    drops = [r[2] for r in got if r[0] == "drop"]
    # DHCP client to the broadcast address or the master; DNS and NTP on the master; frames to its MAC.
    assert {"dstipaddr": "255.255.255.255", "protocol": "udp", "srcportstart": "68", "dstportstart": "67"} in returns
    assert {"dstipaddr": "10.9.1.1", "protocol": "udp", "dstportstart": "123"} in returns
    assert {"dstmacaddr": "02:00:0a:09:00:0a"} in returns
    # No DHCP server, nothing else from 0.0.0.0, nothing else of the master's VM address, the lab, other VMs.
    assert {"protocol": "udp", "srcportstart": "67"} in drops
    assert {"srcipaddr": "0.0.0.0"} in drops
    assert {"dstipaddr": "10.9.1.1"} in drops
    assert {"dstipaddr": "10.9.0.0", "dstipmask": "24"} in drops
    assert {"dstipaddr": "10.9.1.0", "dstipmask": "24"} in drops
    # The master's own services come before the drop of its address; its MAC after that drop.
    order = {tuple(sorted(r[2].items())): r[1] for r in got}
    assert order[(("dstipaddr", "10.9.1.1"),)] < order[(("dstmacaddr", "02:00:0a:09:00:0a"),)]
    assert order[(("dstipaddr", "10.9.1.1"), ("dstportstart", "53"), ("protocol", "tcp"))] < order[
        (("dstipaddr", "10.9.1.1"),)]


def test_peers_reach_each_other_but_not_the_broadcast():
    drops = [r[2] for r in rules(build(**ARGS, peers=True)["vcl-vm-ipv4"]) if r[0] == "drop"]
    assert {"dstipaddr": "10.9.1.0", "dstipmask": "24"} not in drops
    assert {"dstipaddr": "10.9.1.255"} in drops


def test_without_the_masters_mac_nothing_of_the_lab_is_reachable_at_all():
    got = rules(build(**{**ARGS, "gateway_mac": None})["vcl-vm-ipv4"])
    assert not [r for r in got if "dstmacaddr" in r[2]]


def test_canonical_ignores_uuid_and_whitespace():
    xml = build(**ARGS)["vcl-vm"]
    printed = xml.replace("<filter ", "<filter ").replace("><filterref", ">\n  <uuid>0c4b1a3c-1111-2222-3333-"
                                                                      "444455556666</uuid>\n  <filterref", 1)
    assert canonical(printed) == canonical(xml)
    assert canonical(build(**ARGS, peers=True)["vcl-vm-ipv4"]) != canonical(build(**ARGS)["vcl-vm-ipv4"])


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": "vcl vm"}, "name"),
        ({"name": "x'/><rule action='accept"}, "name"),
        ({"vm_gateway": "10.9.2.1"}, "vm_gateway"),
        ({"vm_gateway": "255.255.255.255"}, "vm_gateway"),
        ({"vm_gateway": "{{ lookup('pipe','id') }}"}, "vm_gateway"),
        ({"vm_subnet": "10.9.1.1/24"}, "vm_subnet"),
        ({"lab_networks": []}, "lab_networks"),
        ({"lab_networks": ["10.9.0.0/16"]}, "lab_networks[0]"),
        ({"gateway_mac": "01:00:5e:00:00:01"}, "gateway_mac"),
        ({"gateway_mac": "02:00:0a:09:00:0a' dstipaddr='0.0.0.0"}, "gateway_mac"),
    ],
)
def test_bad_values_are_refused_naming_the_field(changes, field):
    with pytest.raises(FilterInputError, match=rf"^{field.replace('[', '.').replace(']', '.')}: "):
        build(**{**ARGS, **changes})


@given(st.text(max_size=40))
def test_no_text_becomes_xml(text):
    """Whatever a name or address holds, it is refused or lands in one attribute, never as markup."""
    try:
        filters = build(**{**ARGS, "name": text})
    except FilterInputError:
        return
    assert ET.fromstring(filters[text]).get("name") == text


def render(**variables) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), undefined=jinja2.StrictUndefined,
                             trim_blocks=True)  # fmt: skip
    return env.get_template("domain.xml.j2").render(**variables)


BASE = {
    "vm__domain_name": "vcl-1", "vm__domain_type": "qemu", "vm__domain_memory_mb": 128, "vm__domain_vcpus": 1,
    "vm__domain_overlay": "/var/lib/vcl/instances/vcl-1.qcow2", "vm__domain_mac": "52:54:00:12:34:56",
    "vm__domain_serial_log": "/var/lib/vcl/instances/vcl-1.log", "vm__domain_vnc_listen": "10.9.0.21",
    "vm__domain_vnc_password": "s3cret",
}  # fmt: skip


def test_the_domain_refers_to_the_filter_with_the_vms_address():
    root = ET.fromstring(render(**BASE, vm__domain_filter="vcl-vm", vm__domain_ip="10.9.1.18"))
    ref = root.find("devices/interface/filterref")
    assert ref.get("filter") == "vcl-vm"
    assert [(p.get("name"), p.get("value")) for p in ref.findall("parameter")] == [("IP", "10.9.1.18")]


@pytest.mark.parametrize("ip", ["", "10.9.1", "10.9.1.256", "10.9.1.1' />", "1e3.0.0.1", "10.9.1.18 "])
def test_a_filter_without_a_valid_address_is_never_rendered(ip):
    with pytest.raises(jinja2.UndefinedError, match="vm__domain_ip_must_be"):
        render(**BASE, vm__domain_filter="vcl-vm", vm__domain_ip=ip)


def test_without_a_filter_there_is_no_reference():
    root = ET.fromstring(render(**BASE))
    assert root.find("devices/interface/filterref") is None


def test_a_redefinition_keeps_the_filters_uuid():
    from ansible_collections.vcl.lab.plugins.module_utils.vcl_nwfilter import with_uuid

    xml = with_uuid(build(**ARGS)["vcl-vm"], "bb9b0339-4e4d-442c-bdd4-73f5c5638e66")
    root = ET.fromstring(xml)
    assert root[0].tag == "uuid" and root[0].text == "bb9b0339-4e4d-442c-bdd4-73f5c5638e66"
    assert canonical(xml) == canonical(build(**ARGS)["vcl-vm"])
    with pytest.raises(FilterInputError, match=r"^uuid: "):
        with_uuid(build(**ARGS)["vcl-vm"], "x'/><rule")
