"""People (SPEC §7) against a real database (SQLite and PostgreSQL) and a real OpenLDAP server (tests/slapd.py):
Argon2id passwords that are never shown, roles and what each may do, groups' owners and members, LDAP login."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from argon2 import PasswordHasher
from slapd import free_port, running_slapd
from sqlalchemy import select, update

from vcl_sched import acting, audit, catalogue, db, people, service
from vcl_sched.errors import AuthError, ConflictError, ForbiddenError, NotFoundError, ValidationError
from vcl_sched.models import Base, Instance, User

PASSWORD = "Correct horse 42"  # the lab's own (local) passwords in these tests
NEW_PASSWORD = "battery-staple-7"


@pytest.fixture(scope="session")
def directory(tmp_path_factory):
    with running_slapd(tmp_path_factory.mktemp("slapd")) as server:
        yield server


def dump(url: str) -> str:
    """Every row of every table, as text: what a password must never be found in."""
    with db.read(url) as session:
        return "\n".join(repr(row) for table in Base.metadata.sorted_tables
                         for row in session.execute(select(table)).all())


def audit_rows(url: str) -> list[dict]:
    return audit.audit_log(url, limit=1000)


def as_user(name: str, url: str):
    return acting.acting(people.actor_for(name, url))


# --- passwords -------------------------------------------------------------------------------------

def test_passwords_are_argon2id_hashes_that_are_never_shown(db_url):
    row = people.add_user("t1", role="teacher", password=PASSWORD, url=db_url)
    assert row == {"id": row["id"], "name": "t1", "role": "teacher", "auth": "local", "password_set": True,
                   "groups": []}
    with db.read(db_url) as session:
        stored = session.scalar(select(User.password_hash).where(User.name == "t1"))
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$") and PASSWORD not in stored
    assert people.verify_password(stored, PASSWORD) and not people.verify_password(stored, PASSWORD + "x")
    assert not people.verify_password("not a hash", PASSWORD)
    assert people.authenticate("t1", PASSWORD, db_url) == acting.Actor("t1", "teacher", row["id"])
    with pytest.raises(AuthError, match=r"^name or password is wrong$"):
        people.authenticate("t1", "Correct horse 43", db_url)

    with as_user("t1", db_url):
        people.set_password("t1", NEW_PASSWORD, db_url)  # a user may change their own
    with pytest.raises(AuthError):
        people.authenticate("t1", PASSWORD, db_url)
    assert people.authenticate("t1", NEW_PASSWORD, db_url).role == "teacher"

    shown = json.dumps([people.list_users(db_url), audit_rows(db_url)])
    assert "password_set" in shown and "$argon2" not in shown
    changes = [json.loads(r["after"]) for r in audit_rows(db_url) if r["object"] == f"user/{row['id']}"]
    assert changes == [{"password": "set"}, {"auth": "local", "name": "t1", "password": "set", "role": "teacher"}]
    everything = dump(db_url)
    assert PASSWORD not in everything and NEW_PASSWORD not in everything and everything.count("$argon2id$") == 1


def test_an_old_hash_is_replaced_at_the_next_good_login(db_url):
    people.add_user("s1", url=db_url)
    weak = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(PASSWORD)
    db.write(lambda s: s.execute(update(User).where(User.name == "s1").values(password_hash=weak)), db_url)
    assert people.needs_rehash(weak)
    assert people.authenticate("s1", PASSWORD, db_url).name == "s1"
    with db.read(db_url) as session:
        stored = session.scalar(select(User.password_hash).where(User.name == "s1"))
    assert stored != weak and stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$") and not people.needs_rehash(stored)
    assert people.verify_password(stored, PASSWORD)
    assert audit_rows(db_url)[0]["action"] == "rehash" and audit_rows(db_url)[0]["after"] == '{"password": "set"}'


BAD_PASSWORDS = [("short7!", "8 to 256 characters"), ("x" * 257, "8 to 256 characters"), ("tab\there!", "printable"),
                 ("new\nline!", "printable"), ("\udcffbad-utf8", "UTF-8"), (12345678, "not text"), (None, "not text")]


def test_a_bad_new_password_is_one_line_naming_the_field_and_writes_nothing(db_url, db_state):
    people.add_user("s1", url=db_url)
    before = db_state(db_url), dump(db_url)
    for password, why in BAD_PASSWORDS:
        calls = [lambda: people.set_password("s1", password, url=db_url)]  # noqa: B023 - called at once
        if password is not None:  # add_user's None: no password (yet)
            calls.append(lambda: people.add_user("s2", password=password, url=db_url))  # noqa: B023
        for call in calls:
            with pytest.raises(ValidationError, match=why) as err:
                call()
            assert err.value.field == "password" and "\n" not in str(err.value)
            assert not isinstance(password, str) or password not in str(err.value)
    assert (db_state(db_url), dump(db_url)) == before


def test_user_input_and_duplicates(db_url, db_state):
    people.add_user("s1", url=db_url)
    before = db_state(db_url), dump(db_url)
    for call, field in ((lambda: people.add_user("bad name!", url=db_url), "name"),
                        (lambda: people.add_user("s2", role="boss", url=db_url), "role"),
                        (lambda: people.add_user("s2", auth="kerberos", url=db_url), "auth"),
                        (lambda: people.add_user("s2", auth="ldap", password=PASSWORD, url=db_url), "password"),
                        (lambda: people.set_role("s1", "root", db_url), "role")):
        with pytest.raises(ValidationError) as err:
            call()
        assert err.value.field == field
    with pytest.raises(ConflictError, match=r"^name: a user named 's1' exists already$"):
        people.add_user("s1", role="admin", url=db_url)
    with pytest.raises(NotFoundError, match=r"^name: no user named 'nobody'$"):
        people.actor_for("nobody", db_url)
    with pytest.raises(NotFoundError):
        people.set_role("nobody", "teacher", db_url)
    assert (db_state(db_url), dump(db_url)) == before


# --- roles and permissions -------------------------------------------------------------------------

def test_what_each_role_may_do(db_url):
    people.add_user("a1", role="admin", url=db_url)
    for teacher in ("t1", "t2"):
        people.add_user(teacher, role="teacher", url=db_url)
    for student in ("s1", "s2", "s3"):
        people.add_user(student, url=db_url)
    people.add_group("c2", "Networks", owner="t2", url=db_url)  # the controller is an admin

    with as_user("t1", db_url):  # a teacher: their own groups
        assert people.add_group("c1", "Operating systems", url=db_url)["owner"] == "t1"
        with pytest.raises(ForbiddenError, match=r"^owner: t1 is a teacher"):
            people.add_group("c9", owner="t2", url=db_url)
        assert people.add_members("c1", ["s1", "s2"], url=db_url)["added"] == ["s1", "s2"]
        assert people.remove_members("c1", ["s2"], url=db_url)["removed"] == ["s2"]
        assert [m["name"] for m in people.group_members("c1", db_url)] == ["s1"]
        assert [(g["name"], g["owner"], g["members"]) for g in people.list_groups(db_url)] == [("c1", "t1", 1)]
        assert [u["name"] for u in people.list_users(db_url)] == ["s1", "t1"]
        for call in (lambda: people.add_members("c2", ["s3"], url=db_url),
                     lambda: people.remove_members("c2", ["s3"], url=db_url),
                     lambda: people.group_members("c2", db_url)):
            with pytest.raises(ForbiddenError, match=r"^group: t1 is a teacher and does not own group 'c2'$"):
                call()
        for call in (lambda: people.add_user("s4", url=db_url), lambda: people.set_role("s1", "teacher", db_url),
                     lambda: people.remove_user("s1", db_url), lambda: people.set_owner("c1", "t2", db_url)):
            with pytest.raises(ForbiddenError, match=r"only an admin may do this \(t1 is a teacher\)$"):
                call()

    with as_user("s1", db_url):  # a student: nothing of groups or other people
        for call in (lambda: people.add_group("mine", url=db_url), lambda: people.list_groups(db_url),
                     lambda: people.add_members("c1", ["s3"], url=db_url),
                     lambda: people.group_members("c1", db_url)):
            with pytest.raises(ForbiddenError, match=r"^group: s1 is a student"):
                call()
        with pytest.raises(ForbiddenError, match=r"only their own password"):
            people.set_password("s2", PASSWORD, db_url)
        assert [u["name"] for u in people.list_users(db_url)] == ["s1"]

    with as_user("a1", db_url):  # an admin of the database: everything
        people.add_members("c1", ["s3"], url=db_url)
        assert people.set_owner("c1", "a1", db_url) == {"group": "c1", "owner": "a1"}
        with pytest.raises(ValidationError, match=r"^owner: s1 is a student: a group's owner is a teacher or an admin"):
            people.set_owner("c1", "s1", db_url)
        assert {g["name"]: g["members"] for g in people.list_groups(db_url)} == {"c1": 2, "c2": 0}
        assert len(people.list_users(db_url)) == 6

    actors = {(r["actor"], r["action"]) for r in audit_rows(db_url)}
    assert {("t1", "create"), ("t1", "add-member"), ("t1", "remove-member"), ("a1", "add-member"),
            ("a1", "owner"), ("pytest", "create")} <= actors  # the controller: VCL_ACTOR


def test_a_demoted_or_removed_user_loses_their_rights_at_once(db_url):
    people.add_user("t1", role="teacher", url=db_url)
    people.add_group("c1", owner="t1", url=db_url)
    teacher = people.actor_for("t1", db_url)
    with pytest.raises(ConflictError, match=r"^role: t1 owns group"):
        people.set_role("t1", "student", db_url)
    people.set_owner("c1", None, db_url)
    assert people.set_role("t1", "student", db_url) == {"name": "t1", "role": "student"}
    with acting.acting(teacher), pytest.raises(ForbiddenError, match=r"t1 is a student"):
        people.add_group("c2", url=db_url)  # the Actor still says teacher: the database decides
    people.remove_user("t1", db_url)
    with acting.acting(teacher), pytest.raises(ForbiddenError, match=r"is not a user of the lab"):
        people.list_users(db_url)


def test_members_and_the_lookups_other_transactions_use(db_url, db_state):
    people.add_user("t1", role="teacher", url=db_url)
    people.add_group("c1", owner="t1", url=db_url)
    people.add_user("s1", url=db_url)
    before = db_state(db_url), dump(db_url)
    with pytest.raises(ValidationError, match=r"^user: no user named s9, s8 ") as err:
        people.add_members("c1", ["s1", "s9", "s8", "s9"], url=db_url)
    assert err.value.field == "user"
    for call in (lambda: people.add_members("c1", [], url=db_url),
                 lambda: people.add_members("c1", ["x y"], url=db_url),
                 lambda: people.remove_members("c1", ["s9"], url=db_url)):
        with pytest.raises(ValidationError) as err:
            call()
        assert err.value.field == "user"
    with pytest.raises(NotFoundError, match=r"^group: no group named 'nope'$"):
        people.add_members("nope", ["s1"], url=db_url)
    with pytest.raises(ValidationError, match=r"^owner: no user named 'nobody'"):
        people.add_group("c2", owner="nobody", url=db_url)
    assert (db_state(db_url), dump(db_url)) == before

    result = people.add_members("c1", ["s1", "s9", "s8"], url=db_url, create=True)
    assert result == {"group": "c1", "added": ["s1", "s9", "s8"], "created": ["s9", "s8"], "members": 3}
    assert people.add_members("c1", "s1", url=db_url)["added"] == []  # already a member: nothing to do
    created = {u["name"]: u for u in people.list_users(db_url)}["s9"]
    assert (created["role"], created["auth"], created["password_set"], created["groups"]) == \
        ("student", "local", False, ["c1"])

    group_id = catalogue.list_groups(db_url)[0]["id"]
    with db.read(db_url) as session, db.read_direct(db_url) as direct:
        for q in (session, direct):
            t1, role = people.user_info(q, "t1")
            assert role == "teacher" and people.user_info(q, "nobody") is None
            assert people.group_owner(q, group_id) == t1 and people.group_owner(q, 999) is None
            members = people.members_of(q, group_id)
            assert [name for _, name in members] == ["s1", "s8", "s9"]
            assert people.is_member(q, members[0][0], group_id) and not people.is_member(q, t1, group_id)
    assert [m["name"] for m in people.group_members("c1", db_url)] == ["s1", "s8", "s9"]


def test_a_user_holding_a_vm_is_not_removed(lab_db):
    people.add_user("t1", role="teacher", url=lab_db)
    people.set_owner("cs", "t1", lab_db)
    people.add_members("cs", ["s1", "t1"], url=lab_db, create=True)
    placed = service.request(owner="cs", user="s1", cores=1, ram_mb=512, hours=1, platform_value=5,
                             register_as_slave=0, member=1, url=lab_db)
    assert placed["decision"] == "place"
    with pytest.raises(ConflictError, match=rf"^name: s1 holds instance {placed['id']} "):
        people.remove_user("s1", lab_db)
    service.release(placed["id"], url=lab_db)
    assert people.remove_user("s1", lab_db)["removed"] == "s1"
    people.remove_user("t1", lab_db)
    with db.read(lab_db) as session:
        assert session.scalar(select(Instance.user_id).where(Instance.id == placed["id"])) is None
    assert [(g["name"], g["owner"], g["members"]) for g in people.list_groups(lab_db)] == [("cs", None, 0)]
    assert [r["action"] for r in audit_rows(lab_db)[:2]] == ["remove", "remove"]


# --- LDAP login against a real slapd -----------------------------------------------------------------

def use_directory(url: str, server) -> None:
    service.configure({"ldap_url": server.url, "ldap_user_dn": server.user_dn}, url)


def test_ldap_login(db_url, directory):
    alice = directory.users["alice"]
    with pytest.raises(AuthError, match=r"^name or password is wrong$"):
        people.authenticate("alice", alice, db_url)  # no directory configured: alice is nobody
    use_directory(db_url, directory)

    first = people.authenticate("alice", alice, db_url)  # a first login creates the user, a student
    assert (first.name, first.role) == ("alice", "student") and first.user_id is not None
    assert people.list_users(db_url) == [{"id": first.user_id, "name": "alice", "role": "student", "auth": "ldap",
                                          "password_set": False, "groups": []}]
    created = audit_rows(db_url)[0]
    assert (created["object"], created["action"]) == (f"user/{first.user_id}", "create")
    assert json.loads(created["after"]) == {"auth": "ldap", "name": "alice", "role": "student", "via": "ldap login"}
    assert people.authenticate("alice", alice, db_url) == first  # the same user again, nothing new written
    assert audit_rows(db_url)[0]["id"] == created["id"]
    assert people.authenticate("bob.smith-2", directory.users["bob.smith-2"], db_url).role == "student"  # {SSHA}

    before = dump(db_url)
    for name, password in (("alice", alice + "x"), ("alice", alice.upper()), ("carol", "whatever-1"),
                           ("alice", "")):
        with pytest.raises(AuthError, match=r"^name or password is wrong$"):
            people.authenticate(name, password, db_url)
    for name in ("alice,ou=people", "*", "alice)(uid=*", "cn=admin,dc=vcl,dc=test", "alice\\2c", "#alice", " "):
        with pytest.raises(ValidationError) as err:
            people.authenticate(name, alice, db_url)
        assert err.value.field == "name"
    assert dump(db_url) == before and alice not in before

    people.set_role("alice", "teacher", db_url)  # the lab keeps its roles: the directory only vouches
    assert people.authenticate("alice", alice, db_url).role == "teacher"


def test_an_unauthenticated_bind_never_logs_anyone_in(db_url, directory):
    use_directory(db_url, directory)
    if shutil.which("ldapwhoami"):  # the directory itself takes a DN without a password as anonymous...
        whoami = subprocess.run(["ldapwhoami", "-x", "-H", directory.url, "-D", "uid=alice,ou=people,dc=vcl,dc=test",
                                 "-w", ""], capture_output=True, text=True, timeout=10)
        assert whoami.returncode == 0 and whoami.stdout.strip() == "anonymous"
    for password in ("", None, b"alice-in-ldap-1"):  # ...the lab never does
        with pytest.raises(AuthError, match=r"^name or password is wrong$"):
            people.authenticate("alice", password, db_url)
    assert people.list_users(db_url) == []


def test_local_and_ldap_users_side_by_side(db_url, directory):
    people.add_user("alice", password=PASSWORD, url=db_url)  # a local alice: the lab's password, not LDAP's
    catalogue.add_group("cs", url=db_url)
    db.write(lambda s: catalogue.user_ref(s, "bob.smith-2"), db_url)  # named in a request: no password
    use_directory(db_url, directory)
    with pytest.raises(AuthError):
        people.authenticate("alice", directory.users["alice"], db_url)
    assert people.authenticate("alice", PASSWORD, db_url).name == "alice"
    bob = people.authenticate("bob.smith-2", directory.users["bob.smith-2"], db_url)  # LDAP knows him
    assert {u["name"]: u["auth"] for u in people.list_users(db_url)} == {"alice": "local", "bob.smith-2": "ldap"}
    assert (audit_rows(db_url)[0]["object"], audit_rows(db_url)[0]["after"]) == (f"user/{bob.user_id}",
                                                                                 '{"auth": "ldap"}')
    with pytest.raises(ValidationError, match=r"^password: bob.smith-2 logs in through LDAP"):
        people.set_password("bob.smith-2", PASSWORD, db_url)


def test_a_directory_that_does_not_answer(db_url, directory):
    people.add_user("carol", auth="ldap", url=db_url)
    service.configure({"ldap_url": f"ldap://127.0.0.1:{free_port()}", "ldap_user_dn": directory.user_dn}, db_url)
    before = dump(db_url)
    for name in ("carol", "alice"):
        with pytest.raises(AuthError, match=r"^the directory \(ldap_url\) did not answer"):
            people.authenticate(name, directory.users["alice"], db_url)
    assert dump(db_url) == before
