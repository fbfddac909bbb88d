"""reserve.yml and dispatch.yml on the controller alone (no lab): input checks, answers, nothing written on error.

The playbooks run for real (ansible-playbook, the vcl_reserve and vcl_instance actions) against a fresh
SQLite database, by path (playbooks/reserve.yml) and by FQCN (vcl.lab.reserve); launching needs the lab and is
covered by tests/lab/test_lifecycle.py.
"""

from __future__ import annotations

import json

import pytest

from vcl_lab.playbook import run_playbook
from vcl_lab.testing import REPO
from vcl_sched import service


def small_pool(tmp_path) -> str:
    """A lab database in TMP_PATH: pools of five pairs, group cs, one slave s1 (2 cores)."""
    url = f"sqlite:///{tmp_path}/vcl.sqlite"
    service.init(url)
    service.configure({"private_pool": "10.77.1.16-10.77.1.20", "public_pool": "10.77.0.160-10.77.0.164"}, url)
    service.add_group("cs", url=url)
    service.add_slave("s1", "10.77.0.21", 2, 4096, 50, url=url)
    return url


@pytest.fixture
def pool(tmp_path, monkeypatch):
    url = small_pool(tmp_path)
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts: {}\n")  # the implicit localhost only
    return url, inventory


def play(pool, name, *pairs, now="2026-11-22 10:00", fqcn=False):
    url, inventory = pool
    extra = []
    for pair in pairs:
        extra += ["-e", pair]
    playbook = f"vcl.lab.{name}" if fqcn else REPO / "playbooks" / f"{name}.yml"
    return run_playbook(inventory, playbook, *extra, cwd=REPO, env={"VCL_DB_URL": url, "VCL_NOW": now})


def state(url):
    return (service.list_instances(url, include_all=True), service.list_reservations(url, include_all=True),
            service.list_slaves(url))


BASE = ("owner=cs", "cores=1", "ram_mb=256", "hours=2", "reserve_no_launch=true")


@pytest.mark.parametrize(("change", "field"), [
    ("cores=0", "cores"),
    ("cores=lots", "cores"),
    ("ram_mb=-5", "ram_mb"),
    ("hours=0", "hours"),
    ("owner=nobody", "owner"),
    ("image=none-such", "image"),
    ("member=7", "member"),
    ("platform_value=x", "platform_value"),
    (json.dumps({"start": "next tuesday"}), "start"),
    (json.dumps({"start": "2026-11-23 08:00"}), "start"),  # before the booking day opens
])
def test_bad_input_fails_naming_the_field_and_writes_nothing(pool, change, field):
    url, _ = pool
    before = state(url)
    key = change.split("=")[0] if not change.startswith("{") else "start"
    pairs = [p for p in BASE if not p.startswith(key + "=")] + [change]
    recap = play(pool, "reserve", *pairs)
    assert not recap.ok
    assert f'"msg": "{field}:' in recap.stdout or f"{field}: " in recap.stdout, recap.stdout[-3000:]
    assert state(url) == before


def test_a_missing_required_field_is_named(pool):
    recap = play(pool, "reserve", "owner=cs", "cores=1", "hours=2")
    assert not recap.ok and "ram_mb: required" in recap.stdout


@pytest.mark.parametrize("fqcn", [False, True], ids=["path", "fqcn"])
def test_best_effort_request_is_placed_and_printed(pool, fqcn):
    url, _ = pool
    recap = play(pool, "reserve", *BASE, fqcn=fqcn)
    assert recap.ok, recap.stdout[-3000:]
    vm = service.list_instances(url)[0]
    assert vm["state"] == "pending" and vm["slave"] == "s1" and vm["mac"].startswith("52:54:00")
    assert f"request {vm['id']}: place (priority" in recap.stdout and "on s1, 2 of 2 h" in recap.stdout


