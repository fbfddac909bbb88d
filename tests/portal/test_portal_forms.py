"""Bad input through every form of the portal is refused naming the field, and nothing is written (SQLite and
PostgreSQL): login; a request; a VM's extension; a session's booking; taking a seat; cancelling a session; a VM's
stop, suspend, resume and launch with bad ids in the path.

Each form gets the project's classes of hostile values (tests/hostile_cases.py: Jinja, YAML tags, shell, paths,
huge numbers, malformed names; MARKER is a file that appears if any layer ran the value) and the browser's own
(empty, too long, negative, text where a number goes, NUL, ``{{ 7*7 }}``, an SQL quote, unicode, a value given
twice, a field the form does not have). Every case must answer 4xx with an element ``data-field="FIELD"`` naming
the field, no traceback, the same rows in every table, and no playbook submitted. Each test runs its form's cases
in a loop and reports every case that went wrong at once."""

from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import hostile_cases as hc
import pytest
from starlette.testclient import TestClient

from tests.portal.conftest import (
    active_session,
    as_user,
    csrf_of,
    dump,
    login,
    portal_config,
    running_vm,
    submitted,
)
from vcl_sched.bookings import reserve as be_reserve
from vcl_sched.portal.app import create_app

# The browser's own hostile values, by what they try.
BROWSER = {
    "empty": "",
    "long": "x" * 10_000,
    "long digits": "9" * 400,
    "negative": "-1",
    "text": "two",
    "NUL": "1\x00",
    "jinja": "{{ 7*7 }}",
    "sql": "1' OR '1'='1",
    "unicode": "½",
    "zero width": "1\u200b",
    "right-to-left": "\u202e1",
    "fullwidth": "ｃｓ１０１",
}
# The hostile matrix's classes by the kind of field (hostile_cases.KIND_CLASSES).
KINDS = {"number": "number", "flag": "choice", "name": "name", "time": "time", "weekdays": "choice"}


@dataclass(frozen=True)
class Case:
    label: str
    path: str
    data: dict[str, Any]
    field: str
    page: str  # the page whose form (and CSRF token) the post comes from
    status: tuple[int, ...] = (400, 403, 404, 409)


