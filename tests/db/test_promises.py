"""Reservations are promises (issue 11, SPEC §3–§4): the calendar, the dispatcher and failures agree.

Each test is one of the failures a new user met, on a fresh database (s1: 8 cores, s2: 4 cores), driven
through the service and ``simulate.run_dispatch`` (dispatch.yml's steps, every host step succeeding).
"""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import select

from vcl_sched import claims, db, lifecycle, promises, service, simulate
from vcl_sched.errors import ConflictError
from vcl_sched.models import AddressPair, Instance

LOW = {"owner": "cs", "platform_value": 1, "register_as_slave": 0, "member": 0}
HIGH = {"owner": "cs", "platform_value": 10, "register_as_slave": 1, "member": 1}


def book_whole_pool(url, start="2026-11-23 10:00", hours=2, **who):
    """Three seats of 4 cores: every core of the pool (8 + 4) over the window."""
    r = service.reserve(seats=3, cores=4, ram_mb=1024, start=start, hours=hours, **(who or LOW), url=url)
    assert r["state"] == "accepted", r["reason"]
    return r


def instances(url):
    with db.read(url) as s:
        return {i.id: i for i in s.scalars(select(Instance))}


def running_cores(url, kind=None):
    return sum(i.cores for i in instances(url).values() if i.state == "running" and kind in (None, i.kind))


def test_best_effort_vms_end_before_the_booking_that_holds_the_pool(lab_db, monkeypatch):
    book_whole_pool(lab_db)
    monkeypatch.setenv("VCL_NOW", "2026-11-23 08:00")
    granted = [service.request(cores=2, ram_mb=512, hours=5, **HIGH, url=lab_db) for _ in range(4)]
    assert {(g["decision"], g["hours_granted"], g["ends_at"]) for g in granted} == {
        ("place", 2, "2026-11-23 10:00")}
    simulate.run_dispatch(url=lab_db)
    monkeypatch.setenv("VCL_NOW", "2026-11-23 10:00")
    out = simulate.run_dispatch(url=lab_db)
    # No best-effort VM is in the way at 10:00, so nothing is suspended: the seats simply start.
    assert sorted(out["stopped"]) == sorted(g["id"] for g in granted) and out["suspended"] == []
    assert len(out["launched"]) == 3 and running_cores(lab_db, "AR") == 12


def test_with_every_core_reserved_a_request_waits_and_dispatch_never_launches_it(lab_db, monkeypatch):
    book_whole_pool(lab_db)
    monkeypatch.setenv("VCL_NOW", "2026-11-23 10:00")
    simulate.run_dispatch(url=lab_db)
    waiting = service.request(cores=1, ram_mb=256, hours=1, **HIGH, url=lab_db)
    assert waiting["decision"] == "wait" and waiting["state"] == "waiting"
    monkeypatch.setenv("VCL_NOW", "2026-11-23 10:05")
    out = simulate.run_dispatch(url=lab_db)
    assert out["launched"] == [] and out["plan"]["wait"] == [waiting["id"]]
    assert running_cores(lab_db, "AR") == 12 and running_cores(lab_db, "BE") == 0
    # When the block's window ends, the queued request runs, with its end fixed at launch.
    monkeypatch.setenv("VCL_NOW", "2026-11-23 12:00")
    out = simulate.run_dispatch(url=lab_db)
    assert out["launched"] == [waiting["id"]]
    assert instances(lab_db)[waiting["id"]].ends_at.isoformat(sep=" ") == "2026-11-23 13:00:00"


