"""The dhcpd role on the lab's master: a bad change never reaches the running dhcpd; the role and the vm
role's net entry point (vcl_vm_net) write the VMs' host entries file the same way.

Runs the roles with ansible-playbook against the session lab (``VCL_TEST_LAB``) and reads the
results on the machines themselves: the installed dhcpd.conf and host entries, dhcpd's pid and start time,
and a real DHCP exchange from the lab's client machine (a macvlan with a VM's MAC in a namespace of its
own, asking with busybox udhcpc over the lab LAN).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from vcl_lab.testing import Lab, run_playbook

pytestmark = pytest.mark.lab

PLAYBOOK = [{"name": "Apply the dhcpd role", "hosts": "vcl_master", "gather_facts": False, "roles": ["vcl.lab.dhcpd"]}]
CONF = "/etc/dhcp/dhcpd.conf"
HOSTS = "/etc/dhcp/dhcpd.vcl-vms.conf"  # the VMs' host entries, which dhcpd.conf includes
CANDIDATE = "/etc/dhcp/dhcpd.vcl-vms.candidate.conf"
HANDLER = "RUNNING HANDLER [vcl.lab.dhcpd : Restart isc-dhcp-server]"
VM_ID = 990004  # the VM the vm role's net entry point puts on the master's network
PID_FILE = "/run/dhcpd.pid"
LEASE_NS = "vcltest-dhcpd-lease"
LEASE_IF = "vcltestlease0"


@dataclass
class Dhcpd:
    """The lab's master as the dhcpd role sees it, with helpers to run the role and read the result."""

    lab: Lab
    workdir: Path
    master: str
    master_uplink: str
    client: str
    client_uplink: str
    gateway: str
    prefix: str  # first three octets of the VM network (the lab's VM networks are /24s)
    public: str  # the net entry point's VM's public address (the last of the lab's public pool)
    hosts: list[dict[str, str]]

    def host(self, n: int) -> dict[str, str]:
        return {"name": f"vm-safety-{n}", "mac": f"52:54:00:5a:fe:{n:02x}", "ip": f"{self.prefix}.{100 + n}"}

    def converge(self, **variables):
        """Run the role on the master with these variables (dhcpd__hosts defaults to the baseline)."""
        variables.setdefault("dhcpd__hosts", self.hosts)
        playbook = self.workdir / "dhcpd.yml"
        playbook.write_text(yaml.safe_dump(PLAYBOOK, sort_keys=False))
        extra = self.workdir / "vars.json"
        extra.write_text(json.dumps(variables))
        return run_playbook(self.lab, playbook, "-e", f"@{extra}")

    def net(self, state: str, *extra: str):
        """The vm role's net entry point for VM_ID (host entry, public alias, DNAT), as a launch or release runs it,
        on its fallback path: OMAPI off, so a changed hosts file restarts dhcpd (the OMAPI path, which never
        restarts it, is tests/netns/test_vcl_omapi.py and every launch of tests/lab/test_lifecycle.py). Only the
        dhcpd role ran on this master, so the module runs with the system Python (no /opt/vcl/venv here)."""
        extra = ("-e", "vm__net_omapi_port=0", "-e", "vm__net_python=/usr/bin/python3", *extra)
        net_vars = {"vm__net_id": VM_ID, "vm__net_state": state}
        if state == "present":
            vm = self.vm()
            net_vars.update(vm__net_mac=vm["mac"], vm__net_private_ip=vm["ip"], vm__net_public_ip=self.public)
        playbook = self.workdir / "net.yml"
        playbook.write_text(yaml.safe_dump([{
            "name": "Put the VM on the master's network, or take it off", "hosts": "localhost", "gather_facts": False,
            "tasks": [{"name": "Run the vm role's net entry point", "ansible.builtin.include_role": {
                "name": "vcl.lab.vm", "tasks_from": "net"}, "vars": net_vars}],
        }], sort_keys=False))  # fmt: skip
        return run_playbook(self.lab, playbook, *extra)

    def vm(self) -> dict[str, str]:
        """The host entry the lab database would give the dhcpd role for VM_ID."""
        return {**self.host(4), "name": f"vm-{VM_ID}"}

    def ssh(self, host: str, *argv: str, check: bool = True) -> str:
        proc = self.lab.ssh(host, *argv)
        if check:
            assert proc.returncode == 0, f"{host}: {' '.join(argv)} failed: {proc.stderr}"
        return proc.stdout

    def config(self) -> str:
        """dhcpd.conf, the host entries and their candidate."""
        return "".join(f"==> {path}\n" + self.ssh(self.master, "cat", path) for path in (CONF, HOSTS, CANDIDATE))

    def entries(self) -> str:
        return self.ssh(self.master, "cat", HOSTS)

    def process(self) -> tuple[str, str, list[str]]:
        """The running dhcpd: (pid, start time in clock ticks since boot, argv)."""
        pid = self.ssh(self.master, "cat", PID_FILE).strip()
        stat = self.ssh(self.master, "cat", f"/proc/{pid}/stat")
        argv = self.ssh(self.master, "cat", f"/proc/{pid}/cmdline").split("\0")
        assert argv[0].endswith("dhcpd"), f"pid {pid} from {PID_FILE} is not dhcpd: {argv}"
        return pid, stat.rsplit(")", 1)[1].split()[19], [a for a in argv if a]

    def lease(self, mac: str) -> tuple[str, str] | None:
        """Ask for a lease from the client machine with MAC: (address, server) or None."""
        self.ssh(self.client, "ip", "netns", "delete", LEASE_NS, check=False)
        self.ssh(self.client, "ip", "link", "delete", LEASE_IF, check=False)
        try:
            self.ssh(self.client, "ip", "netns", "add", LEASE_NS)
            link = ["link", self.client_uplink, "name", LEASE_IF, "address", mac, "type", "macvlan"]
            self.ssh(self.client, "ip", "link", "add", *link)
            self.ssh(self.client, "ip", "link", "set", LEASE_IF, "netns", LEASE_NS)
            self.ssh(self.client, "ip", "-n", LEASE_NS, "link", "set", LEASE_IF, "up")
            proc = self.lab.ssh(
                self.client, "ip", "netns", "exec", LEASE_NS,
                "busybox", "udhcpc", "-n", "-q", "-f", "-s", "/bin/true", "-t", "3", "-T", "2", "-i", LEASE_IF,
            )  # fmt: skip
        finally:
            self.ssh(self.client, "ip", "netns", "delete", LEASE_NS, check=False)
        found = re.search(r"lease of (\S+) obtained from ([0-9.]+)", proc.stdout + proc.stderr)
        return (found.group(1), found.group(2)) if found else None


