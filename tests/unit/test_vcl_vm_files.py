"""plugins/module_utils/vcl_vm_files.py: the one render function (and its parser) for each file a VM's network
touches on the master, and the filters the dhcpd and network roles call them through."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.vcl.lab.plugins.filter import vcl_dhcpd, vcl_vm_alias
from ansible_collections.vcl.lab.plugins.module_utils.vcl_vm_files import (
    DHCP_HEADER,
    VmFileError,
    alias_file_name,
    alias_id,
    dhcp_candidate_path,
    dhcp_check_path,
    dhcp_hosts,
    dhcp_include,
    parse_alias,
    parse_dhcp_hosts,
    render_alias,
    render_dhcp_hosts,
)
from hypothesis import given
from hypothesis import strategies as st

HOSTS = [
    {"name": "vm-10", "mac": "52:54:00:00:00:0A", "ip": "10.213.1.20"},
    {"name": "vm-2", "mac": "52:54:00:00:00:02", "ip": "10.213.1.12"},
    {"name": "gw-x", "mac": "52:54:00:00:00:ff", "ip": "10.213.1.99"},
]


def test_render_dhcp_hosts_is_the_header_then_one_block_per_host_sorted_by_name():
    assert render_dhcp_hosts(HOSTS) == DHCP_HEADER + (
        "\n"
        "host gw-x {\n  hardware ethernet 52:54:00:00:00:ff;\n  fixed-address 10.213.1.99;\n}\n"
        "host vm-2 {\n  hardware ethernet 52:54:00:00:00:02;\n  fixed-address 10.213.1.12;\n}\n"
        "host vm-10 {\n  hardware ethernet 52:54:00:00:00:0a;\n  fixed-address 10.213.1.20;\n}\n"
    )
    assert render_dhcp_hosts([]) == DHCP_HEADER
    assert render_dhcp_hosts(list(reversed(HOSTS))) == render_dhcp_hosts(HOSTS)


def test_parse_gives_back_what_was_rendered():
    text = render_dhcp_hosts(HOSTS)
    assert parse_dhcp_hosts(text) == dhcp_hosts(HOSTS)
    assert [h["name"] for h in parse_dhcp_hosts(text)] == ["gw-x", "vm-2", "vm-10"]
    assert render_dhcp_hosts(parse_dhcp_hosts(text)) == text
    assert parse_dhcp_hosts(DHCP_HEADER) == [] and parse_dhcp_hosts("") == []


names = st.from_regex(r"\A[A-Za-z][A-Za-z0-9_-]{0,20}\Z")
macs = st.lists(st.integers(0, 255), min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02X}" for x in b))
ips = st.tuples(*(st.integers(0, 255) for _ in range(4))).map(lambda t: ".".join(map(str, t)))
host_lists = st.lists(st.fixed_dictionaries({"name": names, "mac": macs, "ip": ips}), max_size=12).filter(
    lambda hosts: all(len({h[k].lower() for h in hosts}) == len(hosts) for k in ("name", "mac", "ip"))
    and len({h["name"] for h in hosts}) == len(hosts)
)


@given(host_lists)
def test_round_trip_for_any_hosts(hosts):
    text = render_dhcp_hosts(hosts)
    parsed = parse_dhcp_hosts(text)
    assert parsed == dhcp_hosts(hosts)
    assert render_dhcp_hosts(parsed) == text
    assert len(parsed) == len(hosts) and text.count("\nhost ") == len(hosts)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "vm-2; deny booting"}, r"entries\[1\]\.name: 'vm-2; deny booting' is not a safe host name"),
        ({"mac": "52:54:00:00:00"}, r"entries\[1\]\.mac: '52:54:00:00:00' is not a MAC address"),
        ({"ip": "10.213.1.300"}, r"entries\[1\]\.ip: '10.213.1.300' is not an IPv4 address"),
        ({"mac": "52:54:00:00:00:0a"}, r"entries\[1\]\.mac: 52:54:00:00:00:0a is also entries\[0\]\.mac"),
        ({"ip": "10.213.1.20"}, r"entries\[1\]\.ip: 10.213.1.20 is also entries\[0\]\.ip"),
        ({"name": "vm-10"}, r"entries\[1\]\.name: vm-10 is also entries\[0\]\.name"),
    ],
)
def test_bad_entries_are_refused_naming_the_field(change, message):
    hosts = [dict(h) for h in HOSTS]
    hosts[1].update(change)
    with pytest.raises(VmFileError, match=message):
        render_dhcp_hosts(hosts)


@pytest.mark.parametrize(
    "edit",
    [
        lambda t: t + "deny unknown-clients;\n",
        lambda t: t.replace("  fixed-address 10.213.1.12;\n", ""),
        lambda t: t.replace("hardware ethernet", "hardware  ethernet"),
        lambda t: t.replace("host vm-2 {", "host vm-10 {"),  # a name twice
        lambda t: t + "host vm-3 {\n  hardware ethernet 52:54:00:00:00:03;\n  fixed-address 10.213.1.999;\n}\n",
    ],
)
def test_a_hosts_file_not_as_rendered_is_refused(edit):
    with pytest.raises(VmFileError, match=r"^hosts file: "):
        parse_dhcp_hosts(edit(render_dhcp_hosts(HOSTS)))


def test_comments_and_blank_lines_between_entries_are_skipped():
    text = render_dhcp_hosts(HOSTS).replace("host vm-2 {", "# a note\n\nhost vm-2 {")
    assert parse_dhcp_hosts(text) == dhcp_hosts(HOSTS)


def test_include_and_the_check_paths():
    assert dhcp_include("/etc/dhcp/dhcpd.vcl-vms.conf") == 'include "/etc/dhcp/dhcpd.vcl-vms.conf";'
    for bad in ("relative.conf", '/etc/dh"cp', "/etc/a;b", "/etc/a\nb", None):
        with pytest.raises(VmFileError, match=r"^path: "):
            dhcp_include(bad)
    assert dhcp_candidate_path("/etc/dhcp/dhcpd.vcl-vms.conf") == "/etc/dhcp/dhcpd.vcl-vms.candidate.conf"
    assert dhcp_check_path("/etc/dhcp/dhcpd.vcl-vms.conf") == "/etc/dhcp/dhcpd.vcl-vms.check.conf"


def test_alias_file_round_trip_and_name():
    text = render_alias(14, "eth0", "10.213.0.162")
    assert text.endswith("# VM 14\niface eth0 inet static\n    address 10.213.0.162/32\n")
    assert parse_alias(text) == {"id": "14", "uplink": "eth0", "public": "10.213.0.162"}
    assert alias_file_name(14) == "vcl-vm-14" and alias_file_name("lab_3") == "vcl-vm-lab_3"
    assert alias_id("vcl-vm-14") == "14" and alias_id("vcl-public-aliases") is None and alias_id("eth0") is None


@given(st.integers(0, 10**12), ips, st.from_regex(r"\A[a-z][a-z0-9]{0,8}\Z"))
def test_alias_round_trip_for_any_vm(vm_id, public, uplink):
    text = render_alias(vm_id, uplink, public)
    assert parse_alias(text) == {"id": str(vm_id), "uplink": uplink, "public": public}


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((-1, "eth0", "10.0.0.1"), "id"),
        ((True, "eth0", "10.0.0.1"), "id"),
        (("a b", "eth0", "10.0.0.1"), "id"),
        ((1, "eth0 label x", "10.0.0.1"), "uplink"),
        ((1, "eth0", "10.0.0.256"), "public"),
    ],
)
def test_bad_alias_input_is_refused_naming_the_field(args, field):
    with pytest.raises(VmFileError, match=f"^{field}: "):
        render_alias(*args)


@pytest.mark.parametrize(
    "edit",
    [
        lambda t: t + "    up echo hi\n",
        lambda t: t.replace("/32", "/24"),
        lambda t: t.replace("# VM 14\n", ""),
        lambda t: t.replace("10.213.0.162", "10.213.0.0162"),
        lambda t: "auto eth0\n" + t,
    ],
)
def test_an_alias_file_not_as_rendered_is_refused(edit):
    with pytest.raises(VmFileError, match=r"^alias file: "):
        parse_alias(edit(render_alias(14, "eth0", "10.213.0.162")))


def test_the_filters_are_the_render_functions():
    dhcpd, alias = vcl_dhcpd.FilterModule().filters(), vcl_vm_alias.FilterModule().filters()
    assert dhcpd["vcl_dhcpd_hosts_file"](HOSTS) == render_dhcp_hosts(HOSTS)
    assert dhcpd["vcl_dhcpd_include"]("/x.conf") == 'include "/x.conf";'
    assert dhcpd["vcl_dhcpd_candidate"]("/etc/h.conf") == "/etc/h.candidate.conf"
    assert dhcpd["vcl_dhcpd_check_config"]("/etc/h.conf") == "/etc/h.check.conf"
    assert alias["vcl_vm_alias_file"]({"id": 3, "public": "10.0.0.3"}, "eth0") == render_alias(3, "eth0", "10.0.0.3")
    assert alias["vcl_vm_alias_name"](3) == "vcl-vm-3"
    with pytest.raises(AnsibleFilterError, match=r"^dhcpd__hosts: entries\[0\]\.mac"):
        dhcpd["vcl_dhcpd_hosts_file"]([{"name": "vm-1", "mac": "x", "ip": "10.0.0.1"}])
    with pytest.raises(AnsibleFilterError, match=r"^network__public_aliases \(3\): public: "):
        alias["vcl_vm_alias_file"]({"id": 3, "public": "10.0.0.300"}, "eth0")


def test_dhcpd_errors_name_each_bad_entry():
    errors = vcl_dhcpd.vcl_dhcpd_errors(
        [{"name": "vm-1", "mac": "52:54:00:00:00:01", "ip": "10.213.1.10"},
         {"name": "vm-2", "mac": "52:54:00:00:00:01", "ip": "10.213.1.1"},
         {"name": "vm-3; x", "mac": "52:54:00:00:00:03", "ip": "10.9.9.9"}],
        "10.213.1.0/24", "10.213.1.1", interfaces=["eth0"],
    )  # fmt: skip
    assert errors == [
        "dhcpd__hosts[1] (vm-2).ip: 10.213.1.1 is dhcpd__gateway",
        "dhcpd__hosts[1] (vm-2).mac: 52:54:00:00:00:01 is also dhcpd__hosts[0] (vm-1).mac",
        "dhcpd__hosts[2].name: 'vm-3; x' is not a safe host name (a letter, then letters, digits, _ or -)",
        "dhcpd__hosts[2].ip: 10.9.9.9 is not inside dhcpd__subnet 10.213.1.0/24",
    ]
