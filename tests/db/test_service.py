"""The service layer against a real database (SQLite and PostgreSQL): writes, refusals, claims."""

from __future__ import annotations

import fcntl
import json
import random
from datetime import datetime

import pytest
from sqlalchemy import func, insert, select

from vcl_sched import db, placement, service
from vcl_sched.errors import CapacityError, ConflictError, NotFoundError, ValidationError
from vcl_sched.models import (
    AddressPair,
    AuditLog,
    Group,
    Instance,
    InstanceKind,
    InstanceState,
    Membership,
    Reservation,
    Slave,
    User,
)

BE = {"owner": "cs", "platform_value": 5, "register_as_slave": 1, "member": 1}
AR = {"owner": "cs", "ram_mb": 600, "platform_value": 5, "register_as_slave": 0, "member": 0}


def count(url, model):
    with db.read(url) as s:
        return s.scalar(select(func.count()).select_from(model))


def snapshot(url):
    """Everything a refused or invalid call must leave as it was."""
    with db.read(url) as s:
        return (tuple(s.execute(select(Slave.name, Slave.cores_used, Slave.generation, Slave.status)).all()),
                s.scalar(select(func.count()).select_from(Reservation)),
                s.scalar(select(func.count()).select_from(Instance)),
                s.scalar(select(func.count()).select_from(AuditLog)),
                s.scalar(select(func.count()).select_from(AddressPair).where(AddressPair.instance_id.is_not(None))))


# --- slaves, groups, images ----------------------------------------------------------------------

def test_slave_add_list_and_status(lab_db):
    names = [s["name"] for s in service.list_slaves(lab_db)]
    assert names == ["s1", "s2"]
    row = service.set_slave_status("s2", "draining", lab_db)
    assert row["status"] == "draining" and row["generation"] == 1
    assert service.list_reservations(lab_db)["cores"] == 8  # draining slaves take no new work


@pytest.mark.parametrize(("args", "field"), [
    (("bad name!", "10.0.0.9", 4, 1024, 10), "name"),
    (("s9", "10.0.0.300", 4, 1024, 10), "address"),
    (("s9", "10.0.0.9", 0, 1024, 10), "cores"),
    (("s9", "10.0.0.9", "four", 1024, 10), "cores"),
    (("s9", "10.0.0.9", 4, -1, 10), "ram_mb"),
    (("s9", "10.0.0.9", 4, 1024, 2.5), "disk_gb"),
])
def test_bad_slave_input_names_the_field_and_writes_nothing(lab_db, args, field):
    before = snapshot(lab_db)
    with pytest.raises(ValidationError) as err:
        service.add_slave(*args, url=lab_db)
    assert err.value.field == field
    assert snapshot(lab_db) == before


def test_duplicate_slave_name_or_address_is_refused(lab_db):
    with pytest.raises(ConflictError, match="name"):
        service.add_slave("s1", "10.77.0.99", 4, 1024, 10, url=lab_db)
    with pytest.raises(ConflictError, match="address"):
        service.add_slave("s9", "10.77.0.21", 4, 1024, 10, url=lab_db)
    with pytest.raises(NotFoundError):
        service.set_slave_status("nope", "up", lab_db)
    with pytest.raises(ValidationError) as err:
        service.set_slave_status("s1", "sleeping", lab_db)
    assert err.value.field == "status"


def test_groups_and_images(lab_db):
    with pytest.raises(ConflictError):
        service.add_group("cs", url=lab_db)
    image = service.add_image("tiny", "/var/lib/vcl/images/tiny.qcow2", kernel="/var/lib/vcl/images/vmlinux",
                              cores=1, ram_mb=128, disk_gb=1, url=lab_db)
    assert image["ram_mb"] == 128
    with pytest.raises(ValidationError) as err:
        service.add_image("rel", "images/tiny.qcow2", url=lab_db)
    assert err.value.field == "disk_file"
    assert [i["name"] for i in service.list_images(lab_db)] == ["tiny"]


# --- advance reservations ----------------------------------------------------------------------

