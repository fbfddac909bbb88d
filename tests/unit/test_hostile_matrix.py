"""The hostile-input matrix, `vcl` commands run in-process (issue 12 item 1; the cases: tests/hostile_cases.py).

Every field of every `vcl` command that takes input gets every class of hostile input that can be typed into it
(Jinja, YAML tags, shell metacharacters, path traversal, huge numbers, reserved names, bad pools): the command
exits 1 with one line naming the field, no traceback, the case's MARKER file is not created, and a full dump of
every table of the SQLite database is the same before and after (free text may instead be kept verbatim as data).
The commands that run a playbook (`vcl reserve --run`, `vcl run`) are in tests/playbooks/test_hostile_matrix_modules.py.
"""

from __future__ import annotations

import hostile_cases as hc
import pytest


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return hc.make_lab(tmp_path_factory.mktemp("hostile") / "lab")


CASES = hc.cli_cases(hc.Lab(*(hc.Path("/nonexistent"),) * 4, counter=iter(())), process=False)  # ids only


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_hostile_value_is_refused_naming_its_field_and_nothing_runs_or_is_written(lab, case):
    entry = next(e for e in hc.cli_entries(lab) if e.title == case.entry.title)
    outcome = hc.run_cli_case(lab, hc.CliCase(entry, case.field, case.cls, case.template), hash(case.id) % 10000)
    assert outcome.ok, (outcome.verdict, outcome.message, outcome.value)


def test_every_class_reaches_every_command(lab):
    """The matrix has no hole: each command gets Jinja, YAML tags and shell text, and each class is used."""
    cases = hc.cli_cases(lab)
    for entry in hc.cli_entries(lab):
        got = {c.cls for c in cases if c.entry.title == entry.title}
        assert {"jinja", "yaml_tag", "shell"} <= got, entry.title
    assert {c.cls for c in cases} == set(hc.CLASSES)
    assert not list(lab.markers.iterdir())
