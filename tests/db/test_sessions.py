"""Class sessions on SQLite and PostgreSQL (issue 13): blocks of seats handed to members at prelaunch, seats
taken by members (one each, never twice), weekly series admitted occurrence by occurrence, cancelling, the
teacher's view, and what each role may do (SPEC §7)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from vcl_sched import acting, config, db, lifecycle, people, promises, service, sessions
from vcl_sched.errors import ConflictError, ForbiddenError, ValidationError
from vcl_sched.models import AuditLog, Instance, Reservation


@pytest.fixture
def school(db_url, monkeypatch):
    """Two slaves (8 + 4 cores), teacher tina owning group cs101 (students ann, bob, cat, dan), teacher tom
    owning group ma201 (student eve); bookable today."""
    service.configure({"private_pool": "10.77.1.16-10.77.1.45", "public_pool": "10.77.0.160-10.77.0.200",
                       "booking.lead_days": "0"}, db_url)
    service.add_slave("s1", "10.77.0.21", 8, 16384, 100, url=db_url)
    service.add_slave("s2", "10.77.0.22", 4, 8192, 100, url=db_url)
    for name, role in (("tina", "teacher"), ("tom", "teacher"), ("ann", "student"), ("bob", "student"),
                       ("cat", "student"), ("dan", "student"), ("eve", "student")):
        people.add_user(name, role=role, url=db_url)
    people.add_group("cs101", owner="tina", url=db_url)
    people.add_group("ma201", owner="tom", url=db_url)
    people.add_members("cs101", ["ann", "bob", "cat", "dan"], url=db_url)
    people.add_members("ma201", ["eve"], url=db_url)
    monkeypatch.setenv("VCL_NOW", "2026-11-23 08:00")
    return db_url


def as_(name, url):
    return acting.acting(people.actor_for(name, url))


def book(url, **kw):
    fields = {"owner": "cs101", "cores": 1, "ram_mb": 256, "start": "2026-11-23 10:00", "hours": 2, "seats": 4}
    return service.reserve(url=url, **{**fields, **kw})


def live_seats(url, rid):
    with db.read(url) as s:
        return s.execute(select(Instance.seat, Instance.user_id, Instance.state).where(
            Instance.reservation_id == rid, Instance.state.in_(("pending", "running", "suspended")))
            .order_by(Instance.seat)).all()


def snapshot(url):
    with db.read(url) as s:
        return (s.scalar(select(func.count()).select_from(Reservation)),
                s.scalar(select(func.count()).select_from(Instance)),
                s.scalar(select(func.count()).select_from(AuditLog)))


def test_prelaunch_hands_every_seat_to_a_member_before_the_bell(school, monkeypatch):
    with as_("tina", school):
        res = book(school)
    assert res["state"] == "accepted" and res["prelaunch"] and res["member"] == 1
    monkeypatch.setenv("VCL_NOW", "2026-11-23 09:49")
    assert lifecycle.start_due_reservations(url=school) == []  # 11 minutes before: not yet (lead 10)
    monkeypatch.setenv("VCL_NOW", "2026-11-23 09:50")
    [started] = lifecycle.start_due_reservations(url=school)
    assert started["reservation"] == res["id"] and len(started["ids"]) == 4 and started["opens"] == "2026-11-23 10:00"
    with db.read(school) as s:
        holders = [people.user_info(s, n)[0] for n in ("ann", "bob", "cat", "dan")]
    assert [(seat, uid) for seat, uid, _ in live_seats(school, res["id"])] == list(enumerate(holders))
    plan = lifecycle.dispatch_plan(url=school)
    assert sorted(plan["launch"]) == sorted(started["ids"])
    assert sum(len(v) for v in plan["lanes"].values()) == 4 and set(plan["lanes"]) <= {"s1", "s2"}
    # Before the bell a seat runs only on the slave its block's placement gave it.
    for iid in started["ids"]:
        spec = lifecycle.place(iid, url=school)
        assert spec["ends_at"] == "2026-11-23 12:00"
        lifecycle.mark_running(iid, url=school)
    with as_("tina", school):
        view = sessions.session_view(res["id"], school)
    assert [(s["seat"], s["user"], s["state"]) for s in view["seats"]] == [
        (1, "ann", "running"), (2, "bob", "running"), (3, "cat", "running"), (4, "dan", "running")]
    assert view["running"] == 4 and view["members_without_seat"] == []
    with as_("bob", school):  # a student sees their own seat only
        mine = sessions.session_view(res["id"], school)
        assert [s["user"] for s in mine["seats"]] == ["bob"] and mine["members"] == ["bob"]
        taken = sessions.take_seat(res["id"], url=school)
        assert taken["changed"] is False and taken["seat"] == 2  # the seat handed to bob at prelaunch
    with as_("eve", school), pytest.raises(ForbiddenError, match="reservation: eve may not see"):
        sessions.session_view(res["id"], school)
    monkeypatch.setenv("VCL_NOW", "2026-11-23 12:00")
    plan = lifecycle.dispatch_plan(url=school)
    assert sorted(plan["stop"]) == sorted(started["ids"])  # released at the window's end


def test_prelaunched_seats_start_only_on_their_own_slave_before_the_window_opens(school, monkeypatch):
    # E (ma201) holds 4 cores 09:00-10:00; at 10:00 block B (cs101, prelaunch, 2 x 4 cores) and block C (ma201,
    # no prelaunch, 1 x 4 cores) fill the pool's 12 cores. At 09:50 B's seats may start only where the blocks'
    # placement puts them: elsewhere the room is promised to C from 10:00 (or still E's).
    with as_("tom", school):
        e = service.reserve(owner="ma201", cores=4, ram_mb=256, start="2026-11-23 09:00", hours=1, url=school)
    with as_("tina", school):
        b = book(school, cores=4, seats=2)
    with as_("tom", school):
        c = service.reserve(owner="ma201", cores=4, ram_mb=256, start="2026-11-23 10:00", hours=2, prelaunch=False,
                            url=school)
    assert [r["state"] for r in (e, b, c)] == ["accepted"] * 3
    monkeypatch.setenv("VCL_NOW", "2026-11-23 09:00")
    [e_started] = lifecycle.start_due_reservations(url=school)
    lifecycle.place(e_started["id"], url=school)
    lifecycle.mark_running(e_started["id"], url=school)
    monkeypatch.setenv("VCL_NOW", "2026-11-23 09:50")
    [b_started] = lifecycle.start_due_reservations(url=school)
    assert b_started["reservation"] == b["id"]
    with db.read(school) as s:
        v = promises.view(s, config.now(), 5)
        names = {h.id: h.name for h in v.hosts}
        assigned = {n: names[v.seat_slave(b["id"], n)] for n in range(2)}
    plan = lifecycle.dispatch_plan(url=school)
    seat_of = {iid: n for n, iid in enumerate(b_started["ids"])}
    for slave, ids in plan["lanes"].items():
        assert all(assigned[seat_of[i]] == slave for i in ids)
    waiting = [i for i in b_started["ids"] if i in plan["wait"]]
    assert len(waiting) + len([i for i in b_started["ids"] if i in plan["launch"]]) == 2
    for iid in waiting:
        assert any(f"#{iid} waits: prelaunched seat" in n for n in plan["notes"])
    for iid in (i for i in b_started["ids"] if i in plan["launch"]):
        assert lifecycle.place(iid, url=school)["slave"] == assigned[seat_of[iid]]
        lifecycle.mark_running(iid, url=school)
    # At the bell E's time is up; every seat of B and C then has its room.
    monkeypatch.setenv("VCL_NOW", "2026-11-23 10:00")
    lifecycle.stop(e_started["id"], url=school)
    lifecycle.start_due_reservations(url=school)
    with as_("eve", school):
        c_seat = sessions.take_seat(c["id"], url=school)
    plan = lifecycle.dispatch_plan(url=school)
    assert sorted(plan["launch"]) == sorted([*waiting, c_seat["id"]]) and plan["wait"] == []


def test_members_take_seats_one_each_and_never_two(school, monkeypatch):
    with as_("tina", school):
        res = book(school, seats=3, prelaunch=False)
    assert res["prelaunch"] is False
    with as_("ann", school), pytest.raises(ConflictError, match="opens at 2026-11-23 10:00"):
        sessions.take_seat(res["id"], url=school)
    monkeypatch.setenv("VCL_NOW", "2026-11-23 10:00")
    [started] = lifecycle.start_due_reservations(url=school)
    assert started["ids"] == []  # no seat starts before a member takes it
    with as_("ann", school):
        first = sessions.take_seat(res["id"], url=school)
        again = sessions.take_seat(res["id"], url=school)
    assert first["changed"] and first["state"] == "pending" and first["how"] == "new seat"
    assert again["changed"] is False and again["id"] == first["id"]
    with as_("ann", school), pytest.raises(ForbiddenError, match="user: ann may take a seat only for themselves"):
        sessions.take_seat(res["id"], "bob", url=school)
    with as_("tina", school):  # the teacher seats a member
        assert sessions.take_seat(res["id"], "bob", url=school)["seat"] == 2
    with as_("tom", school), pytest.raises(ForbiddenError):  # not tom's group
        sessions.take_seat(res["id"], "cat", url=school)
    with pytest.raises(ForbiddenError, match="user: eve is not a member of group cs101"):
        sessions.take_seat(res["id"], "eve", url=school)
    sessions.take_seat(res["id"], "cat", url=school)  # the admin
    before = snapshot(school)
    with as_("dan", school), pytest.raises(ConflictError, match="all 3 seats of session"):
        sessions.take_seat(res["id"], url=school)
    assert snapshot(school) == before
    # A seat given back (its VM stopped) is free again for another member.
    lifecycle.stop(first["id"], url=school)
    with as_("dan", school):
        assert sessions.take_seat(res["id"], url=school)["seat"] == 1


def test_concurrent_takes_never_double_a_seat_or_a_member(school, monkeypatch):
    with as_("tina", school):
        res = book(school, seats=2, prelaunch=False)
    monkeypatch.setenv("VCL_NOW", "2026-11-23 10:00")
    lifecycle.start_due_reservations(url=school)
    outcomes: list[object] = []
    barrier = threading.Barrier(8)

    def take(name: str) -> None:
        barrier.wait()
        try:
            outcomes.append(sessions.take_seat(res["id"], name, url=school)["seat"])
        except ConflictError as err:
            outcomes.append(str(err))

    threads = [threading.Thread(target=take, args=(n,)) for n in ("ann", "ann", "bob", "bob", "cat", "cat",
                                                                    "dan", "dan")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seats = live_seats(school, res["id"])
    assert sorted(s for s, _, _ in seats) == [0, 1]  # two seats, each once
    assert len({uid for _, uid, _ in seats}) == 2  # held by two different members
    assert sum(1 for o in outcomes if isinstance(o, str) and "seats of session" in o) >= 4


def test_roles_decide_who_books_and_priority_inputs_come_from_the_lab(school):
    with as_("ann", school), pytest.raises(ForbiddenError, match="owner: ann is a student"):
        book(school)
    with as_("tom", school), pytest.raises(ForbiddenError, match="owner: tom does not own group cs101"):
        book(school)
    with as_("tina", school), pytest.raises(ForbiddenError, match="platform_value: set by the lab"):
        book(school, platform_value=10)
    before = snapshot(school)
    with as_("ann", school), pytest.raises(ForbiddenError, match="member: set by the lab"):
        service.request(owner="cs101", cores=1, ram_mb=256, hours=1, member=1, url=school)
    with as_("ann", school), pytest.raises(ForbiddenError, match="owner: ann is not a member of group ma201"):
        service.request(owner="ma201", cores=1, ram_mb=256, hours=1, url=school)
    with as_("ann", school), pytest.raises(ForbiddenError, match="user: ann may request VMs only for themselves"):
        service.request(owner="cs101", cores=1, ram_mb=256, hours=1, user="bob", url=school)
    assert snapshot(school) == before
    with as_("ann", school):
        be = service.request(owner="cs101", cores=1, ram_mb=256, hours=1, url=school)
    # MON derived from ann's membership, PfV the default (no image): Pi = 10 + 0.2 (5 - 8 - ln 60 + 1)
    assert be["decision"] == "place" and be["priority"] == pytest.approx(10 + 0.2 * (5 - 8 - 4.0943446 + 1), abs=1e-4)
    # the admin's override stays, within the bounds
    adm = service.request(owner="cs101", cores=1, ram_mb=256, hours=1, platform_value=9, member=0, url=school)
    assert adm["priority"] == pytest.approx(10 + 0.2 * (9 - 8 - 4.0943446), abs=1e-4)
    with pytest.raises(ValidationError, match="platform_value"):
        service.request(owner="cs101", cores=1, ram_mb=256, hours=1, platform_value=11, url=school)
    # a demoted teacher loses the right at once, whatever their session said
    tina = people.actor_for("tina", school)
    people.set_owner("cs101", None, url=school)
    people.set_role("tina", "student", url=school)
    with acting.acting(tina), pytest.raises(ForbiddenError, match="tina is a student"):
        book(school)


def test_the_audit_log_names_the_acting_user(school):
    with as_("tina", school):
        res = book(school, seats=1)
    with db.read(school) as s:
        actors = s.scalars(select(AuditLog.actor).where(AuditLog.object_type == "reservation",
                                                         AuditLog.object_id == res["id"])).all()
    assert actors == ["tina"]


def test_a_weekly_series_reports_each_occurrence_and_cancels_one_or_all(school, monkeypatch):
    service.configure({"booking.horizon_days": "8"}, school)
    with as_("tom", school):  # ma201 takes all 12 cores on Wednesday 25th, 10:00-12:00
        other = service.reserve(owner="ma201", cores=4, seats=3, ram_mb=256, start="2026-11-25 10:00", hours=2,
                                url=school)
        assert other["state"] == "accepted"
    with as_("tina", school):
        series = sessions.reserve_series(weekdays="mon,wed", weeks=2, owner="cs101", cores=1, ram_mb=256,
                                         start="2026-11-23 10:00", hours=2, seats=4, url=school)
    starts = [o["requested_start"] for o in series["occurrences"]]
    assert starts == ["2026-11-23 10:00", "2026-11-25 10:00", "2026-11-30 10:00", "2026-12-02 10:00"]
    states = [(o["state"], bool(o.get("rescheduled"))) for o in series["occurrences"]]
    # Monday 23rd fits; Wednesday 25th is moved later (tom's booking holds the cores, and has the higher
    # priority or came first); Monday 30th fits; Wednesday 2nd is beyond the 8-day horizon: refused, with why.
    assert states[0] == ("accepted", False) and states[1] == ("accepted", True) and states[2] == ("accepted", False)
    assert states[3][0] == "refused" and "horizon" in series["occurrences"][3]["reason"]
    assert (series["accepted"], series["moved"], series["refused"]) == (3, 1, 1)
    with as_("tom", school), pytest.raises(ForbiddenError):
        sessions.cancel(series=series["series"], url=school)
    with as_("tina", school):
        one = sessions.cancel(reservation=series["occurrences"][0]["id"], url=school)
        assert one["cancelled"] == [series["occurrences"][0]["id"]]
        rest = sessions.cancel(series=series["series"], url=school)
    assert sorted(rest["cancelled"]) == sorted(o["id"] for o in series["occurrences"][1:3])
    assert service.list_reservations(school)["reservations"] == [
        r for r in service.list_reservations(school)["reservations"] if r["owner"] == "ma201"]


def test_series_input_is_checked_before_anything_is_written(school):
    before = snapshot(school)
    for kw, field in (({"weekdays": "mon,xyz"}, "weekdays"), ({"weekdays": ""}, "weekdays"),
                      ({"weeks": 0}, "weeks"), ({"weeks": 53}, "weeks"), ({"cores": "many"}, "cores"),
                      ({"prelaunch": "maybe"}, "prelaunch"), ({"seats": 0}, "seats")):
        fields = {"weekdays": "mon", "weeks": 2, "owner": "cs101", "cores": 1, "ram_mb": 256,
                  "start": "2026-11-23 10:00", "hours": 2, **kw}
        with pytest.raises(ValidationError) as err:
            sessions.reserve_series(url=school, **fields)
        assert err.value.field == field
    assert snapshot(school) == before


def test_people_see_their_own_vms_and_teachers_their_groups_seats(school, monkeypatch):
    with as_("tina", school):
        res = book(school, seats=2)
    with as_("eve", school):
        eve_vm = service.request(owner="ma201", cores=1, ram_mb=256, hours=1, url=school)["id"]
    monkeypatch.setenv("VCL_NOW", "2026-11-23 09:55")
    seats = lifecycle.start_due_reservations(url=school)[0]["ids"]
    every = {r["id"] for r in service.list_instances(school)}
    assert every == {eve_vm, *seats}  # the controller's admin sees everything
    with as_("ann", school):
        assert [r["id"] for r in service.list_instances(school)] == [seats[0]]  # ann's seat only
    with as_("eve", school):
        assert [r["id"] for r in service.list_instances(school)] == [eve_vm]
    with as_("tina", school):
        assert sorted(r["id"] for r in service.list_instances(school)) == sorted(seats)
    assert res["state"] == "accepted"


def test_only_admins_change_the_lab_and_only_owners_act_on_a_vm(school):
    with as_("ann", school):
        be = service.request(owner="cs101", cores=1, ram_mb=256, hours=1, url=school)["id"]
    before = snapshot(school)
    for name in ("ann", "tina"):
        with as_(name, school):
            with pytest.raises(ForbiddenError, match=f"slave: only the lab's admins may do this \\({name}"):
                service.add_slave("s9", "10.77.0.29", 2, 2048, 10, url=school)
            with pytest.raises(ForbiddenError, match="config: only the lab's admins"):
                service.configure({"booking.max_hours": "8"}, school)
            with pytest.raises(ForbiddenError, match="slave: only"):
                service.set_slave_status("s1", "down", url=school)
    for name in ("bob", "tom"):  # another student, a teacher of another group
        with as_(name, school):
            with pytest.raises(ForbiddenError, match=f"id: not a VM of {name}"):
                sessions.check_vm(be, school)
            with pytest.raises(ForbiddenError, match=f"id: not a VM of {name}"):
                service.release(be, url=school)
    assert snapshot(school) == before
    with as_("tina", school):  # the teacher of ann's group
        assert sessions.check_vm(be, school)["id"] == be
    with as_("ann", school):
        assert service.release(be, url=school)["state"] == "stopped"
