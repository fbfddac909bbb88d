"""plugins/modules/vcl_vm_net.py against real iptables, ``ip address`` and ``dhcpd -t``, in a network
namespace per test (with a veth ``eth0`` playing the master's uplink).

The module runs as Ansible runs it on a host (``python -m ansible_collections.vcl.lab.plugins.modules.vcl_vm_net
ARGS.json``), inside the namespace. The master's files are laid out as the dhcpd and network roles leave them:
dhcpd.conf and its check config (the role's template, rendered as Ansible's template module renders it; one test
checks that against Ansible itself) including the VMs' host entries file and its candidate, and one interfaces.d
file per VM. After every run the host entries file and the alias files must be exactly what the one render
function of module_utils/vcl_vm_files.py (which the roles use too) gives for the VMs the master holds, and dhcpd
must accept the whole config.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jinja2
import pytest
from ansible.plugins.filter.core import comment
from ansible_collections.vcl.lab.plugins.filter import vcl_dhcpd
from ansible_collections.vcl.lab.plugins.module_utils.vcl_vm_files import (
    alias_file_name,
    render_alias,
    render_dhcp_hosts,
)

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
MODULE = "ansible_collections.vcl.lab.plugins.modules.vcl_vm_net"
MODULE_ENV = {**os.environ, "PYTHONPATH": str(REPO / "collections")}
DHCPD_TEMPLATE = REPO / "roles/dhcpd/templates/etc/dhcp/dhcpd.conf.j2"
DHCPD = shutil.which("dhcpd") or "/usr/sbin/dhcpd"

LAN = "10.77.1.0/24"  # the lab LAN (public aliases come from it)
VM_NET = "10.77.2.0/24"  # the VMs' private network dhcpd serves
GATEWAY = "10.77.2.1"


def vm(n: int, **changes) -> dict:
    return {"id": n, "mac": f"52:54:00:00:{n // 256:02x}:{n % 256:02x}", "private": f"10.77.2.{10 + n}",
            "public": f"10.77.1.{100 + n}", **changes}  # fmt: skip


def entries(vms: list[dict]) -> list[dict]:
    """The host entries the lab database gives the dhcpd role for these VMs (vcl_lab_info's dhcp_hosts)."""
    return [{"name": f"vm-{v['id']}", "mac": v["mac"], "ip": v["private"]} for v in vms]


def render(template: Path, **variables) -> str:
    """TEMPLATE as Ansible's template module renders it (trim_blocks, trailing newline kept, the role's filters
    by their FQCN)."""
    env = jinja2.Environment(trim_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters.update({f"vcl.lab.{name}": f for name, f in vcl_dhcpd.FilterModule().filters().items()})
    env.filters["comment"] = comment
    return env.from_string(template.read_text()).render(ansible_managed="Ansible managed", **variables)


DHCPD_VARS = {
    "dhcpd__subnet": VM_NET,
    "dhcpd__gateway": GATEWAY,
    "dhcpd__shared_subnets": [LAN],
    "dhcpd__options": {"domain-name-servers": GATEWAY},
    "dhcpd__default_lease_time": 3600,
    "dhcpd__max_lease_time": 86400,
    # OMAPI off here (every change restarts dhcpd); tests/netns/test_vcl_omapi.py turns it on.
    "dhcpd__omapi_port": 0,
    "dhcpd__omapi_key_file": "/etc/dhcp/vcl-omapi.key",
    "dhcpd__omapi_key_name": "vcl-omapi",
}


def dhcpd_conf(hosts_file: Path, include: Path, **changes) -> str:
    """What the dhcpd role writes as dhcpd.conf (INCLUDE is HOSTS_FILE) or as its check config (the candidate)."""
    return render(DHCPD_TEMPLATE, **{**DHCPD_VARS, **changes}, dhcpd__vm_hosts_file=str(hosts_file),
                  dhcpd__include_file=str(include))  # fmt: skip


def normalise_save(text: str) -> list[str]:
    """A saved ruleset without its comments and counters, in any order (a restored jump may come last)."""
    return sorted(re.sub(r"\[\d+:\d+\]$", "[0:0]", line) for line in text.splitlines() if not line.startswith("#"))


def ns_run(ns: str, *argv: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], text=True, capture_output=True, **kwargs)


class Master:
    """The master's files in a temporary directory and its uplink in a namespace."""

    def __init__(self, ns: str, root: Path):
        self.ns, self.root = ns, root
        for sub in ("dhcp", "interfaces.d", "iptables"):
            (root / sub).mkdir()
        self.dhcpd_config = root / "dhcp/dhcpd.conf"
        self.hosts_file = root / "dhcp/dhcpd.vcl-vms.conf"
        self.candidate = root / "dhcp/dhcpd.vcl-vms.candidate.conf"
        self.check = root / "dhcp/dhcpd.vcl-vms.check.conf"
        self.aliases = root / "interfaces.d"
        self.rules = root / "iptables/rules.v4"
        self.restarts = root / "restarts.log"
        for argv in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "lan0"],
            ["ip", "link", "set", "lan0", "up"],
            ["ip", "link", "set", "eth0", "up"],
            ["ip", "address", "add", "10.77.1.10/24", "dev", "eth0"],
            ["ip", "address", "add", f"{GATEWAY}/24", "dev", "eth0"],
        ):
            ns_run(ns, *argv, check=True)

    def setup(self, vms: list[dict], **dhcpd_vars) -> None:
        """The state a site.yml run leaves for these VMs: the dhcpd role's files, the network role's alias files
        (both through the render functions), then each VM's live alias and DNAT chain, which the module adds
        without touching a file (the roles wrote what it would write)."""
        self.dhcpd_config.write_text(dhcpd_conf(self.hosts_file, self.hosts_file, **dhcpd_vars))
        self.check.write_text(dhcpd_conf(self.hosts_file, self.candidate, **dhcpd_vars))
        self.hosts_file.write_text(render_dhcp_hosts(entries(vms)))
        self.candidate.write_text(render_dhcp_hosts(entries(vms)))
        for v in vms:
            (self.aliases / alias_file_name(v["id"])).write_text(render_alias(v["id"], "eth0", v["public"]))
        for v in vms:
            result = self.run(**v)
            assert not result.get("failed") and not result["dhcp"]["changed"], result
            assert not result["alias"]["file_changed"], result
        self.restarts.unlink(missing_ok=True)

    def args(self, **args) -> dict:
        return {
            "uplink": "eth0",
            "dhcpd_hosts_file": str(self.hosts_file),
            "dhcpd_binary": DHCPD,
            "dhcpd_restart": [["sh", "-c", 'echo restart >> "$0"', str(self.restarts)]],
            "dhcpd_leases_file": str(self.root / "dhcpd.leases"),
            "aliases_dir": str(self.aliases),
            "rules_file": str(self.rules),
            **args,
        }

    def run(self, check: bool = False, **args) -> dict:
        """One module run inside the namespace; its JSON result (``failed`` set when it failed)."""
        path = self.root / "args.json"
        path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {**self.args(**args), "_ansible_check_mode": check}}))
        proc = ns_run(self.ns, sys.executable, "-m", MODULE, str(path), env=MODULE_ENV, timeout=120)
        try:
            result = json.loads(proc.stdout)
        except ValueError:
            pytest.fail(f"module printed no JSON (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        assert bool(result.get("failed")) == (proc.returncode != 0), result
        return result

    def restart_count(self) -> int:
        return len(self.restarts.read_text().splitlines()) if self.restarts.exists() else 0

    def live_aliases(self) -> set[str]:
        shown = json.loads(ns_run(self.ns, "ip", "-j", "-4", "address", "show", "dev", "eth0", check=True).stdout)
        return {a["local"] for link in shown for a in link["addr_info"] if a["prefixlen"] == 32}

    def nat_rules(self) -> list[str]:
        out = ns_run(self.ns, "iptables-save", "-t", "nat", check=True).stdout
        return sorted(line for line in out.splitlines() if line.startswith("-A "))

    def files(self) -> dict[str, str]:
        """Every file under dhcp/ and interfaces.d/ (temporary ones too) with its text."""
        return {f"{p.parent.name}/{p.name}": p.read_text()
                for sub in ("dhcp", "interfaces.d") for p in sorted((self.root / sub).iterdir())}  # fmt: skip

    def snapshot(self) -> tuple:
        """Everything the module may touch."""
        rules = self.rules.read_text() if self.rules.exists() else None
        return self.files(), rules, self.live_aliases(), self.nat_rules(), self.restart_count()

    def assert_holds(self, vms: list[dict]) -> None:
        """Files exactly as the render functions give them, dhcpd accepting the whole config, and live state,
        for exactly these VMs."""
        assert self.hosts_file.read_text() == render_dhcp_hosts(entries(vms))
        assert self.candidate.read_text() == self.hosts_file.read_text()  # as the dhcpd role leaves it
        aliases = {p.name: p.read_text() for p in self.aliases.iterdir()}
        assert aliases == {alias_file_name(v["id"]): render_alias(v["id"], "eth0", v["public"]) for v in vms}
        for config in (self.dhcpd_config, self.check):
            proc = subprocess.run([DHCPD, "-t", "-4", "-cf", str(config)], text=True, capture_output=True)
            assert proc.returncode == 0, proc.stderr
        assert self.live_aliases() == {v["public"] for v in vms}
        chains = sorted(f"-A VCL-VM-{v['id']} -d {v['public']}/32 -j DNAT --to-destination {v['private']}" for v in vms)
        assert [r for r in self.nat_rules() if r.startswith("-A VCL-VM-")] == chains
        for parent in ("VCL-PREROUTING", "VCL-OUTPUT"):
            jumps = [r for r in self.nat_rules() if r.startswith(f"-A {parent} ")]
            assert sorted(jumps) == sorted(f"-A {parent} -j VCL-VM-{v['id']}" for v in vms)
        saved = self.rules.read_text() if self.rules.exists() else ""
        assert all(f"-A VCL-VM-{v['id']} -d {v['public']}/32" in saved for v in vms)


@pytest.fixture
def master(netns, tmp_path):
    if not os.access(DHCPD, os.X_OK):
        pytest.fail("dhcpd is missing: apt-get install isc-dhcp-server (requirements/apt-base.txt)", pytrace=False)
    return Master(netns, tmp_path)


def test_add_readd_remove_keep_the_rendered_bytes(master):
    master.setup([vm(2), vm(10)])
    master.assert_holds([vm(2), vm(10)])

    v7 = vm(7, mac="52:54:00:00:00:ab")
    added = master.run(**{**v7, "mac": "52:54:00:00:00:AB"})  # written in lower case, as the role writes it
    assert added["changed"] and added["dhcp"]["changed"] and added["alias"]["changed"] and added["dnat"]["changed"]
    assert added["dhcp"]["restarted"] and master.restart_count() == 1
    assert added["dhcp"]["entry"] == "host vm-7 { hardware ethernet 52:54:00:00:00:ab; fixed-address 10.77.2.17; }"
    assert added["alias"]["address"] == "10.77.1.107/32" and added["dnat"]["saved"]
    assert added["alias"]["file"] == str(master.aliases / "vcl-vm-7") and added["alias"]["file_changed"]
    assert added["dnat"]["chains"] == ["VCL-VM-10", "VCL-VM-2", "VCL-VM-7"]
    master.assert_holds([vm(2), vm(10), v7])
    # One entry more, exactly, sorted by name with numbers in order: vm-2 < vm-7 < vm-10.
    text = master.hosts_file.read_text()
    assert text.count("host vm-7 {") == 1 and len(re.findall(r"(?m)^host ", text)) == 3
    assert text.index("host vm-2 ") < text.index("host vm-7 ") < text.index("host vm-10 ")

    again = master.run(**v7)  # the same launch again: nothing is added twice, dhcpd is not restarted
    assert again["changed"] is False and master.restart_count() == 1
    assert again["alias"]["commands"] == [] and again["dnat"]["commands"] == []
    assert master.hosts_file.read_text() == text

    removed = master.run(id=2, state="absent")  # the public address comes from the VM's chain
    assert removed["changed"] and removed["alias"]["address"] == "10.77.1.102/32"
    assert master.restart_count() == 2
    master.assert_holds([vm(10), v7])
    assert "host vm-2 " not in master.hosts_file.read_text() and "host vm-7 " in master.hosts_file.read_text()

    assert master.run(id=2, state="absent")["changed"] is False
    assert master.restart_count() == 2


def test_any_sequence_matches_the_render_functions(master):
    master.setup([])
    held: dict[int, dict] = {}
    # (VM, launched or released), in an order that puts entries first, last and in between.
    steps = [(3, True), (1, True), (12, True), (100, True), (1, False), (25, True), (12, False), (1, True),
             (100, False), (3, False), (25, False), (1, False)]  # fmt: skip
    for step, (n, present) in enumerate(steps):
        if present:
            held[n] = vm(n)
            result = master.run(**vm(n))
        else:
            held.pop(n)
            result = master.run(id=n, state="absent", public=vm(n)["public"])
        assert result["changed"] and not result.get("failed"), (step, result)
        master.assert_holds(list(held.values()))
    assert master.hosts_file.read_text() == render_dhcp_hosts([])
    assert list(master.aliases.iterdir()) == []


def test_a_moved_vm_is_corrected_in_place(master):
    master.setup([vm(1), vm(2)])
    moved = vm(2, mac="52:54:00:00:00:99", private="10.77.2.99")
    result = master.run(**moved)
    assert result["dhcp"]["changed"] and result["dnat"]["changed"] and not result["alias"]["changed"]
    master.assert_holds([vm(1), moved])

    # A new public address: the file says so, and the former alias goes from the uplink.
    renumbered = vm(2, mac="52:54:00:00:00:99", private="10.77.2.99", public="10.77.1.199")
    result = master.run(**renumbered)
    assert not result["dhcp"]["changed"] and result["alias"]["file_changed"] and result["dnat"]["changed"]
    assert [c.split(" ", 1)[1] for c in result["alias"]["commands"]] == [
        "address add 10.77.1.199/32 dev eth0",
        "address del 10.77.1.102/32 dev eth0",
    ]
    master.assert_holds([vm(1), renumbered])


def test_check_mode_reports_and_touches_nothing(master):
    master.setup([vm(1)])
    before = master.snapshot()
    result = master.run(check=True, **vm(4))
    assert result["changed"] and result["dhcp"]["changed"] and result["alias"]["changed"]
    assert result["dnat"]["chains"] == ["VCL-VM-1", "VCL-VM-4"] and result["dhcp"]["restarted"]
    assert master.snapshot() == before
    assert master.run(check=True, **vm(1))["changed"] is False
    assert master.run(check=True, id=1, state="absent")["changed"] is True
    assert master.snapshot() == before


@pytest.mark.parametrize(
    ("clash", "field"),
    [
        ({"mac": vm(1)["mac"].upper()}, "mac"),  # another host's MAC, whatever its case
        ({"private": vm(1)["private"]}, "private"),  # another host's fixed address
        ({"public": vm(1)["public"]}, "public"),  # another VM's alias and DNAT chain
        ({"private": vm(5)["public"]}, "private"),  # the same as public
        ({"mac": "52:54:00:00:00"}, "mac"),
        ({"public": "10.77.1.300"}, "public"),
        ({"uplink": "eth0 label x"}, "uplink"),
        ({"id": -1}, "id"),
        ({"dhcpd_restart": [[]]}, "dhcpd_restart[0]"),
    ],
)
def test_conflicts_and_bad_input_are_refused_and_change_nothing(master, clash, field):
    master.setup([vm(1), vm(2)])
    before = master.snapshot()
    result = master.run(**vm(5, **clash))
    assert result["failed"] and result["msg"].startswith(f"{field}:"), result["msg"]
    assert master.snapshot() == before


def test_a_public_address_in_another_vms_alias_file_is_refused(master):
    """A VM that is gone but still has its alias file (no chain): its address is not given to another."""
    master.setup([vm(1)])
    (master.aliases / "vcl-vm-9").write_text(render_alias(9, "eth0", vm(5)["public"]))
    before = master.snapshot()
    result = master.run(**vm(5))
    assert result["failed"] and result["msg"].startswith("public: 10.77.1.105 is already the alias of another VM")
    assert str(master.aliases / "vcl-vm-9") in result["msg"]
    assert master.snapshot() == before


def test_a_broken_config_never_replaces_the_working_host_entries(master):
    # An option dhcpd does not know in dhcpd.conf (and its check config): every candidate is refused by dhcpd -t.
    master.setup([vm(1)], dhcpd__options={"no-such-option": "1"})
    before = master.snapshot()
    result = master.run(**vm(3))
    assert result["failed"] and result["msg"].startswith("dhcp step failed:"), result["msg"]
    assert "was left as it was" in result["msg"] and "no-such-option" in result["msg"]
    assert result["undone"] == ["dhcp"]
    # The live entries, the candidate (put back), the alias files: as they were, and no temporary file left.
    assert master.snapshot() == before
    assert master.restart_count() == 0


def test_host_entries_edited_by_hand_are_refused(master):
    master.setup([vm(1)])
    with master.hosts_file.open("a") as handle:
        handle.write("deny unknown-clients;\n")
    before = master.snapshot()
    for args in (vm(3), {"id": 1, "state": "absent"}):
        result = master.run(**args)
        assert result["failed"] and result["msg"].startswith("dhcpd_hosts_file: "), result["msg"]
        assert "deny unknown-clients" in result["msg"] and "not a host entry as VCL writes it" in result["msg"]
        assert master.snapshot() == before


def test_an_alias_file_edited_by_hand_is_refused(master):
    master.setup([vm(1)])
    path = master.aliases / "vcl-vm-1"
    path.write_text(path.read_text() + "    up echo hi\n")
    before = master.snapshot()
    for args in (vm(1), {"id": 1, "state": "absent"}):
        result = master.run(**args)
        assert result["failed"] and result["msg"].startswith(f"aliases_dir: {path}: "), result["msg"]
        assert master.snapshot() == before


def test_without_the_check_config_nothing_is_written(master):
    """The dhcpd role writes the check config with dhcpd.conf; without it no candidate can be checked."""
    master.setup([vm(1)])
    master.check.unlink()
    before = master.snapshot()
    result = master.run(**vm(3))
    assert result["failed"] and result["msg"].startswith("dhcpd_hosts_file: the check config"), result["msg"]
    assert master.snapshot() == before
    assert master.run(**vm(1))["changed"] is False  # no change to the entries needs no check


def test_a_release_finds_the_public_address_in_the_alias_file(master):
    """The VM's chain is already gone (vcl_nat removed it): its alias file still says which address to drop."""
    master.setup([vm(1), vm(4)])
    for argv in (["-D", "VCL-PREROUTING", "-j", "VCL-VM-4"], ["-D", "VCL-OUTPUT", "-j", "VCL-VM-4"],
                 ["-F", "VCL-VM-4"], ["-X", "VCL-VM-4"]):  # fmt: skip
        ns_run(master.ns, "iptables", "-w", "-t", "nat", *argv, check=True)
    result = master.run(id=4, state="absent")
    assert result["changed"] and result["alias"]["address"] == "10.77.1.104/32", result
    master.assert_holds([vm(1)])


def test_a_failed_dnat_step_undoes_the_dhcp_entry_and_the_alias(master):
    master.setup([vm(1)])
    before = master.snapshot()
    # The ruleset cannot be saved: the DNAT step fails after its iptables commands ran.
    result = master.run(**vm(6), rules_file=str(master.root / "missing/rules.v4"))
    assert result["failed"] and result["msg"].startswith("dnat step failed: rules_file:"), result["msg"]
    assert result["undone"] == ["dnat", "alias", "dhcp"]
    after = master.snapshot()
    assert after[:4] == before[:4]  # files, live aliases and nat table as they were
    assert master.restart_count() == 2  # dhcpd loaded the new entries, then the restored ones


def test_a_failed_release_puts_the_vm_back(master):
    master.setup([vm(1), vm(2)])
    before = master.snapshot()
    saved = normalise_save(master.rules.read_text())
    # dhcpd's restart fails once (after the DHCP step, the last of a release); the second (undo) works.
    flaky = [["sh", "-c", 'test -e "$0" || { touch "$0"; exit 3; }', str(master.root / "once")]]
    result = master.run(id=2, state="absent", dhcpd_restart=flaky)
    assert result["failed"] and result["msg"].startswith("dhcp step failed: dhcpd_restart:"), result["msg"]
    assert result["undone"] == ["dhcp", "alias", "dnat"]
    after = master.snapshot()
    assert after[0] == before[0] and after[2] == before[2]  # the files and the live aliases
    assert normalise_save(master.rules.read_text()) == saved  # saved again once the chain was back
    master.assert_holds([vm(1), vm(2)])


def test_concurrent_launches_serialise_on_the_lock(master):
    master.setup([])
    vms = [vm(n) for n in (11, 12, 13)]
    procs = []
    for v in vms:
        path = master.root / f"args-{v['id']}.json"
        path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": master.args(dhcpd_restart=[], **v)}))
        argv = ["ip", "netns", "exec", master.ns, sys.executable, "-m", MODULE, str(path)]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=MODULE_ENV))
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(r["changed"] and not r.get("failed") for r in results), results
    master.assert_holds(vms)


