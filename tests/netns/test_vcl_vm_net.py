"""plugins/modules/vcl_vm_net.py against real iptables, ``ip address`` and ``dhcpd -t``, in a network
namespace per test (with a veth ``eth0`` playing the master's uplink).

The module runs as Ansible runs it on a host (``python vcl_vm_net.py ARGS.json``), inside the namespace.
Its dhcpd.conf and aliases file are compared byte for byte with what the dhcpd and network roles' templates
render (Jinja2 with the roles' filters, set up as Ansible's template module sets it up; one test checks that
against Ansible itself) for the same set of VMs, so a later ``site.yml`` run reports no change.
"""

from __future__ import annotations

import importlib.util
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

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "plugins" / "modules" / "vcl_vm_net.py"
DHCPD_TEMPLATE = REPO / "roles/dhcpd/templates/etc/dhcp/dhcpd.conf.j2"
ALIASES_TEMPLATE = REPO / "roles/network/templates/etc/network/interfaces.d/vcl-public-aliases.j2"
DHCPD = shutil.which("dhcpd") or "/usr/sbin/dhcpd"

LAN = "10.77.1.0/24"  # the lab LAN (public aliases come from it)
VM_NET = "10.77.2.0/24"  # the VMs' private network dhcpd serves
GATEWAY = "10.77.2.1"


def vm(n: int, **changes) -> dict:
    return {"id": n, "mac": f"52:54:00:00:{n // 256:02x}:{n % 256:02x}", "private": f"10.77.2.{10 + n}",
            "public": f"10.77.1.{100 + n}", **changes}  # fmt: skip


def _dhcpd_filters() -> dict:
    spec = importlib.util.spec_from_file_location("vcl_dhcpd_filters", REPO / "roles/dhcpd/filter_plugins/dhcpd.py")
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    return plugin.FilterModule().filters()


def render(template: Path, **variables) -> str:
    """TEMPLATE as Ansible's template module renders it (trim_blocks, trailing newline kept)."""
    env = jinja2.Environment(trim_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters.update(_dhcpd_filters(), comment=comment)
    return env.from_string(template.read_text()).render(ansible_managed="Ansible managed", **variables)


DHCPD_VARS = {
    "dhcpd__subnet": VM_NET,
    "dhcpd__gateway": GATEWAY,
    "dhcpd__shared_subnets": [LAN],
    "dhcpd__options": {"domain-name-servers": GATEWAY},
    "dhcpd__default_lease_time": 3600,
    "dhcpd__max_lease_time": 86400,
}


def dhcpd_conf(vms: list[dict], **changes) -> str:
    """What the dhcpd role writes for these VMs (the host entries vcl_lab_info gives it)."""
    hosts = [{"name": f"vm-{v['id']}", "mac": v["mac"], "ip": v["private"]} for v in vms]
    return render(DHCPD_TEMPLATE, **{**DHCPD_VARS, **changes}, dhcpd__hosts=hosts)


def aliases_file(vms: list[dict]) -> str:
    """What the network role writes for these VMs' public addresses."""
    return render(ALIASES_TEMPLATE, network__uplink="eth0", network__public_aliases=[v["public"] for v in vms])


def normalise_save(text: str) -> list[str]:
    """A saved ruleset without its comments and counters, in any order (a restored jump may come last)."""
    return sorted(re.sub(r"\[\d+:\d+\]$", "[0:0]", line) for line in text.splitlines() if not line.startswith("#"))


def ns_run(ns: str, *argv: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], text=True, capture_output=True, **kwargs)


