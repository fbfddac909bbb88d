"""The `vcl` command's contract: --json shapes, exit codes, one-line errors that write nothing."""

from __future__ import annotations

import json

import pytest

from vcl_sched.cli import main


@pytest.fixture
def vcl(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VCL_DB_URL", f"sqlite:///{tmp_path}/cli.sqlite")
    monkeypatch.setenv("VCL_NOW", "2026-11-22 10:00")

    def run(*argv: str):
        monkeypatch.setenv("VCL_NOW", "2026-11-22 10:00")  # --now sets it for the process; undo between runs
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    assert run("db", "init")[0] == 0
    return run


RESERVE = ("reserve", "--owner", "cs", "--cores", "4", "--ram-mb", "600", "--start", "2026-11-23 10:00",
           "--hours", "2", "--platform-value", "5", "--register-as-slave", "1", "--member", "1")


def test_reserve_json_contract(vcl):
    assert vcl("group", "add", "cs")[0] == 0
    assert vcl("slave", "add", "s1", "--address", "10.0.0.21", "--cores", "8", "--ram-mb", "8192",
               "--disk-gb", "50")[0] == 0
    code, out, _ = vcl(*RESERVE, "--json")
    data = json.loads(out)
    assert code == 0
    assert {"id", "priority", "state", "start", "end", "reason"} <= data.keys()
    assert data["state"] == "accepted" and data["start"] == "2026-11-23 10:00"
    code, out, _ = vcl("reservations", "--json")
    listed = json.loads(out)
    assert listed["cores"] == 8 and [r["id"] for r in listed["reservations"]] == [data["id"]]


def test_refusal_exits_3_with_the_reason(vcl):
    vcl("group", "add", "cs")
    code, out, _ = vcl(*RESERVE, "--json")  # no slave: the pool has no cores
    assert code == 3 and json.loads(out)["state"] == "refused" and json.loads(out)["reason"]


@pytest.mark.parametrize(("argv", "needle"), [
    (("slave", "add", "s1", "--address", "nope", "--cores", "8", "--ram-mb", "1", "--disk-gb", "1"), "address:"),
    (("slave", "add", "s1", "--address", "10.0.0.1", "--cores", "-8", "--ram-mb", "1", "--disk-gb", "1"), "cores:"),
    ((*RESERVE[:-2], "--member", "2"), "member:"),
    (("reserve", *RESERVE[1:8], "2026-13-01 10:00", *RESERVE[9:]), "start:"),
    (("config", "set", "placement_policy=random"), "placement_policy:"),
    (("config", "set", "booking.max_hours=-1"), "booking.max_hours"),
    (("--now", "yesterday", "slave", "list"), "VCL_NOW:"),
])
def test_errors_are_one_line_naming_the_field_and_write_nothing(vcl, argv, needle):
    vcl("group", "add", "cs")
    before = vcl("audit", "--json")[1]
    code, out, err = vcl(*argv)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("vcl: ") and needle in err
    assert vcl("audit", "--json")[1] == before


def test_every_listing_has_json(vcl):
    for argv in (("slave", "list"), ("group", "list"), ("image", "list"), ("instances",), ("config", "show"),
                 ("audit",), ("db", "version")):
        code, out, _ = vcl(*argv, "--json")
        assert code == 0
        json.loads(out)


def test_priority_calculator_matches_the_worked_example(vcl):
    code, out, _ = vcl("priority", "--platform-value", "5", "--ram-mb", "600", "--minutes", "45",
                       "--register-as-slave", "1", "--member", "1", "--json")
    assert code == 0 and json.loads(out)["priority"] == pytest.approx(8.793, abs=5e-4)


def test_uninitialised_database_says_how_to_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VCL_DB_URL", f"sqlite:///{tmp_path}/empty.sqlite")
    assert main(["slave", "list"]) == 1
    assert "run `vcl db init`" in capsys.readouterr().err
