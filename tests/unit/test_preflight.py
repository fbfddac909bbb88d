"""The inventory pre-flight checks (vcl_sched.preflight): each problem names the host and the field."""

# ruff: noqa: E501 - one case per line reads best as a table

from __future__ import annotations

import copy

import pytest

from vcl_sched.preflight import check_inventory

LAB = {
    "lab_subnet": "10.9.0.0/24",
    "lab_vm_subnet": "10.9.1.0/24",
    "lab_gateway": "10.9.0.1",
    "lab_vm_gateway": "10.9.1.1",
    "lab_private_pool": "10.9.1.16-10.9.1.254",
    "lab_public_pool": "10.9.0.160-10.9.0.223",
    "lab_mac_prefix": "52:54:00",
    "lab_domain_type": "qemu",
}
HOSTS = {"master": {"lab_address": "10.9.0.10/24"}, "s1": {"lab_address": "10.9.0.21/24"},
         "s2": {"lab_address": "10.9.0.22/24"}}  # fmt: skip


def problems(lab=None, hosts=None, masters=("master",), slaves=("s1", "s2")):
    return [str(p) for p in check_inventory(lab or LAB, hosts or HOSTS, list(masters), list(slaves))]


def with_lab(**changes):
    return {**LAB, **changes}


def with_host(host, address):
    hosts = copy.deepcopy(HOSTS)
    hosts[host] = {"lab_address": address}
    return hosts


def test_a_sound_inventory_passes():
    assert problems() == []


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"masters": ()}, "inventory: vcl_master: exactly one master is needed, found 0 (none)"),
        ({"masters": ("master", "s2")}, "inventory: vcl_master: exactly one master is needed, found 2 (master, s2)"),
        ({"hosts": with_host("s2", "192.0.2.22/24")}, "s2: lab_address: 192.0.2.22/24 is outside the lab subnet"),
        ({"hosts": with_host("s2", "10.9.0.22/16")}, "s2: lab_address: 10.9.0.22/16 is outside the lab subnet"),
        ({"hosts": with_host("s2", "10.9.0.21/24")}, "s2: lab_address: 10.9.0.21 is already used by host s1"),
        ({"hosts": with_host("s2", "10.9.0.1/24")}, "s2: lab_address: 10.9.0.1 is already used by inventory lab_gateway"),
        ({"hosts": with_host("s2", "10.9.0.255/24")}, "s2: lab_address: 10.9.0.255 is the network or broadcast"),
        ({"hosts": with_host("s2", "nope")}, "s2: lab_address: 'nope' is not an IPv4 address with prefix (CIDR)"),
        ({"hosts": {**HOSTS, "s2": {}}}, "s2: lab_address: is not set"),
        ({"lab": with_lab(lab_public_pool="10.9.1.100-10.9.1.120")}, "inventory: lab_public_pool: 10.9.1.100-10.9.1.120 overlaps lab_private_pool"),
        ({"lab": with_lab(lab_public_pool="10.9.0.10-10.9.0.180")}, "master: lab_public_pool: 10.9.0.10-10.9.0.180 contains 10.9.0.10 (host master)"),
        ({"lab": with_lab(lab_private_pool="10.9.1.1-10.9.1.20")}, "inventory: lab_private_pool: 10.9.1.1-10.9.1.20 contains 10.9.1.1 (inventory lab_vm_gateway)"),
        ({"lab": with_lab(lab_private_pool="10.9.2.16-10.9.2.40")}, "inventory: lab_private_pool: 10.9.2.16-10.9.2.40 is not inside lab_vm_subnet"),
        ({"lab": with_lab(lab_public_pool="10.9.7.1-10.9.7.9")}, "inventory: lab_public_pool: 10.9.7.1-10.9.7.9 is not inside lab_subnet"),
        ({"lab": with_lab(lab_public_pool="10.9.0.250-10.9.0.200")}, "inventory: lab_public_pool: '10.9.0.250-10.9.0.200': the range ends before it starts"),
        ({"lab": with_lab(lab_vm_subnet="10.9.0.0/25")}, "inventory: lab_vm_subnet: 10.9.0.0/25 overlaps lab_subnet"),
        ({"lab": with_lab(lab_subnet="10.9.0.1/24")}, "inventory: lab_subnet: '10.9.0.1/24' is not an IPv4 network"),
        ({"lab": with_lab(lab_vm_gateway="10.9.5.1")}, "inventory: lab_vm_gateway: 10.9.5.1 is outside 10.9.1.0/24"),
        ({"lab": with_lab(lab_domain_type="xen")}, "inventory: lab_domain_type: 'xen': choose one of auto, kvm, qemu"),
        ({"lab": with_lab(lab_mac_prefix="53:54:00")}, "inventory: lab_mac_prefix: '53:54:00' is a multicast prefix"),
        ({"lab": {k: v for k, v in LAB.items() if k != "lab_public_pool"}}, "inventory: lab_public_pool: is not set"),
        ({"hosts": {**HOSTS, "bad name": {"lab_address": "10.9.0.30/24"}}, "slaves": ("s1", "s2", "bad name")}, "bad name: inventory_hostname:"),
    ],
)  # fmt: skip
def test_each_problem_names_the_host_and_the_field(kwargs, expected):
    found = problems(**kwargs)
    assert any(p.startswith(expected) for p in found), found


def test_every_problem_is_reported_at_once():
    found = problems(
        masters=(), hosts=with_host("s2", "192.0.2.22/24"), lab=with_lab(lab_public_pool=LAB["lab_private_pool"])
    )
    assert len(found) >= 3, found