def test_advance_reservation_is_accepted_or_refused_with_the_reason(pool):
    url, _ = pool
    start = json.dumps({"start": "2026-11-23 10:00"})
    recap = play(pool, "reserve", "owner=cs", "cores=2", "ram_mb=256", "hours=2", start)
    assert recap.ok, recap.stdout[-3000:]
    assert "reservation 1 accepted, priority" in recap.stdout and "2026-11-23 10:00 → 2026-11-23 12:00" in recap.stdout
    # The pool has 2 cores: an equal request the same hours is moved one hour later, with why.
    recap = play(pool, "reserve", "owner=cs", "cores=2", "ram_mb=256", "hours=2", start)
    assert recap.ok and "reservation 2 accepted" in recap.stdout
    assert "2026-11-23 12:00 → 2026-11-23 14:00" in recap.stdout
    # 4 hours at 09:00 cannot fit anywhere that day: refused, the playbook fails with the reason.
    recap = play(pool, "reserve", "owner=cs", "cores=2", "ram_mb=256", "hours=4",
                 json.dumps({"start": "2026-11-23 09:00"}))
    assert not recap.ok and "refused:" in recap.stdout
    rows = service.list_reservations(url, include_all=True)["reservations"]
    assert [r["state"] for r in sorted(rows, key=lambda r: r["id"])] == ["accepted", "accepted", "refused"]


@pytest.mark.parametrize("fqcn", [False, True], ids=["path", "fqcn"])
def test_dispatch_starts_a_due_reservation_and_reports_what_waits(pool, fqcn):
    url, _ = pool
    assert play(pool, "reserve", "owner=cs", "cores=2", "ram_mb=256", "hours=2",
                json.dumps({"start": "2026-11-23 10:00"}), fqcn=fqcn).ok
    recap = play(pool, "dispatch", now="2026-11-23 09:00", fqcn=fqcn)
    assert recap.ok and service.list_instances(url) == []
    # Due: the instance is created; with no master in the inventory the launch (the vcl.lab.vm role's
    # entry point) stops before any claim.
    recap = play(pool, "dispatch", now="2026-11-23 10:00", fqcn=fqcn)
    rows = service.list_instances(url, include_all=True)
    assert len(rows) == 1 and rows[0]["kind"] == "AR"
    assert not recap.ok and "vcl_master: the inventory must have exactly one host" in recap.stdout
    assert rows[0]["state"] == "pending" and rows[0]["slave"] is None
    assert service.list_slaves(url)[0]["cores_used"] == 0


@pytest.mark.parametrize(("name", "pairs", "needle"), [
    ("launch", (), "id: required (-e id=...)"),
    ("launch", ("id=4x",), "id: '4x' is not a whole number"),
    ("stop", ("ids=1,x",), "ids: 'x' is not a whole number"),
    ("suspend", (), "id: required"),
    ("resume", ("id=",), "id: required"),
])
def test_lifecycle_playbooks_check_their_ids_before_anything(pool, name, pairs, needle):
    url, _ = pool
    before = state(url)
    recap = play(pool, name, *pairs, fqcn=True)
    assert not recap.ok and needle in recap.stdout, recap.stdout[-3000:]
    assert "vcl.lab.vm" not in recap.stdout  # the role was never entered
    assert state(url) == before


def test_an_unknown_instance_is_named_by_the_role(pool):
    recap = play(pool, "stop", "id=99", fqcn=True)
    assert not recap.ok and "id: no instance 99" in recap.stdout, recap.stdout[-3000:]
    recap = play(pool, "suspend", "ids=98", fqcn=True)
    assert not recap.ok and "id: no instance 98" in recap.stdout, recap.stdout[-3000:]


@pytest.mark.parametrize(("pair", "needle"), [
    ("vm__launch_attempts=2", "vcl_master: the inventory must have exactly one host"),  # valid: on to the next check
    ("launch_attempts=1", "vcl_master: the inventory must have exactly one host"),  # the former name still works
    ("vm__launch_attempts=5", "vm__launch_attempts: 5 must be between 1 and 3"),
    ("launch_attempts=x", "launch_attempts: 'x' is not a whole number"),
    ("vm__launch_poll_interval=soon", "vm__launch_poll_interval: 'soon' is not a number"),
])
def test_the_launch_entry_points_knobs_are_checked_naming_them(pool, pair, needle):
    recap = play(pool, "launch", "id=1", pair, fqcn=True)
    assert not recap.ok and needle in recap.stdout, recap.stdout[-3000:]
