"""The portal against a real lab database (SQLite and PostgreSQL): a school of people with passwords, a pool,
an image; the app in Starlette's TestClient (real HTTP semantics, cookies, CSRF) or served by uvicorn."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import pytest

from vcl_sched import people, service
from vcl_sched.portal.app import create_app
from vcl_sched.portal.config import PortalConfig

PASSWORD = "Correct horse 42"


@dataclass
class Runs:
    """The playbook runner the portal's jobs call, recording what they would run: the tests outside the lab check
    what the portal submits (the lab's browser test runs the real playbooks)."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, playbook: str, extravars: dict[str, Any], **kwargs: Any) -> Any:
        from vcl_sched.runner import RunResult

        self.calls.append((playbook, dict(extravars)))
        if kwargs.get("progress"):
            kwargs["progress"](f"TASK [{playbook}]")
        return RunResult(playbook=playbook, status="successful", rc=0, vcl_result={"id": extravars.get("id")})


@pytest.fixture(autouse=True, scope="module")
def cheap_password_hashes():
    """Argon2id at its lowest cost for the portal's tests (each school hashes six passwords): the lab's real cost
    is tested in tests/db/test_people.py."""
    from argon2 import PasswordHasher

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(people, "hasher", lambda: PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
        yield


@pytest.fixture
def school(db_url, monkeypatch):
    """Two slaves, teacher tina owning group cs101 (students ann, bob), teacher tom owning ma201 (eve), admin
    root1; image vcl-guest; every password PASSWORD; bookable today."""
    service.configure({"private_pool": "10.77.1.16-10.77.1.45", "public_pool": "10.77.0.160-10.77.0.200",
                       "booking.lead_days": "0"}, db_url)
    service.add_slave("s1", "10.77.0.21", 8, 16384, 100, url=db_url)
    service.add_slave("s2", "10.77.0.22", 4, 8192, 100, url=db_url)
    service.add_image("vcl-guest", "/var/lib/vcl/images/vcl-guest/disk.qcow2", url=db_url)
    for name, role in (("tina", "teacher"), ("tom", "teacher"), ("ann", "student"), ("bob", "student"),
                       ("eve", "student"), ("root1", "admin")):
        people.add_user(name, role=role, password=PASSWORD, url=db_url)
    people.add_group("cs101", owner="tina", url=db_url)
    people.add_group("ma201", owner="tom", url=db_url)
    people.add_members("cs101", ["ann", "bob"], url=db_url)
    people.add_members("ma201", ["eve"], url=db_url)
    monkeypatch.setenv("VCL_NOW", "2026-11-23 08:00")
    return db_url


def portal_config(db_url: str, tmp_path, **kw: Any) -> PortalConfig:
    fields = {"db_url": db_url, "secret": secrets.token_bytes(32), "https": False,
              "console_tokens": str(tmp_path / "tokens"), "console_passwords": str(tmp_path / "consoles")}
    return PortalConfig(**{**fields, **kw})


@pytest.fixture
def runs():
    return Runs()


@pytest.fixture
def app(school, tmp_path, runs):
    return create_app(portal_config(school, tmp_path), run=runs)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrftoken" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def login(client, name: str, password: str = PASSWORD):
    page = client.get("/login")
    return client.post("/login", data={"name": name, "password": password, "next": "/",
                                       "csrftoken": csrf_of(page.text)}, follow_redirects=False)


def post(client, path: str, data: dict[str, str] | None = None, page: str = "/vms"):
    """A form post as the browser sends it: with the token of a page the user opened."""
    token = csrf_of(client.get(page).text)
    return client.post(path, data={**(data or {}), "csrftoken": token}, follow_redirects=False)


# --- helpers of the form and security tests ---------------------------------------------------------------

def dump(url: str) -> str:
    """Every row of every table, as text: what a refused form must leave as it was (tests/db/test_people.py)."""
    from sqlalchemy import select

    from vcl_sched import db
    from vcl_sched.models import Base

    with db.read(url) as session:
        return "\n".join(repr(row) for table in Base.metadata.sorted_tables
                         for row in session.execute(select(table)).all())


def as_user(name: str, url: str):
    from vcl_sched import acting

    return acting.acting(people.actor_for(name, url))


def running_vm(url: str, user: str = "ann", owner: str = "cs101", hours: int = 2, port: int | None = 5901) -> dict:
    """A best-effort VM of ``user``, placed and marked running through the service layer (as the launch does)."""
    from vcl_sched import lifecycle
    from vcl_sched.bookings import request as be_request

    with as_user(user, url):
        answer = be_request(owner=owner, image="vcl-guest", cores=1, ram_mb=512, hours=hours, url=url)
    assert answer["decision"] == "place", answer
    lifecycle.place(answer["id"], url=url)
    lifecycle.mark_running(answer["id"], port, url=url)
    return lifecycle.describe(answer["id"], url)


def active_session(url: str, monkeypatch, teacher: str = "tina", owner: str = "cs101", seats: int = 2) -> int:
    """A class session of ``owner`` that runs now (booked for the next hour, the clock moved to its start, the due
    reservations started): its id."""
    from vcl_sched import lifecycle
    from vcl_sched.bookings import reserve as be_reserve

    with as_user(teacher, url):
        res = be_reserve(owner=owner, image="vcl-guest", cores=1, ram_mb=256, seats=seats, start="2026-11-23 09:00",
                         hours=2, prelaunch=False, url=url)
    assert res["state"] == "accepted", res
    monkeypatch.setenv("VCL_NOW", "2026-11-23 09:00")
    lifecycle.start_due_reservations(url=url)
    return res["id"]


def submitted(runs: Runs, n: int = 1, seconds: float = 10.0) -> list[str]:
    """The playbooks the jobs ran, once ``n`` of them have (the jobs run in the portal's worker threads)."""
    import time

    deadline = time.monotonic() + seconds
    while len(runs.calls) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return [call[0] for call in runs.calls]