def hostile(kind: str, marker: Path, skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(label, value) pairs for a field of ``kind``: the browser's values then the matrix's, minus ``skip``
    (the labels of values that are valid in that field)."""
    out = [(label, value) for label, value in BROWSER.items() if label not in skip]
    for cls in hc.CLASSES:
        for n, value in enumerate(hc.payloads(KINDS[kind], cls)):
            value = value.replace("MARKER", str(marker)).replace("STORE", "/var/lib/vcl/images")
            out.append((f"{cls} {n}", value.replace("OTHER_POOL", "10.77.1.0/24")))
    return out


def shown_fields(text: str) -> list[str]:
    return [html.unescape(f) for f in re.findall(r'data-field="([^"]*)"', text)]


def error_texts(text: str) -> list[str]:
    return [html.unescape(t) for t in re.findall(r'data-field="[^"]*">([^<]*)<', text)]


def check(client: TestClient, url: str, runs, case: Case, marker: Path) -> list[str]:
    """What went wrong with ``case`` (nothing: it was refused as it should be)."""
    before = dump(url)
    token = csrf_of(client.get(case.page).text)
    response = client.post(case.path, data={**case.data, "csrftoken": token}, follow_redirects=False)
    problems = []
    if response.status_code not in case.status:
        problems.append(f"status {response.status_code} (expected one of {case.status})")
    fields = shown_fields(response.text)
    if case.field not in fields:
        problems.append(f"the page names {fields or 'no field'}, not {case.field!r}")
    if "Traceback" in response.text or response.status_code >= 500:
        problems.append("a traceback or a server error")
    if any("49" in t for t in error_texts(response.text)) and any("7*7" in str(v) for v in case.data.values()):
        problems.append("{{ 7*7 }} was evaluated")
    if dump(url) != before:
        problems.append("the database changed")
    if runs.calls:
        problems.append(f"playbooks were submitted: {runs.calls}")
        runs.calls.clear()
    if marker.exists():
        problems.append("MARKER was created: the value ran")
        marker.unlink()
    return [f"{case.label}: {p}" for p in problems]


def run_cases(client: TestClient, url: str, runs, cases: list[Case], marker: Path) -> None:
    assert cases
    problems = [p for case in cases for p in check(client, url, runs, case, marker)]
    time.sleep(0.2)  # a job submitted by the last case has had time to start
    if runs.calls:
        problems.append(f"playbooks were submitted: {runs.calls}")
    assert not problems, "\n".join(problems)


def field_cases(path: str, page: str, base: dict[str, str], kinds: dict[str, str], marker: Path,
                skip: dict[str, tuple[str, ...]] | None = None, extra: dict[str, list[tuple[str, str]]] | None = None,
                other_form_field: str = "bogus") -> list[Case]:
    """Every hostile value in every field of a form (the others valid), the field given twice, an unknown field,
    a field of another form, and an over-long field name."""
    skip, extra = skip or {}, extra or {}
    cases = []
    for name, kind in kinds.items():
        for label, value in [*hostile(kind, marker, skip.get(name, ())), *extra.get(name, [])]:
            cases.append(Case(f"{name}={label} {value[:40]!r}", path, {**base, name: value}, name, page))
        cases.append(Case(f"{name} given twice", path, {**base, name: [base.get(name, "1")] * 2}, name, page))
    for unknown in ("bogus", other_form_field, "f" * 100, "{{ 7*7 }}"):
        cases.append(Case(f"unknown field {unknown[:20]!r}", path, {**base, unknown: "1"}, unknown[:32], page))
    return cases


@pytest.fixture
def portal(school, tmp_path, runs):
    """The portal with a login limit no test of this module reaches (the limit is tested in the security tests)."""
    return create_app(portal_config(school, tmp_path, login_per_minute=1000), run=runs)


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "MARKER-ran"


def client_of(app, name: str | None = None) -> TestClient:
    client = TestClient(app, raise_server_exceptions=False)
    if name:
        assert login(client, name).status_code == 303
    return client


def logged_in(client: TestClient) -> bool:
    return client.get("/vms", follow_redirects=False).status_code == 200


# --- login -------------------------------------------------------------------------------------------------

def test_login_refuses_bad_names_naming_the_field_and_writes_nothing(portal, school, runs, marker):
    client = client_of(portal)
    base = {"name": "ann", "password": "Correct horse 42", "next": "/"}
    cases = field_cases("/login", "/login", base, {"name": "name"}, marker, other_form_field="owner",
                        skip={"name": ("text",)})  # "two" is a well-formed name: see the next test
    cases.append(Case("password given twice", "/login", {**base, "password": [base["password"]] * 2}, "password",
                      "/login"))
    cases.append(Case("next given twice", "/login", {**base, "next": ["/", "/"]}, "next", "/login"))
    run_cases(client, school, runs, cases, marker)
    assert not logged_in(client)  # every case had the right password: none of them logged ann in


def test_login_with_a_hostile_password_or_an_unknown_name_is_the_same_wrong_login(portal, school, runs, marker):
    # The password is never named on its own: which of the two was wrong is not told (no oracle for names). The
    # browser's values only: each costs an Argon2 verification.
    client = client_of(portal)
    cases = [Case(f"password={label}", "/login", {"name": "ann", "password": value, "next": "/"}, "_", "/login",
                  (401,)) for label, value in [*BROWSER.items(), ("huge", "p" * 100_000)]]
    cases.append(Case("an unknown name", "/login", {"name": "two", "password": "Correct horse 42"}, "_", "/login",
                      (401,)))
    run_cases(client, school, runs, cases, marker)
    assert not logged_in(client)


def test_login_next_is_a_path_of_the_portal_never_another_site(portal, school):
    client = client_of(portal)
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "{{ 7*7 }}", "javascript:x"):
        token = csrf_of(client.get("/login").text)
        response = client.post("/login", data={"name": "ann", "password": "Correct horse 42", "next": target,
                                               "csrftoken": token}, follow_redirects=False)
        assert response.status_code == 303, target
        location = urlsplit(response.headers["location"])
        assert (location.scheme, location.netloc) == ("", "") and location.path.startswith("/") \
            and not location.path.startswith(("//", "/\\")), (target, location)
        client.post("/logout", data={"csrftoken": csrf_of(client.get("/vms").text)})


# --- a request ---------------------------------------------------------------------------------------------

REQUEST = {"owner": "cs101", "image": "vcl-guest", "cores": "1", "ram_mb": "512", "hours": "1", "disk_gb": "2",
           "keep_disk": "0", "register_as_slave": "0"}
REQUEST_KINDS = {"owner": "name", "image": "name", "cores": "number", "ram_mb": "number", "hours": "number",
                 "disk_gb": "number", "keep_disk": "flag", "register_as_slave": "flag"}


def test_request_refuses_bad_input_naming_the_field_and_submits_nothing(portal, school, runs, marker):
    client = client_of(portal, "ann")
    cases = field_cases("/request", "/request", REQUEST, REQUEST_KINDS, marker, other_form_field="seats",
                        skip={"image": ("empty",), "disk_gb": ("empty",)},  # empty: the image's own
                        extra={"owner": [("a group ann is not in", "ma201"), ("no such group", "nope")],
                               "image": [("no such image", "nope")],
                               "cores": [("zero", "0"), ("a fraction", "1.5"), ("infinity", "inf")],
                               "ram_mb": [("zero", "0"), ("a fraction", "0.5")],
                               "hours": [("zero", "0"), ("beyond the look-ahead", "100000")],
                               "keep_disk": [("two", "2"), ("yes", "yes")],
                               "register_as_slave": [("two", "2"), ("empty", "")]})
    run_cases(client, school, runs, cases, marker)


@pytest.mark.parametrize(("field", "cores", "ram_mb"), [("cores", "99", "512"), ("ram_mb", "8", "100000")])
def test_a_request_no_slave_can_hold_is_the_schedulers_refusal_naming_the_field(
        portal, school, runs, field, cores, ram_mb):
    # Well-formed but too big for any slave: not a form error but the scheduler's answer (200), which names the
    # field all the same; nothing is written, no playbook runs. (The answer without a warning was a 500.)
    client = client_of(portal, "ann")
    before = dump(school)
    token = csrf_of(client.get("/request").text)
    response = client.post("/request", data={**REQUEST, "cores": cores, "ram_mb": ram_mb, "csrftoken": token})
    assert response.status_code == 200 and 'data-decision="refused"' in response.text
    why = html.unescape(re.search(r'<p id="why">([^<]*)</p>', response.text).group(1))
    assert why.startswith(f"Refused: {field}: ") and "can never fit" in why
    assert dump(school) == before and runs.calls == []


def test_a_good_request_is_placed_and_its_launch_submitted(portal, school, runs):
    # The control of the test above: the same form with good values writes the claim and submits the launch.
    client = client_of(portal, "ann")
    before = dump(school)
    token = csrf_of(client.get("/request").text)
    response = client.post("/request", data={**REQUEST, "csrftoken": token}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/jobs/")
    assert dump(school) != before
    assert submitted(runs) == ["launch"] and runs.calls[0][1]["acting_user"] == "ann"


# --- a VM's extension and actions -----------------------------------------------------------------------------

def test_extend_refuses_bad_hours_naming_the_field_and_writes_nothing(portal, school, runs, marker):
    vm = running_vm(school)
    client = client_of(portal, "ann")
    path, page = f"/vms/{vm['id']}/extend", f"/vms/{vm['id']}"
    cases = field_cases(path, page, {"hours": "1"}, {"hours": "number"}, marker, other_form_field="cores",
                        extra={"hours": [("zero", "0"), ("a fraction", "1.5"), ("beyond the look-ahead", "10000")]})
    run_cases(client, school, runs, cases, marker)


def test_extend_of_a_vm_that_cannot_be_extended_names_the_field_too(portal, school, runs, marker):
    # A pending VM's page has no extension form: its error is shown all the same.
    with as_user("ann", school):
        from vcl_sched.bookings import request as be_request

        pending = be_request(owner="cs101", image="vcl-guest", cores=1, ram_mb=512, hours=1, url=school)["id"]
    client = client_of(portal, "ann")
    cases = [Case("bad hours of a pending VM", f"/vms/{pending}/extend", {"hours": "x"}, "hours", f"/vms/{pending}"),
             Case("a pending VM", f"/vms/{pending}/extend", {"hours": "1"}, "id", f"/vms/{pending}")]
    run_cases(client, school, runs, cases, marker)


BAD_IDS = {"text": "abc", "negative": "-1", "zero": "0", "no such VM": "99999", "sql": "1' OR '1'='1",
           "NUL": "\x00", "jinja": "{{ 7*7 }}", "huge": str(2**64), "long": "9" * 5000, "fraction": "1.5",
           "unicode": "½", "nan": "nan", "shell": "1;id", "command": "$(id)"}


def in_path(value: str, marker: Path) -> str:
    return quote(value.replace("MARKER", str(marker)), safe="")


@pytest.mark.parametrize("action", ["stop", "suspend", "resume", "launch", "extend"])
def test_vm_actions_with_bad_ids_are_refused_naming_the_id(portal, school, runs, marker, action):
    mine = running_vm(school)
    theirs = running_vm(school, user="eve", owner="ma201", port=5902)
    client = client_of(portal, "ann")
    data = {"hours": "1"} if action == "extend" else {}
    cases = [Case(f"id={label}", f"/vms/{in_path(value, marker)}/{action}", data,
                  "id", "/vms") for label, value in BAD_IDS.items()]
    cases.append(Case("another student's VM", f"/vms/{theirs['id']}/{action}", data, "id", "/vms", (403,)))
    cases.append(Case("an unknown field", f"/vms/{mine['id']}/{action}", {**data, "bogus": "1"}, "bogus", "/vms",
                      (400,)))
    cases.append(Case("a field given twice", f"/vms/{mine['id']}/{action}", {"hours": ["1", "1"]}, "hours",
                      "/vms", (400,)))
    run_cases(client, school, runs, cases, marker)


def test_an_unknown_action_is_refused_naming_it(portal, school, runs, marker):
    vm = running_vm(school)
    client = client_of(portal, "ann")
    cases = [Case(f"action {a!r}", f"/vms/{vm['id']}/{quote(a, safe='')}", {}, "action", "/vms", (404,))
             for a in ("reboot", "console", "Stop", "{{ 7*7 }}", "stop\x00")]
    run_cases(client, school, runs, cases, marker)


# --- class sessions ---------------------------------------------------------------------------------------------

BOOK = {"owner": "cs101", "image": "vcl-guest", "seats": "2", "cores": "1", "ram_mb": "512",
        "start": "2026-11-24 09:00", "hours": "2", "weekdays": "", "weeks": "", "prelaunch": "1"}
BOOK_KINDS = {"owner": "name", "image": "name", "seats": "number", "cores": "number", "ram_mb": "number",
              "start": "time", "hours": "number", "weekdays": "weekdays", "prelaunch": "flag"}


def test_booking_refuses_bad_input_naming_the_field_and_writes_nothing(portal, school, runs, marker):
    client = client_of(portal, "tina")
    cases = field_cases("/sessions", "/sessions", BOOK, BOOK_KINDS, marker, other_form_field="disk_gb",
                        skip={"image": ("empty",), "weekdays": ("empty",)},  # the image's default; once
                        extra={"owner": [("another teacher's group", "ma201"), ("no such group", "nope")],
                               "seats": [("zero", "0"), ("beyond the pool", "100000")],
                               "start": [("in the past", "2026-11-22 09:00"), ("no time", "2026-11-24"),
                                         ("not a day", "2026-02-30 09:00")],
                               "hours": [("zero", "0"), ("a year", "9000")],
                               "weekdays": [("no such day", "funday"), ("a day twice", "mon,,")],
                               "prelaunch": [("two", "2")]})
    # weeks only counts for a weekly series: its cases book one (weekdays given).
    weekly = {**BOOK, "weekdays": "tue", "weeks": "2"}
    for label, value in [*hostile("number", marker, ("empty",)), ("zero", "0"), ("a century", "5200")]:
        cases.append(Case(f"weeks={label} {value[:40]!r}", "/sessions", {**weekly, "weeks": value}, "weeks",
                          "/sessions"))
    cases.append(Case("weeks given twice", "/sessions", {**weekly, "weeks": ["2", "2"]}, "weeks", "/sessions"))
    run_cases(client, school, runs, cases, marker)


def test_a_good_booking_is_accepted(portal, school, runs):
    # The control of the test above.
    client = client_of(portal, "tina")
    before = dump(school)
    token = csrf_of(client.get("/sessions").text)
    response = client.post("/sessions", data={**BOOK, "csrftoken": token})
    assert response.status_code == 200 and 'id="outcome"' in response.text and 'data-state="accepted"' in response.text
    assert dump(school) != before and runs.calls == []


def test_taking_a_seat_refuses_bad_ids_naming_the_reservation(portal, school, runs, marker, monkeypatch):
    running = active_session(school, monkeypatch)
    theirs = active_session(school, monkeypatch, teacher="tom", owner="ma201", seats=1)
    with as_user("tina", school):
        later = be_reserve(owner="cs101", image="vcl-guest", cores=1, ram_mb=256, start="2026-11-24 09:00", hours=1,
                           url=school)["id"]
    client = client_of(portal, "ann")
    cases = [Case(f"id={label}", f"/seats/{in_path(value, marker)}/take", {}, "reservation", "/seats")
             for label, value in BAD_IDS.items()]
    cases += [Case("another group's session", f"/seats/{theirs}/take", {}, "reservation", "/seats", (403,)),
              Case("a session not running yet", f"/seats/{later}/take", {}, "reservation", "/seats", (409,)),
              Case("an unknown field", f"/seats/{running}/take", {"bogus": "1"}, "bogus", "/seats", (400,)),
              Case("a field of another form", f"/seats/{running}/take", {"seats": "1"}, "seats", "/seats", (400,))]
    run_cases(client, school, runs, cases, marker)


def test_cancelling_a_session_refuses_bad_ids_naming_the_reservation(portal, school, runs, marker):
    with as_user("tina", school):
        mine = be_reserve(owner="cs101", image="vcl-guest", cores=1, ram_mb=256, start="2026-11-24 09:00", hours=1,
                          url=school)["id"]
        gone = be_reserve(owner="cs101", image="vcl-guest", cores=1, ram_mb=256, start="2026-11-24 12:00", hours=1,
                          url=school)["id"]
    with as_user("tom", school):
        theirs = be_reserve(owner="ma201", image="vcl-guest", cores=1, ram_mb=256, start="2026-11-24 09:00",
                            hours=1, url=school)["id"]
    from vcl_sched import sessions

    sessions.cancel(reservation=gone, url=school)
    client = client_of(portal, "tina")
    cases = [Case(f"id={label}", f"/sessions/{in_path(value, marker)}/cancel", {}, "reservation", "/sessions")
             for label, value in BAD_IDS.items()]
    cases += [Case("another teacher's session", f"/sessions/{theirs}/cancel", {}, "reservation", "/sessions",
                   (403,)),
              Case("a cancelled session", f"/sessions/{gone}/cancel", {}, "reservation", "/sessions", (409,)),
              Case("an unknown field", f"/sessions/{mine}/cancel", {"bogus": "1"}, "bogus", "/sessions", (400,)),
              Case("a field of another form", f"/sessions/{mine}/cancel", {"series": "1"}, "series", "/sessions",
                   (400,))]
    run_cases(client, school, runs, cases, marker)
