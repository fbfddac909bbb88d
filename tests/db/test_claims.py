"""Claims against a real database (SQLite and PostgreSQL): the compare-and-swap on slaves, address pairs and
MACs, the claim transaction (commit_claim) and the direct statements it runs, release."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from sqlalchemy import func, select

from vcl_sched import bookings, catalogue, claims, db, lifecycle, placement
from vcl_sched.errors import CapacityError, ConflictError
from vcl_sched.models import AddressPair, AuditLog, Group, Instance, InstanceKind, InstanceState, Slave

BE = {"owner": "cs", "platform_value": 5, "register_as_slave": 1, "member": 1}
AR = {"owner": "cs", "ram_mb": 600, "platform_value": 5, "register_as_slave": 0, "member": 0}


# --- release and addresses -------------------------------------------------------------------------

def test_release_returns_cores_and_addresses(lab_db):
    a = bookings.request(cores=4, ram_mb=1024, disk_gb=10, hours=1, **BE, url=lab_db)
    claims.release(a["id"], url=lab_db)
    s1 = next(s for s in catalogue.list_slaves(lab_db) if s["name"] == "s1")
    assert (s1["cores_used"], s1["ram_mb_used"], s1["disk_gb_used"]) == (0, 0, 0)
    b = bookings.request(cores=1, ram_mb=512, hours=1, **BE, url=lab_db)
    # Its launch may have put entries on the master: the pair stays out of use until they are known gone.
    assert b["private_ip"] != a["private_ip"] and b["mac"] != a["mac"]
    with pytest.raises(ConflictError):
        claims.release(a["id"], url=lab_db)
    assert lifecycle.net_gone(a["id"], lab_db)["pairs_freed"] == 1
    c = bookings.request(cores=1, ram_mb=512, hours=1, **BE, url=lab_db)
    assert c["private_ip"] == a["private_ip"]  # the freed pair is the lowest free one again


def test_release_of_a_live_vm_is_refused_with_the_command_to_use(lab_db):
    a = bookings.request(cores=1, ram_mb=512, hours=1, **BE, url=lab_db)
    lifecycle.mark_running(a["id"], url=lab_db)
    with pytest.raises(ConflictError, match=rf"is running: stop it with `vcl stop {a['id']}`"):
        claims.release(a["id"], url=lab_db)
    assert lifecycle.describe(a["id"], lab_db)["state"] == "running"


def test_address_exhaustion_is_a_clear_error_and_rolls_back_the_claim(lab_db, db_state):
    catalogue.configure({"private_pool": "10.77.1.16-10.77.1.17", "public_pool": "10.77.0.160-10.77.0.161"}, lab_db)
    for _ in range(2):
        bookings.request(cores=1, ram_mb=256, hours=1, **BE, url=lab_db)
    before = db_state(lab_db)
    with pytest.raises(CapacityError, match="addresses: all 2"):
        bookings.request(cores=1, ram_mb=256, hours=1, **BE, url=lab_db)
    assert db_state(lab_db) == before


# --- the claim transaction (commit_claim) and the direct statements it runs ----------------------

def _plan(url, slave_name, demand, **kw):
    with db.read(url) as s:
        slave = next(x for x in claims.slave_states(s) if x.name == slave_name)
        group_id = s.scalar(select(Group.id).where(Group.name == "cs"))
    return claims.new_claim_plan(slave, demand, group_id=group_id, priority=8.5, ends=datetime(2026, 11, 22, 12),
                                 **kw)


def test_commit_claim_writes_the_slave_instance_pair_and_audit_row_together(lab_db):
    got = claims.commit_claim(_plan(lab_db, "s2", placement.Demand(3, 2048, 7)), lab_db)
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


def test_a_stale_claim_is_refused_and_writes_nothing(lab_db, db_state):
    stale = _plan(lab_db, "s1", placement.Demand(1, 256, 1))
    claims.commit_claim(_plan(lab_db, "s1", placement.Demand(1, 256, 1)), lab_db)  # s1 moves to generation 1
    before = db_state(lab_db)
    with pytest.raises(claims.StaleClaim):
        claims.commit_claim(stale, lab_db)
    assert db_state(lab_db) == before


def test_a_claim_that_finds_no_free_pair_rolls_back_its_slave_and_instance(lab_db, db_state):
    catalogue.configure({"private_pool": "10.77.1.16-10.77.1.16", "public_pool": "10.77.0.160-10.77.0.160"}, lab_db)
    claims.commit_claim(_plan(lab_db, "s1", placement.Demand(1, 256, 1)), lab_db)
    before = db_state(lab_db)
    with pytest.raises(CapacityError, match="addresses: all 1"):
        claims.commit_claim(_plan(lab_db, "s2", placement.Demand(1, 256, 1)), lab_db)
    assert db_state(lab_db) == before


def test_a_mac_drawn_twice_hits_the_constraint_and_the_claim_runs_again(lab_db, monkeypatch):
    first = claims.commit_claim(_plan(lab_db, "s1", placement.Demand(1, 256, 1)), lab_db)
    draws = iter([first["mac"], "52:54:00:aa:bb:cc"])
    monkeypatch.setattr(claims, "new_mac", lambda prefix: next(draws))
    again = claims.commit_claim(_plan(lab_db, "s2", placement.Demand(1, 256, 1)), lab_db)
    assert again["mac"] == "52:54:00:aa:bb:cc" and next(draws, None) is None  # the first attempt rolled back
    with db.read(lab_db) as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 2
        assert s.scalar(select(func.count()).select_from(AuditLog).where(AuditLog.action == "claim")) == 2


# --- direct (DBAPI) reads ---------------------------------------------------------------------------

def test_a_direct_snapshot_does_not_see_later_commits(db_url):
    catalogue.add_group("cs", url=db_url)
    catalogue.add_slave("s1", "10.77.0.21", 8, 16384, 100, url=db_url)
    with db.read_direct(db_url) as q:
        assert [s.cores_used for s in claims.slave_states(q)] == [0]
        catalogue.set_slave_status("s1", "down", db_url)  # another transaction commits meanwhile
        assert [(s.status, s.generation) for s in claims.slave_states(q)] == [("up", 0)]
        assert claims.up_cores(q) == 8
    with db.read_direct(db_url) as q:
        assert [(s.status, s.generation) for s in claims.slave_states(q)] == [("down", 1)]


@pytest.mark.parametrize("policy", ["spread", "pack"])
def test_direct_and_session_reads_agree(lab_db, policy):
    catalogue.configure({"placement_policy": policy}, lab_db)
    vm = bookings.request(cores=3, ram_mb=1024, hours=2, **BE, url=lab_db)
    lifecycle.mark_running(vm["id"], url=lab_db)
    bookings.reserve(cores=2, start="2026-11-23 09:00", hours=2, **AR, url=lab_db)
    demand = placement.Demand(2, 512, 1)
    day, end = datetime(2026, 11, 23), datetime(2026, 11, 24)
    with db.read(lab_db) as s:
        want = (db.load_settings(s), claims.slave_states(s), claims.filter_counts(s, demand),
                claims.choose_slave(s, demand, policy), bookings.bookings_between(s, day, end, day),
                bookings.running_be(s), claims.up_cores(s))
    with db.read_direct(lab_db) as q:
        got = (db.load_settings(q), claims.slave_states(q), claims.filter_counts(q, demand),
               claims.choose_slave(q, demand, policy), bookings.bookings_between(q, day, end, day),
               bookings.running_be(q), claims.up_cores(q))
    assert got == want
    assert want[4] and want[5]  # the comparison covered a booking and a running VM

