"""The lab's pure parts, without a lab: names, subnets, the inventory, the recap parser, the CLI, and the
environment its Ansible and molecule runs get."""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import subprocess

import pytest
import yaml

from vcl_lab import LabError, net
from vcl_lab._util import require_tools
from vcl_lab.cli import register
from vcl_lab.inventory import render
from vcl_lab.playbook import ansible_tool, parse_recap, run_playbook
from vcl_lab.state import LabState, machine_plan
from vcl_lab.testing import REPO, Lab, molecule_env

RECAP = """
TASK [x] ***
ok: [master]

PLAY RECAP *********************************************************************
client                     : ok=2    changed=0    unreachable=0    failed=1    skipped=0    rescued=0    ignored=0
master                     : ok=5    changed=3    unreachable=0    failed=0    skipped=1    rescued=0    ignored=0
slave1                     : ok=0    changed=0    unreachable=1    failed=0    skipped=0    rescued=0    ignored=0

[WARNING]: something after the recap
"""


def test_parse_recap_reads_every_host():
    hosts = parse_recap(RECAP)
    assert set(hosts) == {"client", "master", "slave1"}
    assert hosts["master"].ok == 5 and hosts["master"].changed == 3 and hosts["master"].skipped == 1
    assert hosts["client"].failed == 1
    assert hosts["slave1"].unreachable == 1


def test_parse_recap_without_recap_is_empty():
    assert parse_recap("ERROR! the playbook could not be found") == {}


@pytest.mark.parametrize("name", ["vcl0", "vcltest", "abcdefghijkl", "x"])
def test_interface_names_fit_the_kernel_limit(name):
    assert len(net.bridge_name(name)) <= 15
    for host in ["master", "client", *(f"slave{i}" for i in (1, 9, 29))]:
        assert len(net.veth_name(name, host)) <= 15


def test_long_names_keep_distinct_interfaces():
    assert net.bridge_name("labnumberone") != net.bridge_name("labnumbertwo")


@pytest.mark.parametrize("bad", ["", "Vcl0", "0lab", "a-b", "x" * 13, "../etc"])
def test_bad_lab_names_are_refused(bad):
    with pytest.raises(LabError, match="lab name"):
        net.check_name(bad)


def test_subnets_come_from_the_name_and_skip_what_is_taken(monkeypatch):
    monkeypatch.setattr(net, "host_networks", lambda exclude_dev=None: [])
    first = net.choose_subnets("vcl0", requested=None, other_labs={}, own_bridge="vclbr-vcl0")
    assert (str(first.lan), str(first.vm)) == ("10.213.0.0/24", "10.213.1.0/24")
    assert str(net.choose_subnets("vcl1", requested=None, other_labs={}, own_bridge="x").lan) == "10.213.2.0/24"
    # Something else on the host routes 10.213.1.0/24: vcl0 moves to the next free pair.
    taken = [(ipaddress.IPv4Network("10.213.1.0/24"), "route 10.213.1.0/24 dev wg0")]
    monkeypatch.setattr(net, "host_networks", lambda exclude_dev=None: taken)
    moved = net.choose_subnets("vcl0", requested=None, other_labs={"vcl1": net._pair(1)}, own_bridge="x")
    assert str(moved.lan) == "10.213.4.0/24"


def test_a_taken_requested_subnet_is_a_clear_error(monkeypatch):
    taken = [(ipaddress.IPv4Network("10.213.0.0/16"), "route 10.213.0.0/16 dev tun0")]
    monkeypatch.setattr(net, "host_networks", lambda exclude_dev=None: taken)
    with pytest.raises(LabError, match=r"already used on this machine \(route 10.213.0.0/16 dev tun0\)"):
        net.choose_subnets("vcl0", requested="10.213.0.0/24", other_labs={}, own_bridge="x")
    with pytest.raises(LabError, match="no free pair"):
        net.choose_subnets("vcl0", requested=None, other_labs={}, own_bridge="x")