class Master:
    """The master's files in a temporary directory and its uplink in a namespace."""

    def __init__(self, ns: str, root: Path):
        self.ns, self.root = ns, root
        for sub in ("dhcp", "network", "iptables"):
            (root / sub).mkdir()
        self.dhcpd_config = root / "dhcp/dhcpd.conf"
        self.aliases = root / "network/vcl-public-aliases"
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
        """The state a site.yml run leaves for these VMs (files, aliases, DNAT chains)."""
        self.dhcpd_config.write_text(dhcpd_conf(vms, **dhcpd_vars))
        self.aliases.write_text(aliases_file(vms))
        for v in vms:
            assert not self.run(**v).get("failed")
        self.restarts.unlink(missing_ok=True)

    def run(self, check: bool = False, **args) -> dict:
        """One module run inside the namespace; its JSON result (``failed`` set when it failed)."""
        args = {
            "uplink": "eth0",
            "dhcpd_config": str(self.dhcpd_config),
            "dhcpd_binary": DHCPD,
            "dhcpd_restart": [["sh", "-c", 'echo restart >> "$0"', str(self.restarts)]],
            "aliases_file": str(self.aliases),
            "rules_file": str(self.rules),
            **args,
            "_ansible_check_mode": check,
        }
        path = self.root / "args.json"
        path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
        proc = ns_run(self.ns, sys.executable, str(MODULE), str(path), timeout=120)
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

    def snapshot(self) -> tuple:
        """Everything the module may touch."""
        read = lambda p: p.read_text() if p.exists() else None  # noqa: E731
        return (read(self.dhcpd_config), read(self.aliases), read(self.rules), self.live_aliases(),
                self.nat_rules(), self.restart_count())  # fmt: skip

    def assert_holds(self, vms: list[dict]) -> None:
        """Files byte-identical to the roles' rendering, and live state, for exactly these VMs."""
        assert self.dhcpd_config.read_text() == dhcpd_conf(vms)
        assert self.aliases.read_text() == aliases_file(vms)
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


def test_add_readd_remove_keep_the_roles_bytes(master):
    master.setup([vm(2), vm(10)])
    master.assert_holds([vm(2), vm(10)])

    v7 = vm(7, mac="52:54:00:00:00:ab")
    added = master.run(**{**v7, "mac": "52:54:00:00:00:AB"})  # written in lower case, as the template does
    assert added["changed"] and added["dhcp"]["changed"] and added["alias"]["changed"] and added["dnat"]["changed"]
    assert added["dhcp"]["restarted"] and master.restart_count() == 1
    assert added["dhcp"]["entry"] == "host vm-7 { hardware ethernet 52:54:00:00:00:ab; fixed-address 10.77.2.17; }"
    assert added["alias"]["address"] == "10.77.1.107/32" and added["dnat"]["saved"]
    assert added["dnat"]["chains"] == ["VCL-VM-10", "VCL-VM-2", "VCL-VM-7"]
    master.assert_holds([vm(2), vm(10), v7])
    # Hosts sorted by name as Jinja sorts them: vm-10 < vm-2 < vm-7.
    text = master.dhcpd_config.read_text()
    assert text.index("host vm-10 ") < text.index("host vm-2 ") < text.index("host vm-7 ")

    again = master.run(**v7)
    assert again["changed"] is False and master.restart_count() == 1
    assert again["alias"]["commands"] == [] and again["dnat"]["commands"] == []

    removed = master.run(id=2, state="absent")  # the public address comes from the VM's chain
    assert removed["changed"] and removed["alias"]["address"] == "10.77.1.102/32"
    assert master.restart_count() == 2
    master.assert_holds([vm(10), v7])

    assert master.run(id=2, state="absent")["changed"] is False
    assert master.restart_count() == 2


def test_any_sequence_matches_the_templates(master):
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
    assert master.dhcpd_config.read_text() == dhcpd_conf([])
    assert master.aliases.read_text() == aliases_file([])


def test_a_moved_vm_is_corrected_in_place(master):
    master.setup([vm(1), vm(2)])
    moved = vm(2, mac="52:54:00:00:00:99", private="10.77.2.99")
    result = master.run(**moved)
    assert result["dhcp"]["changed"] and result["dnat"]["changed"] and not result["alias"]["changed"]
    master.assert_holds([vm(1), moved])


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
        ({"public": vm(1)["public"]}, "public"),  # another VM's DNAT chain
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


