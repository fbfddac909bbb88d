"""``lifecycle.extend`` (more hours for a running best-effort VM, SPEC §4) on SQLite and PostgreSQL, and the
``vcl extend ID --hours H`` command over it: the VM's new end stays within the look-ahead from now, within its
lent PC's lending, and before its cores on its slave are promised to a class session; a seat, a VM that does
not run, another student's VM are refused naming the field, and nothing changes; the teacher of the group and
admins may extend their students' VMs."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from vcl_sched import acting, audit, cli, db, lending, lifecycle, people, service
from vcl_sched.errors import ForbiddenError, NotFoundError, ValidationError
from vcl_sched.models import Base

NOW = "2026-11-22 10:00"  # the db_url fixture's clock
PASSWORD = "Correct horse 42"


@pytest.fixture
def lab(db_url):
    """One lab slave s1 (4 cores, 8192 MB); teacher tina owns cs101 (ann, bob), teacher tom owns ma201 (eve);
    bookable today. bob has a password (the CLI's --as)."""
    service.configure({"private_pool": "10.78.1.16-10.78.1.75", "public_pool": "10.78.0.160-10.78.0.230",
                       "booking.lead_days": "0"}, db_url)
    service.add_slave("s1", "10.78.0.21", 4, 8192, 100, url=db_url)
    for name, role in (("tina", "teacher"), ("tom", "teacher"), ("ann", "student"), ("eve", "student")):
        people.add_user(name, role=role, url=db_url)
    people.add_user("bob", role="student", password=PASSWORD, url=db_url)
    people.add_group("cs101", owner="tina", url=db_url)
    people.add_group("ma201", owner="tom", url=db_url)
    people.add_members("cs101", ["ann", "bob"], url=db_url)
    people.add_members("ma201", ["eve"], url=db_url)
    return db_url


def as_(name: str, url: str):
    return acting.acting(people.actor_for(name, url))


def dump(url: str) -> str:
    """Every row of every table, as text."""
    with db.read(url) as session:
        return "\n".join(repr(row) for table in Base.metadata.sorted_tables
                         for row in session.execute(select(table)).all())


def vm(url: str, user: str = "ann", owner: str = "cs101", cores: int = 1, hours: int = 2, run: bool = True) -> int:
    """A best-effort VM of ``user``, placed (and running unless ``run`` is False)."""
    with as_(user, url):
        answer = service.request(owner=owner, cores=cores, ram_mb=512, hours=hours, url=url)
    assert answer["decision"] == "place", answer
    lifecycle.place(answer["id"], url=url)
    if run:
        lifecycle.mark_running(answer["id"], 5900 + answer["id"], url=url)
    return answer["id"]


def ends_at(url: str, iid: int) -> str:
    return lifecycle.describe(iid, url)["ends_at"]


def refused(url: str, call, field: str, error: type[Exception] = ValidationError, match: str = "") -> str:
    """``call()`` raises ``error`` naming ``field`` and changes nothing; its message."""
    before = dump(url)
    with pytest.raises(error) as caught:
        call()
    message = str(caught.value)
    assert message.startswith(f"{field}: ") and match in message, message
    assert dump(url) == before
    return message


# --- extending --------------------------------------------------------------------------------------------------

def test_a_running_best_effort_vm_gets_more_hours_and_the_audit_log_says_so(lab):
    iid = vm(lab)
    assert ends_at(lab, iid) == "2026-11-22 12:00"
    with as_("ann", lab):
        out = lifecycle.extend(iid, 2, lab)
    assert out == {"id": iid, "ends_at": "2026-11-22 14:00", "hours_added": 2, "changed": True}
    assert ends_at(lab, iid) == "2026-11-22 14:00"
    entry = audit.audit_log(lab, limit=1)[0]
    assert (entry["actor"], entry["object"], entry["action"]) == ("ann", f"instance/{iid}", "extend")
    assert json.loads(entry["before"]) == {"ends_at": "2026-11-22 12:00"}
    assert json.loads(entry["after"]) == {"ends_at": "2026-11-22 14:00"}
    with as_("ann", lab):
        assert lifecycle.extend(iid, "1", lab)["ends_at"] == "2026-11-22 15:00"  # text, as a form sends it
    assert lifecycle.describe(iid, lab)["state"] == "running"


def test_hours_are_bounded_by_the_look_ahead_from_now(lab):
    iid = vm(lab)  # ends 12:00; the look-ahead (5 hours) ends 15:00
    for hours in (0, -1, 6, "1.5", "x", "", None, True, "1e3", "nan", 2**64):
        refused(lab, lambda h=hours: lifecycle.extend(iid, h, lab), "hours")
    message = refused(lab, lambda: lifecycle.extend(iid, 4, lab), "hours", match="at most 3 more hour(s)")
    assert "5 hours ahead of now" in message
    assert lifecycle.extend(iid, 3, lab)["ends_at"] == "2026-11-22 15:00"
    refused(lab, lambda: lifecycle.extend(iid, 1, lab), "hours", match="at most 0 more hour(s)")


def test_bad_ids_are_refused_naming_the_id(lab):
    for bad in ("abc", 0, -1, "1'", 2**64, None):
        refused(lab, lambda b=bad: lifecycle.extend(b, 1, lab), "id")
    refused(lab, lambda: lifecycle.extend(99999, 1, lab), "id", NotFoundError)


def test_a_seat_of_a_class_session_is_not_extended(lab, monkeypatch):
    res = service.reserve(owner="cs101", cores=1, ram_mb=512, seats=1, start="2026-11-22 11:00", hours=2, url=lab)
    assert res["state"] == "accepted"
    monkeypatch.setenv("VCL_NOW", "2026-11-22 11:00")
    seat = lifecycle.start_due_reservations(url=lab)[0]["id"]
    lifecycle.place(seat, url=lab)
    lifecycle.mark_running(seat, 5950, url=lab)
    refused(lab, lambda: lifecycle.extend(seat, 1, lab), "id", match="a seat of a class session")


def test_only_a_running_vm_is_extended(lab):
    pending = vm(lab, run=False)
    refused(lab, lambda: lifecycle.extend(pending, 1, lab), "id", match="is pending")
    suspended = vm(lab)
    lifecycle.suspended(suspended, True, lab)
    refused(lab, lambda: lifecycle.extend(suspended, 1, lab), "id", match="is suspended")
    stopped = vm(lab)
    lifecycle.stop(stopped, url=lab)
    refused(lab, lambda: lifecycle.extend(stopped, 1, lab), "id", match="is stopped")


def test_hours_that_reach_a_sessions_seats_on_its_slave_are_refused(lab):
    iid = vm(lab, cores=2)  # s1: 2 of 4 cores until 12:00
    booked = service.reserve(owner="cs101", cores=1, ram_mb=512, seats=4, start="2026-11-22 13:00", hours=2,
                             url=lab)  # every core of s1 from 13:00
    assert booked["state"] == "accepted"
    message = refused(lab, lambda: lifecycle.extend(iid, 2, lab), "hours", match="at most 1 more hour(s)")
    assert "s1" in message and "2026-11-22 13:00" in message
    assert lifecycle.extend(iid, 1, lab)["ends_at"] == "2026-11-22 13:00"  # up to the session's start
    refused(lab, lambda: lifecycle.extend(iid, 1, lab), "hours", match="at most 0 more hour(s)")


def test_hours_beyond_a_lent_pcs_lending_are_refused(lab):
    lending.enrol(user="ann", name="ann-pc", address="10.78.0.40", cores=4, ram_mb=4096, disk_gb=50, hours=3,
                  url=lab)  # lent until 13:00
    vm(lab, user="bob", cores=4)  # s1 is full: the next VM goes to the lent PC
    iid = vm(lab)
    assert lifecycle.describe(iid, lab)["slave"] == "ann-pc" and ends_at(lab, iid) == "2026-11-22 12:00"
    message = refused(lab, lambda: lifecycle.extend(iid, 2, lab), "hours", match="at most 1 more hour(s)")
    assert "lent until 2026-11-22 13:00" in message
    assert lifecycle.extend(iid, 1, lab)["ends_at"] == "2026-11-22 13:00"


def test_who_may_extend_the_owner_the_groups_teacher_and_admins(lab):
    iid = vm(lab)
    for name in ("bob", "eve", "tom"):  # a classmate, another group's student, another group's teacher
        with as_(name, lab):
            refused(lab, lambda: lifecycle.extend(iid, 1, lab), "id", ForbiddenError, match=f"not a VM of {name}")
    with as_("tina", lab):
        assert lifecycle.extend(iid, 1, lab)["ends_at"] == "2026-11-22 13:00"
    assert audit.audit_log(lab, limit=1)[0]["actor"] == "tina"
    assert lifecycle.extend(iid, 1, lab)["ends_at"] == "2026-11-22 14:00"  # the controller's admin


# --- vcl extend -------------------------------------------------------------------------------------------------

@pytest.fixture
def vcl(lab, capsys, monkeypatch):
    monkeypatch.delenv("VCL_PASSWORD", raising=False)

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_vcl_extend_prints_the_new_end(lab, vcl):
    iid = vm(lab)
    assert vcl("extend", str(iid), "--hours", "1") == (
        0, f"instance {iid} now ends at 2026-11-22 13:00 (1 more hour(s))\n", "")
    code, out, err = vcl("extend", str(iid), "--hours", "2", "--json")
    assert code == 0 and err == ""
    assert json.loads(out) == {"id": iid, "ends_at": "2026-11-22 15:00", "hours_added": 2, "changed": True}


@pytest.mark.parametrize(("argv", "prefix"), [
    (["extend", "ID", "--hours", "0"], "vcl: hours: "),
    (["extend", "ID", "--hours", "two"], "vcl: hours: "),
    (["extend", "ID", "--hours", "4"], "vcl: hours: at most 3 more hour(s)"),
    (["extend", "ID", "--hours", "{{ 7*7 }}"], "vcl: hours: "),
    (["extend", "abc", "--hours", "1"], "vcl: id: "),
    (["extend", "99999", "--hours", "1"], "vcl: id: no instance 99999"),
    (["extend", "SUSPENDED", "--hours", "1"], "vcl: id: "),
])
def test_vcl_extend_errors_are_one_line_naming_the_field(lab, vcl, argv, prefix):
    iid = vm(lab)
    suspended = vm(lab)
    lifecycle.suspended(suspended, True, lab)
    argv = [{"ID": str(iid), "SUSPENDED": str(suspended)}.get(a, a) for a in argv]
    before = dump(lab)
    code, out, err = vcl(*argv)
    assert code == 1 and out == "" and err.startswith(prefix), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert dump(lab) == before


def test_vcl_extend_without_hours_is_a_usage_error(lab, vcl):
    iid = vm(lab)
    with pytest.raises(SystemExit) as leaving:
        vcl("extend", str(iid))
    assert leaving.value.code == 2


def test_vcl_extend_as_a_student_is_refused_for_a_classmates_vm(lab, vcl, monkeypatch):
    iid = vm(lab)
    before = dump(lab)
    monkeypatch.setenv("VCL_PASSWORD", PASSWORD)
    code, _, err = vcl("extend", str(iid), "--hours", "1", "--as", "bob")
    assert code == 1 and err == "vcl: id: not a VM of bob\n"
    assert dump(lab) == before
