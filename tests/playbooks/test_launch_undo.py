"""A failed launch attempt frees its address pair only when nothing of it can be left on the master: the rescue of
roles/vm/tasks/launch_attempt.yml (its own expressions, read from the file) run by ansible-playbook on localhost
against each outcome of the master's part (not run, run in the foreground or in the background, skipped) and of
its undo (succeeded, failed, master unreachable)."""

from __future__ import annotations

import pytest
import yaml

from tests.playbooks.test_image_paths import lab, play, store  # noqa: F401  (fixtures)
from vcl_lab.testing import REPO

RAN = {"changed": True, "dhcp": {}, "alias": {}, "dnat": {}}
CASES = {  # name: (the master's part as registered, its undo as registered, the pair may be freed)
    "not started, undo failed": ({}, {"failed": True, "msg": "x"}, True),
    "foreground, undo succeeded": (RAN, RAN, True),
    "foreground, undo failed": (RAN, {"failed": True, "msg": "x"}, False),
    "foreground and failed (rolled back), undo succeeded": ({"failed": True, "undone": ["dhcp"]}, RAN, True),
    "foreground, master unreachable at the undo": (RAN, {"unreachable": True, "msg": "x"}, False),
    "background, undo failed": ({"ansible_job_id": "j1", "started": 1}, {"failed": True, "msg": "x"}, False),
    "background, undo succeeded": ({"ansible_job_id": "j1", "started": 1}, RAN, True),
    "skipped": ({"skipped": True, "changed": False}, {"failed": True, "msg": "x"}, True),
}


def _rescue() -> tuple[dict, str]:
    """The rescue's 'Note what failed' task and the net_clean expression of its unplace task."""
    tasks = yaml.safe_load((REPO / "roles" / "vm" / "tasks" / "launch_attempt.yml").read_text())
    rescue = tasks[0]["rescue"]
    (note,) = [t for t in rescue if t["name"] == "Note what failed"]
    (unplace,) = [t for t in rescue if t["name"].startswith("Give the claim back")]
    return note, unplace["vcl.lab.vcl_instance"]["net_clean"]


@pytest.mark.parametrize("case", list(CASES))
def test_the_pair_is_freed_only_when_the_master_is_clean(lab, case):  # noqa: F811
    present, undo, clean = CASES[case]
    note, net_clean = _rescue()
    rc, results = play(lab, [{"name": "Rescue", "hosts": "localhost", "gather_facts": False, "vars": {
        "vm__launch_errors": [], "vm__launch_vm": {"slave": "s1"}, "vm__launch_register_claim": {"changed": True},
        "ansible_failed_result": {"msg": "the domain did not start"}}, "tasks": [
        {"name": "The master's part", "ansible.builtin.set_fact": {"vm__net_result": present}},
        note,
        {"name": "The undo on the master", "ansible.builtin.set_fact": {"vm__net_result": undo}},
        {"name": "Decide", "ansible.builtin.set_fact": {"clean": net_clean}}]}])
    assert rc == 0, results
    (decided,) = [r for r in results if r["task"] == "Decide"]
    assert decided["ansible_facts"]["clean"] is clean, decided