def test_a_broken_dhcpd_config_is_never_installed(master):
    # An option dhcpd does not know: every candidate is refused by dhcpd -t.
    master.setup([vm(1)], dhcpd__options={"no-such-option": "1"})
    before = master.snapshot()
    result = master.run(**vm(3))
    assert result["failed"] and result["msg"].startswith("dhcp step failed:"), result["msg"]
    assert "was left as it was" in result["msg"] and result["undone"] == ["dhcp"]
    assert master.snapshot() == before
    assert [p for p in master.dhcpd_config.parent.iterdir() if p.name != "dhcpd.conf"] == []  # no candidate left


def test_a_failed_dnat_step_undoes_the_dhcp_entry_and_the_alias(master):
    master.setup([vm(1)])
    before = master.snapshot()
    # The ruleset cannot be saved: the DNAT step fails after its iptables commands ran.
    result = master.run(**vm(6), rules_file=str(master.root / "missing/rules.v4"))
    assert result["failed"] and result["msg"].startswith("dnat step failed: rules_file:"), result["msg"]
    assert result["undone"] == ["dnat", "alias", "dhcp"]
    after = master.snapshot()
    assert after[:5] == before[:5]  # files, live alias and nat table as they were
    assert master.restart_count() == 2  # dhcpd loaded the new file, then the restored one


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
    assert after[:2] == before[:2] and after[3] == before[3]  # the files and the live aliases
    assert normalise_save(master.rules.read_text()) == saved  # saved again once the chain was back
    master.assert_holds([vm(1), vm(2)])


def test_concurrent_launches_serialise_on_the_lock(master):
    master.setup([])
    vms = [vm(n) for n in (11, 12, 13)]
    procs = []
    for v in vms:
        path = master.root / f"args-{v['id']}.json"
        args = {"uplink": "eth0", "dhcpd_config": str(master.dhcpd_config), "dhcpd_binary": DHCPD,
                "aliases_file": str(master.aliases), "rules_file": str(master.rules), **v}  # fmt: skip
        path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
        procs.append(subprocess.Popen(["ip", "netns", "exec", master.ns, sys.executable, str(MODULE), str(path)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(r["changed"] and not r.get("failed") for r in results), results
    master.assert_holds(vms)


def test_dhcpd_is_restarted_with_the_new_entry(master):
    """The plain-mode restart the dhcpd role uses (start-stop-daemon stop, then start), with a real dhcpd
    that runs only inside the namespace, on its own pid and lease files."""
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


def test_the_rendering_here_is_what_ansible_writes(tmp_path):
    """render() above, checked once against Ansible's own template module for both templates."""
    vms = [vm(1), vm(20), vm(3)]
    playbook = tmp_path / "render.yml"
    playbook.write_text(json.dumps([{
        "name": "Render", "hosts": "localhost", "gather_facts": False,
        "vars": {**DHCPD_VARS, "dhcpd__hosts": [{"name": f"vm-{v['id']}", "mac": v["mac"], "ip": v["private"]}
                                                for v in vms],
                 "network__uplink": "eth0", "network__public_aliases": [v["public"] for v in vms]},
        "tasks": [
            {"name": "DHCP", "ansible.builtin.template": {"src": str(DHCPD_TEMPLATE), "dest": str(tmp_path / "d")}},
            {"name": "Aliases", "ansible.builtin.template": {"src": str(ALIASES_TEMPLATE),
                                                             "dest": str(tmp_path / "a")}},
        ],
    }]))  # fmt: skip
    env = {**os.environ, "ANSIBLE_FILTER_PLUGINS": str(REPO / "roles/dhcpd/filter_plugins"), "ANSIBLE_NOCOLOR": "1"}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", f"ansible_python_interpreter={sys.executable}", str(playbook)],
        cwd=REPO, env=env, text=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "d").read_text() == dhcpd_conf(vms)
    assert (tmp_path / "a").read_text() == aliases_file(vms)


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