@pytest.fixture(scope="module")
def dhcpd(lab, tmp_path_factory):
    """The role converged on the master with three VMs (systemd, as the lab runs it)."""
    inventory = yaml.safe_load(lab.inventory.read_text())["all"]
    variables = inventory["vars"]
    master, client = lab.of_role("master")[0], lab.of_role("client")[0]
    uplink = inventory["children"]["vcl_master"]["hosts"][master]["lab_uplink"]
    gateway = variables["lab_vm_gateway"]
    prefix_len = variables["lab_vm_subnet"].split("/")[1]
    assert prefix_len == "24", "these tests pick VM addresses in a /24"
    handle = Dhcpd(
        lab=lab,
        workdir=tmp_path_factory.mktemp("dhcpd"),
        master=master,
        master_uplink=uplink,
        client=client,
        client_uplink=inventory["children"]["vcl_clients"]["hosts"][client]["lab_uplink"],
        gateway=gateway,
        prefix=gateway.rsplit(".", 1)[0],
        public=variables["lab_public_pool"].split("-")[1],
        hosts=[],
    )
    handle.hosts = [handle.host(n) for n in (1, 2, 3)]
    # The network role's part: the VMs' gateway on the master's uplink.
    handle.ssh(master, "ip", "address", "replace", f"{gateway}/{prefix_len}", "dev", uplink)
    recap = handle.converge()
    assert recap.ok, recap.stdout
    return handle


def test_baseline_serves_fixed_addresses(dhcpd):
    assert dhcpd.lease(dhcpd.hosts[0]["mac"]) == (dhcpd.hosts[0]["ip"], dhcpd.gateway)
    assert dhcpd.lease("52:54:00:5a:fe:ee") is None  # no host entry, no dynamic range: no lease
    again = dhcpd.converge()
    assert again.ok and again[dhcpd.master].changed == 0, again.stdout


def test_config_dhcpd_rejects_never_replaces_the_working_one(dhcpd):
    before_conf, before_process = dhcpd.config(), dhcpd.process()

    recap = dhcpd.converge(dhcpd__options={"no-such-option": "1"})

    assert recap[dhcpd.master].failed == 1 and recap[dhcpd.master].changed == 0, recap.stdout
    assert "failed to validate" in recap.stdout and "no-such-option" in recap.stdout, recap.stdout
    assert "RUNNING HANDLER" not in recap.stdout
    assert dhcpd.config() == before_conf  # dhcpd.conf, the host entries and their candidate
    assert dhcpd.process() == before_process  # the same dhcpd, never restarted
    assert dhcpd.lease(dhcpd.hosts[1]["mac"]) == (dhcpd.hosts[1]["ip"], dhcpd.gateway)