def test_a_reservation_does_not_wait_behind_higher_priority_best_effort_vms(lab_db, monkeypatch):
    service.configure({"booking.lead_days": "0"}, lab_db)
    monkeypatch.setenv("VCL_NOW", "2026-11-23 09:00")
    be = [service.request(cores=4, ram_mb=512, hours=3, **HIGH, url=lab_db) for _ in range(3)]
    simulate.run_dispatch(url=lab_db)
    assert running_cores(lab_db, "BE") == 12
    res = book_whole_pool(lab_db)  # its priority is far below the running VMs'
    assert res["priority"] < min(b["priority"] for b in be)
    monkeypatch.setenv("VCL_NOW", "2026-11-23 10:00")
    out = simulate.run_dispatch(url=lab_db)
    assert sorted(out["suspended"]) == sorted(b["id"] for b in be) and len(out["launched"]) == 3
    assert running_cores(lab_db, "AR") == 12


def test_a_seat_whose_window_passed_is_never_launched(lab_db, monkeypatch):
    r = service.reserve(cores=2, ram_mb=512, start="2026-11-23 10:00", hours=1, **LOW, url=lab_db)
    monkeypatch.setenv("VCL_NOW", "2026-11-23 10:00")
    [started] = lifecycle.start_due_reservations(url=lab_db)
    monkeypatch.setenv("VCL_NOW", "2026-11-23 13:00")
    taken = lifecycle.lease(started["id"], lab_db)
    assert taken["lease"] is None and "its window ended at 2026-11-23 11:00" in taken["refused"]
    assert instances(lab_db)[started["id"]].state == "stopped"
    out = simulate.run_dispatch(url=lab_db)
    assert out["launched"] == [] and r["id"] not in [s["reservation"] for s in out["started"]]


def test_dispatch_stops_a_pending_seat_whose_window_passed(lab_db, monkeypatch):
    service.reserve(cores=2, ram_mb=512, start="2026-11-23 10:00", hours=1, **LOW, url=lab_db)
    monkeypatch.setenv("VCL_NOW", "2026-11-23 10:00")
    [started] = lifecycle.start_due_reservations(url=lab_db)
    monkeypatch.setenv("VCL_NOW", "2026-11-23 13:00")
    plan = lifecycle.dispatch_plan(url=lab_db)
    assert plan["stop"] == [started["id"]] and plan["launch"] == []


def test_requests_that_can_never_fit_are_refused_at_submission(lab_db):
    before = instances(lab_db)
    big = service.request(cores=9, ram_mb=256, hours=1, **LOW, url=lab_db)
    fat = service.request(cores=1, ram_mb=20000, hours=1, **LOW, url=lab_db)
    assert big["state"] == fat["state"] == "refused" and instances(lab_db) == before
    assert "the largest slave has 8 cores and 16384 MB; the pool has 12 cores" in big["reason"]
    assert fat["reason"].startswith("ram_mb: 20000 MB per VM can never fit")
    seat = service.reserve(cores=9, ram_mb=256, start="2026-11-23 10:00", hours=1, **LOW, url=lab_db)
    block = service.reserve(seats=4, cores=4, ram_mb=256, start="2026-11-23 10:00", hours=1, **LOW, url=lab_db)
    assert seat["state"] == block["state"] == "refused"
    assert seat["reason"].startswith("cores: 9 per VM can never fit")
    assert block["reason"].startswith("seats: 4 seats of 4 cores need 16 cores")


def test_a_block_whose_seats_do_not_pack_is_refused_naming_the_seat(lab_db):
    # A 2-core seat booked first, then three of 3 cores: placed largest first they pack (3 on s2, 3 + 3 + 2 on s1).
    first = service.reserve(cores=2, ram_mb=256, start="2026-11-23 10:00", hours=2, **HIGH, url=lab_db)
    block = service.reserve(seats=3, cores=3, ram_mb=256, start="2026-11-23 10:00", hours=2, **LOW, url=lab_db)
    assert first["state"] == block["state"] == "accepted"
    # Four seats of 3 cores are 12 of 12 cores, but 8 + 4 holds only 2 + 1 of them: the count fits, the seats do not.
    # (Over another window, so the first two bookings play no part.)
    four = service.reserve(seats=4, cores=3, ram_mb=256, start="2026-11-23 13:00", hours=2, **LOW, url=lab_db)
    assert four["state"] == "refused"
    assert "the seats cannot all be placed: seat 4 of reservation" in four["reason"]
    assert "finds no slave with room at 2026-11-23 13:00" in four["reason"]