def test_reservation_accepted_and_listed(lab_db):
    r = service.reserve(cores=8, start="2026-11-23 09:00", hours=4, **AR, url=lab_db)
    assert (r["state"], r["start"], r["end"], r["reason"]) == ("accepted", "2026-11-23 09:00", "2026-11-23 13:00", "")
    assert r["priority"] == pytest.approx(10 + 0.2 * (5 - 9.228818690495881 - 5.480638923341991), abs=1e-6)
    listed = service.list_reservations(lab_db)
    assert listed["cores"] == 12 and [x["id"] for x in listed["reservations"]] == [r["id"]]


def test_lower_priority_reservation_is_moved_later_and_counted(lab_db):
    low = service.reserve(cores=8, start="2026-11-23 10:00", hours=2, **AR, url=lab_db)
    high = service.reserve(cores=8, start="2026-11-23 10:00", hours=2, **{**AR, "register_as_slave": 1, "member": 1},
                           url=lab_db)
    assert high["state"] == "accepted" and high["start"] == "2026-11-23 10:00"
    assert [(m["id"], m["to"]) for m in high["moved"]] == [(low["id"], "2026-11-23 12:00")]
    rows = {r["id"]: r for r in service.list_reservations(lab_db)["reservations"]}
    assert rows[low["id"]]["start"] == "2026-11-23 12:00" and rows[low["id"]]["rescheduled"] == 2
    with db.read(lab_db) as s:
        moved = s.scalars(select(AuditLog).where(AuditLog.object_id == low["id"], AuditLog.action == "moved")).all()
    assert len(moved) == 1


def test_a_reservation_names_its_user_who_joins_the_group_once(lab_db):
    for start in ("2026-11-23 09:00", "2026-11-23 13:00"):
        service.reserve(cores=2, start=start, hours=2, **AR, user="bo", url=lab_db)
    with db.read(lab_db) as s:
        user = s.scalar(select(User).where(User.name == "bo"))
        members = s.execute(select(Membership.group_id)).scalars().all()
        booked_by = set(s.scalars(select(Reservation.user_id)))
        created = s.scalars(select(AuditLog.object_id).where(AuditLog.object_type == "user")).all()
        group_id = s.scalar(select(Group.id).where(Group.name == "cs"))
    assert (members, booked_by, created) == ([group_id], {user.id}, [user.id])


def test_refusal_is_recorded_with_its_reason(lab_db):
    for _ in range(2):
        assert service.reserve(cores=12, start="2026-11-23 09:00", hours=4, **AR, url=lab_db)["state"] == "accepted"
    r = service.reserve(cores=12, start="2026-11-23 09:00", hours=4, **AR, url=lab_db)
    assert r["state"] == "refused" and r["reason"] and r["start"] is None
    listed = {x["id"]: x for x in service.list_reservations(lab_db, include_all=True)["reservations"]}
    assert listed[r["id"]]["state"] == "refused" and listed[r["id"]]["reason"] == r["reason"]
    assert r["id"] not in {x["id"] for x in service.list_reservations(lab_db)["reservations"]}


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
def test_bad_reservation_input_names_the_field_and_writes_nothing(lab_db, change, field):
    before = snapshot(lab_db)
    args = {**AR, "cores": 2, "start": "2026-11-23 09:00", "hours": 2, **change}
    with pytest.raises(ValidationError) as err:
        service.reserve(**args, url=lab_db)
    assert err.value.field == field
    assert snapshot(lab_db) == before


def test_dry_run_decides_but_writes_nothing(lab_db):
    before = snapshot(lab_db)
    r = service.reserve(cores=2, start="2026-11-23 09:00", hours=2, **AR, dry_run=True, url=lab_db)
    assert r["state"] == "accepted" and r["id"] is None and r["dry_run"]
    b = service.request(cores=2, ram_mb=512, hours=1, **BE, dry_run=True, url=lab_db)
    assert b["decision"] == "place" and b["id"] is None
    assert snapshot(lab_db) == before


# --- best effort: placement, addresses, look-ahead, release --------------------------------------