def _bad(dhcpd: Dhcpd, index: int, **change: str) -> list[dict[str, str]]:
    hosts = [dict(h) for h in dhcpd.hosts]
    hosts[index].update(change)
    return hosts


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("conflicting_ip", r"dhcpd__hosts\[2\] \(vm-safety-3\)\.ip: \S+ is also dhcpd__hosts\[0\] \(vm-safety-1\)\.ip"),
        ("conflicting_mac", r"dhcpd__hosts\[1\] \(vm-safety-2\)\.mac: 52:54:00:5a:fe:01 is also dhcpd__hosts\[0\]"),
        ("bad_mac", r"dhcpd__hosts\[1\] \(vm-safety-2\)\.mac: '52:54:00:5a:fe' is not a MAC address"),
        ("outside_subnet", r"dhcpd__hosts\[0\] \(vm-safety-1\)\.ip: 10\.254\.0\.9 is not inside dhcpd__subnet"),
        ("gateway_ip", r"dhcpd__hosts\[0\] \(vm-safety-1\)\.ip: \S+ is dhcpd__gateway"),
        ("unsafe_name", r"dhcpd__hosts\[1\]\.name: 'vm-2; deny booting' is not a safe host name"),
        ("missing_interface", r"dhcpd__interfaces: this host has no interface nosuch0"),
    ],
)
def test_bad_input_fails_naming_the_entry_before_anything_changes(dhcpd, case, expected):
    variables = {
        "conflicting_ip": {"dhcpd__hosts": _bad(dhcpd, 2, ip=dhcpd.hosts[0]["ip"])},
        "conflicting_mac": {"dhcpd__hosts": _bad(dhcpd, 1, mac=dhcpd.hosts[0]["mac"].upper())},
        "bad_mac": {"dhcpd__hosts": _bad(dhcpd, 1, mac="52:54:00:5a:fe")},
        "outside_subnet": {"dhcpd__hosts": _bad(dhcpd, 0, ip="10.254.0.9")},
        "gateway_ip": {"dhcpd__hosts": _bad(dhcpd, 0, ip=dhcpd.gateway)},
        "unsafe_name": {"dhcpd__hosts": _bad(dhcpd, 1, name="vm-2; deny booting")},
        "missing_interface": {"dhcpd__interfaces": ["nosuch0"]},
    }[case]
    before_conf, before_process = dhcpd.config(), dhcpd.process()

    recap = dhcpd.converge(**variables)

    assert recap[dhcpd.master].failed == 1 and recap[dhcpd.master].changed == 0, recap.stdout
    assert re.search(expected, recap.stdout), recap.stdout
    assert "Install ISC dhcpd" not in recap.stdout  # it stopped at the check, before any change
    assert dhcpd.config() == before_conf
    assert dhcpd.process() == before_process


def test_valid_change_restarts_dhcpd_and_serves_the_new_entry(dhcpd):
    before_pid, before_start, _ = dhcpd.process()
    fourth = dhcpd.host(4)
    assert dhcpd.lease(fourth["mac"]) is None

    recap = dhcpd.converge(dhcpd__hosts=[*dhcpd.hosts, fourth])

    assert recap.ok and recap[dhcpd.master].changed >= 1, recap.stdout
    assert HANDLER in recap.stdout
    assert dhcpd.process()[:2] != (before_pid, before_start)
    assert f"host {fourth['name']} {{" in dhcpd.entries()
    assert not re.search(r"(?m)^\s*host\s", dhcpd.ssh(dhcpd.master, "cat", CONF))  # no host: it includes them
    assert dhcpd.lease(fourth["mac"]) == (fourth["ip"], dhcpd.gateway)

    back = dhcpd.converge()  # the baseline again, for the tests that follow
    assert back.ok, back.stdout
    assert dhcpd.lease(fourth["mac"]) is None