def test_release_of_a_live_vm_goes_through_stop_and_addresses_wait_for_the_master(lab_db):
    a = service.request(cores=1, ram_mb=512, hours=1, **LOW, url=lab_db)
    lifecycle.mark_running(a["id"], url=lab_db)
    with pytest.raises(ConflictError, match=r"stop it with `vcl stop"):
        claims.release(a["id"], url=lab_db)
    # A dead slave's VM is lost: its cores come back at once, its addresses only once the master dropped them.
    out = lifecycle.reconcile({"s1": {"reachable": False}}, lab_db)
    assert out["lost"] == [a["id"]] and out["unnet"] == [a["id"]]
    b = service.request(cores=1, ram_mb=512, hours=1, **LOW, url=lab_db)
    assert (b["private_ip"], b["public_ip"], b["mac"]) != (a["private_ip"], a["public_ip"], a["mac"])
    assert b["private_ip"] != a["private_ip"] and b["public_ip"] != a["public_ip"]
    assert lifecycle.net_gone(a["id"], lab_db) == {"id": a["id"], "changed": True, "pairs_freed": 1}
    with db.read(lab_db) as s:
        pair = s.scalar(select(AddressPair).where(AddressPair.private_ip == a["private_ip"]))
        assert (pair.instance_id, pair.stale_instance, pair.mac) == (None, None, None)


def test_one_launch_per_instance_and_an_expired_lease_is_recovered(lab_db, monkeypatch):
    waiting = service.request(cores=8, ram_mb=512, hours=2, **LOW, url=lab_db)
    assert waiting["decision"] == "place"
    first = lifecycle.lease(waiting["id"], lab_db)
    second = lifecycle.lease(waiting["id"], lab_db)
    assert first["lease"] and second["lease"] is None
    assert second["refused"] == f"instance {waiting['id']} is being launched by another run until 10:30"
    with pytest.raises(ConflictError, match=r"^lease: instance .* is being launched by another run"):
        lifecycle.place(waiting["id"], url=lab_db, lease_token="not-the-token")
    assert lifecycle.dispatch_plan(url=lab_db)["launch"] == []  # leased: left to its launch
    lifecycle.place(waiting["id"], url=lab_db, lease_token=first["lease"])
    # The launcher dies; after the lease's 30 minutes reconcile takes the instance back.
    monkeypatch.setenv("VCL_NOW", "2026-11-22 10:31")
    out = lifecycle.reconcile({}, lab_db)
    assert out["leases_expired"] == [waiting["id"]] and out["unnet"] == [waiting["id"]]
    inst = instances(lab_db)[waiting["id"]]
    assert (inst.state, inst.slave_id, inst.lease_owner) == ("pending", None, None)
    with pytest.raises(ConflictError, match=r"^lease: the launch's lease"):
        lifecycle.mark_running(waiting["id"], url=lab_db, lease_token=first["lease"])
    assert simulate.run_dispatch(url=lab_db)["launched"] == [waiting["id"]]