def test_request_claims_cores_and_a_unique_address_pair(lab_db):
    a = service.request(cores=2, ram_mb=1024, hours=2, **BE, url=lab_db)
    b = service.request(cores=2, ram_mb=1024, hours=2, **BE, url=lab_db)
    assert a["decision"] == b["decision"] == "place"
    assert (a["private_ip"], a["public_ip"]) == ("10.77.1.16", "10.77.0.160")
    assert (b["private_ip"], b["public_ip"]) == ("10.77.1.17", "10.77.0.161")
    assert a["mac"] != b["mac"] and a["mac"].startswith("52:54:00:")
    slaves = {s["name"]: s for s in service.list_slaves(lab_db)}
    # spread: s1 (0 used) then s2 (0 used, id 2) — fewest used cores, ties to the lowest id
    assert (a["slave"], b["slave"]) == ("s1", "s2")
    assert slaves["s1"]["cores_used"] == 2 and slaves["s1"]["generation"] == 1


def test_release_returns_cores_and_addresses(lab_db):
    a = service.request(cores=4, ram_mb=1024, disk_gb=10, hours=1, **BE, url=lab_db)
    service.release(a["id"], url=lab_db)
    s1 = next(s for s in service.list_slaves(lab_db) if s["name"] == "s1")
    assert (s1["cores_used"], s1["ram_mb_used"], s1["disk_gb_used"]) == (0, 0, 0)
    b = service.request(cores=1, ram_mb=512, hours=1, **BE, url=lab_db)
    assert b["private_ip"] == a["private_ip"]  # the freed pair is the lowest free one again
    with pytest.raises(ConflictError):
        service.release(a["id"], url=lab_db)


def test_address_exhaustion_is_a_clear_error_and_rolls_back_the_claim(lab_db):
    service.configure({"private_pool": "10.77.1.16-10.77.1.17", "public_pool": "10.77.0.160-10.77.0.161"}, lab_db)
    for _ in range(2):
        service.request(cores=1, ram_mb=256, hours=1, **BE, url=lab_db)
    before = snapshot(lab_db)
    with pytest.raises(CapacityError, match="addresses: all 2"):
        service.request(cores=1, ram_mb=256, hours=1, **BE, url=lab_db)
    assert snapshot(lab_db) == before


def test_pools_cannot_drop_a_held_pair(lab_db):
    service.request(cores=1, ram_mb=256, hours=1, **BE, url=lab_db)
    with pytest.raises(ConflictError, match="held by instance"):
        service.configure({"private_pool": "10.77.1.100-10.77.1.110"}, lab_db)
    with pytest.raises(ValidationError) as err:
        service.configure({"public_pool": "10.77.1.16-10.77.1.20"}, lab_db)
    assert err.value.field == "public_pool"


def test_best_effort_is_capped_by_the_look_ahead(lab_db, monkeypatch):
    monkeypatch.setenv("VCL_NOW", "2026-11-23 07:00")
    service.reserve(cores=12, start="2026-11-24 09:00", hours=4, **AR, url=lab_db)  # tomorrow: no effect today
    monkeypatch.setenv("VCL_NOW", "2026-11-22 10:00")
    monkeypatch.setenv("VCL_NOW", "2026-11-24 06:00")
    r = service.request(cores=2, ram_mb=512, hours=5, **BE, url=lab_db)
    assert r["hours_granted"] == 3 and "granted 3 of 5 hours" in r["reason"]
    monkeypatch.setenv("VCL_NOW", "2026-11-24 09:30")
    w = service.request(cores=2, ram_mb=512, hours=1, **BE, url=lab_db)
    assert w["decision"] == "wait" and w["state"] == "waiting"


def test_without_bookings_the_look_ahead_grants_every_hour_up_to_the_pool(lab_db):
    full = service.request(cores=8, ram_mb=256, hours=5, **BE, url=lab_db)
    assert (full["decision"], full["hours_granted"], full["reason"]) == ("place", 5, "")
    too_big = service.request(cores=13, ram_mb=256, hours=1, **BE, url=lab_db)  # the pool has 12 cores
    assert (too_big["decision"], too_big["hours_granted"]) == ("wait", 0)
    assert too_big["reason"] == "13 cores are not free of reservations for even 1 hour from 2026-11-22 10:00"


