"""The portal in a real browser (headless chromium through chromedriver): served by uvicorn over HTTPS, the
session cookie Secure, every page clicked through as a student, a teacher and an admin would, with a screenshot
of each in $VCL_SCREENSHOTS (default build/screenshots). One browser and one server for the module; each test
gets a fresh school (SQLite only: the pages are the same on PostgreSQL, which the TestClient tests cover) and
a fresh portal with the recording runner, so no playbook runs and no VM starts."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from selenium.webdriver.common.by import By
from sqlalchemy import func, select

from tests.portal import browser
from tests.portal.conftest import PASSWORD, Runs, portal_config
from vcl_sched import acting, db, lifecycle, people
from vcl_sched.bookings import request as be_request
from vcl_sched.bookings import reserve as be_reserve
from vcl_sched.models import Instance
from vcl_sched.portal import app as portal_app
from vcl_sched.portal.app import create_app

MISSING = browser.missing()

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(MISSING is not None, reason=MISSING or ""),
    pytest.mark.parametrize("db_url", ["sqlite"], indirect=True),
]


@dataclass
class Site:
    base: str
    db_url: str
    runs: Runs

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture(scope="module", autouse=True)
def cheap_hashes():
    """Argon2id at its lowest cost: the school's six passwords and each login take milliseconds, not a third of
    a second each (the real parameters are tests/db/test_people.py's)."""
    from argon2 import PasswordHasher

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(people, "hasher", lambda: PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
        yield


@pytest.fixture(scope="module")
def switch():
    return browser.AppSwitch()


@pytest.fixture(scope="module")
def web(switch, tmp_path_factory):
    """The module's server and browser: (base URL, driver). The browser quits first, so its connections are
    gone when the server stops."""
    certfile, keyfile = browser.self_signed_cert(tmp_path_factory.mktemp("tls"))
    with (browser.serve(switch, certfile, keyfile) as base,
          browser.chromium(tmp_path_factory.mktemp("chromium")) as chrome):
        yield base, chrome


@pytest.fixture
def driver(web):
    return web[1]


@pytest.fixture
def site(school, tmp_path, runs, switch, web):
    """A fresh portal (https=True: Secure cookies) on the module's server; the browser a new visitor."""
    app = create_app(portal_config(school, tmp_path, https=True), run=runs)
    switch.app = app
    base, driver = web
    browser.clear_cookies(driver)
    yield Site(base, school, runs)
    switch.app = None
    app.state.portal.jobs.shutdown()


def instances(url: str) -> int:
    with db.read(url) as session:
        return session.scalar(select(func.count()).select_from(Instance))


def as_user(name: str, url: str):
    return acting.acting(people.actor_for(name, url))


def test_student_requests_a_vm(site, driver):
    browser.login(driver, site.base, "ann", PASSWORD)
    assert driver.current_url == site.url("/vms")
    assert browser.by_id(driver, "whoami").text == "ann (student)"
    cookie = driver.get_cookie("vcl_session")
    assert cookie["secure"] and cookie["httpOnly"]
    assert driver.find_element(By.TAG_NAME, "h1").text == "My VMs"
    assert "No VM yet" in browser.by_id(driver, "no-vms").text
    browser.screenshot(driver, "student-vms-empty")

    driver.get(site.url("/request"))
    assert browser.by_id(driver, "owner").get_attribute("value") == "cs101"
    browser.fill(driver, {"cores": "x", "hours": "2"})
    browser.click_and_wait(driver, browser.by_id(driver, "submit-request"))
    assert browser.status(driver) == 400
    error = browser.by_id(driver, "error-cores")
    assert error.text.startswith("cores: "), error.text
    beside = driver.execute_script("return document.getElementById('cores').closest('label').nextElementSibling")
    assert beside == error, "the error is not next to the cores field"
    assert browser.by_id(driver, "cores").get_attribute("value") == "x"  # what was typed stays
    assert browser.by_id(driver, "hours").get_attribute("value") == "2"
    assert instances(site.db_url) == 0 and site.runs.calls == []
    browser.screenshot(driver, "student-request-bad-cores")

    browser.fill(driver, {"cores": "1"})
    browser.click_and_wait(driver, browser.by_id(driver, "submit-request"))
    assert re.fullmatch(re.escape(site.url("/jobs/")) + r"[\w-]+", driver.current_url), driver.current_url
    browser.wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#job-state[data-state=ok]"),
                     "the launch job to finish")  # the page reloads itself every 2 s while the job runs
    answer = browser.by_id(driver, "answer")
    assert answer.get_attribute("data-decision") == "place"
    placed = re.search(r"placed VM (\d+) on (s[12]) for 2 of 2 hour\(s\)", answer.text)
    assert placed, answer.text
    vm_id, slave = int(placed[1]), placed[2]
    vm = lifecycle.describe(vm_id, site.db_url)
    assert vm["slave"] == slave and vm["cores"] == 1
    assert [(playbook, extravars["id"], extravars["acting_user"]) for playbook, extravars in site.runs.calls] == [
        ("launch", str(vm_id), "ann")]
    assert "TASK [launch]" in browser.by_id(driver, "job-lines").text
    browser.screenshot(driver, "student-job-ok")

    browser.click_and_wait(driver, browser.by_id(driver, "job-back"))
    assert driver.current_url == site.url(f"/vms/{vm_id}")
    assert browser.by_id(driver, "state").text == vm["state"]
    browser.screenshot(driver, "student-vm-page")
    browser.click_and_wait(driver, driver.find_element(By.LINK_TEXT, "My VMs"))
    row = browser.by_id(driver, f"vm-{vm_id}")
    assert row.get_attribute("data-state") == vm["state"]
    assert row.find_element(By.CLASS_NAME, "state").text == vm["state"]
    assert "vcl-guest" in row.text and "cs101" in row.text and "best effort" in row.text
    assert len(driver.find_elements(By.CSS_SELECTOR, "#vms tbody tr")) == 1
    browser.screenshot(driver, "student-vms-one")


def test_teacher_books_a_weekly_session(site, driver, monkeypatch):
    browser.login(driver, site.base, "tina", PASSWORD)
    assert driver.current_url == site.url("/sessions")
    assert browser.by_id(driver, "no-sessions").text == "None booked."
    browser.fill(driver, {"owner": "cs101", "seats": "3", "cores": "1", "ram_mb": "512", "start": "2026-11-23 09:00",
                          "hours": "2", "weekdays": "mon,wed", "weeks": "2"})
    prelaunch = browser.by_id(driver, "prelaunch")
    if not prelaunch.is_selected():
        prelaunch.click()  # every seat started before the bell, handed to the members
    browser.screenshot(driver, "teacher-book-form")
    browser.click_and_wait(driver, browser.by_id(driver, "book"))
    assert browser.status(driver) == 200
    outcome = browser.by_id(driver, "outcome")
    series = re.search(r"Weekly series (\d+): 4 accepted \(0 moved\), 0 refused", outcome.text)
    assert series, outcome.text
    rows = browser.table(driver, "#occurrences")
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("accepted", "2026-11-23 09:00", "2026-11-23 11:00"), ("accepted", "2026-11-25 09:00", "2026-11-25 11:00"),
        ("accepted", "2026-11-30 09:00", "2026-11-30 11:00"), ("accepted", "2026-12-02 09:00", "2026-12-02 11:00")]
    browser.screenshot(driver, "teacher-series-booked")

    browser.click_and_wait(driver, driver.find_element(By.LINK_TEXT, "Class sessions"))
    listed = browser.table(driver, "#sessions")  # session, group, series, state, start, end, seats, why, cancel
    assert [r[:7] for r in listed] == [[r[0], "cs101", series[1], "accepted", r[2], r[3], "3"] for r in rows]
    assert all(r[8] == "Cancel" for r in listed)
    browser.screenshot(driver, "teacher-sessions-list")

    first = int(rows[0][0])  # ten minutes before the bell, the first session's seats start for the members
    monkeypatch.setenv("VCL_NOW", "2026-11-23 08:50")
    started = lifecycle.start_due_reservations(url=site.db_url)
    assert [s["reservation"] for s in started] == [first]
    browser.click_and_wait(driver, driver.find_element(By.LINK_TEXT, "Class sessions"))
    browser.click_and_wait(driver, browser.by_id(driver, f"session-{first}").find_element(By.LINK_TEXT, str(first)))
    assert driver.current_url == site.url(f"/sessions/{first}")
    assert browser.by_id(driver, "session-state").get_attribute("data-state") == "active"
    seats = browser.table(driver, "#seats")
    ann, bob, nobody = started[0]["ids"]  # the third seat waits, started, for whoever takes it
    assert seats == [["1", "ann", str(ann), "pending", "-", "-"], ["2", "bob", str(bob), "pending", "-", "-"],
                     ["3", "-", str(nobody), "pending", "-", "-"]]
    browser.screenshot(driver, "teacher-session-page")


