"""plugins/modules/vcl_nat.py against real iptables, in a network namespace per test.

The module runs as Ansible runs it on a host (``python vcl_nat.py ARGS.json``), but inside the
namespace, so its iptables commands change only the namespace's nat table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
MODULE = "ansible_collections.vcl.lab.plugins.modules.vcl_nat"  # run the collection way (python -m)
ENV = {**os.environ, "PYTHONPATH": str(REPO / "collections")}
SUBNET = "10.77.2.0/24"
MASQ = {"subnet": SUBNET, "out_interface": "eth0"}
VM1 = {"id": 1, "public": "10.77.1.160", "private": "10.77.2.16"}
VM2 = {"id": 2, "public": "10.77.1.161", "private": "10.77.2.17"}
VM3 = {"id": "lab_3", "public": "10.77.1.162", "private": "10.77.2.18"}


def ns_run(ns: str, *argv: str, **kwargs) -> subprocess.CompletedProcess[str]:
    """ARGV inside namespace NS (``ip netns exec NS ARGV``)."""
    kwargs.setdefault("env", ENV)
    return subprocess.run(["ip", "netns", "exec", ns, *argv], text=True, capture_output=True, **kwargs)


def run_module(ns: str, tmp_path: Path, check: bool = False, **args) -> dict:
    """One module run inside NS; its JSON result (``failed`` set when it failed)."""
    args.setdefault("rules_file", str(tmp_path / "rules.v4"))
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {**args, "_ansible_check_mode": check}}))
    proc = ns_run(ns, sys.executable, "-m", MODULE, str(path), timeout=60)
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"module printed no JSON (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    assert bool(result.get("failed")) == (proc.returncode != 0), result
    return result


def nat_rules(ns: str) -> list[str]:
    """The namespace's nat rules as iptables-save prints them (``-A CHAIN ...``)."""
    out = ns_run(ns, "iptables-save", "-t", "nat", check=True).stdout
    return [line for line in out.splitlines() if line.startswith("-A ")]


def nat_chains(ns: str) -> set[str]:
    out = ns_run(ns, "iptables-save", "-t", "nat", check=True).stdout
    return {line[1:].split()[0] for line in out.splitlines() if line.startswith(":")}


def dnat(vm: dict) -> list[str]:
    """The three rules one VM owns: its chain's DNAT and the jumps to it."""
    chain = f"VCL-VM-{vm['id']}"
    return [
        f"-A {chain} -d {vm['public']}/32 -j DNAT --to-destination {vm['private']}",
        f"-A VCL-PREROUTING -j {chain}",
        f"-A VCL-OUTPUT -j {chain}",
    ]


BASE = [
    "-A PREROUTING -j VCL-PREROUTING",
    "-A OUTPUT -j VCL-OUTPUT",
    "-A POSTROUTING -j VCL-POSTROUTING",
    f"-A VCL-POSTROUTING -s {SUBNET} ! -d {SUBNET} -o eth0 -j MASQUERADE",
]


def test_full_set_is_created_once_and_rerun_changes_nothing(netns, tmp_path):
    first = run_module(netns, tmp_path, vms=[VM1, VM2], masquerade=MASQ, exclusive=True)
    assert first["changed"] and first["saved"]
    assert first["chains"] == ["VCL-VM-1", "VCL-VM-2"]
    assert sorted(nat_rules(netns)) == sorted(BASE + dnat(VM1) + dnat(VM2))

    again = run_module(netns, tmp_path, vms=[VM1, VM2], masquerade=MASQ, exclusive=True)
    assert again["changed"] is False and again["commands"] == [] and again["saved"] is False
    assert sorted(nat_rules(netns)) == sorted(BASE + dnat(VM1) + dnat(VM2))


def test_builtin_jumps_come_first(netns, tmp_path):
    ns_run(netns, "iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-j", "ACCEPT", check=True)
    run_module(netns, tmp_path, vms=[VM1])
    assert [r for r in nat_rules(netns) if r.startswith("-A PREROUTING ")] == [
        "-A PREROUTING -j VCL-PREROUTING",
        "-A PREROUTING -p tcp -j ACCEPT",
    ]


def test_check_mode_reports_without_touching(netns, tmp_path):
    result = run_module(netns, tmp_path, check=True, vms=[VM1], masquerade=MASQ)
    assert result["changed"] and result["saved"]
    assert any("-A VCL-VM-1 -d 10.77.1.160/32 -j DNAT" in c for c in result["commands"])
    assert result["chains"] == ["VCL-VM-1"]
    assert nat_rules(netns) == []
    assert not (tmp_path / "rules.v4").exists()

    run_module(netns, tmp_path, vms=[VM1], masquerade=MASQ)
    assert run_module(netns, tmp_path, check=True, vms=[VM1], masquerade=MASQ)["changed"] is False


