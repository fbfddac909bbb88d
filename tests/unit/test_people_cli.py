"""`vcl user ...` and `vcl group ...` end to end through the `vcl` command (cli.main) on a temporary SQLite
database: passwords only from standard input and never printed, --json shapes, one-line errors that name the
field, exit 1 and write nothing."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from vcl_sched import cli

PASSWORD = "Tr0ub4dor & 3"
NEW_PASSWORD = "another-long-one"


VCL = Path(sys.executable).parent / "vcl"


@pytest.fixture
def vcl(tmp_path, monkeypatch, capsys):
    path = tmp_path / "people.sqlite"
    monkeypatch.setenv("VCL_DB_URL", f"sqlite:///{path}")
    monkeypatch.setenv("VCL_NOW", "2026-11-22 10:00")
    monkeypatch.setenv("VCL_ACTOR", "root-at-master")
    outputs: list[str] = []

    def run(*argv: str, stdin: bytes | None = None):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin or b""), encoding="utf-8"))
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        outputs.append(out + err)
        return code, out, err

    assert run("db", "init")[0] == 0
    run.path = path
    run.outputs = outputs
    return run


def dump(path) -> str:
    with sqlite3.connect(path) as conn:
        return "\n".join(conn.iterdump())


def test_people_and_groups_end_to_end(vcl):
    line = (PASSWORD + "\n").encode()
    code, out, _ = vcl("user", "add", "t1", "--role", "teacher", "--password-stdin", "--json", stdin=line)
    assert code == 0 and json.loads(out) == {"id": 1, "name": "t1", "role": "teacher", "auth": "local",
                                             "password_set": True, "groups": []}
    assert vcl("user", "add", "s1")[1] == "user s1 added: student, logs in with no password yet\n"
    assert vcl("user", "add", "l1", "--ldap")[1] == "user l1 added: student, logs in with LDAP\n"

    assert vcl("user", "login", "t1", "--password-stdin", stdin=line) == (0, "teacher\n", "")
    code, out, err = vcl("user", "login", "t1", "--password-stdin", stdin=b"Tr0ub4dor & 4\n")
    assert (code, out, err) == (1, "", "vcl: name or password is wrong\n")
    assert vcl("user", "login", "s1", "--password-stdin", stdin=line)[0] == 1  # no password: cannot log in
    assert vcl("user", "passwd", "t1", "--password-stdin", stdin=NEW_PASSWORD.encode())[1] == \
        "password of t1 set\n"  # the last line may come without its newline
    code, out, _ = vcl("user", "login", "t1", "--password-stdin", "--json", stdin=NEW_PASSWORD.encode() + b"\r\n")
    assert code == 0 and json.loads(out) == {"id": 1, "name": "t1", "role": "teacher"}

    assert vcl("group", "add", "os", "--description", "Operating systems", "--owner", "t1")[1] == \
        "group os added (id 1, owner t1)\n"
    assert vcl("group", "add", "net")[0] == 0  # as before: no owner
    assert vcl("group", "add-member", "os", "s1", "l1")[1] == "group os: added s1, l1 (2 members)\n"
    code, out, _ = vcl("group", "add-member", "os", "s1", "new1", "--create", "--json")
    assert code == 0 and json.loads(out) == {"group": "os", "added": ["new1"], "created": ["new1"], "members": 3}
    code, out, _ = vcl("group", "members", "os", "--json")
    assert [(m["name"], m["role"], m["auth"]) for m in json.loads(out)] == \
        [("l1", "student", "ldap"), ("new1", "student", "local"), ("s1", "student", "local")]
    assert vcl("group", "remove-member", "os", "new1")[1] == "group os: removed new1 (2 members)\n"
    code, out, _ = vcl("group", "list", "--json")
    assert [(g["name"], g["owner"], g["members"], g["description"]) for g in json.loads(out)] == \
        [("net", None, 0, ""), ("os", "t1", 2, "Operating systems")]
    out = vcl("group", "list")[1]
    assert out.splitlines()[0].split() == ["ID", "NAME", "OWNER", "MEMBERS", "DESCRIPTION"]

    assert vcl("user", "set-role", "s1", "teacher")[1] == "s1 is now a teacher\n"
    assert vcl("group", "set-owner", "net", "s1")[1] == "group net is owned by s1\n"
    assert vcl("group", "set-owner", "net", "--none")[1] == "group net is owned by nobody (admins only)\n"
    assert vcl("user", "remove", "new1")[1] == "user new1 removed\n"
    code, out, _ = vcl("user", "list", "--json")
    assert [(u["name"], u["role"], u["auth"], u["password_set"], u["groups"]) for u in json.loads(out)] == [
        ("l1", "student", "ldap", False, ["os"]), ("s1", "teacher", "local", False, ["os"]),
        ("t1", "teacher", "local", True, [])]
    table = vcl("user", "list")[1]
    assert table.splitlines()[0].split() == ["ID", "NAME", "ROLE", "AUTH", "PASSWORD_SET", "GROUPS"]

    code, out, _ = vcl("audit", "--json", "--limit", "100")
    assert {row["actor"] for row in json.loads(out)} == {"root-at-master"}  # the controller (VCL_ACTOR)

    # The password is nowhere: not in anything vcl printed, not in any row of the database.
    everything = "\n".join(vcl.outputs) + dump(vcl.path)
    assert PASSWORD not in everything and NEW_PASSWORD not in everything
    assert "$argon2" not in "\n".join(vcl.outputs) and dump(vcl.path).count("$argon2id$") == 1


@pytest.mark.parametrize(("argv", "stdin", "needle"), [
    (("user", "add", "bad name"), None, "vcl: name: "),
    (("user", "add", "s2", "--role", "boss"), None, "vcl: role: 'boss': choose one of admin, teacher, student"),
    (("user", "add", "s2", "--password-stdin"), b"short\n", "vcl: password: must be 8 to 256 characters long"),
    (("user", "add", "s2", "--password-stdin"), b"tab\tinside-it\n", "vcl: password: must be printable"),
    (("user", "add", "s2", "--password-stdin"), b"\xffnot-utf-8-at-all\n", "vcl: password: is not valid UTF-8"),
    (("user", "add", "s2", "--password-stdin"), b"", "vcl: password: --password-stdin: standard input is empty"),
    (("user", "add", "s2", "--ldap", "--password-stdin"), PASSWORD.encode(), "vcl: password: an LDAP user's"),
    (("user", "add", "s1"), None, "vcl: name: a user named 's1' exists already"),
    (("user", "passwd", "nobody", "--password-stdin"), PASSWORD.encode(), "vcl: name: no user named 'nobody'"),
    (("user", "set-role", "s1", "root"), None, "vcl: role: 'root': choose one of"),
    (("user", "remove", "nobody"), None, "vcl: name: no user named 'nobody'"),
    (("user", "login", "s1", "--password-stdin"), b"\n", "vcl: name or password is wrong"),
    (("group", "add", "os"), None, "vcl: name: a group named 'os' exists already"),
    (("group", "add", "g2", "--owner", "s1"), None, "vcl: owner: s1 is a student: a group's owner is a teacher"),
    (("group", "add-member", "os", "s1", "ghost"), None, "vcl: user: no user named ghost"),
    (("group", "add-member", "nope", "s1"), None, "vcl: group: no group named 'nope'"),
    (("group", "remove-member", "os", "ghost"), None, "vcl: user: no user named ghost"),
    (("group", "members", "nope"), None, "vcl: group: no group named 'nope'"),
    (("group", "set-owner", "os"), None, "vcl: user: name the new owner, or give --none"),
    (("group", "set-owner", "os", "s1"), None, "vcl: owner: s1 is a student"),
])
def test_errors_are_one_line_naming_the_field_and_write_nothing(vcl, argv, stdin, needle):
    assert vcl("user", "add", "s1")[0] == 0 and vcl("group", "add", "os")[0] == 0
    before = dump(vcl.path)
    code, out, err = vcl(*argv, stdin=stdin)
    assert (code, out) == (1, "") and err.startswith(needle) and err.count("\n") == 1, err
    assert dump(vcl.path) == before
    if stdin and stdin.strip():
        assert stdin.decode(errors="replace").strip() not in err


def test_a_password_is_never_an_argument(vcl):
    for argv in (("user", "add", "s1", "--password", PASSWORD), ("user", "passwd", "s1"), ("user", "login", "s1")):
        with pytest.raises(SystemExit) as stop:
            vcl(*argv)
        assert stop.value.code == cli.EXIT_USAGE


def test_the_vcl_command_reads_the_password_from_a_pipe(tmp_path):
    env = {**os.environ, "VCL_DB_URL": f"sqlite:///{tmp_path}/pipe.sqlite", "VCL_ACTOR": "root-at-master"}

    def vcl(*argv: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([VCL, *argv], input=stdin, text=True, capture_output=True, env=env, timeout=60)

    assert vcl("db", "init").returncode == 0
    added = vcl("user", "add", "t1", "--role", "teacher", "--password-stdin", stdin=PASSWORD + "\n")
    assert (added.returncode, added.stderr) == (0, "")
    login = vcl("user", "login", "t1", "--password-stdin", stdin=PASSWORD + "\n")
    assert (login.returncode, login.stdout, login.stderr) == (0, "teacher\n", "")
    wrong = vcl("user", "login", "t1", "--password-stdin", stdin="not " + PASSWORD + "\n")
    assert (wrong.returncode, wrong.stdout, wrong.stderr) == (1, "", "vcl: name or password is wrong\n")
    assert PASSWORD not in added.stdout + login.stdout + wrong.stderr + dump(tmp_path / "pipe.sqlite")
