"""Molecule scenarios run against the simulated lab's machines.

The example scenario (tests/lab/molecule_example/molecule/default) uses molecule's `default`
driver with `managed: false`: the `lab` fixture owns the machines, molecule only links the lab's
inventory and runs converge, idempotence and verify of a small role on the master and one slave.
Role scenarios follow the same pattern.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vcl_sched.lab.playbook import parse_recap

pytestmark = pytest.mark.lab

EXAMPLE = Path(__file__).parent / "molecule_example"
SCENARIO = "default"
TARGETS = {"master", "slave1"}  # the scenario's platforms
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def molecule_executable() -> str:
    """molecule next to this Python (the project's venv), else on PATH; fail (not skip) without it."""
    beside = Path(sys.executable).parent / "molecule"
    if beside.exists():
        return str(beside)
    found = shutil.which("molecule")
    if found is None:
        pytest.fail(
            "molecule is not installed: it is pinned in the `dev` extra of pyproject.toml; run "
            "`.venv/bin/pip install -e '.[postgresql,libvirt,dev]'` (scripts/setup.sh does it).",
            pytrace=False,
        )
    return found


def molecule_env(lab, ephemeral: Path) -> dict[str, str]:
    """The environment molecule runs in: this venv's Ansible first on PATH, the lab's inventory,
    a per-test ephemeral directory, no colours; no MOLECULE_* or ANSIBLE_CONFIG from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOLECULE_") and k != "ANSIBLE_CONFIG"}
    env.update(
        {
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
            "VCL_LAB_INVENTORY": str(lab.inventory),
            "MOLECULE_EPHEMERAL_DIRECTORY": str(ephemeral),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default",  # the recap format parse_recap reads
            "NO_COLOR": "1",
            "PY_COLORS": "0",
        }
    )
    return env


def step_output(output: str, step: str) -> str:
    """The part of molecule's output that one step (converge, idempotence, verify) printed."""
    start = output.find(f"[{SCENARIO} > {step}] Executing")
    assert start >= 0, f"molecule never ran the {step} step:\n{output}"
    end = output.find(f"[{SCENARIO} > {step}] Executed", start)
    return output[start : end if end >= 0 else len(output)]


def test_molecule_scenario_converges_idempotently_on_lab_hosts(lab, tmp_path):
    molecule = molecule_executable()
    proc = subprocess.run(
        [molecule, "test", "--scenario-name", SCENARIO],
        cwd=EXAMPLE, env=molecule_env(lab, tmp_path / "molecule"),
        text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=900,
    )  # fmt: skip
    output = _ANSI.sub("", proc.stdout)
    assert proc.returncode == 0, f"`molecule test` exited {proc.returncode}:\n{output}"

    converge = parse_recap(step_output(output, "converge"))
    assert set(converge) == TARGETS, f"converge ran on {sorted(converge)}, not the platforms:\n{output}"
    assert all(c.failed == 0 and c.unreachable == 0 for c in converge.values()), output

    assert re.search(rf"\[{SCENARIO} > idempotence\] Executed: Successful", output), output
    idempotence = parse_recap(step_output(output, "idempotence"))
    assert set(idempotence) == TARGETS, output
    assert all(c.changed == 0 and c.failed == 0 for c in idempotence.values()), f"second converge changed:\n{output}"

    assert re.search(rf"\[{SCENARIO} > verify\] Executed: Successful", output), output
    verify = parse_recap(step_output(output, "verify"))
    assert set(verify) == TARGETS, output
    assert all(c.failed == 0 for c in verify.values()), output

    # Read back over the lab's own ssh: the platforms got the role's motd, the other hosts did not.
    for host in lab.hosts:
        motd = lab.ssh(host, "cat", "/etc/motd")
        assert motd.returncode == 0, f"{host}: {motd.stderr}"
        written = motd.stdout == f"{host}: part of VCL lab {lab.name}, converged by molecule.\n"
        assert written == (host in TARGETS), f"{host}: /etc/motd is {motd.stdout!r}"
