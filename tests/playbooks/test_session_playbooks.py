"""Class sessions through the playbooks on the controller alone (no lab): a teacher's weekly session through
reserve.yml with acting_user, the teacher's view through session.yml, a student refused, and bad input refused
naming the field with nothing written. Taking a seat launches a VM: tests/lab/test_lifecycle_class.py."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from vcl_sched import db, people, runner, service
from vcl_sched.models import AuditLog, Reservation, Series


@pytest.fixture(scope="module")
def school(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("school")
    url = f"sqlite:///{tmp}/vcl.sqlite"
    service.init(url)
    service.configure({"private_pool": "10.77.1.16-10.77.1.30", "public_pool": "10.77.0.160-10.77.0.174",
                       "booking.lead_days": "0"}, url)
    service.add_slave("s1", "10.77.0.21", 4, 8192, 50, url=url)
    people.add_user("tina", role="teacher", url=url)
    for name in ("ann", "bob"):
        people.add_user(name, url=url)
    people.add_group("cs101", owner="tina", url=url)
    people.add_members("cs101", ["ann", "bob"], url=url)
    inventory = tmp / "hosts.yml"
    inventory.write_text("all:\n  hosts: {}\n")
    return url, inventory


def play(school, name, *pairs):
    """The playbook through ansible-runner, as `vcl ... --run` and the portal submit it."""
    url, inventory = school
    extravars = dict(pair.split("=", 1) for pair in pairs)
    return runner.run(name, extravars, inventory=inventory, progress=lambda _line: None,
                      envvars={"VCL_DB_URL": url, "VCL_NOW": "2026-11-23 08:00"})


def failure(run) -> str:
    return " ".join(f.message for f in run.failures)


def counts(url):
    with db.read(url) as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in (Reservation, Series, AuditLog))


SESSION = ("owner=cs101", "cores=1", "ram_mb=256", "hours=2", "seats=2", "start=2026-11-23 10:00")


def test_a_teacher_books_a_weekly_session_and_sees_its_seats(school):
    run = play(school, "reserve", *SESSION, "weekdays=mon,tue", "weeks=1", "acting_user=tina", "prelaunch=false")
    assert run.ok, failure(run)
    series = run.vcl_result
    assert series["kind"] == "series" and series["accepted"] == 2 and series["refused"] == 0
    assert [o["requested_start"] for o in series["occurrences"]] == ["2026-11-23 10:00", "2026-11-24 10:00"]
    assert all(o["prelaunch"] is False for o in series["occurrences"])
    first = series["occurrences"][0]["id"]
    view = play(school, "session", f"reservation={first}", "acting_user=tina")
    assert view.ok, failure(view)
    seats = view.vcl_result["seats"]
    assert [(s["seat"], s["state"]) for s in seats] == [(1, "free"), (2, "free")]
    assert view.vcl_result["members_without_seat"] == ["ann", "bob"]


@pytest.mark.parametrize(("pairs", "field"), [
    (("acting_user=ann",), "owner"),  # a student does not book sessions
    (("weekdays=mon,funday", "weeks=2"), "weekdays"),
    (("weekdays=mon", "weeks=99"), "weeks"),
    (("weekdays=mon",), "weeks"),
    (("prelaunch=perhaps",), "prelaunch"),
    (("acting_user={{ 7 * 7 }}",), "acting_user"),
    (("acting_user=nobody",), "name"),
    (("platform_value=10", "acting_user=tina"), "platform_value"),
])
def test_refused_naming_the_field_and_nothing_written(school, pairs, field):
    url, _ = school
    before = counts(url)
    run = play(school, "reserve", *SESSION, *pairs)
    assert not run.ok
    assert failure(run).startswith(f"{field}:") or f" {field}:" in failure(run), failure(run)
    assert counts(url) == before


def test_a_playbook_on_someones_behalf_acts_only_on_their_vms(school):
    url, _ = school
    from vcl_sched import acting

    with acting.acting(people.actor_for("ann", url)):
        vm = service.request(owner="cs101", cores=1, ram_mb=256, hours=1, url=url)["id"]
    before = (counts(url), service.list_instances(url, include_all=True))
    for name in ("stop", "suspend", "resume", "launch"):
        run = play(school, name, f"id={vm}", "acting_user=bob")
        assert not run.ok and "id: not a VM of bob" in failure(run), (name, failure(run))
    assert (counts(url), service.list_instances(url, include_all=True)) == before