def test_inventory_has_the_project_format():
    state = LabState(name="vcl0", lan="10.213.0.0/24", vm="10.213.1.0/24", bridge="vclbr-vcl0")
    state.machines = machine_plan("vcl0", state.subnets, 2)
    data = yaml.safe_load(render(state))
    v = data["all"]["vars"]
    assert v["lab_subnet"] == "10.213.0.0/24" and v["lab_gateway"] == "10.213.0.1"
    assert v["lab_vm_subnet"] == "10.213.1.0/24" and v["lab_vm_gateway"] == "10.213.1.1"
    assert v["lab_private_pool"] == "10.213.1.16-10.213.1.254"
    assert v["lab_public_pool"] == "10.213.0.160-10.213.0.223"
    assert v["lab_mac_prefix"] == "52:54:00" and v["lab_domain_type"] == "qemu"
    assert v["lab_ntp_upstream"] == [] and v["lab_service_manager"] == "systemd"
    assert v["ansible_user"] == "root"
    assert v["ansible_ssh_private_key_file"].endswith("/vcl0/id_ed25519")
    children = data["all"]["children"]
    assert children["vcl_master"]["hosts"]["master"] == {
        "ansible_host": "10.213.0.10",
        "lab_address": "10.213.0.10/24",
        "lab_uplink": "eth0",
    }
    assert list(children["vcl_slaves"]["hosts"]) == ["slave1", "slave2"]
    assert children["vcl_slaves"]["hosts"]["slave2"]["ansible_host"] == "10.213.0.22"
    assert children["vcl_clients"]["hosts"]["client"]["ansible_host"] == "10.213.0.50"


def test_public_pool_does_not_overlap_hosts():
    state = LabState(name="vcl0", lan="10.213.0.0/24", vm="10.213.1.0/24", bridge="b")
    plan = machine_plan("vcl0", state.subnets, 29)
    octets = {int(m.address.rsplit(".", 1)[1]) for m in plan.values()}
    assert max(octets) < 160
    with pytest.raises(LabError, match="--slaves"):
        machine_plan("vcl0", state.subnets, 30)


def test_a_missing_tool_names_its_package(monkeypatch):
    import vcl_lab._util as util

    monkeypatch.setattr(util.shutil, "which", lambda tool, path=None: None)
    with pytest.raises(LabError, match=r"apt-get install debootstrap systemd-container.*requirements/apt-lab.txt"):
        require_tools("systemd-nspawn", "debootstrap")


def test_cli_registers_under_the_main_command_and_keeps_global_json():
    parser = argparse.ArgumentParser(prog="vcl")
    parser.add_argument("--json", action="store_true")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["--json", "lab", "up", "--slaves", "3", "--name", "lab2"])
    assert (args.json, args.slaves, args.name) == (True, 3, "lab2") and callable(args.func)
    args = parser.parse_args(["lab", "status", "--json"])
    assert args.json is True and args.name == "vcl0"
    args = parser.parse_args(["lab", "down"])
    assert args.json is False and callable(args.func)


# --- Ansible runs see the checkout as the collection vcl.lab ----------------------------------------

_HOSTILE = {  # what a caller's environment could bring: another config, content by path
    "ANSIBLE_ROLES_PATH": "/nonexistent/roles",
    "ANSIBLE_LIBRARY": "/nonexistent/library",
    "ANSIBLE_MODULE_UTILS": "/nonexistent/module_utils",
    "ANSIBLE_COLLECTIONS_PATH": "/nonexistent/collections",
}


