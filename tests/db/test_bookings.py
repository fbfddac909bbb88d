"""Bookings against a real database (SQLite and PostgreSQL): reservations (admission, moves, refusals) and
best-effort requests (placement, look-ahead, preemption plan, decline limit)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from vcl_sched import bookings, catalogue, claims, db, lifecycle
from vcl_sched.errors import CapacityError, ValidationError
from vcl_sched.models import AuditLog, Group, Instance, InstanceState, Membership, Reservation, User

BE = {"owner": "cs", "platform_value": 5, "register_as_slave": 1, "member": 1}
AR = {"owner": "cs", "ram_mb": 600, "platform_value": 5, "register_as_slave": 0, "member": 0}


# --- advance reservations ----------------------------------------------------------------------

def test_reservation_accepted_and_listed(lab_db):
    r = bookings.reserve(cores=8, start="2026-11-23 09:00", hours=4, **AR, url=lab_db)
    assert (r["state"], r["start"], r["end"], r["reason"]) == ("accepted", "2026-11-23 09:00", "2026-11-23 13:00", "")
    assert r["priority"] == pytest.approx(10 + 0.2 * (5 - 9.228818690495881 - 5.480638923341991), abs=1e-6)
    listed = bookings.list_reservations(lab_db)
    assert listed["cores"] == 12 and [x["id"] for x in listed["reservations"]] == [r["id"]]


def test_lower_priority_reservation_is_moved_later_and_counted(lab_db):
    low = bookings.reserve(cores=8, start="2026-11-23 10:00", hours=2, **AR, url=lab_db)
    high = bookings.reserve(cores=8, start="2026-11-23 10:00", hours=2, **{**AR, "register_as_slave": 1, "member": 1},
                            url=lab_db)
    assert high["state"] == "accepted" and high["start"] == "2026-11-23 10:00"
    assert [(m["id"], m["to"]) for m in high["moved"]] == [(low["id"], "2026-11-23 12:00")]
    rows = {r["id"]: r for r in bookings.list_reservations(lab_db)["reservations"]}
    assert rows[low["id"]]["start"] == "2026-11-23 12:00" and rows[low["id"]]["rescheduled"] == 2
    with db.read(lab_db) as s:
        moved = s.scalars(select(AuditLog).where(AuditLog.object_id == low["id"], AuditLog.action == "moved")).all()
    assert len(moved) == 1


def test_a_reservation_names_its_user_who_is_created_once_and_joins_no_group(lab_db):
    # Membership is the groups' business (`vcl group add-member`): naming a user in a booking records who it is
    # for, and creates the user once, but never makes them a member (that would make MON anyone's to claim).
    for start in ("2026-11-23 09:00", "2026-11-23 13:00"):
        bookings.reserve(cores=2, start=start, hours=2, **AR, user="bo", url=lab_db)
    with db.read(lab_db) as s:
        user = s.scalar(select(User).where(User.name == "bo"))
        members = s.execute(select(Membership.group_id)).scalars().all()
        booked_by = set(s.scalars(select(Reservation.user_id)))
        created = s.scalars(select(AuditLog.object_id).where(AuditLog.object_type == "user")).all()
        group_id = s.scalar(select(Group.id).where(Group.name == "cs"))
    assert (members, booked_by, created) == ([], {user.id}, [user.id]) and group_id is not None


def test_refusal_is_recorded_with_its_reason(lab_db):
    for _ in range(2):
        assert bookings.reserve(seats=3, cores=4, start="2026-11-23 09:00", hours=4, **AR,
                                url=lab_db)["state"] == "accepted"
    r = bookings.reserve(seats=3, cores=4, start="2026-11-23 09:00", hours=4, **AR, url=lab_db)
    assert r["state"] == "refused" and r["reason"] and r["start"] is None
    listed = {x["id"]: x for x in bookings.list_reservations(lab_db, include_all=True)["reservations"]}
    assert listed[r["id"]]["state"] == "refused" and listed[r["id"]]["reason"] == r["reason"]
    assert r["id"] not in {x["id"] for x in bookings.list_reservations(lab_db)["reservations"]}


@pytest.mark.parametrize(("change", "field"), [
    ({"start": "2026-11-22 15:00"}, "start"),  # today: bookable from the next day
    ({"start": "2026-11-23 07:00"}, "start"),  # before 09:00
    ({"start": "tomorrow"}, "start"),
    ({"hours": 5}, "hours"),  # at most 4
    ({"hours": 0}, "hours"),
    ({"cores": 0}, "cores"),
    ({"ram_mb": 0}, "ram_mb"),
    ({"platform_value": "high"}, "platform_value"),
    ({"register_as_slave": 2}, "register_as_slave"),
    ({"member": "yes"}, "member"),
    ({"owner": "nobody"}, "owner"),
])
def test_bad_reservation_input_names_the_field_and_writes_nothing(lab_db, change, field, db_state):
    before = db_state(lab_db)
    args = {**AR, "cores": 2, "start": "2026-11-23 09:00", "hours": 2, **change}
    with pytest.raises(ValidationError) as err:
        bookings.reserve(**args, url=lab_db)
    assert err.value.field == field
    assert db_state(lab_db) == before


def test_dry_run_decides_but_writes_nothing(lab_db, db_state):
    before = db_state(lab_db)
    r = bookings.reserve(cores=2, start="2026-11-23 09:00", hours=2, **AR, dry_run=True, url=lab_db)
    assert r["state"] == "accepted" and r["id"] is None and r["dry_run"]
    b = bookings.request(cores=2, ram_mb=512, hours=1, **BE, dry_run=True, url=lab_db)
    assert b["decision"] == "place" and b["id"] is None
    assert db_state(lab_db) == before


# --- best effort: placement, look-ahead, preemption, refusals -------------------------------------

def test_request_claims_cores_and_a_unique_address_pair(lab_db):
    a = bookings.request(cores=2, ram_mb=1024, hours=2, **BE, url=lab_db)
    b = bookings.request(cores=2, ram_mb=1024, hours=2, **BE, url=lab_db)
    assert a["decision"] == b["decision"] == "place"
    assert (a["private_ip"], a["public_ip"]) == ("10.77.1.16", "10.77.0.160")
    assert (b["private_ip"], b["public_ip"]) == ("10.77.1.17", "10.77.0.161")
    assert a["mac"] != b["mac"] and a["mac"].startswith("52:54:00:")
    slaves = {s["name"]: s for s in catalogue.list_slaves(lab_db)}
    # spread: s1 (0 used) then s2 (0 used, id 2) — fewest used cores, ties to the lowest id
    assert (a["slave"], b["slave"]) == ("s1", "s2")
    assert slaves["s1"]["cores_used"] == 2 and slaves["s1"]["generation"] == 1


def test_best_effort_is_capped_by_the_look_ahead(lab_db, monkeypatch):
    monkeypatch.setenv("VCL_NOW", "2026-11-23 07:00")
    bookings.reserve(seats=3, cores=4, start="2026-11-24 09:00", hours=4, **AR, url=lab_db)  # tomorrow: no effect today
    monkeypatch.setenv("VCL_NOW", "2026-11-22 10:00")
    monkeypatch.setenv("VCL_NOW", "2026-11-24 06:00")
    r = bookings.request(cores=2, ram_mb=512, hours=5, **BE, url=lab_db)
    assert r["hours_granted"] == 3 and "granted 3 of 5 hours" in r["reason"]
    monkeypatch.setenv("VCL_NOW", "2026-11-24 09:30")
    w = bookings.request(cores=2, ram_mb=512, hours=1, **BE, url=lab_db)
    assert w["decision"] == "wait" and w["state"] == "waiting"


def test_without_bookings_the_look_ahead_grants_every_hour_up_to_the_pool(lab_db):
    full = bookings.request(cores=8, ram_mb=256, hours=5, **BE, url=lab_db)
    assert (full["decision"], full["hours_granted"], full["reason"]) == ("place", 5, "")
    too_big = bookings.request(cores=9, ram_mb=256, hours=1, **BE, url=lab_db)  # the largest slave has 8 cores
    assert (too_big["decision"], too_big["state"], too_big["id"]) == ("refused", "refused", None)
    assert too_big["reason"] == ("cores: 9 per VM can never fit: the largest slave has 8 cores and 16384 MB;"
                                 " the pool has 12 cores")
    waits = bookings.request(cores=8, ram_mb=256, hours=5, **BE, url=lab_db)  # fits the lab, not now
    assert (waits["decision"], waits["hours_granted"], waits["state"]) == ("wait", 0, "waiting")


def test_a_request_that_does_not_fit_gets_the_preemption_plan(lab_db):
    low = bookings.request(cores=8, ram_mb=1024, hours=2, owner="cs", platform_value=1, register_as_slave=0, member=0,
                           url=lab_db)
    other = bookings.request(cores=4, ram_mb=1024, hours=2, owner="cs", platform_value=1, register_as_slave=0,
                             member=0, url=lab_db)
    for vm in (low, other):  # only VMs that run are suspended: a pending one is its launch's
        lifecycle.mark_running(vm["id"], url=lab_db)
    high = bookings.request(cores=8, ram_mb=1024, hours=2, **BE, url=lab_db)
    assert high["decision"] == "suspend" and high["suspend"] == [low["id"]] and high["slave"] == "s1"
    claims.set_suspended(low["id"], True, lab_db)
    again = bookings.request(cores=8, ram_mb=1024, hours=2, **BE, url=lab_db)
    assert again["decision"] == "place" and again["slave"] == "s1"
    with pytest.raises(CapacityError):
        claims.set_suspended(low["id"], False, lab_db)  # no room to resume yet


def test_equal_priority_request_waits(lab_db):
    for _ in range(2):
        bookings.request(cores=6 if _ == 0 else 4, ram_mb=1024, hours=2, **BE, url=lab_db)
    w = bookings.request(cores=4, ram_mb=1024, hours=2, **BE, url=lab_db)
    assert w["decision"] == "wait" and "equal priorities never preempt" in w["reason"]


def test_a_waiting_request_is_queued_with_its_audit_row(lab_db):
    bookings.request(cores=8, ram_mb=1024, hours=2, **BE, url=lab_db)
    bookings.request(cores=4, ram_mb=1024, hours=2, **BE, url=lab_db)
    w = bookings.request(cores=4, ram_mb=1024, hours=2, user="ana", **BE, url=lab_db)
    assert w["decision"] == "wait" and w["id"] is not None
    with db.read(lab_db) as s:
        inst = s.get(Instance, w["id"])
        user = s.scalar(select(User).where(User.name == "ana"))
        log = s.execute(select(AuditLog.object_type, AuditLog.object_id, AuditLog.action)
                        .where(AuditLog.action.in_(["queued", "create"]), AuditLog.object_type != "settings")
                        .order_by(AuditLog.id)).all()
    assert (inst.state, inst.slave_id, inst.mac, inst.user_id, inst.ends_at) == (InstanceState.PENDING, None, None,
                                                                                   user.id, None)
    assert user.registered_slave == 0  # set when a PC is lent (lending.enrol), not by a request
    assert log[-2:] == [("user", user.id, "create"), ("instance", w["id"], "queued")]

