"""The portal's defences (SQLite and PostgreSQL): CSRF on every POST, login included; who sees and acts on what
(students, teachers, admins); the login rate limit; sessions (a new cookie at login, logout, a removed user or a
changed role taking effect at the next request); the headers of every page; and the console page, which hands
the VM's owner its VNC password in the page body only and writes websockify's one-time token file."""

from __future__ import annotations

import html
import os
import re
import stat
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from starlette.testclient import TestClient

from tests.portal.conftest import (
    PASSWORD,
    active_session,
    as_user,
    csrf_of,
    dump,
    login,
    portal_config,
    post,
    running_vm,
    submitted,
)
from vcl_sched import people
from vcl_sched.bookings import reserve as be_reserve
from vcl_sched.portal import console
from vcl_sched.portal.app import create_app


def client_of(app, name: str | None = None) -> TestClient:
    client = TestClient(app, raise_server_exceptions=False)
    if name:
        assert login(client, name).status_code == 303
    return client


def whoami(client: TestClient) -> str | None:
    """Who the portal thinks the client is (None: sent to the login page)."""
    response = client.get("/vms", follow_redirects=False)
    if response.status_code != 200:
        return None
    return re.search(r'<span id="whoami">([^ ]+) ', response.text).group(1)


# --- CSRF ------------------------------------------------------------------------------------------------------

def post_routes(url: str, monkeypatch) -> tuple[list[tuple[str, str, dict]], int]:
    """(user, path, form) of every POST route with a form that would be accepted, and ann's VM id."""
    vm = running_vm(url)
    seat = active_session(url, monkeypatch)
    with as_user("tina", url):
        later = be_reserve(owner="cs101", image="vcl-guest", cores=1, ram_mb=256, start="2026-11-24 09:00", hours=1,
                           url=url)["id"]
    book = {"owner": "cs101", "image": "vcl-guest", "seats": "1", "cores": "1", "ram_mb": "256",
            "start": "2026-11-24 14:00", "hours": "1", "prelaunch": "1"}
    request = {"owner": "cs101", "image": "vcl-guest", "cores": "1", "ram_mb": "256", "hours": "1"}
    routes = [("ann", f"/vms/{vm['id']}/{a}", {}) for a in ("stop", "suspend", "resume", "launch")]
    routes += [("ann", f"/vms/{vm['id']}/extend", {"hours": "1"}), ("ann", "/request", request),
               ("ann", f"/seats/{seat}/take", {}), ("tina", "/sessions", book),
               ("tina", f"/sessions/{later}/cancel", {}), ("ann", "/logout", {})]
    return routes, vm["id"]


def test_every_post_without_the_token_or_with_another_sessions_token_is_refused(app, school, runs, monkeypatch):
    routes = post_routes(school, monkeypatch)[0]
    clients = {name: client_of(app, name) for name in ("ann", "tina")}
    other = client_of(app, "bob")
    stranger = csrf_of(other.get("/vms").text)
    before = dump(school)
    for user, path, form in routes:
        client = clients[user]
        for label, data in (("no token", form), ("bob's token", {**form, "csrftoken": stranger}),
                            ("an empty token", {**form, "csrftoken": ""}),
                            ("a forged token", {**form, "csrftoken": "x" * 40})):
            response = client.post(path, data=data, follow_redirects=False)
            assert response.status_code == 403, (path, label, response.status_code)
        assert whoami(client) == user, path  # the refused logout did not log out
    assert dump(school) == before and runs.calls == []
    # The control: the same post with the page's own token goes through.
    seat = next(route[1] for route in routes if route[1].startswith("/seats/"))
    assert post(clients["ann"], seat, page="/seats").status_code == 303
    assert submitted(runs) == ["seat"]