def test_a_request_that_does_not_fit_gets_the_preemption_plan(lab_db):
    low = service.request(cores=8, ram_mb=1024, hours=2, owner="cs", platform_value=1, register_as_slave=0, member=0,
                          url=lab_db)
    service.request(cores=4, ram_mb=1024, hours=2, owner="cs", platform_value=1, register_as_slave=0, member=0,
                    url=lab_db)
    high = service.request(cores=8, ram_mb=1024, hours=2, **BE, url=lab_db)
    assert high["decision"] == "suspend" and high["suspend"] == [low["id"]] and high["slave"] == "s1"
    service.set_suspended(low["id"], True, lab_db)
    again = service.request(cores=8, ram_mb=1024, hours=2, **BE, url=lab_db)
    assert again["decision"] == "place" and again["slave"] == "s1"
    with pytest.raises(CapacityError):
        service.set_suspended(low["id"], False, lab_db)  # no room to resume yet


def test_equal_priority_request_waits(lab_db):
    for _ in range(2):
        service.request(cores=6 if _ == 0 else 4, ram_mb=1024, hours=2, **BE, url=lab_db)
    w = service.request(cores=4, ram_mb=1024, hours=2, **BE, url=lab_db)
    assert w["decision"] == "wait" and "equal priorities never preempt" in w["reason"]


def test_decline_limit(lab_db):
    args = {**BE, "register_as_slave": 0, "user": "ana"}
    for _ in range(2):
        assert service.request(cores=1, ram_mb=256, hours=1, **args, url=lab_db)["decision"] == "place"
    refused = service.request(cores=1, ram_mb=256, hours=1, **args, url=lab_db)
    assert refused["decision"] == "refused" and "declined to register as a slave 2 times" in refused["reason"]
    ok = service.request(cores=1, ram_mb=256, hours=1, **{**args, "register_as_slave": 1}, url=lab_db)
    assert ok["decision"] == "place"


@pytest.mark.parametrize("policy", ["spread", "pack"])
def test_database_placement_equals_the_reference_pipeline(db_url, policy):
    service.configure({"placement_policy": policy}, db_url)
    rng = random.Random(7)
    for i in range(40):
        cores = rng.randint(1, 16)
        service.add_slave(f"h{i}", f"10.78.0.{i + 1}", cores, rng.choice([4096, 8192, 16384]), rng.randint(10, 200),
                          status=rng.choice(["up", "up", "up", "down"]), url=db_url)
    for _ in range(60):
        demand = placement.Demand(rng.randint(1, 8), rng.randint(256, 8192), rng.randint(0, 50))

        def decide(session, demand=demand):
            got = service.choose_slave(session, demand, policy)
            want = placement.place(service.slave_states(session), demand, policy)
            assert (got.slave.id if got.slave else None) == (want.slave.id if want.slave else None)
            assert got.survivors == want.survivors[:len(got.survivors)]
            if got.slave is not None:
                service.claim_slave(session, got.slave, demand)

        db.write(decide, db_url)


# --- the claim transaction (commit_claim) and the direct statements it runs ----------------------

def _plan(url, slave_name, demand, **kw):
    with db.read(url) as s:
        slave = next(x for x in service.slave_states(s) if x.name == slave_name)
        group_id = s.scalar(select(Group.id).where(Group.name == "cs"))
    return service.new_claim_plan(slave, demand, group_id=group_id, priority=8.5, ends=datetime(2026, 11, 22, 12),
                                  **kw)


