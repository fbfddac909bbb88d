"""The hostile-input matrix through Ansible (issue 12 item 1; the cases: tests/hostile_cases.py).

* The collection's database actions (vcl_reserve, vcl_instance, vcl_slave, vcl_image, vcl_disk, vcl_db) in one
  ansible-playbook run on localhost against a temporary SQLite VCL_DB_URL: every hostile value arrives as data
  (marked unsafe, as `vcl run` passes it), each task ignores errors and registers its result; a test-only action
  hashes a full dump of the database between every two cases. Each case: failed, one line naming the field, no
  traceback, no MARKER, the database unchanged (free text: kept verbatim as data).
* `vcl reserve --run`, `vcl run`, `vcl disk delete`, `vcl disk capture`, `vcl lend enrol` and `vcl lend reclaim` as
  real processes (ansible-runner): nothing runs, nothing is written.
"""

from __future__ import annotations

import hostile_cases as hc
import pytest


@pytest.fixture(scope="module")
def module_outcomes(tmp_path_factory):
    lab = hc.make_lab(tmp_path_factory.mktemp("hostile-mod") / "lab", instances=14)
    return hc.run_modules(lab, hc.module_cases())


def test_every_action_refuses_every_hostile_value_naming_the_field(module_outcomes):
    assert len(module_outcomes) == len(hc.module_cases())
    assert {o.entry for o in module_outcomes} == {e.module for e in hc.module_entries()}
    bad = hc.failures(module_outcomes)
    assert not bad, "\n".join(bad)


@pytest.fixture(scope="module")
def process_outcomes(tmp_path_factory):
    lab = hc.make_lab(tmp_path_factory.mktemp("hostile-run") / "lab")
    return hc.run_cli(lab, hc.cli_cases(lab, process=True), workers=3)


def test_reserve_run_and_run_e_run_nothing_and_write_nothing(process_outcomes):
    assert {o.entry for o in process_outcomes} == {"vcl reserve --run", "vcl run -e", "vcl disk delete",
                                                   "vcl disk capture", "vcl lend enrol", "vcl lend reclaim"}
    assert not any(o.marker for o in process_outcomes)
    bad = hc.failures(process_outcomes)
    assert not bad, "\n".join(bad)


def test_the_inventory_plugin_leaves_out_and_reports_every_bad_row(tmp_path):
    lab = hc.make_lab(tmp_path / "lab")
    outcomes = hc.run_inventory(lab)
    assert len(outcomes) == len(hc.inventory_cases())
    bad = hc.failures(outcomes)
    assert not bad, "\n".join(bad)
