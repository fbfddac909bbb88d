"""The audit log against a real database (SQLite and PostgreSQL): written in the change's own transaction
(an ORM Session or a direct DBAPI one), and read back newest first."""

from __future__ import annotations

import json

import pytest

from vcl_sched import audit, catalogue, db


def test_the_audit_log_reads_back_newest_first(lab_db, monkeypatch):
    s2 = next(s for s in catalogue.list_slaves(lab_db) if s["name"] == "s2")
    monkeypatch.setenv("VCL_ACTOR", "ana")
    catalogue.set_slave_status("s2", "draining", lab_db)
    newest, before = audit.audit_log(lab_db, limit=2)
    assert newest == {"id": before["id"] + 1, "at": "2026-11-22 10:00", "actor": "ana", "object": f"slave/{s2['id']}",
                      "action": "status", "before": '{"status": "up"}', "after": '{"status": "draining"}'}
    assert (before["object"], before["action"], before["actor"], before["before"]) == (
        f"slave/{s2['id']}", "create", "pytest", None)
    assert json.loads(before["after"])["address"] == "10.77.0.22"
    assert [r["id"] for r in audit.audit_log(lab_db, limit=1)] == [newest["id"]]


@pytest.mark.parametrize("write", [db.write, db.write_direct])
def test_an_audit_row_goes_with_its_transaction(db_url, write):
    def change(q, keep):
        audit.audit(q, "slave", 7, "probe", {"status": "up"}, {"status": "down"})
        if not keep:
            raise db.DryRun(None)  # rolled back: its audit row with it

    write(lambda q: change(q, keep=False), db_url)
    assert audit.audit_log(db_url) == []  # `vcl db init` writes no audit row, and the probe was rolled back
    write(lambda q: change(q, keep=True), db_url)
    assert [(r["object"], r["action"], r["after"]) for r in audit.audit_log(db_url, limit=1)] == [
        ("slave/7", "probe", '{"status": "down"}')]
