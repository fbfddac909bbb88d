"""lend.yml and reclaim.yml on the controller alone (issue 15): a PC that does not answer at enrolment counts as a
decline of the request it keeps (the user is warned, the run fails, nothing else changes), and the playbooks refuse
what is not a lent PC before any host is touched. The lab end to end is tests/lab/test_lifecycle_failover.py."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from tests.playbooks.test_reserve_local import small_pool
from vcl_lab.playbook import run_playbook
from vcl_lab.testing import REPO
from vcl_sched import db, lending, lifecycle, people, runner, service
from vcl_sched.models import User

ENV = {"VCL_NOW": "2026-11-22 10:00"}


@pytest.fixture
def pool(tmp_path, monkeypatch):
    """A lab database with ann's served request (register_as_slave=1), and an inventory whose PC `pc` (a client)
    and master are closed loopback ports."""
    monkeypatch.setenv("VCL_NOW", ENV["VCL_NOW"])
    url = small_pool(tmp_path)
    monkeypatch.setenv("VCL_DB_URL", url)
    people.add_user("ann", url=url)
    people.add_members("cs", ["ann"], url=url)
    answer = service.request(owner="cs", cores=1, ram_mb=256, hours=1, register_as_slave=1, user="ann", url=url)
    lifecycle.place(answer["id"], url=url)
    lifecycle.mark_running(answer["id"], url=url)
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(json.dumps({"all": {
        "vars": {"ansible_host": "127.0.0.1", "ansible_port": 1, "ansible_timeout": 3},
        "children": {"vcl_master": {"hosts": {"master": {}}}, "vcl_slaves": {"hosts": {"s1": {}}},
                     "vcl_clients": {"hosts": {"pc": {"lab_address": "10.77.0.40/24"}}}}}}))
    return url, inventory, answer["id"]


def declines(url):
    with db.read(url) as s:
        return s.scalar(select(User.declines).where(User.name == "ann"))


def lend(pool, *pairs):
    url, inventory, _ = pool
    extra = [arg for pair in pairs for arg in ("-e", pair)]
    return run_playbook(inventory, REPO / "playbooks" / "lend.yml", *extra, cwd=REPO,
                        env={"VCL_DB_URL": url, **ENV}, timeout=180)


def test_a_pc_that_does_not_answer_counts_as_a_decline_and_warns_its_owner(pool):
    url, inventory, iid = pool
    recap = lend(pool, "lend_host=pc", "lend_user=ann", f"lend_instance={iid}")
    assert recap.rc != 0
    assert "lend_host: pc did not answer: it is not lent. user ann's PC did not answer when it was to be enrolled:" \
           " 1 of 2 declines" in " ".join(recap.stdout.split()), recap.stdout[-3000:]
    assert lending.list_lent(url) == [] and lending.owed(url) == []
    assert declines(url) == 1
    with_runner = runner.run("lend", {"lend_host": "pc", "lend_user": "ann", "lend_instance": str(iid)},
                             project=REPO, inventory=inventory, progress=lambda _: None, envvars={"VCL_DB_URL": url})
    assert not with_runner.ok and any("already answered (unreachable)" in f.message for f in with_runner.failures)
    assert declines(url) == 1  # counted once


@pytest.mark.parametrize(("pairs", "message"), [
    (["lend_host=s1", "lend_user=ann"], "lend_host: \"s1\" is not a host of group vcl_clients"),
    (["lend_host=nope", "lend_user=ann"], "lend_host: \"nope\" is not a host of group vcl_clients"),
    (["lend_user=ann"], "lend_host: required"),
])
def test_lend_refuses_what_is_not_a_client_pc_before_any_host(pool, pairs, message):
    recap = lend(pool, *pairs)
    assert recap.rc != 0 and message in recap.stdout and "UNREACHABLE" not in recap.stdout, recap.stdout[-2000:]


def test_reclaim_refuses_a_slave_of_the_lab_and_changes_nothing(pool):
    url, inventory, _ = pool
    before = service.list_slaves(url)
    recap = run_playbook(inventory, REPO / "playbooks" / "reclaim.yml", "-e", "lend_host=s1", cwd=REPO,
                         env={"VCL_DB_URL": url, **ENV}, timeout=120)
    assert recap.rc != 0 and "name: s1 is one of the lab's own slaves, not a lent PC" in recap.stdout
    assert service.list_slaves(url) == before
    due = run_playbook(inventory, REPO / "playbooks" / "reclaim.yml", "-e", "reclaim_due=true", cwd=REPO,
                       env={"VCL_DB_URL": url, **ENV}, timeout=120)
    assert due.rc == 0, due.stdout[-2000:]  # nothing is due: nothing to do