def test_molecule_runs_see_the_collection(tmp_path, monkeypatch):
    """Molecule writes its own ansible.cfg (the checkout's is not read): molecule_env must name the collection."""
    for key, value in _HOSTILE.items():
        monkeypatch.setenv(key, value)
    lab = Lab(name="x", inventory=tmp_path / "hosts.yml", key_file=tmp_path / "key", addresses={}, roles={})
    env = molecule_env(lab, tmp_path / "ephemeral")
    assert not {k for k in _HOSTILE if k != "ANSIBLE_COLLECTIONS_PATH"} & set(env)
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")  # as molecule's own: no collections_path
    env["ANSIBLE_CONFIG"] = str(tmp_path / "ansible.cfg")
    proc = subprocess.run(
        [ansible_tool("ansible-galaxy"), "collection", "list", "vcl.lab", "--format", "json"],
        cwd=REPO / "roles" / "dhcpd", env=env, text=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert list(found) == [str(REPO / "collections" / "ansible_collections")], found
    assert list(found[str(REPO / "collections" / "ansible_collections")]) == ["vcl.lab"], found


def test_run_playbook_uses_the_checkouts_ansible_cfg(tmp_path, monkeypatch):
    """An ANSIBLE_CONFIG or content paths in the caller's environment do not replace the checkout's settings."""
    hostile = tmp_path / "hostile.cfg"
    hostile.write_text("[defaults]\ncollections_path = /nonexistent/cfg-collections\n")
    monkeypatch.setenv("ANSIBLE_CONFIG", str(hostile))
    for key, value in _HOSTILE.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # not the checkout: run_playbook runs there by default
    playbook = tmp_path / "where.yml"
    playbook.write_text(
        "- name: Where Ansible looks\n"
        "  hosts: localhost\n"
        "  connection: local\n"
        "  gather_facts: false\n"
        "  tasks:\n"
        "    - name: Show the collections and roles paths\n"
        "      ansible.builtin.debug:\n"
        "        msg: \"PATHS {{ {'collections': lookup('ansible.builtin.config', 'COLLECTIONS_PATHS'),"
        " 'roles': lookup('ansible.builtin.config', 'DEFAULT_ROLES_PATH'),"
        " 'config': lookup('ansible.builtin.config', 'CONFIG_FILE')} | to_json }} END\"\n"
    )
    recap = run_playbook("localhost,", playbook)
    assert recap.ok, recap.stdout + recap.stderr
    seen = json.loads(re.search(r"PATHS (.*) END", recap.stdout).group(1).replace('\\"', '"'))
    assert seen["config"] == str(REPO / "ansible.cfg")
    assert seen["collections"][0] == str(REPO / "collections")
    assert not any("nonexistent" in p for p in seen["collections"] + seen["roles"]), seen


def test_a_machine_booted_again_keeps_the_keys_the_roles_gave_it(tmp_path, monkeypatch):
    """configure_root adds the lab's key to root's authorized_keys and keeps the other lines (the master's key
    that the ssh role put on a slave): a slave killed and booted again still lets the master copy disks."""
    from vcl_lab import machines
    from vcl_lab import state as lab_state

    monkeypatch.setattr(lab_state, "state_dir", lambda name: tmp_path / name)
    st = LabState(name="unit", lan="10.250.0.0/24", vm="10.250.1.0/24", bridge="vu0",
                  machines=machine_plan("unit", net.Subnets(ipaddress.IPv4Network("10.250.0.0/24"),
                                                            ipaddress.IPv4Network("10.250.1.0/24")), 1))
    st.dir.mkdir(parents=True)
    st.key_file.with_suffix(".pub").write_text("ssh-ed25519 AAAAlab vcl-lab\n")
    keys = st.root("slave1") / "root/.ssh/authorized_keys"
    keys.parent.mkdir(parents=True)
    keys.write_text("ssh-ed25519 AAAAmaster vcl-master\n")
    for _ in range(2):  # a second boot adds nothing
        machines.configure_root(st, st.machines["slave1"], first_boot=False)
    assert keys.read_text().splitlines() == ["ssh-ed25519 AAAAmaster vcl-master", "ssh-ed25519 AAAAlab vcl-lab"]
    assert keys.stat().st_mode & 0o777 == 0o600