def test_student_cannot_open_anothers_vm(site, driver):
    with as_user("ann", site.db_url):
        vm = be_request(owner="cs101", image="vcl-guest", cores=1, ram_mb=512, hours=2, url=site.db_url)
    lifecycle.mark_running(vm["id"], 5901, url=site.db_url)
    browser.login(driver, site.base, "bob", PASSWORD)
    assert browser.by_id(driver, "no-vms")  # ann's VM is not in bob's list
    for path in (f"/vms/{vm['id']}", f"/vms/{vm['id']}/console"):
        driver.get(site.url(path))
        assert browser.status(driver) == 403, path
        assert browser.fetch(driver, site.url(path))["status"] == 403, path
        assert driver.find_element(By.TAG_NAME, "h1").text == "Not possible"
        assert browser.by_id(driver, "error").text.startswith("id: "), browser.text(driver)
        assert not driver.find_elements(By.ID, "screen")  # no console, no VNC password
    browser.screenshot(driver, "student-other-vm-403")


def test_form_without_csrf_token_is_refused(site, driver):
    browser.login(driver, site.base, "ann", PASSWORD)
    driver.get(site.url("/request"))
    driver.execute_script("document.querySelector('#request-form input[name=csrftoken]').remove()")
    browser.click_and_wait(driver, browser.by_id(driver, "submit-request"))
    assert browser.status(driver) == 403
    assert "csrftoken: this form is not one the portal gave this browser" in browser.text(driver)
    assert instances(site.db_url) == 0 and site.runs.calls == []
    browser.screenshot(driver, "csrf-refused")


