"""Many processes submitting at once against one database: never double-booked cores, MACs or IPs."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import Counter
from datetime import datetime

from sqlalchemy import select

from vcl_sched import calendar, db, service
from vcl_sched.models import AddressPair, Instance, InstanceState, Reservation, ReservationState, Slave

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


def _reservations(url: str, worker: int, barrier) -> list[str]:  # runs in a child process
    os.environ.update(VCL_DB_URL=url, VCL_NOW="2026-11-22 10:00", VCL_ACTOR=f"worker{worker}")
    barrier.wait()
    states = []
    for i in range(3):
        result = service.reserve(owner="cs", cores=5, ram_mb=512, start="2026-11-23 09:00", hours=2,
                                 platform_value=worker % 3, register_as_slave=i % 2, member=0, url=url)
        states.append(result["state"])
    return states


def _run(target, url):
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(WORKERS)
        with ctx.Pool(WORKERS) as pool:
            results = pool.starmap(target, [(url, w, barrier) for w in range(WORKERS)])
    return [x for r in results for x in r]


def test_concurrent_best_effort_claims_never_share_cores_or_addresses(db_url):
    service.configure({"private_pool": "10.79.1.10-10.79.1.250", "public_pool": "10.79.0.10-10.79.0.250"}, db_url)
    service.add_group("cs", url=db_url)
    for i in range(3):
        service.add_slave(f"s{i}", f"10.79.0.{i + 1}", 8, 65536, 100, url=db_url)

    decisions = _run(_requests, db_url)

    assert len(decisions) == WORKERS * PER_WORKER
    assert Counter(decisions)["place"] == 24  # exactly the pool's cores; the rest wait
    assert set(decisions) == {"place", "wait"}
    with db.read(db_url) as s:
        placed = s.execute(select(Instance.slave_id, Instance.cores, Instance.mac, Instance.private_ip,
                                  Instance.public_ip).where(Instance.slave_id.is_not(None),
                                                            Instance.state == InstanceState.PENDING)).all()
        used = dict(s.execute(select(Slave.id, Slave.cores_used)).all())
        pairs = s.execute(select(AddressPair.instance_id, AddressPair.mac).where(
            AddressPair.instance_id.is_not(None))).all()
    per_slave = Counter()
    for slave_id, cores, *_ in placed:
        per_slave[slave_id] += cores
    assert dict(per_slave) == used and all(v <= 8 for v in used.values())
    for column in (2, 3, 4):
        values = [row[column] for row in placed]
        assert len(values) == len(set(values)) == 24
    assert len(pairs) == 24 and len({m for _, m in pairs}) == 24


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
