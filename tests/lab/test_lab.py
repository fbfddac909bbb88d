"""The simulated lab works: every machine answers Ansible, slaves run libvirtd, the client
reaches the master, `up` twice is harmless, `down` leaves nothing behind (also after a crash)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from vcl_lab import LabState, image, net
from vcl_lab.playbook import ansible_tool
from vcl_lab.testing import REPO, host_leftovers, lab_cli, lab_down, lab_up, run_playbook

pytestmark = pytest.mark.lab

PLAYBOOKS = Path(__file__).parent / "playbooks"
LAB_NAME = os.environ.get("VCL_TEST_LAB", "vcltest")
#: The second lab (the `other_lab` fixture) for the life-cycle tests; the session lab stays up.
OTHER_LAB = LAB_NAME[:10] + "b"


def test_every_machine_answers_ansible_ping(lab):
    proc = subprocess.run(
        [ansible_tool("ansible"), "all", "-i", str(lab.inventory), "-m", "ansible.builtin.ping"],
        cwd=REPO, text=True, capture_output=True, timeout=300,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    answered = set(re.findall(r"^(\S+) \| SUCCESS =>", proc.stdout, re.MULTILINE))
    assert answered == {"master", "slave1", "slave2", "client"}, proc.stdout
    assert proc.stdout.count('"ping": "pong"') == 4, proc.stdout


def test_inventory_has_the_project_format(lab):
    import yaml

    data = yaml.safe_load(lab.inventory.read_text())
    variables = data["all"]["vars"]
    assert variables["lab_name"] == LAB_NAME
    assert variables["lab_domain_type"] == "qemu"
    assert variables["lab_ntp_upstream"] == []
    assert variables["lab_mac_prefix"] == "52:54:00"
    groups = data["all"]["children"]
    assert list(groups["vcl_master"]["hosts"]) == ["master"]
    assert list(groups["vcl_slaves"]["hosts"]) == ["slave1", "slave2"]
    assert list(groups["vcl_clients"]["hosts"]) == ["client"]
    master = groups["vcl_master"]["hosts"]["master"]
    assert master["lab_uplink"] == "eth0"
    assert master["lab_address"] == master["ansible_host"] + "/24"


def test_run_playbook_reads_the_recap(lab):
    recap = run_playbook(lab, PLAYBOOKS / "smoke.yml")
    assert recap.ok, recap.stdout + recap.stderr
    assert set(recap.hosts) == {"master", "slave1", "slave2", "client"}
    for host, counts in recap.hosts.items():
        assert counts.failed == 0 and counts.unreachable == 0, host
        assert counts.changed == 1, (host, counts)  # the smoke play's one `changed_when: true` task
        assert counts.ok >= 3, (host, counts)


def test_machines_use_the_inventory_interface_and_address(lab):
    for host, address in lab.addresses.items():
        proc = lab.ssh(host, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
        assert proc.returncode == 0, proc.stderr
        assert f"inet {address}/24" in proc.stdout
        assert lab.ssh(host, "hostname").stdout.strip() == host


def test_libvirtd_answers_inside_each_slave(lab):
    for host in lab.of_role("slave"):
        proc = lab.ssh(host, "virsh", "-c", "qemu:///system", "list", "--all")
        assert proc.returncode == 0, f"{host}: {proc.stderr}"
        assert "Id" in proc.stdout and "Name" in proc.stdout
        caps = lab.ssh(host, "virsh", "-c", "qemu:///system", "domcapabilities", "--virttype", "qemu")
        assert caps.returncode == 0 and "<domain>qemu</domain>" in caps.stdout, caps.stderr


def test_client_reaches_the_master(lab):
    master = lab.addresses["master"]
    proc = lab.ssh("client", "ping", "-c", "1", "-W", "3", master)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = lab.ssh("client", "nc", "-z", "-w", "3", master, "22")
    assert proc.returncode == 0, "the client cannot open the master's ssh port"


def test_images_hold_what_roles_install_and_stay_quiet(lab):
    pkgs = "python3 openssh-server chrony isc-dhcp-server iptables iproute2 ifupdown bridge-utils netcat-openbsd"
    for host in ("master", "client"):
        proc = lab.ssh(host, "dpkg-query", "-W", "-f", "${db:Status-Abbrev}${Package}\\n", *pkgs.split())
        assert proc.returncode == 0, proc.stderr
        assert all(line.startswith("ii") for line in proc.stdout.splitlines()), proc.stdout
    for host in ("slave1", "client"):  # a client may join the pool as a slave
        proc = lab.ssh(host, "dpkg-query", "-W", "libvirt-daemon-system", "qemu-system-x86", "python3-libvirt")
        assert proc.returncode == 0, proc.stderr
    # Quiet until a role says otherwise: read in the cached image itself, since the session's roles
    # (tests/lab/test_roles.py, site.yml) may already have configured the machines.
    images = image.cached()
    assert images is not None, "the lab is up, so its image is cached"
    base = images.base
    assert not (base / "etc/systemd/system/multi-user.target.wants/chrony.service").exists()
    assert not list(base.glob("etc/rc[2-5].d/S*isc-dhcp-server")), "isc-dhcp-server must not start at boot"
    chrony_conf = (base / "etc/chrony/chrony.conf").read_text().splitlines()
    conf = [ln for ln in chrony_conf if ln.startswith(("pool ", "server "))]
    assert conf == [], f"chrony still has outside servers: {conf}"
    assert (base / "etc/resolv.conf").read_text().strip() == ""


def test_lab_traffic_cannot_leave_the_machine(lab):
    state = lab.state()
    assert net.guard_present(state.bridge)
    proc = lab.ssh("client", "ping", "-c", "1", "-W", "2", "192.0.2.1")
    assert proc.returncode != 0


def test_status_reports_every_machine(lab):
    proc = lab_cli("status", "--name", lab.name, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["healthy"] is True
    assert data["bridge"]["guard"] is True
    rows = {m["name"]: m for m in data["machines"]}
    assert set(rows) == {"master", "slave1", "slave2", "client"}
    assert all(r["running"] and r["ssh"] for r in rows.values())
    assert rows["slave1"]["libvirtd"] and rows["slave2"]["libvirtd"]
    assert rows["master"]["libvirtd"] is None


def test_up_twice_is_harmless(lab):
    before = {h: m.pid for h, m in lab.state().machines.items()}
    started = time.monotonic()
    again = lab_up(lab.name)
    assert time.monotonic() - started < 60
    after = {h: m.pid for h, m in lab.state().machines.items()}
    assert after == before, "a second `up` restarted machines"
    assert again.addresses == lab.addresses
    rules = subprocess.run(["iptables", "-w", "-S", "FORWARD"], text=True, capture_output=True).stdout
    assert sum(lab.state().bridge in line.split() for line in rules.splitlines()) == 1, rules


# --- life cycle, on a second (smaller) lab next to the session one ------------------------------------


def test_two_labs_do_not_collide(lab, other_lab):
    a, b = lab.state(), other_lab.state()
    assert a.bridge != b.bridge
    assert not a.subnets.lan.overlaps(b.subnets.lan) and not a.subnets.vm.overlaps(b.subnets.lan)
    assert not a.subnets.lan.overlaps(b.subnets.vm) and not a.subnets.vm.overlaps(b.subnets.vm)
    assert {m.veth for m in a.machines.values()}.isdisjoint(m.veth for m in b.machines.values())
    proc = other_lab.ssh("client", "ping", "-c", "1", "-W", "2", lab.addresses["master"])
    assert proc.returncode != 0, "a machine of one lab reached a machine of another lab"


def test_down_removes_everything(other_lab):
    assert host_leftovers(OTHER_LAB), "the lab should exist before `down`"
    result = lab_down(OTHER_LAB)
    assert result["rc"] == 0 and result["ok"], result
    assert host_leftovers(OTHER_LAB) == []
    again = lab_down(OTHER_LAB)  # down twice is harmless too
    assert again["rc"] == 0, again


def test_down_after_a_crash_still_cleans_up(other_lab):
    state = LabState.load(OTHER_LAB)
    assert state is not None
    for machine in state.machines.values():
        os.kill(machine.pid, signal.SIGKILL)  # the nspawn processes die; the machines' systemds do not
    time.sleep(0.5)
    result = lab_down(OTHER_LAB)
    assert result["rc"] == 0 and result["ok"], result
    assert host_leftovers(OTHER_LAB) == []


def test_up_after_a_crash_restarts_the_machines(other_lab):
    state = LabState.load(OTHER_LAB)
    assert state is not None
    os.kill(state.machines["slave1"].pid, signal.SIGKILL)
    handle = lab_up(OTHER_LAB, slaves=1)
    assert handle.ssh("slave1", "virsh", "-c", "qemu:///system", "list").returncode == 0
    proc = lab_cli("status", "--name", OTHER_LAB, "--json")
    assert json.loads(proc.stdout)["healthy"] is True