def test_single_vm_add_and_remove_leave_the_others_alone(netns, tmp_path):
    run_module(netns, tmp_path, vms=[VM1, VM2], masquerade=MASQ, exclusive=True)

    added = run_module(netns, tmp_path, vms=[VM3])
    assert added["changed"] and added["chains"] == ["VCL-VM-1", "VCL-VM-2", "VCL-VM-lab_3"]
    assert sorted(nat_rules(netns)) == sorted(BASE + dnat(VM1) + dnat(VM2) + dnat(VM3))
    assert run_module(netns, tmp_path, vms=[VM3])["changed"] is False

    removed = run_module(netns, tmp_path, vms=[{"id": 2}], state="absent")
    assert removed["changed"] and removed["chains"] == ["VCL-VM-1", "VCL-VM-lab_3"]
    assert sorted(nat_rules(netns)) == sorted(BASE + dnat(VM1) + dnat(VM3))
    assert "VCL-VM-2" not in nat_chains(netns)
    assert run_module(netns, tmp_path, vms=[{"id": 2}], state="absent")["changed"] is False


def test_exclusive_removes_unlisted_chains_jumps_first(netns, tmp_path):
    run_module(netns, tmp_path, vms=[VM1, VM2, VM3], masquerade=MASQ)
    # A jump from elsewhere must not keep the chain alive (iptables refuses -X on a referenced chain).
    ns_run(netns, "iptables", "-t", "nat", "-A", "OUTPUT", "-j", "VCL-VM-1", check=True)

    result = run_module(netns, tmp_path, vms=[VM2], masquerade=MASQ, exclusive=True)
    assert result["changed"] and result["chains"] == ["VCL-VM-2"]
    assert sorted(nat_rules(netns)) == sorted(BASE + dnat(VM2))
    assert {"VCL-VM-1", "VCL-VM-lab_3"}.isdisjoint(nat_chains(netns))
    removal = [c for c in result["commands"] if "VCL-VM-1" in c]
    assert [c.split()[4] for c in removal] == ["-D", "-D", "-D", "-F", "-X"]  # jumps first, then the chain

    everything_gone = run_module(netns, tmp_path, vms=[], exclusive=True)
    assert everything_gone["chains"] == []
    assert sorted(nat_rules(netns)) == sorted(BASE)


def test_drifted_rules_are_repaired_not_duplicated(netns, tmp_path):
    run_module(netns, tmp_path, vms=[VM1], masquerade=MASQ)
    for argv in (
        ["-I", "PREROUTING", "1", "-j", "VCL-PREROUTING"],  # a second jump
        ["-A", "VCL-OUTPUT", "-j", "VCL-VM-1"],  # a second jump to the VM
        ["-A", "VCL-VM-1", "-d", "10.77.1.200/32", "-j", "DNAT", "--to-destination", "10.77.2.99"],  # a stray rule
    ):
        ns_run(netns, "iptables", "-t", "nat", *argv, check=True)
    moved = {**VM1, "private": "10.77.2.40"}  # and the VM's private address changed

    result = run_module(netns, tmp_path, vms=[moved], masquerade={"subnet": "10.77.2.0/24"})
    assert result["changed"]
    masq = f"-A VCL-POSTROUTING -s {SUBNET} ! -d {SUBNET} -j MASQUERADE"
    assert sorted(nat_rules(netns)) == sorted([*BASE[:3], masq, *dnat(moved)])
    assert run_module(netns, tmp_path, vms=[moved], masquerade={"subnet": "10.77.2.0/24"})["changed"] is False


def test_rules_file_restores_the_same_ruleset(netns, tmp_path):
    rules = tmp_path / "rules.v4"
    run_module(netns, tmp_path, vms=[VM1, VM2], masquerade=MASQ)
    assert rules.stat().st_mode & 0o777 == 0o640
    assert [f for f in os.listdir(tmp_path) if f.startswith(".rules.")] == []  # no temporary file left
    saved = rules.read_text()
    assert "*nat" in saved and dnat(VM1)[0] in saved and BASE[3] in saved

    # What netfilter-persistent does at boot: load the file into an empty table.
    before = sorted(nat_rules(netns))
    ns_run(netns, "iptables", "-t", "nat", "-F", check=True)
    ns_run(netns, "iptables", "-t", "nat", "-X", check=True)
    assert nat_rules(netns) == []
    ns_run(netns, "iptables-restore", input=saved, check=True)
    assert sorted(nat_rules(netns)) == before

    inode = rules.stat().st_ino
    assert run_module(netns, tmp_path, vms=[VM1, VM2], masquerade=MASQ)["saved"] is False
    assert rules.stat().st_ino == inode and rules.read_text() == saved

    # An out-of-date file is rewritten even when the nat table needs nothing.
    rules.write_text("*nat\nCOMMIT\n")
    result = run_module(netns, tmp_path, vms=[VM1, VM2], masquerade=MASQ)
    assert result["changed"] and result["saved"] and result["commands"] == []
    assert dnat(VM2)[0] in rules.read_text()