def test_dhcpd_is_restarted_with_the_new_entry(master):
    """The plain-mode restart the vm role's net entry point uses (start-stop-daemon stop, then start), with a
    real dhcpd that runs only inside the namespace, on its own pid and lease files, with dhcpd.conf including
    the host entries file."""
    master.setup([vm(1)])
    pid_file, leases = master.root / "dhcpd.pid", master.root / "dhcpd.leases"
    leases.touch()
    start = ["start-stop-daemon", "--start", "--oknodo", "--pidfile", str(pid_file), "--exec", DHCPD, "--",
             "-4", "-q", "-cf", str(master.dhcpd_config), "-pf", str(pid_file), "-lf", str(leases), "eth0"]  # fmt: skip
    stop = ["start-stop-daemon", "--stop", "--retry", "TERM/10", "--oknodo", "--pidfile", str(pid_file),
            "--exec", DHCPD]  # fmt: skip
    ns_run(master.ns, *start, check=True)
    try:
        deadline = time.monotonic() + 10
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert time.monotonic() < deadline, "dhcpd did not start"
            time.sleep(0.1)
        first = int(pid_file.read_text())
        # This machine's PID 1 reaps orphans late, and dhcpd refuses to start while its pid file names a
        # process that still answers kill -0 (a zombie): drop the file between stop and start.
        result = master.run(**vm(2), dhcpd_restart=[stop, ["rm", "-f", str(pid_file)], start])
        assert result["dhcp"]["restarted"], result
        deadline = time.monotonic() + 10
        while not pid_file.exists() or int(pid_file.read_text().strip() or first) == first:
            assert time.monotonic() < deadline, "dhcpd was not restarted"
            time.sleep(0.1)
        second = int(pid_file.read_text())
        assert second != first
        assert Path(f"/proc/{second}/cmdline").read_bytes().split(b"\0")[0] == DHCPD.encode()
        master.assert_holds([vm(1), vm(2)])
    finally:
        ns_run(master.ns, *stop)


