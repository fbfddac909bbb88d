"""vcl_sched.lifecycle against a real database (SQLite and PostgreSQL): the steps the playbooks record."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from vcl_sched import catalogue, db, lifecycle, service
from vcl_sched.errors import CapacityError, ConflictError, ValidationError
from vcl_sched.models import AddressPair, Instance, Reservation, Slave

BE = {"owner": "cs", "platform_value": 5, "register_as_slave": 0, "member": 0}


def used(url):
    with db.read(url) as s:
        return dict(s.execute(select(Slave.name, Slave.cores_used)).all())


def held_pairs(url):
    with db.read(url) as s:
        return s.scalar(select(func.count()).select_from(AddressPair).where(AddressPair.instance_id.is_not(None)))


def test_place_keeps_the_claim_of_an_accepted_request(lab_db):
    r = service.request(cores=2, ram_mb=512, hours=1, **BE, url=lab_db)
    spec = lifecycle.place(r["id"], url=lab_db)
    assert spec["placed"] == "kept" and spec["slave"] == r["slave"] and spec["mac"] == r["mac"]
    assert spec["domain"] == f"vcl-{r['id']}" and spec["dhcp_name"] == f"vm-{r['id']}"
    assert spec["slave_address"] in ("10.77.0.21", "10.77.0.22")


def test_unplace_then_place_elsewhere_moves_the_claim(lab_db):
    r = service.request(cores=2, ram_mb=512, hours=1, **BE, url=lab_db)
    first = r["slave"]
    lifecycle.unplace(r["id"], "slave died", url=lab_db)
    assert used(lab_db) == {"s1": 0, "s2": 0} and held_pairs(lab_db) == 0
    spec = lifecycle.place(r["id"], exclude=[first], url=lab_db)
    assert spec["placed"] == "claimed" and spec["slave"] != first
    assert used(lab_db)[spec["slave"]] == 2 and held_pairs(lab_db) == 1
    with pytest.raises(CapacityError, match="excluded: s1, s2"):
        lifecycle.unplace(r["id"], url=lab_db)
        lifecycle.place(r["id"], exclude=["s1", "s2"], url=lab_db)
    assert used(lab_db) == {"s1": 0, "s2": 0}


def test_place_with_an_excluded_claim_gives_it_back_first(lab_db):
    r = service.request(cores=2, ram_mb=512, hours=1, **BE, url=lab_db)
    spec = lifecycle.place(r["id"], exclude=[r["slave"]], url=lab_db)
    assert spec["slave"] != r["slave"]
    assert sum(used(lab_db).values()) == 2 and held_pairs(lab_db) == 1


def test_running_then_stop_releases_everything_and_stop_repeats(lab_db):
    r = service.request(cores=2, ram_mb=512, hours=1, **BE, url=lab_db)
    row = lifecycle.mark_running(r["id"], 5900, url=lab_db)
    assert row["state"] == "running" and row["console_port"] == 5900
    assert lifecycle.mark_running(r["id"], 5900, url=lab_db)["state"] == "running"
    with pytest.raises(ConflictError):
        lifecycle.place(r["id"], url=lab_db)
    out = lifecycle.stop(r["id"], url=lab_db)
    assert out["changed"] and out["state"] == "stopped"
    assert used(lab_db) == {"s1": 0, "s2": 0} and held_pairs(lab_db) == 0
    assert lifecycle.stop(r["id"], url=lab_db)["changed"] is False


def test_bad_console_port_names_the_field(lab_db):
    r = service.request(cores=1, ram_mb=256, hours=1, **BE, url=lab_db)
    with pytest.raises(ValidationError, match="console_port"):
        lifecycle.mark_running(r["id"], 70000, url=lab_db)
    assert lifecycle.describe(r["id"], lab_db)["state"] == "pending"


def test_failed_launch_ends_the_instance_and_frees_its_claim(lab_db):
    r = service.request(cores=2, ram_mb=512, hours=1, **BE, url=lab_db)
    row = lifecycle.mark_failed(r["id"], "every slave failed", url=lab_db)
    assert row["state"] == "failed" and used(lab_db) == {"s1": 0, "s2": 0} and held_pairs(lab_db) == 0


def test_suspend_and_resume_move_cores_and_ram_not_disk(lab_db):
    r = service.request(cores=2, ram_mb=512, hours=1, **BE, url=lab_db)
    lifecycle.mark_running(r["id"], url=lab_db)
    lifecycle.suspended(r["id"], True, lab_db)
    assert used(lab_db)[r["slave"]] == 0 and held_pairs(lab_db) == 1
    lifecycle.suspended(r["id"], False, lab_db)
    assert used(lab_db)[r["slave"]] == 2


def fill_with_best_effort(url, **priority):
    ids = []
    for slave_cores in (8, 4):
        r = service.request(cores=slave_cores, ram_mb=1024, hours=1, **{**BE, **priority}, url=url)
        lifecycle.mark_running(r["id"], url=url)
        ids.append(r["id"])
    return ids


def test_a_due_reservation_suspends_the_lowest_best_effort_vm(lab_db, monkeypatch):
    # Booked for today (lead_days 0) while best-effort VMs already run into its window: at its start the seat's
    # cores are freed by suspending best-effort VMs, whatever their priority (SPEC §4).
    catalogue.configure({"booking.lead_days": "0"}, lab_db)
    monkeypatch.setenv("VCL_NOW", "2026-11-23 09:30")
    be = fill_with_best_effort(lab_db, platform_value=9)  # priority above the reservation's: it still yields
    res = service.reserve(cores=4, ram_mb=600, start="2026-11-23 10:00", hours=2, owner="cs", platform_value=5,
                          register_as_slave=1, member=1, url=lab_db)
    assert res["state"] == "accepted"
    assert lifecycle.start_due_reservations(url=lab_db) == []  # not due yet
    monkeypatch.setenv("VCL_NOW", "2026-11-23 10:00")
    started = lifecycle.start_due_reservations(url=lab_db)
    assert [s["reservation"] for s in started] == [res["id"]]
    assert lifecycle.start_due_reservations(url=lab_db) == []  # once
    ar = started[0]["id"]
    plan = lifecycle.dispatch_plan(url=lab_db)
    assert plan["stop"] == [] and plan["launch"] == [ar] and plan["wait"] == [] and plan["resume"] == []
    assert len(plan["suspend"]) == 1 and plan["suspend"][0] in be
    lifecycle.suspended(plan["suspend"][0], True, lab_db)
    spec = lifecycle.place(ar, url=lab_db)
    assert spec["kind"] == "AR" and spec["reservation_id"] == res["id"] and spec["ends_at"] == "2026-11-23 12:00"
    assert spec["slave"] == lifecycle.describe(plan["suspend"][0], lab_db)["slave"]
    with db.read(lab_db) as s:
        assert s.get(Reservation, res["id"]).state == "active"
    lifecycle.mark_running(ar, url=lab_db)
    # The suspended VM does not come back while the reservation holds its cores.
    assert lifecycle.dispatch_plan(url=lab_db)["resume"] == []
    lifecycle.stop(ar, url=lab_db)
    # A seat given back early stays the block's until the window ends: the suspended VM ends at 10:30, before.
    assert lifecycle.dispatch_plan(url=lab_db)["resume"] == []
    monkeypatch.setenv("VCL_NOW", "2026-11-23 12:00")
    lifecycle.start_due_reservations(url=lab_db)
    with db.read(lab_db) as s:
        assert s.get(Reservation, res["id"]).state == "done"


def test_expired_vms_are_stopped_first_and_suspended_ones_resume_when_room_returns(lab_db, monkeypatch):
    a, b = fill_with_best_effort(lab_db)
    lifecycle.suspended(b, True, lab_db)
    monkeypatch.setenv("VCL_NOW", "2026-11-22 10:30")
    plan = lifecycle.dispatch_plan(url=lab_db)
    assert plan["stop"] == [] and plan["resume"] == [b]
    monkeypatch.setenv("VCL_NOW", "2026-11-22 11:01")
    plan = lifecycle.dispatch_plan(url=lab_db)
    assert sorted(plan["stop"]) == sorted([a, b]) and plan["resume"] == []


def test_waiting_requests_are_served_in_priority_order_and_equal_priority_waits(lab_db):
    fill_with_best_effort(lab_db)
    low = service.request(cores=4, ram_mb=1024, hours=1, **BE, url=lab_db)  # equal to the running VMs
    high = service.request(cores=4, ram_mb=1024, hours=1, **{**BE, "member": 1}, url=lab_db)
    assert low["decision"] == "wait" and high["decision"] == "suspend"
    plan = lifecycle.dispatch_plan(url=lab_db)
    assert plan["launch"] == [high["id"]] and plan["wait"] == [low["id"]] and len(plan["suspend"]) == 1


def test_reconcile_marks_vanished_domains_lost_and_silent_slaves_down(lab_db):
    ids = fill_with_best_effort(lab_db)
    spec = {i: lifecycle.describe(i, lab_db) for i in ids}
    on_s1 = [i for i in ids if spec[i]["slave"] == "s1"]
    on_s2 = [i for i in ids if spec[i]["slave"] == "s2"]
    observed = {"s1": {"reachable": True, "domains": {"vcl-999": "running"},
                       "facts": {"cores": 16, "ram_mb": 32768, "disk_gb": 200}},
                "s2": {"reachable": False}}
    out = lifecycle.reconcile(observed, lab_db)
    # s1 lost its domain, s2 died: every VM is lost, its request back in the queue, its addresses held until
    # the master's entries are confirmed gone.
    assert out["lost"] == on_s1 + on_s2 and out["down"] == ["s2"] and out["capacity"] == ["s1"]
    assert out["orphans"] == [{"slave": "s1", "domain": "vcl-999"}]
    assert [r["lost"] for r in out["requeued"]] == on_s1 + on_s2 and out["unnet"] == sorted(ids)
    with db.read(lab_db) as s:
        assert {i: s.get(Instance, i).state for i in ids} == dict.fromkeys(ids, "lost")
        requeued = [s.get(Instance, r["id"]) for r in out["requeued"]]
        assert [(i.state, i.slave_id, i.ends_at, i.hours, i.requeued_from) for i in requeued] == [
            ("pending", None, None, 1, lost) for lost in on_s1 + on_s2]
        s1 = s.scalar(select(Slave).where(Slave.name == "s1"))
        s2 = s.scalar(select(Slave).where(Slave.name == "s2"))
        assert (s1.cores_total, s1.cores_used, s1.status) == (16, 0, "up")
        assert (s2.cores_used, s2.status) == (0, "down")
    # s2 comes back with the domains it had: the database places them nowhere now, so they are orphans.
    again = lifecycle.reconcile({"s2": {"reachable": True, "domains": {f"vcl-{i}": "running" for i in on_s2}}},
                                lab_db)
    assert again["up"] == ["s2"] and again["lost"] == [] and again["ok"] == []
    assert again["orphans"] == [{"slave": "s2", "domain": f"vcl-{i}"} for i in on_s2]
    for i in ids:
        lifecycle.net_gone(i, lab_db)
    assert lifecycle.reconcile({}, lab_db)["unnet"] == []


def test_reconcile_input_is_checked_before_anything_changes(lab_db):
    before = used(lab_db)
    with pytest.raises(ValidationError, match=r"observed.s1.facts.cores"):
        lifecycle.reconcile({"s1": {"reachable": True, "domains": {}, "facts": {"cores": "x", "ram_mb": 1,
                                                                                   "disk_gb": 1}}}, lab_db)
    assert used(lab_db) == before
