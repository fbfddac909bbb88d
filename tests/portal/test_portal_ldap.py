"""Logging in to the portal with the college directory (SPEC §7): a real OpenLDAP server (tests/slapd.py) on
loopback, the portal's login form, on SQLite and PostgreSQL. A first login creates the user as a student and
opens their pages; a wrong directory password is refused like a wrong local one; local users still log in."""

from __future__ import annotations

import pytest
from slapd import running_slapd
from starlette.testclient import TestClient

from tests.portal.conftest import PASSWORD, login
from vcl_sched import people, service


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    with running_slapd(tmp_path_factory.mktemp("slapd")) as server:
        yield server


def test_a_directory_user_logs_in_to_the_portal_and_is_a_student(app, school, directory):
    service.configure({"ldap_url": directory.url, "ldap_user_dn": directory.user_dn}, school)
    client = TestClient(app)
    wrong = login(client, "alice", "not-alices-password")
    assert wrong.status_code == 401 and "wrong name or password" in wrong.text
    assert "alice" not in [u["name"] for u in people.list_users(school)]

    ok = login(client, "alice", directory.users["alice"])
    assert ok.status_code == 303 and ok.headers["location"] == "/vms"
    page = client.get("/vms")
    assert page.status_code == 200 and "alice (student)" in page.text
    assert {u["name"]: (u["role"], u["auth"]) for u in people.list_users(school)}["alice"] == ("student", "ldap")
    assert client.get("/sessions").status_code == 403  # a student's pages only

    local = TestClient(app)
    assert login(local, "tina", PASSWORD).headers["location"] == "/sessions"  # local users beside the directory
