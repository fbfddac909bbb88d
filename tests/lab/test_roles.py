"""Every role's molecule scenario (roles/<role>/molecule/default) against the session lab.

Each scenario converges, converges again (molecule's idempotence step: `changed=0` on every
host) and verifies real state on the machines. The scenarios run in site.yml's order, because
the lab's machines are shared: a later role may rely on what an earlier one set up, as in site.yml.
"""

from __future__ import annotations

import pytest
import yaml

from vcl_lab import LabError
from vcl_lab.testing import REPO, run_molecule

pytestmark = pytest.mark.lab

ORDER = ["network", "ssh", "ntp", "kvm", "dhcpd", "nat", "vcl_master"]


def scenarios() -> list[str]:
    found = {p.parents[2].name for p in (REPO / "roles").glob("*/molecule/default/molecule.yml")}
    return sorted(found, key=lambda r: (ORDER.index(r) if r in ORDER else len(ORDER), r))


def platforms(role: str) -> set[str]:
    data = yaml.safe_load((REPO / "roles" / role / "molecule/default/molecule.yml").read_text())
    return {p["name"] for p in data["platforms"]}


# Roles whose proof is not a converge-twice scenario. The vm role is a VM's life (launch, suspend, resume, stop,
# and the master's part, net): launching is not idempotent by nature, so it is proven end to end by real launches
# on the lab. Each entry: the playbooks that call the role, the test that runs them, a test of the entry point.
PROVEN_ELSEWHERE = {
    "vm": {
        "playbooks": ["launch", "stop", "suspend", "resume"],
        "test": "tests/lab/test_lifecycle.py",
        "entry_point_test": "tests/lab/test_dhcpd_safety.py",
    },
}


def test_every_role_has_a_scenario():
    roles = {p.name for p in (REPO / "roles").iterdir() if (p / "tasks").is_dir()}
    missing = roles - set(scenarios()) - set(PROVEN_ELSEWHERE)
    assert not missing, f"roles without a molecule scenario: {sorted(missing)}"
    for role, proof in PROVEN_ELSEWHERE.items():
        assert role in roles, f"{role}: no such role any more"
        test = (REPO / proof["test"]).read_text()
        for name in proof["playbooks"]:
            assert f"vcl.lab.{role}" in (REPO / "playbooks" / f"{name}.yml").read_text(), f"{name}.yml skips {role}"
            assert f'"{name}"' in test, f"{proof['test']} never runs {name}.yml"
        assert f"vcl.lab.{role}" in (REPO / proof["entry_point_test"]).read_text()


@pytest.mark.parametrize("role", scenarios())
def test_role_converges_idempotently_and_verifies(lab, tmp_path, role):
    try:
        run = run_molecule(lab, REPO / "roles" / role, tmp_path / "molecule")
    except LabError as err:
        pytest.fail(str(err), pytrace=False)
    assert run.rc == 0, f"`molecule test` of {role} exited {run.rc}:\n{run.output}"
    targets = platforms(role)
    converge = run.step("converge")
    assert set(converge) == targets, f"converge ran on {sorted(converge)}, not {sorted(targets)}:\n{run.output}"
    assert all(c.failed == 0 and c.unreachable == 0 for c in converge.values()), run.output
    assert run.succeeded("idempotence"), run.output
    second = run.step("idempotence")
    assert set(second) == targets and all(c.changed == 0 and c.failed == 0 for c in second.values()), (
        f"second converge of {role} changed something:\n{run.output}"
    )
    assert run.succeeded("verify"), run.output
    assert all(c.failed == 0 for c in run.step("verify").values()), run.output
