"""Molecule scenarios run against the simulated lab's machines.

The example scenario (tests/lab/molecule_example/molecule/default) uses molecule's `default`
driver with `managed: false`: the `lab` fixture owns the machines, molecule only links the lab's
inventory and runs converge, idempotence and verify of a small role on the master and one slave.
Role scenarios (tests/lab/test_roles.py) follow the same pattern.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vcl_lab import LabError
from vcl_lab.testing import run_molecule

pytestmark = pytest.mark.lab

EXAMPLE = Path(__file__).parent / "molecule_example"
TARGETS = {"master", "slave1"}  # the scenario's platforms


def test_molecule_scenario_converges_idempotently_on_lab_hosts(lab, tmp_path):
    try:
        run = run_molecule(lab, EXAMPLE, tmp_path / "molecule")
    except LabError as err:
        pytest.fail(str(err), pytrace=False)
    assert run.rc == 0, f"`molecule test` exited {run.rc}:\n{run.output}"

    converge = run.step("converge")
    assert set(converge) == TARGETS, f"converge ran on {sorted(converge)}, not the platforms:\n{run.output}"
    assert all(c.failed == 0 and c.unreachable == 0 for c in converge.values()), run.output

    assert run.succeeded("idempotence"), run.output
    idempotence = run.step("idempotence")
    assert set(idempotence) == TARGETS, run.output
    unchanged = all(c.changed == 0 and c.failed == 0 for c in idempotence.values())
    assert unchanged, f"second converge changed:\n{run.output}"

    assert run.succeeded("verify"), run.output
    verify = run.step("verify")
    assert set(verify) == TARGETS, run.output
    assert all(c.failed == 0 for c in verify.values()), run.output

    # Read back over the lab's own ssh: the platforms got the role's motd, the other hosts did not.
    for host in lab.hosts:
        motd = lab.ssh(host, "cat", "/etc/motd")
        assert motd.returncode == 0, f"{host}: {motd.stderr}"
        written = motd.stdout == f"{host}: part of VCL lab {lab.name}, converged by molecule.\n"
        assert written == (host in TARGETS), f"{host}: /etc/motd is {motd.stdout!r}"