def test_a_dead_slave_s_seats_run_elsewhere_and_its_requests_go_back_to_the_queue(lab_db, monkeypatch):
    r = service.reserve(cores=2, ram_mb=512, start="2026-11-23 10:00", hours=2, **LOW, url=lab_db)
    monkeypatch.setenv("VCL_NOW", "2026-11-23 10:00")
    simulate.run_dispatch(url=lab_db)
    [seat] = [i for i in instances(lab_db).values() if i.kind == "AR"]
    be = service.request(cores=1, ram_mb=512, hours=3, **HIGH, url=lab_db)
    simulate.run_dispatch(url=lab_db)
    dead = seat.slave_id
    name = {1: "s1", 2: "s2"}[dead]
    out = lifecycle.reconcile({name: {"reachable": False}}, lab_db)
    assert seat.id in out["lost"] and out["down"] == [name]
    requeued = {x["lost"]: x for x in out["requeued"]}
    assert requeued[seat.id]["kind"] == "AR"
    again = simulate.run_dispatch(url=lab_db)
    new_seat = instances(lab_db)[requeued[seat.id]["id"]]
    assert new_seat.id in again["launched"] and new_seat.state == "running" and new_seat.slave_id != dead
    assert (new_seat.reservation_id, new_seat.seat, new_seat.requeued_from) == (r["id"], 0, seat.id)
    if be["id"] in requeued:  # the request was on the dead slave too: it keeps its priority and queue place
        back = instances(lab_db)[requeued[be["id"]]["id"]]
        assert (back.priority, back.requeued_from, back.kind) == (be["priority"], be["id"], "BE")
        assert back.state == "running" and back.ends_at is not None


def test_a_failed_launch_on_one_slave_leaves_nothing_held(lab_db, monkeypatch):
    monkeypatch.setenv("VCL_NOW", "2026-11-22 10:00")
    queued = [service.request(cores=4, ram_mb=512, hours=1, **LOW, url=lab_db) for _ in range(4)]
    out = simulate.run_dispatch(url=lab_db, fail=lambda iid: iid == queued[0]["id"])
    assert queued[0]["id"] in out["failed"]
    with db.read(lab_db) as s:
        held = {p.instance_id for p in s.scalars(select(AddressPair)) if p.instance_id is not None}
    live = {i.id for i in instances(lab_db).values() if i.state in ("running", "pending") and i.mac}
    assert held == live and queued[0]["id"] not in held


def test_seats_run_on_their_assigned_slaves_when_an_earlier_block_of_the_day_is_done(lab_db, monkeypatch):
    # 09-10 one seat of 4, 09-12 two seats of 4, 10-12 one seat of 4: 12 of 12 cores from 09:00 to 12:00.
    for seats, start, hours in ((1, "09:00", 1), (2, "09:00", 3), (1, "10:00", 2)):
        r = service.reserve(seats=seats, cores=4, ram_mb=512, start=f"2026-11-23 {start}", hours=hours, **LOW,
                            url=lab_db)
        assert r["state"] == "accepted", r["reason"]
    for now in ("2026-11-23 09:00", "2026-11-23 10:00"):
        monkeypatch.setenv("VCL_NOW", now)
        out = simulate.run_dispatch(url=lab_db)
        assert out["suspended"] == [] and out["plan"]["wait"] == [], out["plan"]["notes"]
        with db.read(lab_db) as s:
            view = promises.view(s, datetime.fromisoformat(now), 5)
        running = [i for i in instances(lab_db).values() if i.kind == "AR" and i.state == "running"]
        assert running and all(view.seat_slave(i.reservation_id, i.seat) == i.slave_id for i in running)
    assert running_cores(lab_db, "AR") == 12


def test_a_launch_in_progress_is_nobody_s_victim(lab_db):
    low = service.request(cores=8, ram_mb=512, hours=2, **LOW, url=lab_db)
    low2 = service.request(cores=4, ram_mb=512, hours=2, **LOW, url=lab_db)
    token = lifecycle.lease(low["id"], lab_db)["lease"]
    lifecycle.mark_running(low2["id"], url=lab_db)
    high = service.request(cores=8, ram_mb=512, hours=2, **HIGH, url=lab_db)
    # The running 4-core VM is too small to make room and the 8-core one is being launched: nothing to suspend.
    assert high["decision"] == "wait" and low["id"] not in high.get("suspend", [])
    plan = lifecycle.dispatch_plan(url=lab_db)
    assert low["id"] not in plan["suspend"] and plan["wait"] == [high["id"]]
    with pytest.raises(ConflictError, match="is pending, not running"):
        lifecycle.suspended(low["id"], True, lab_db)
    lifecycle.mark_running(low["id"], url=lab_db, lease_token=token)