def test_the_net_entry_point_and_the_role_write_the_same_host_entries(dhcpd):
    """A launch (vcl_vm_net, through the vm role's net entry point) adds one entry that dhcpd serves at once; the
    role run later with the same VMs (site.yml) changes nothing; a release takes the entry away, and again the
    role agrees. The VM's alias file and chain come and go with it."""
    vm = dhcpd.vm()
    assert dhcpd.lease(vm["mac"]) is None
    before_pid, before_start, _ = dhcpd.process()

    launched = dhcpd.net("present")
    assert launched.ok and launched.changed == 1, launched.stdout
    entries = dhcpd.entries()
    assert entries.count(f"host {vm['name']} {{") == 1 and all(f"host {h['name']} {{" in entries for h in dhcpd.hosts)
    assert dhcpd.ssh(dhcpd.master, "cat", CANDIDATE) == entries
    assert dhcpd.process()[:2] != (before_pid, before_start)  # OMAPI off: restarted to load the new entry
    assert dhcpd.lease(vm["mac"]) == (vm["ip"], dhcpd.gateway)
    alias = dhcpd.ssh(dhcpd.master, "cat", f"/etc/network/interfaces.d/vcl-vm-{VM_ID}")
    assert f"address {dhcpd.public}/32" in alias
    assert f"VCL-VM-{VM_ID}" in dhcpd.ssh(dhcpd.master, "iptables-save", "-t", "nat")

    again = dhcpd.net("present")
    assert again.ok and again.changed == 0, again.stdout
    site = dhcpd.converge(dhcpd__hosts=[*dhcpd.hosts, vm])  # what site.yml runs while the VM holds its address
    assert site.ok and site[dhcpd.master].changed == 0, site.stdout
    assert dhcpd.entries() == entries

    released = dhcpd.net("absent")
    assert released.ok and released.changed == 1, released.stdout
    assert f"host {vm['name']} " not in dhcpd.entries()
    assert dhcpd.lease(vm["mac"]) is None
    assert dhcpd.ssh(dhcpd.master, "ls", "/etc/network/interfaces.d").split().count(f"vcl-vm-{VM_ID}") == 0
    assert f"VCL-VM-{VM_ID}" not in dhcpd.ssh(dhcpd.master, "iptables-save", "-t", "nat")
    back = dhcpd.converge()
    assert back.ok and back[dhcpd.master].changed == 0, back.stdout


def test_plain_service_manager_runs_dhcpd_with_start_stop_daemon(dhcpd):
    """Without systemd: start-stop-daemon and a pid file; restarted on a valid change, idempotent."""
    dhcpd.ssh(dhcpd.master, "systemctl", "stop", "isc-dhcp-server")
    try:
        first = dhcpd.converge(dhcpd__service_manager="plain")
        assert first.ok and first[dhcpd.master].changed >= 1, first.stdout
        pid, start, argv = dhcpd.process()
        assert argv[1:] == ["-4", "-q", "-cf", CONF, "-pf", PID_FILE, dhcpd.master_uplink], argv
        assert dhcpd.lease(dhcpd.hosts[2]["mac"]) == (dhcpd.hosts[2]["ip"], dhcpd.gateway)

        again = dhcpd.converge(dhcpd__service_manager="plain")
        assert again.ok and again[dhcpd.master].changed == 0, again.stdout
        assert dhcpd.process()[:2] == (pid, start)

        fifth = dhcpd.host(5)
        changed = dhcpd.converge(dhcpd__service_manager="plain", dhcpd__hosts=[*dhcpd.hosts, fifth])
        assert changed.ok, changed.stdout
        new_pid, new_start, _ = dhcpd.process()
        assert (new_pid, new_start) != (pid, start)
        assert dhcpd.ssh(dhcpd.master, "ps", "-o", "pid=", "-p", pid, check=False).strip() == ""  # the old one ended
        assert dhcpd.lease(fifth["mac"]) == (fifth["ip"], dhcpd.gateway)

        # A launch and a release restart the plain-mode dhcpd the same way (the net entry point's plain argv).
        for state, served in (("present", True), ("absent", False)):
            before = dhcpd.process()
            recap = dhcpd.net(state, "-e", "lab_service_manager=plain")
            assert recap.ok and recap.changed == 1, recap.stdout
            after = dhcpd.process()
            assert after[:2] != before[:2] and after[2] == before[2], (before, after)  # same argv, new process
            vm = dhcpd.vm()
            assert dhcpd.lease(vm["mac"]) == ((vm["ip"], dhcpd.gateway) if served else None)
    finally:
        dhcpd.ssh(
            dhcpd.master,
            "start-stop-daemon", "--stop", "--retry", "TERM/10", "--oknodo", "--pidfile", PID_FILE,
            "--exec", "/usr/sbin/dhcpd",
        )  # fmt: skip
        restored = dhcpd.converge()
        assert restored.ok, restored.stdout