def test_login_is_csrf_protected_too(app, school):
    client = client_of(app)
    page = client.get("/login")
    assert page.status_code == 200 and csrf_of(page.text)
    for data in ({"name": "ann", "password": PASSWORD},
                 {"name": "ann", "password": PASSWORD, "csrftoken": csrf_of(client_of(app).get("/login").text)}):
        assert client.post("/login", data=data, follow_redirects=False).status_code == 403
        fresh = TestClient(app, raise_server_exceptions=False)  # no cookie at all: still protected
        assert fresh.post("/login", data=data, follow_redirects=False).status_code == 403
    assert whoami(client) is None
    assert login(client, "ann").status_code == 303 and whoami(client) == "ann"


# --- roles -------------------------------------------------------------------------------------------------------

def test_a_student_may_not_book_and_sees_only_their_own_vms(app, school, runs):
    mine = running_vm(school)
    theirs = running_vm(school, user="bob", port=5902)  # same group: a classmate's VM is still not hers
    client = client_of(app, "ann")
    before = dump(school)
    assert client.get("/sessions").status_code == 403
    for path in (f"/vms/{theirs['id']}", f"/vms/{theirs['id']}/console"):
        response = client.get(path)
        assert response.status_code == 403 and 'data-field="id"' in response.text, path
    for action, data in (("stop", {}), ("suspend", {}), ("resume", {}), ("launch", {}), ("extend", {"hours": "1"})):
        response = post(client, f"/vms/{theirs['id']}/{action}", data)
        assert response.status_code == 403, action
    with as_user("tina", school):
        res = be_reserve(owner="cs101", image="vcl-guest", cores=1, ram_mb=256, start="2026-11-24 09:00", hours=1,
                         url=school)["id"]
    before = dump(school)
    assert post(client, "/sessions", {"owner": "cs101", "seats": "1", "cores": "1", "ram_mb": "256",
                                      "start": "2026-11-24 14:00", "hours": "1"}).status_code == 403
    assert post(client, f"/sessions/{res}/cancel").status_code == 403
    assert dump(school) == before and runs.calls == []
    listed = client.get("/vms").text
    assert f'id="vm-{mine["id"]}"' in listed and f'id="vm-{theirs["id"]}"' not in listed


def test_a_teacher_sees_the_groups_vms_but_only_the_owner_opens_a_console(app, school, tmp_path):
    ann = running_vm(school)
    eve = running_vm(school, user="eve", owner="ma201", port=5902)
    write_password(tmp_path / "consoles", ann, "Pw4ann00")
    tina = client_of(app, "tina")
    listed = tina.get("/vms").text
    assert f'id="vm-{ann["id"]}"' in listed and f'id="vm-{eve["id"]}"' not in listed
    assert tina.get(f"/vms/{ann['id']}").status_code == 200
    assert tina.get(f"/vms/{eve['id']}").status_code == 403
    console_page = tina.get(f"/vms/{ann['id']}/console")
    assert console_page.status_code == 403 and "Pw4ann00" not in console_page.text
    assert 'id="open-console"' not in tina.get(f"/vms/{ann['id']}").text
    admin = client_of(app, "root1")
    listed = admin.get("/vms").text
    assert f'id="vm-{ann["id"]}"' in listed and f'id="vm-{eve["id"]}"' in listed
    assert admin.get(f"/vms/{eve['id']}").status_code == 200 and admin.get("/sessions").status_code == 200
    assert admin.get(f"/vms/{ann['id']}/console").status_code == 403  # the owner's only, even for an admin
    assert not list_tokens(tmp_path)


# --- the login limit ----------------------------------------------------------------------------------------------

def test_after_the_limit_of_failed_logins_even_the_right_password_waits(school, tmp_path, runs):
    app = create_app(portal_config(school, tmp_path, login_per_minute=3), run=runs)
    client = client_of(app)
    for _attempt in range(3):
        assert login(client, "ann", "wrong password").status_code == 401
    refused = login(client, "ann")
    assert refused.status_code == 429 and "too many login attempts" in refused.text
    assert whoami(client) is None
    assert login(client, "bob").status_code == 303 and whoami(client) == "bob"  # another name still logs in


