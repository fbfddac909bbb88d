"""The vcl_firewall module against a real filter table, in a network namespace of its own."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.netns.test_vcl_nat import ns_run

MODULE = "ansible_collections.vcl.lab.plugins.modules.vcl_firewall"
VM = "10.77.2.0/24"
ARGS = {"vm_subnet": VM, "vm_gateway": "10.77.2.1", "lab_networks": ["10.77.1.0/24"], "uplink": "eth0"}
FORWARD = [
    "-A FORWARD -j VCL-FORWARD",
    "-A VCL-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    f"-A VCL-FORWARD -d {VM} -m conntrack --ctstate DNAT -j ACCEPT",
    f"-A VCL-FORWARD -s {VM} -d 10.77.1.0/24 -j DROP",
    f"-A VCL-FORWARD -s {VM} -d {VM} -j DROP",
    f"-A VCL-FORWARD -s {VM} -o eth0 -j ACCEPT",
    f"-A VCL-FORWARD -s {VM} -j DROP",
    f"-A VCL-FORWARD -d {VM} -j DROP",
]
INPUT = [
    "-A INPUT -j VCL-INPUT",
    f"-A VCL-INPUT -s {VM} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    f"-A VCL-INPUT -s {VM} -d 10.77.2.1/32 -p udp -m udp --sport 68 --dport 67 -j ACCEPT",
    f"-A VCL-INPUT -s {VM} -d 255.255.255.255/32 -p udp -m udp --sport 68 --dport 67 -j ACCEPT",
    f"-A VCL-INPUT -s {VM} -d 10.77.2.1/32 -p udp -m udp --dport 53 -j ACCEPT",
    f"-A VCL-INPUT -s {VM} -d 10.77.2.1/32 -p tcp -m tcp --dport 53 -j ACCEPT",
    f"-A VCL-INPUT -s {VM} -d 10.77.2.1/32 -p udp -m udp --dport 123 -j ACCEPT",
    f"-A VCL-INPUT -s {VM} -j DROP",
]


def run_module(ns: str, tmp_path: Path, check: bool = False, **args) -> dict:
    args.setdefault("rules_file", str(tmp_path / "rules.v4"))
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {**args, "_ansible_check_mode": check}}))
    proc = ns_run(ns, sys.executable, "-m", MODULE, str(path), timeout=60)
    result = json.loads(proc.stdout)
    assert bool(result.get("failed")) == (proc.returncode != 0), result
    return result


def filter_table(ns: str) -> tuple[list[str], str]:
    out = ns_run(ns, "iptables-save", "-t", "filter", check=True).stdout
    return [line for line in out.splitlines() if line.startswith("-A ")], out


def test_rules_and_drop_policy_once_and_a_rerun_changes_nothing(netns, tmp_path):
    first = run_module(netns, tmp_path, **ARGS)
    assert first["changed"] and first["saved"]
    rules, text = filter_table(netns)
    assert sorted(rules) == sorted(FORWARD + INPUT)
    assert ":FORWARD DROP" in text
    again = run_module(netns, tmp_path, **ARGS)
    assert not again["changed"] and again["commands"] == []
    saved = (tmp_path / "rules.v4").read_text()
    assert "-A VCL-FORWARD -d 10.77.2.0/24 -m conntrack --ctstate DNAT -j ACCEPT" in saved
    assert ":FORWARD DROP" in saved


def test_peers_accept_vm_to_vm(netns, tmp_path):
    run_module(netns, tmp_path, peers=True, **ARGS)
    rules, _ = filter_table(netns)
    assert f"-A VCL-FORWARD -s {VM} -d {VM} -j ACCEPT" in rules
    assert f"-A VCL-FORWARD -s {VM} -d {VM} -j DROP" not in rules


def test_drift_is_repaired_and_the_jump_put_back_first(netns, tmp_path):
    run_module(netns, tmp_path, **ARGS)
    ns_run(netns, "iptables", "-I", "FORWARD", "1", "-j", "ACCEPT", check=True)
    ns_run(netns, "iptables", "-A", "VCL-INPUT", "-j", "ACCEPT", check=True)
    ns_run(netns, "iptables", "-A", "INPUT", "-j", "VCL-INPUT", check=True)
    ns_run(netns, "iptables", "-P", "FORWARD", "ACCEPT", check=True)
    fixed = run_module(netns, tmp_path, **ARGS)
    assert fixed["changed"]
    rules, text = filter_table(netns)
    forward = [r for r in rules if r.startswith("-A FORWARD ")]
    assert forward[0] == "-A FORWARD -j VCL-FORWARD"
    assert rules.count("-A INPUT -j VCL-INPUT") == 1
    assert [r for r in rules if r.startswith("-A VCL-INPUT ")] == INPUT[1:]
    assert ":FORWARD DROP" in text
    assert not run_module(netns, tmp_path, **ARGS)["changed"]


def test_check_mode_touches_nothing(netns, tmp_path):
    result = run_module(netns, tmp_path, check=True, **ARGS)
    assert result["changed"] and result["commands"]
    rules, text = filter_table(netns)
    assert rules == [] and ":FORWARD ACCEPT" in text
    assert not (tmp_path / "rules.v4").exists()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"vm_subnet": "10.77.2.1/24"}, "vm_subnet"),
        ({"vm_subnet": "10.77.2.0/24; iptables -F"}, "vm_subnet"),
        ({"vm_gateway": "10.77.3.1"}, "vm_gateway"),
        ({"vm_gateway": "{{ lookup('pipe', 'id') }}"}, "vm_gateway"),
        ({"lab_networks": []}, "lab_networks"),
        ({"lab_networks": ["10.77.0.0/16"]}, "lab_networks[0]"),
        ({"uplink": "eth0 -j ACCEPT"}, "uplink"),
    ],
)
def test_bad_input_names_the_field_and_changes_nothing(netns, tmp_path, changes, field):
    result = run_module(netns, tmp_path, **{**ARGS, **changes})
    assert result["failed"] and result["msg"].startswith(f"{field}:"), result
    rules, text = filter_table(netns)
    assert rules == [] and ":FORWARD ACCEPT" in text
    assert not (tmp_path / "rules.v4").exists()


def test_a_vm_reaches_only_what_the_rules_allow(netns, tmp_path):
    """Real packets through the namespace as a router: a VM namespace and a lab namespace on two veths."""
    vm_ns, lab_ns = f"{netns}-v", f"{netns}-l"
    for ns in (vm_ns, lab_ns):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        cmds = [
            ["ip", "link", "add", "vmside", "netns", netns, "type", "veth", "peer", "name", "eth0", "netns", vm_ns],
            ["ip", "link", "add", "eth0", "netns", netns, "type", "veth", "peer", "name", "eth0", "netns", lab_ns],
            ["ip", "-n", netns, "addr", "add", "10.77.2.1/24", "dev", "vmside"],
            ["ip", "-n", netns, "addr", "add", "10.77.1.10/24", "dev", "eth0"],
            ["ip", "-n", vm_ns, "addr", "add", "10.77.2.16/24", "dev", "eth0"],
            ["ip", "-n", lab_ns, "addr", "add", "10.77.1.50/24", "dev", "eth0"],
            ["ip", "-n", lab_ns, "addr", "add", "198.51.100.7/32", "dev", "eth0"],
        ]
        for ns in (netns, vm_ns, lab_ns):
            cmds += [["ip", "-n", ns, "link", "set", "lo", "up"]]
        cmds += [["ip", "-n", netns, "link", "set", "vmside", "up"], ["ip", "-n", netns, "link", "set", "eth0", "up"],
                 ["ip", "-n", vm_ns, "link", "set", "eth0", "up"], ["ip", "-n", lab_ns, "link", "set", "eth0", "up"],
                 ["ip", "-n", vm_ns, "route", "add", "default", "via", "10.77.2.1"],
                 ["ip", "-n", netns, "route", "add", "198.51.100.7/32", "via", "10.77.1.50"],
                 ["ip", "-n", lab_ns, "route", "add", "10.77.2.0/24", "via", "10.77.1.10"],
                 ["ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"]]
        for cmd in cmds:
            subprocess.run(cmd, check=True)
        run_module(netns, tmp_path, **ARGS)

        server_code = (
            "import socket,sys\n"
            "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(1); s.settimeout(4)\n"
            "c,_=s.accept(); c.settimeout(2); print(c.recv(16).decode(), flush=True)\n"
        )
        client_code = (
            "import socket,sys\n"
            "c=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2); c.sendall(b'hello')\n"
        )

        def reaches(src_ns: str, address: str, port: int, server_ns: str) -> bool:
            server = subprocess.Popen(["ip", "netns", "exec", server_ns, sys.executable, "-c", server_code, str(port)],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            try:
                time.sleep(0.3)
                subprocess.run(["ip", "netns", "exec", src_ns, sys.executable, "-c", client_code, address, str(port)],
                               timeout=10, capture_output=True)
                try:
                    out, _ = server.communicate(timeout=5)
                except subprocess.TimeoutExpired:
                    return False
                return "hello" in out
            finally:
                server.kill()
                server.wait()

        # The outside (an address that is not the lab's), through the uplink: allowed.
        assert reaches(vm_ns, "198.51.100.7", 8001, lab_ns)
        # A lab host: dropped. The master's sshd-like port on its lab address and its VM-side address: dropped.
        assert not reaches(vm_ns, "10.77.1.50", 8002, lab_ns)
        assert not reaches(vm_ns, "10.77.1.10", 8003, netns)
        assert not reaches(vm_ns, "10.77.2.1", 8004, netns)
        # A lab host reaching the VM directly (not DNAT'd): dropped; DNS on the master: allowed.
        assert not reaches(lab_ns, "10.77.2.16", 8005, vm_ns)
        assert reaches(vm_ns, "10.77.2.1", 53, netns)
    finally:
        for ns in (vm_ns, lab_ns):
            subprocess.run(["ip", "netns", "delete", ns], check=False)