def test_commit_claim_writes_the_slave_instance_pair_and_audit_row_together(lab_db):
    got = service.commit_claim(_plan(lab_db, "s2", placement.Demand(3, 2048, 7)), lab_db)
    assert (got["decision"], got["slave"], got["private_ip"], got["public_ip"]) == ("place", "s2", "10.77.1.16",
                                                                                    "10.77.0.160")
    with db.read(lab_db) as s:  # rows written on the DBAPI cursor read back through the ORM like any others
        inst = s.get(Instance, got["id"])
        slave = s.scalar(select(Slave).where(Slave.name == "s2"))
        pair = s.scalar(select(AddressPair).where(AddressPair.instance_id == got["id"]))
        log = s.scalars(select(AuditLog).where(AuditLog.object_type == "instance",
                                               AuditLog.object_id == got["id"])).all()
    assert (inst.state, inst.kind, inst.slave_id, inst.cores, inst.ram_mb, inst.disk_gb) == (
        InstanceState.PENDING, InstanceKind.BE, slave.id, 3, 2048, 7)
    assert (inst.ends_at, inst.created_at, inst.register_as_slave, inst.user_id) == (
        datetime(2026, 11, 22, 12), datetime(2026, 11, 22, 10), 0, None)
    assert (inst.mac, inst.private_ip, inst.public_ip) == (pair.mac, pair.private_ip, pair.public_ip) == (
        got["mac"], "10.77.1.16", "10.77.0.160")
    assert (slave.cores_used, slave.ram_mb_used, slave.disk_gb_used, slave.generation) == (3, 2048, 7, 1)
    assert slave.updated_at == datetime(2026, 11, 22, 10)
    assert [(a.action, a.actor, a.at) for a in log] == [("claim", "pytest", datetime(2026, 11, 22, 10))]
    assert json.loads(log[0].after) == {"slave": "s2", "cores": 3, "ram_mb": 2048, "disk_gb": 7, "mac": got["mac"],
                                        "private_ip": "10.77.1.16", "public_ip": "10.77.0.160",
                                        "ends_at": "2026-11-22 12:00"}


def test_a_stale_claim_is_refused_and_writes_nothing(lab_db):
    stale = _plan(lab_db, "s1", placement.Demand(1, 256, 1))
    service.commit_claim(_plan(lab_db, "s1", placement.Demand(1, 256, 1)), lab_db)  # s1 moves to generation 1
    before = snapshot(lab_db)
    with pytest.raises(service.StaleClaim):
        service.commit_claim(stale, lab_db)
    assert snapshot(lab_db) == before


def test_a_claim_that_finds_no_free_pair_rolls_back_its_slave_and_instance(lab_db):
    service.configure({"private_pool": "10.77.1.16-10.77.1.16", "public_pool": "10.77.0.160-10.77.0.160"}, lab_db)
    service.commit_claim(_plan(lab_db, "s1", placement.Demand(1, 256, 1)), lab_db)
    before = snapshot(lab_db)
    with pytest.raises(CapacityError, match="addresses: all 1"):
        service.commit_claim(_plan(lab_db, "s2", placement.Demand(1, 256, 1)), lab_db)
    assert snapshot(lab_db) == before


def test_a_mac_drawn_twice_hits_the_constraint_and_the_claim_runs_again(lab_db, monkeypatch):
    first = service.commit_claim(_plan(lab_db, "s1", placement.Demand(1, 256, 1)), lab_db)
    draws = iter([first["mac"], "52:54:00:aa:bb:cc"])
    monkeypatch.setattr(service, "new_mac", lambda prefix: next(draws))
    again = service.commit_claim(_plan(lab_db, "s2", placement.Demand(1, 256, 1)), lab_db)
    assert again["mac"] == "52:54:00:aa:bb:cc" and next(draws, None) is None  # the first attempt rolled back
    with db.read(lab_db) as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 2
        assert s.scalar(select(func.count()).select_from(AuditLog).where(AuditLog.action == "claim")) == 2


def test_a_waiting_request_is_queued_with_its_audit_row(lab_db):
    service.request(cores=8, ram_mb=1024, hours=2, **BE, url=lab_db)
    service.request(cores=4, ram_mb=1024, hours=2, **BE, url=lab_db)
    w = service.request(cores=4, ram_mb=1024, hours=2, user="ana", **BE, url=lab_db)
    assert w["decision"] == "wait" and w["id"] is not None
    with db.read(lab_db) as s:
        inst = s.get(Instance, w["id"])
        user = s.scalar(select(User).where(User.name == "ana"))
        log = s.execute(select(AuditLog.object_type, AuditLog.object_id, AuditLog.action)
                        .where(AuditLog.action.in_(["queued", "create"]), AuditLog.object_type != "settings")
                        .order_by(AuditLog.id)).all()
    assert (inst.state, inst.slave_id, inst.mac, inst.user_id, inst.ends_at) == (InstanceState.PENDING, None, None,
                                                                                   user.id, None)
    assert user.registered_slave == 1
    assert log[-2:] == [("user", user.id, "create"), ("instance", w["id"], "queued")]