# --- sessions -------------------------------------------------------------------------------------------------

def test_login_gives_a_new_session_cookie_and_logout_ends_it(app, school):
    client = client_of(app, "bob")
    bobs = client.cookies.get("vcl_session")
    assert bobs and login(client, "ann").status_code == 303
    anns = client.cookies.get("vcl_session")
    assert anns and anns != bobs and whoami(client) == "ann"
    replay = TestClient(app, raise_server_exceptions=False)
    replay.cookies.set("vcl_session", bobs)
    assert whoami(replay) is None  # the session held before the login ended with it (and was never ann's)
    response = client.post("/logout", data={"csrftoken": csrf_of(client.get("/vms").text)}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert not client.cookies.get("vcl_session") and whoami(client) is None


def test_a_copy_of_the_cookie_is_dead_after_logout(app, school):
    client = client_of(app, "ann")
    copy = client.cookies.get("vcl_session")
    replay = TestClient(app, raise_server_exceptions=False)
    replay.cookies.set("vcl_session", copy)
    assert whoami(replay) == "ann"  # a copy works while the session lasts (the cookie is the key)...
    client.post("/logout", data={"csrftoken": csrf_of(client.get("/vms").text)})
    assert whoami(replay) is None  # ...and not after the logout: the session is ended on the server
    assert whoami(client_of(app, "ann")) == "ann" and whoami(replay) is None  # a new login is a new session


def test_a_session_ends_with_the_portal(school, tmp_path, runs):
    # The sessions live in the portal's process: a restart (a new app, same secret) logs everybody out.
    cfg = portal_config(school, tmp_path)
    client = client_of(create_app(cfg, run=runs), "ann")
    copy = client.cookies.get("vcl_session")
    again = TestClient(create_app(cfg, run=runs), raise_server_exceptions=False)
    again.cookies.set("vcl_session", copy)
    assert whoami(again) is None


def test_a_removed_user_is_logged_out_at_the_next_request(app, school):
    client = client_of(app, "bob")
    people.remove_user("bob", url=school)
    response = client.get("/vms", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/login")
    assert whoami(client) is None
    people.add_user("bob", role="student", password=PASSWORD, url=school)  # a new bob is not the old session's
    assert whoami(client) is None


def test_a_changed_role_takes_effect_at_once(app, school):
    client = client_of(app, "ann")
    assert client.get("/sessions").status_code == 403
    people.set_role("ann", "teacher", url=school)
    assert client.get("/sessions").status_code == 200
    people.set_role("ann", "student", url=school)
    assert client.get("/sessions").status_code == 403
    assert re.search(r'id="whoami">ann \(student\)', client.get("/vms").text)


# --- headers ------------------------------------------------------------------------------------------------------

def test_every_page_is_not_cached_and_has_a_content_security_policy(app, school):
    vm = running_vm(school)
    visitor = client_of(app)
    client = client_of(app, "ann")
    job = post(client, f"/vms/{vm['id']}/suspend")
    pages = [(visitor, "/login"), (visitor, "/nope"), (client, "/vms"), (client, "/request"), (client, "/seats"),
             (client, "/status"), (client, "/status/timeline.svg"), (client, f"/vms/{vm['id']}"),
             (client, "/sessions"), (client, "/vms/99999"), (client, job.headers["location"]),
             (client, job.headers["location"] + ".json")]
    for who, path in pages:
        response = who.get(path, follow_redirects=False)
        assert response.headers.get("cache-control") == "no-store", path
        csp = response.headers.get("content-security-policy", "")
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, path
        assert response.headers.get("x-frame-options") == "DENY", path
    session_cookie = login(client_of(app), "bob").headers["set-cookie"].lower()
    assert session_cookie.startswith("vcl_session=") and "httponly" in session_cookie
    assert "samesite=lax" in session_cookie


# --- the console ----------------------------------------------------------------------------------------------

def write_password(directory: Path, vm: dict, password: str) -> Path:
    """The VNC password file as the launch writes it: vm-ID-MAC.vnc (the MAC without colons), mode 0600."""
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / f"vm-{vm['id']}-{vm['mac'].replace(':', '')}.vnc"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    return path


def list_tokens(tmp_path: Path) -> list[Path]:
    tokens = tmp_path / "tokens"
    return sorted(tokens.iterdir()) if tokens.exists() else []


def test_the_console_hands_the_password_in_the_page_only_and_writes_a_token_file(app, school, tmp_path, runs):
    vm = running_vm(school)
    secret = "Zq7Rw3Kp"
    write_password(tmp_path / "consoles", vm, secret)
    (tmp_path / "tokens").mkdir(mode=0o700)
    stale = tmp_path / "tokens" / ("s" * 32)
    stale.write_text(f"{'s' * 32}: 10.77.0.21:5901\n")
    os.utime(stale, (time.time() - console.TOKEN_SECONDS - 60,) * 2)
    client = client_of(app, "ann")
    response = client.get(f"/vms/{vm['id']}/console")
    assert response.status_code == 200
    body = response.text
    assert f'data-password="{secret}"' in body and body.count(secret) == 1
    # Never in a URL (of the page, its links, its websocket), a header or a cookie.
    urls = re.findall(r'(?:href|src|data-url|action)="([^"]*)"', body)
    assert urls and not any(secret in html.unescape(u) for u in urls)
    assert secret not in str(response.url) and secret not in str(response.headers)
    assert not any(secret in (c.value or "") for c in client.cookies.jar)
    # The token file: websockify's TokenFile line for the slave's VNC port, readable by its owner only.
    ws = html.unescape(re.search(r'data-url="([^"]+)"', body).group(1))
    token = parse_qs(urlsplit(ws).query)["token"][0]
    assert ws.startswith("wss://") and ":6080/" in ws
    assert not stale.exists()  # old tokens are swept
    files = list_tokens(tmp_path)
    assert [f.name for f in files] == [token]
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tokens").stat().st_mode) == 0o700
    assert files[0].read_text() == f"{token}: 10.77.0.21:5901\n" and secret not in files[0].read_text()
    assert "wss://testserver:6080" in response.headers["content-security-policy"]
    # Each opening is a new token; the password is in none of them, nor in the database, nor in a job's lines.
    again = client.get(f"/vms/{vm['id']}/console")
    assert again.status_code == 200 and len(list_tokens(tmp_path)) == 2
    job = post(client, f"/vms/{vm['id']}/stop")
    assert submitted(runs) == ["stop"]
    progress = client.get(job.headers["location"] + ".json").json()
    assert runs.calls[0][1]["id"] == str(vm["id"]) and runs.calls[0][1]["acting_user"] == "ann"
    assert secret not in str(runs.calls)
    assert secret not in str(progress) and secret not in dump(school)
    assert not any(secret in f.read_text() for f in list_tokens(tmp_path))


def test_no_console_without_a_running_vm_a_port_or_a_password_file(app, school, tmp_path):
    no_file = running_vm(school)
    no_port = running_vm(school, port=None)
    linked = running_vm(school, port=5903)
    with as_user("ann", school):
        from vcl_sched.bookings import request as be_request

        pending = be_request(owner="cs101", image="vcl-guest", cores=1, ram_mb=256, hours=1, url=school)
    target = write_password(tmp_path / "consoles", no_port, "Aa11Bb22")
    write_password(tmp_path / "consoles", pending, "Aa11Bb22")
    (tmp_path / "consoles" / f"vm-{linked['id']}-{linked['mac'].replace(':', '')}.vnc").symlink_to(target)
    client = client_of(app, "ann")
    for vm in (no_file, no_port, linked, pending):
        response = client.get(f"/vms/{vm['id']}/console")
        assert response.status_code == 409 and 'data-field="id"' in response.text, vm["id"]
        assert "Aa11Bb22" not in response.text
    assert not list_tokens(tmp_path)