def test_persist_false_writes_nothing(netns, tmp_path):
    run_module(netns, tmp_path, vms=[VM1], persist=False)
    assert dnat(VM1)[0] in nat_rules(netns)
    assert not (tmp_path / "rules.v4").exists()


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"vms": [VM1, {**VM2, "public": "10.77.1.300"}]}, "vms[1].public"),
        ({"vms": [{**VM1, "private": "fe80::1"}]}, "vms[0].private"),
        ({"vms": [{**VM1, "private": "10.77.2.0/24"}]}, "vms[0].private"),
        ({"vms": [{"id": 4, "public": "10.77.1.170"}]}, "vms[0].private"),
        ({"vms": [{**VM1, "id": "1; -F"}]}, "vms[0].id"),
        ({"vms": [{**VM1, "id": "x" * 22}]}, "vms[0].id"),
        ({"vms": [{**VM1, "id": -3}]}, "vms[0].id"),
        ({"vms": [{**VM1, "id": True}]}, "vms[0].id"),
        ({"vms": [VM1, {**VM2, "public": VM1["public"]}]}, "vms[1].public"),
        ({"vms": [VM1, {**VM2, "id": 1}]}, "vms[1].id"),
        ({"vms": [{**VM1, "private": VM1["public"]}]}, "vms[0].private"),
        ({"vms": [VM1], "masquerade": {"subnet": "10.77.2.0/33"}}, "masquerade.subnet"),
        (
            {"vms": [VM1], "masquerade": {"subnet": SUBNET, "out_interface": "eth0 -j ACCEPT"}},
            "masquerade.out_interface",
        ),
        ({"vms": [{"id": 1}], "state": "absent", "exclusive": True}, "exclusive"),
        ({"vms": [{"id": "../x"}], "state": "absent"}, "vms[0].id"),
    ],
)
def test_bad_input_fails_naming_the_field_and_changes_nothing(netns, tmp_path, args, field):
    run_module(netns, tmp_path, vms=[VM2], masquerade=MASQ)
    before = ns_run(netns, "iptables-save", "-t", "nat", check=True).stdout.splitlines()[1:-1]
    saved = (tmp_path / "rules.v4").read_text()

    result = run_module(netns, tmp_path, **args)
    assert result["failed"] and result["msg"].startswith(f"{field}:"), result["msg"]
    assert ns_run(netns, "iptables-save", "-t", "nat", check=True).stdout.splitlines()[1:-1] == before
    assert (tmp_path / "rules.v4").read_text() == saved


def test_address_held_by_another_vm_is_refused(netns, tmp_path):
    run_module(netns, tmp_path, vms=[VM1], masquerade=MASQ)
    before = nat_rules(netns)
    for clash, field in (({"public": VM1["public"]}, "public"), ({"private": VM1["private"]}, "private")):
        result = run_module(netns, tmp_path, vms=[{**VM2, **clash}])
        assert result["failed"] and result["msg"].startswith(f"vms[0].{field}:"), result["msg"]
        assert "VCL-VM-1" in result["msg"]
        assert nat_rules(netns) == before
    # Moving the address is fine when the old holder goes in the same run.
    result = run_module(netns, tmp_path, vms=[{**VM2, "public": VM1["public"]}], exclusive=True)
    assert result["chains"] == ["VCL-VM-2"]


def test_concurrent_launches_do_not_race(netns, tmp_path):
    """Four launches at once, each adding its VM: the lock serialises them, so none fails on a chain
    another created, and every rule exists exactly once."""
    vms = [{"id": n, "public": f"10.77.1.{170 + n}", "private": f"10.77.2.{70 + n}"} for n in range(4)]
    procs = []
    for vm in vms:
        workdir = tmp_path / str(vm["id"])
        workdir.mkdir()
        args = workdir / "args.json"
        module_args = {"vms": [vm], "rules_file": str(tmp_path / "rules.v4")}
        args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": module_args}))
        procs.append(
            subprocess.Popen(
                ["ip", "netns", "exec", netns, sys.executable, "-m", MODULE, str(args)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=ENV,
            )
        )
    results = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(r["changed"] and not r.get("failed") for r in results), results
    assert sorted(nat_rules(netns)) == sorted(BASE[:2] + [rule for vm in vms for rule in dnat(vm)])
    assert all(dnat(vm)[0] in (tmp_path / "rules.v4").read_text() for vm in vms)
