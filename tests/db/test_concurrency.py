"""Many processes submitting at once against one database: never double-booked cores, MACs or IPs."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import Counter
from datetime import datetime

from sqlalchemy import func, select

from vcl_sched import calendar, db, placement, service
from vcl_sched.models import AddressPair, AuditLog, Group, Instance, InstanceState, Reservation, ReservationState, Slave

WORKERS = 8
PER_WORKER = 6


def _requests(url: str, worker: int, barrier) -> list[str]:  # runs in a child process
    os.environ.update(VCL_DB_URL=url, VCL_NOW="2026-11-22 10:00", VCL_ACTOR=f"worker{worker}")
    barrier.wait()
    decisions = []
    for _ in range(PER_WORKER):
        result = service.request(owner="cs", cores=1, ram_mb=256, hours=1, platform_value=5, register_as_slave=1,
                                 member=1, url=url)
        decisions.append(result["decision"])
    return decisions


def _dispatch(url: str, worker: int, barrier) -> tuple[int, int]:  # runs in a child process
    """A dispatcher's loop: decide in memory on a view read once, commit with commit_claim; a lost
    race re-reads the slave and decides again, until the view has no room left."""
    os.environ.update(VCL_DB_URL=url, VCL_NOW="2026-11-22 10:00", VCL_ACTOR=f"worker{worker}")
    demand = placement.Demand(1, 256, 1)
    with db.read(url) as s:  # every worker reads the same view before the start: all first pick s0
        index = placement.PlacementIndex(service.slave_states(s), "spread")
        group_id = s.scalar(select(Group.id).where(Group.name == "cs"))
    barrier.wait()
    placed = lost = 0
    while placed < PER_WORKER:
        slave = index.place(demand).slave
        if slave is None:
            break
        try:
            service.commit_claim(service.new_claim_plan(slave, demand, group_id=group_id, priority=8.5,
                                                        ends=datetime(2026, 11, 22, 11)), url)
        except service.StaleClaim:
            lost += 1
            with db.read(url) as s:
                index.update(service.slave_state(s, slave.id))
            continue
        index.update(slave.claimed(demand))
        placed += 1
    return placed, lost


def _reservations(url: str, worker: int, barrier) -> list[str]:  # runs in a child process
    os.environ.update(VCL_DB_URL=url, VCL_NOW="2026-11-22 10:00", VCL_ACTOR=f"worker{worker}")
    barrier.wait()
    states = []
    for i in range(3):
        result = service.reserve(owner="cs", cores=5, ram_mb=512, start="2026-11-23 09:00", hours=2,
                                 platform_value=worker % 3, register_as_slave=i % 2, member=0, url=url)
        states.append(result["state"])
    return states


def _run(target, url, flatten=True):
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(WORKERS)
        with ctx.Pool(WORKERS) as pool:
            results = pool.starmap(target, [(url, w, barrier) for w in range(WORKERS)])
    return [x for r in results for x in r] if flatten else results


def _assert_no_double_booking(url, placed_count):
    """Cores per slave are what its instances hold; MACs, private and public IPs are never shared;
    every placed instance holds exactly its own pair and has its claim in the audit log."""
    with db.read(url) as s:
        placed = s.execute(select(Instance.id, Instance.slave_id, Instance.cores, Instance.mac, Instance.private_ip,
                                  Instance.public_ip).where(Instance.slave_id.is_not(None),
                                                            Instance.state == InstanceState.PENDING)).all()
        used = dict(s.execute(select(Slave.id, Slave.cores_used)).all())
        total = dict(s.execute(select(Slave.id, Slave.cores_total)).all())
        pairs = {r[0]: tuple(r[1:]) for r in s.execute(select(
            AddressPair.instance_id, AddressPair.mac, AddressPair.private_ip, AddressPair.public_ip).where(
            AddressPair.instance_id.is_not(None))).all()}
        claims = s.scalar(select(func.count()).select_from(AuditLog).where(AuditLog.action == "claim"))
    assert len(placed) == placed_count == claims
    per_slave = Counter()
    for _, slave_id, cores, *_ in placed:
        per_slave[slave_id] += cores
    assert all(per_slave[i] == used[i] <= total[i] for i in used)
    for column in (3, 4, 5):
        values = [row[column] for row in placed]
        assert len(values) == len(set(values)) == placed_count
    assert pairs == {row[0]: tuple(row[3:]) for row in placed}


def test_concurrent_best_effort_claims_never_share_cores_or_addresses(db_url):
    service.configure({"private_pool": "10.79.1.10-10.79.1.250", "public_pool": "10.79.0.10-10.79.0.250"}, db_url)
    service.add_group("cs", url=db_url)
    for i in range(3):
        service.add_slave(f"s{i}", f"10.79.0.{i + 1}", 8, 65536, 100, url=db_url)

    decisions = _run(_requests, db_url)

    assert len(decisions) == WORKERS * PER_WORKER
    assert Counter(decisions)["place"] == 24  # exactly the pool's cores; the rest wait
    assert set(decisions) == {"place", "wait"}
    _assert_no_double_booking(db_url, 24)


def test_concurrent_dispatchers_with_stale_views_never_share_cores_or_addresses(db_url):
    service.configure({"private_pool": "10.79.1.10-10.79.1.250", "public_pool": "10.79.0.10-10.79.0.250"}, db_url)
    service.add_group("cs", url=db_url)
    for i in range(3):
        service.add_slave(f"s{i}", f"10.79.0.{i + 1}", 8, 65536, 100, url=db_url)

    results = _run(_dispatch, db_url, flatten=False)

    placed, lost = sum(p for p, _ in results), sum(x for _, x in results)
    assert placed == 24  # 48 wanted, 24 cores: every core claimed exactly once
    assert lost >= WORKERS - 1  # all first chose s0 at generation 0: one won, the others lost and retried
    _assert_no_double_booking(db_url, 24)


def test_concurrent_reservations_never_overbook_a_slice(db_url):
    service.add_group("cs", url=db_url)
    for i in range(3):
        service.add_slave(f"s{i}", f"10.79.0.{i + 1}", 8, 65536, 100, url=db_url)

    states = _run(_reservations, db_url)

    assert len(states) == WORKERS * 3 and set(states) <= {"accepted", "refused"}
    with db.read(db_url) as s:
        rows = s.execute(select(Reservation.id, Reservation.cores, Reservation.start, Reservation.end,
                                Reservation.priority).where(Reservation.state == ReservationState.ACCEPTED)).all()
    bookings = [calendar.Booking(r[0], r[1], r[2], r[3], r[4]) for r in rows]
    assert bookings and Counter(states)["accepted"] == len(bookings)
    day = datetime(2026, 11, 23)
    for hour in range(9, 17):
        moment = day.replace(hour=hour)
        assert calendar.peak_cores(bookings, moment, moment.replace(minute=59)) <= 24