def test_a_direct_snapshot_does_not_see_later_commits(db_url):
    service.add_group("cs", url=db_url)
    service.add_slave("s1", "10.77.0.21", 8, 16384, 100, url=db_url)
    with db.read_direct(db_url) as q:
        assert [s.cores_used for s in service.slave_states(q)] == [0]
        service.set_slave_status("s1", "down", db_url)  # another transaction commits meanwhile
        assert [(s.status, s.generation) for s in service.slave_states(q)] == [("up", 0)]
        assert service._capacity(q) == 8
    with db.read_direct(db_url) as q:
        assert [(s.status, s.generation) for s in service.slave_states(q)] == [("down", 1)]


def test_prepared_statements_refuse_what_they_cannot_bind(db_url):
    dialect = db.engine(db_url).dialect
    with pytest.raises(ValueError, match="register_as_slave"):  # a Python-side default only SQLAlchemy fills in
        db.Prepared(insert(Instance), ["cores"]).bind(dialect, {"cores": 1})
    with pytest.raises(ValueError, match="one bindparam"):
        db.Prepared(select(Slave.id).where(Slave.name.in_(["a", "b"]))).bind(dialect, {})


@pytest.mark.parametrize("policy", ["spread", "pack"])
def test_direct_and_session_reads_agree(lab_db, policy):
    service.configure({"placement_policy": policy}, lab_db)
    service.request(cores=3, ram_mb=1024, hours=2, **BE, url=lab_db)
    service.reserve(cores=2, start="2026-11-23 09:00", hours=2, **AR, url=lab_db)
    demand = placement.Demand(2, 512, 1)
    day, end = datetime(2026, 11, 23), datetime(2026, 11, 24)
    with db.read(lab_db) as s:
        want = (db.load_settings(s), service.slave_states(s), service.filter_counts(s, demand),
                service.choose_slave(s, demand, policy), service._bookings_between(s, day, end, day),
                service._running_be(s), service._capacity(s))
    with db.read_direct(lab_db) as q:
        got = (db.load_settings(q), service.slave_states(q), service.filter_counts(q, demand),
               service.choose_slave(q, demand, policy), service._bookings_between(q, day, end, day),
               service._running_be(q), service._capacity(q))
    assert got == want
    assert want[4] and want[5]  # the comparison covered a booking and a running VM


def test_sqlite_writers_checkpoint_the_wal_after_leaving_the_writer_queue(tmp_path, monkeypatch):
    monkeypatch.setattr(db, "WAL_CHECKPOINT_BYTES", 64 * 1024)
    monkeypatch.setenv("VCL_NOW", "2026-11-22 10:00")
    url = f"sqlite:///{tmp_path}/wal.sqlite"
    service.init(url)
    service.configure({"private_pool": "10.77.1.16-10.77.1.250", "public_pool": "10.77.0.16-10.77.0.250"}, url)
    service.add_group("cs", url=url)
    service.add_slave("s1", "10.77.0.1", 512, 1 << 20, 10000, url=url)
    checkpoints = []
    real = db._checkpoint_if_due

    def outside_the_queue(eng, path):
        with open(f"{path}.lock", "a+b") as handle:  # fails at once if this process still held the queue
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)
        checkpoints.append(path)
        real(eng, path)

    monkeypatch.setattr(db, "_checkpoint_if_due", outside_the_queue)
    for _ in range(150):
        service.request(cores=1, ram_mb=16, hours=1, **BE, explain=False, url=url)
    with db.engine(url).connect() as conn:  # SQLite would checkpoint inside COMMIT, in the queue
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    assert len(checkpoints) == 150  # every claim looked at the WAL once it had left the queue
    # Unchecked, 150 claims leave megabytes of WAL; checkpointed, it stays near the limit.
    assert (tmp_path / "wal.sqlite-wal").stat().st_size < 4 * 64 * 1024