def test_status_page_shows_the_lab_and_refreshes(site, driver, monkeypatch):
    with as_user("ann", site.db_url):
        be_request(owner="cs101", image="vcl-guest", cores=2, ram_mb=1024, hours=3, url=site.db_url)
    with as_user("tina", site.db_url):
        be_reserve(owner="cs101", image="vcl-guest", cores=2, ram_mb=1024, seats=3, start="2026-11-23 13:00",
                   hours=4, url=site.db_url)
    monkeypatch.setattr(portal_app, "STATUS_REFRESH", 2)  # the real 30 s, shortened to keep the test fast
    browser.login(driver, site.base, "root1", PASSWORD)
    assert driver.current_url == site.url("/status")
    slaves = browser.table(driver, "#slaves")  # slave, address, state, cores used, RAM used
    assert [r[:3] for r in slaves] == [["s1", "10.77.0.21", "up"], ["s2", "10.77.0.22", "up"]]
    assert sum(int(r[3].split(" / ")[0]) for r in slaves) == 2  # ann's VM; the session starts at 13:00
    assert "2 slave(s)" in browser.by_id(driver, "totals").text
    browser.wait_for(driver, lambda d: d.execute_script(
        "const i = document.getElementById('timeline'); return i.complete && i.naturalWidth > 0"),
        "the timeline picture to load")
    meta = driver.find_element(By.CSS_SELECTOR, "meta[http-equiv=refresh]")
    assert meta.get_attribute("content") == "2"
    assert browser.fetch(driver, site.url("/status"))["headers"]["refresh"] == "2"
    picture = browser.fetch(driver, site.url("/status/timeline.svg"))
    assert picture["status"] == 200 and picture["headers"]["content-type"].startswith("image/svg+xml")
    browser.screenshot(driver, "status")
    origin = driver.execute_script("return performance.timeOrigin")
    browser.wait_for(driver, lambda d: d.execute_script("return performance.timeOrigin") != origin,
                     "the status page to reload itself", timeout=2 + 5)
    assert browser.by_id(driver, "timeline")


def test_logout_returns_to_login(site, driver):
    browser.login(driver, site.base, "ann", PASSWORD)
    browser.click_and_wait(driver, browser.by_id(driver, "logout"))
    assert driver.current_url == site.url("/login")
    assert browser.by_id(driver, "login-form")
    assert not driver.find_elements(By.ID, "whoami")
    browser.screenshot(driver, "logged-out")
    driver.get(site.url("/vms"))
    assert driver.current_url == site.url("/login?next=/vms")
    assert browser.by_id(driver, "login-form")