def test_the_roles_write_what_the_module_writes(tmp_path):
    """The dhcpd and network roles' way (Ansible's copy of a vcl.lab filter's output, the dhcpd.conf template
    validated by dhcpd -t with the entries it includes) gives the bytes the render functions give, and the
    template is rendered here as Ansible renders it."""
    vms = [vm(1), vm(20), vm(3)]
    hosts_file = tmp_path / "dhcpd.vcl-vms.conf"
    playbook = tmp_path / "render.yml"
    playbook.write_text(json.dumps([{
        "name": "Render", "hosts": "localhost", "gather_facts": False,
        "vars": {**DHCPD_VARS, "dhcpd__hosts": entries(vms), "dhcpd__vm_hosts_file": str(hosts_file),
                 "dhcpd__include_file": str(hosts_file),
                 "network__public_aliases": [{"id": v["id"], "public": v["public"]} for v in vms]},
        "tasks": [
            {"name": "Host entries", "ansible.builtin.copy": {
                "content": "{{ dhcpd__hosts | vcl.lab.vcl_dhcpd_hosts_file }}", "dest": str(hosts_file)}},
            {"name": "dhcpd.conf", "ansible.builtin.template": {
                "src": str(DHCPD_TEMPLATE), "dest": str(tmp_path / "dhcpd.conf"),
                "validate": f"{DHCPD} -t -4 -cf %s"}},
            {"name": "Aliases", "ansible.builtin.copy": {
                "content": "{{ item | vcl.lab.vcl_vm_alias_file('eth0') }}",
                "dest": str(tmp_path) + "/{{ item.id | vcl.lab.vcl_vm_alias_name }}"},
             "loop": "{{ network__public_aliases }}"},
        ],
    }]))  # fmt: skip
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", f"ansible_python_interpreter={sys.executable}", str(playbook)],
        cwd=REPO, env={**os.environ, "ANSIBLE_NOCOLOR": "1"}, text=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert hosts_file.read_text() == render_dhcp_hosts(entries(vms))
    assert (tmp_path / "dhcpd.conf").read_text() == dhcpd_conf(hosts_file, hosts_file)
    assert (tmp_path / "dhcpd.conf").read_text().endswith(f'\ninclude "{hosts_file}";\n')
    for v in vms:
        assert (tmp_path / f"vcl-vm-{v['id']}").read_text() == render_alias(v["id"], "eth0", v["public"])


def test_a_launch_and_a_release_forget_the_old_mac_of_the_private_address(master):
    """A private address reused by a new VM must not stay mapped to the old VM's MAC in the master's ARP table."""

    def neighbour(address: str) -> str:
        return ns_run(master.ns, "ip", "neigh", "show", "to", address, "dev", "eth0").stdout.strip()

    master.setup([])
    v3 = vm(3)
    ns_run(master.ns, "ip", "neigh", "replace", v3["private"], "lladdr", "52:54:00:de:ad:01", "dev", "eth0",
           "nud", "stale", check=True)
    assert "52:54:00:de:ad:01" in neighbour(v3["private"])
    assert master.run(**v3)["changed"]
    assert neighbour(v3["private"]) == ""
    ns_run(master.ns, "ip", "neigh", "replace", v3["private"], "lladdr", v3["mac"], "dev", "eth0", "nud", "stale",
           check=True)
    assert master.run(id=3, state="absent")["changed"]  # the private address is read from the VM's chain
    assert neighbour(v3["private"]) == ""
