"""The nat role on the lab's master, proven with real traffic.

A stand-in VM (a network namespace on the lab's client machine, with a macvlan on the lab LAN, a
private address and the master as its router) serves a tiny CGI that prints who called it; so does
an "outside" host (a slave, on its lab address). Then:

- a lab host reaches the VM at its public address (PREROUTING DNAT) and the VM sees the caller's
  own address;
- the master itself reaches the VM at its public address (OUTPUT DNAT);
- the VM reaches the outside host at an address beyond the lab (TEST-NET-2, routed by the master through the
  slave that holds it), which sees the master's address (MASQUERADE);
- the VM does not reach that same host on its lab address, nor the master's sshd (the master's firewall);
- after the nat table is emptied, restarting netfilter-persistent brings the path back;
- once the VM is dropped from nat__dnat, its public address no longer leads to it.
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

NS = "vcltest-natvm"
VM_IF = "vcltestvm0"
WWW = "/tmp/vcltest-nat-www"
PID_FILE = "/run/vcltest-nat-httpd.pid"
PORT = "8080"
SERVE = ["start-stop-daemon", "--start", "--oknodo", "--background", "--make-pidfile", "--pidfile", PID_FILE]
SERVE += ["--exec", "/bin/busybox", "--", "httpd", "-f", "-p", PORT, "-h", WWW]
CGI = '#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\n"\necho "{{ who }} $REMOTE_ADDR"\n'


def _cgi_tasks(who: str, netns_prefix: list[str]) -> list[dict]:
    """Write the CGI and start busybox httpd (in the namespace, for the VM) under a pid file."""
    return [
        {"name": "Make its directory", "ansible.builtin.file": {"path": f"{WWW}/cgi-bin", "state": "directory"}},
        {
            "name": "Write the CGI that prints who called",
            "ansible.builtin.copy": {"content": CGI, "dest": f"{WWW}/cgi-bin/peer", "mode": "0755"},
            "vars": {"who": who},
        },
        {
            "name": "Serve it",
            "ansible.builtin.command": {"argv": [*netns_prefix, *SERVE]},
            "changed_when": True,
        },
    ]


def _stop_tasks() -> list[dict]:
    return [
        {
            "name": "Stop the test httpd",
            "ansible.builtin.command": {
                "argv": ["start-stop-daemon", "--stop", "--oknodo", "--retry", "TERM/5", "--pidfile", PID_FILE]
            },
            "changed_when": True,
        },
        {"name": "Remove its files", "ansible.builtin.file": {"path": WWW, "state": "absent"}},
    ]


@dataclass
class NatPath:
    lab: Lab
    workdir: Path
    master: str
    outside: str  # a slave: a lab host, which also holds BEYOND, an address outside the lab
    vm_host: str  # the client machine, holding the stand-in VM's namespace
    master_address: str
    outside_address: str
    public: str
    private: str
    last_error: str = ""
    beyond: str = "198.51.100.7"

    def play(self, name: str, plays: list[dict], **variables) -> None:
        playbook = self.workdir / f"{name}.yml"
        playbook.write_text(yaml.safe_dump(plays, sort_keys=False))
        extra = self.workdir / f"{name}.json"
        extra.write_text(json.dumps(variables))
        recap = run_playbook(self.lab, playbook, "-e", f"@{extra}")
        assert recap.ok, recap.stdout

    def converge(self, dnat: list[dict]) -> None:
        nat = [{"name": "Apply the nat role", "hosts": "vcl_master", "gather_facts": False, "roles": ["vcl.lab.nat"]}]
        self.play("nat", nat, nat__dnat=dnat)

    def fetch(self, host: str, address: str, *netns_prefix: str) -> str:
        """GET http://ADDRESS:PORT/cgi-bin/peer from HOST: the body, or '' when it fails.

        busybox httpd reports IPv4 callers as IPv4-mapped IPv6 (``[::ffff:a.b.c.d]``): unwrapped here.
        (busybox 1.35's `wget -T` crashes, hence coreutils' timeout.)"""
        url = f"http://{address}:{PORT}/cgi-bin/peer"
        proc = self.lab.ssh(host, *netns_prefix, "timeout", "10", "busybox", "wget", "-q", "-O", "-", url)
        self.last_error = f"{host} -> {url}: exit {proc.returncode} {proc.stderr.strip()}"
        return re.sub(r"\[::ffff:([0-9.]+)\]", r"\1", proc.stdout.strip()) if proc.returncode == 0 else ""

    @property
    def vm(self) -> dict:
        return {"id": "nat_path", "public": self.public, "private": self.private}


def _address(lab: Lab, inventory: dict, host: str) -> str:
    for group in inventory["children"].values():
        if host in (group.get("hosts") or {}):
            return group["hosts"][host]["ansible_host"]
    raise AssertionError(f"{host} is not in {lab.inventory}")


@pytest.fixture(scope="module")
def nat_path(lab, tmp_path_factory):
    inventory = yaml.safe_load(lab.inventory.read_text())["all"]
    variables = inventory["vars"]
    public_first = variables["lab_public_pool"].split("-")[0].rsplit(".", 1)
    private_first = variables["lab_private_pool"].split("-")[0].rsplit(".", 1)
    master, outside, vm_host = lab.of_role("master")[0], lab.of_role("slave")[0], lab.of_role("client")[0]
    path = NatPath(
        lab=lab,
        workdir=tmp_path_factory.mktemp("nat"),
        master=master,
        outside=outside,
        vm_host=vm_host,
        master_address=_address(lab, inventory, master),
        outside_address=_address(lab, inventory, outside),
        public=f"{public_first[0]}.{int(public_first[1]) + 40}",
        private=f"{private_first[0]}.{int(private_first[1]) + 40}",
    )
    prefix = variables["lab_vm_subnet"].split("/")[1]
    in_ns = ["ip", "netns", "exec", NS]
    setup = [
        {
            "name": "The master carries the VMs' gateway and the VM's public alias (the network role's part)",
            "hosts": master,
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Add the addresses",
                    "ansible.builtin.command": {
                        "argv": ["ip", "address", "replace", "{{ item }}", "dev", "{{ lab_uplink }}"]
                    },
                    "loop": [f"{variables['lab_vm_gateway']}/{prefix}", f"{path.public}/32"],
                    "changed_when": True,
                }
            ],
        },
        {
            "name": "A stand-in VM: a namespace with a macvlan on the LAN, its private address, the master as router",
            "hosts": vm_host,
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Create it",
                    "ansible.builtin.command": {"argv": "{{ item }}"},
                    "loop": [
                        ["ip", "netns", "add", NS],
                        ["ip", "link", "add", "link", "{{ lab_uplink }}", "name", VM_IF, "type", "macvlan"],
                        ["ip", "link", "set", VM_IF, "netns", NS],
                        ["ip", "-n", NS, "address", "add", f"{path.private}/{prefix}", "dev", VM_IF],
                        ["ip", "-n", NS, "link", "set", VM_IF, "up"],
                        ["ip", "-n", NS, "link", "set", "lo", "up"],
                        ["ip", "-n", NS, "route", "add", "default", "via", variables["lab_vm_gateway"]],
                    ],
                    "changed_when": True,
                },
                *_cgi_tasks("vm", in_ns),
            ],
        },
        {
            "name": "The outside host, also at an address beyond the lab",
            "hosts": outside,
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Hold the address beyond the lab",
                    "ansible.builtin.command": {"argv": ["ip", "address", "replace", f"{path.beyond}/32", "dev", "lo"]},
                    "changed_when": True,
                },
                *_cgi_tasks("outside", []),
            ],
        },
        {
            "name": "The master routes the address beyond the lab through the outside host (its uplink)",
            "hosts": master,
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Add the route",
                    "ansible.builtin.command": {
                        "argv": ["ip", "route", "replace", f"{path.beyond}/32", "via", path.outside_address]
                    },
                    "changed_when": True,
                }
            ],
        },
        {
            "name": "Forget stale neighbours (LAB.md: an address may have been held by another MAC before)",
            "hosts": f"{outside},{vm_host}",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Flush the neighbour cache",
                    "ansible.builtin.command": {"argv": ["ip", "neigh", "flush", "all"]},
                    "changed_when": True,
                }
            ],
        },
    ]
    teardown = [
        {
            "name": "Remove the stand-in VM",
            "hosts": vm_host,
            "gather_facts": False,
            "tasks": [
                *_stop_tasks(),
                {
                    "name": "Delete its namespace",
                    "ansible.builtin.command": {"argv": ["ip", "netns", "delete", NS]},
                    "changed_when": True,
                    "failed_when": False,
                },
            ],
        },
        {
            "name": "Stop the outside host's httpd and drop its address beyond the lab",
            "hosts": outside,
            "gather_facts": False,
            "tasks": [
                *_stop_tasks(),
                {
                    "name": "Delete the address",
                    "ansible.builtin.command": {"argv": ["ip", "address", "del", f"{path.beyond}/32", "dev", "lo"]},
                    "changed_when": True,
                    "failed_when": False,
                },
            ],
        },
        {
            "name": "Drop the public alias",
            "hosts": master,
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Delete it",
                    "ansible.builtin.command": {
                        "argv": ["ip", "address", "del", f"{path.public}/32", "dev", "{{ lab_uplink }}"]
                    },
                    "changed_when": True,
                    "failed_when": False,
                },
                {
                    "name": "Delete the route beyond the lab",
                    "ansible.builtin.command": {"argv": ["ip", "route", "del", f"{path.beyond}/32"]},
                    "changed_when": True,
                    "failed_when": False,
                },
            ],
        },
    ]
    path.play("teardown", teardown)  # what a failed run may have left
    path.play("setup", setup)
    try:
        path.converge([path.vm])
        yield path
    finally:
        path.play("teardown", teardown)


def test_lab_host_reaches_the_vm_at_its_public_address(nat_path):
    assert nat_path.fetch(nat_path.outside, nat_path.public) == f"vm {nat_path.outside_address}", nat_path.last_error


def test_master_itself_reaches_the_vm_at_its_public_address(nat_path):
    assert nat_path.fetch(nat_path.master, nat_path.public).startswith("vm ")


def test_vm_reaches_the_outside_masqueraded_as_the_master(nat_path):
    body = nat_path.fetch(nat_path.vm_host, nat_path.beyond, "ip", "netns", "exec", NS)
    assert body == f"outside {nat_path.master_address}", nat_path.last_error


def test_vm_does_not_reach_the_lab_through_the_master(nat_path):
    # The same host on its lab address, and the master's own sshd: the master's firewall drops both.
    assert nat_path.fetch(nat_path.vm_host, nat_path.outside_address, "ip", "netns", "exec", NS) == ""
    ssh = nat_path.lab.ssh(nat_path.vm_host, "ip", "netns", "exec", NS, "timeout", "5", "busybox", "nc", "-w", "3",
                           nat_path.master_address, "22")
    assert "SSH-" not in ssh.stdout
    forward = nat_path.lab.ssh(nat_path.master, "iptables-save", "-t", "filter").stdout
    assert ":FORWARD DROP" in forward and "-A FORWARD -j VCL-FORWARD" in forward


def test_rules_come_back_from_netfilter_persistent(nat_path):
    for argv in (["iptables", "-w", "-t", "nat", "--flush"], ["iptables", "-w", "-t", "nat", "--delete-chain"]):
        assert nat_path.lab.ssh(nat_path.master, *argv).returncode == 0
    assert nat_path.fetch(nat_path.outside, nat_path.public) == ""  # nothing DNATs it now

    restart = nat_path.lab.ssh(nat_path.master, "systemctl", "restart", "netfilter-persistent")
    assert restart.returncode == 0, restart.stderr
    assert nat_path.fetch(nat_path.outside, nat_path.public) == f"vm {nat_path.outside_address}", nat_path.last_error


def test_released_vm_is_no_longer_reachable(nat_path):
    nat_path.converge([])
    try:
        assert nat_path.fetch(nat_path.outside, nat_path.public) == ""
        rules = nat_path.lab.ssh(nat_path.master, "iptables-save", "-t", "nat").stdout
        assert nat_path.private not in rules and "VCL-VM-nat_path" not in rules
        # The VM's own way out is the MASQUERADE rule, which stays.
        body = nat_path.fetch(nat_path.vm_host, nat_path.beyond, "ip", "netns", "exec", NS)
        assert body == f"outside {nat_path.master_address}"
    finally:
        nat_path.converge([nat_path.vm])
