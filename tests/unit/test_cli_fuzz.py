"""Hostile values in every numeric and name option of the `vcl` commands that write (issue 11 item 8).

Whatever the value (huge or non-finite numbers, Jinja and YAML-tag text, control characters, undecodable
argv bytes carried as lone surrogates), `vcl` ends with 0, 1 or 3, never a traceback; on 1 it prints one
line naming the option and the database holds exactly what it held before. The commands run in-process
through ``vcl_sched.cli.main`` (many examples) and a few as real ``vcl`` processes (exit code, stderr)."""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hostile_cases import _env  # the same environment switch as the hostile-input matrix
from hypothesis import given, settings
from hypothesis import strategies as st

from vcl_sched.cli import main

VCL = Path(sys.executable).parent / "vcl"
NOW = "2026-11-22 10:00"

NASTY = [
    "1e308", "-1e308", "1e999", "-1e999", "inf", "-Infinity", "nan", "NaN", "9" * 400, "-" + "9" * 400,
    str(2**63), str(2**63 - 1), str(2**31), str(2**31 - 1), str(-2**31), "1e-320", "5e-324", "-0", "0", "-1",
    "0.5", "4.0", "1_000", "0x10", " 4 ", "", " ", "True", "None", "[1]", "{}", "{{ 7 * 7 }}",
    "{{ lookup('pipe', 'id') }}", "{% for x in y %}", "!!python/object/apply:os.system ['id']", "!unsafe x",
    "a\nb", "\x00", "\t", "\x1b[31mred", "\x7f", "\u2028", "\udcff", "\udc80abc", "é", "'; DROP TABLE slaves; --",
    "$(id)", "`id`", "../../etc/passwd", "x" * 5000, "9999-12-31 23:59", "0001-01-01 00:00",
]

hostile = st.one_of(
    st.sampled_from(NASTY),
    st.integers(min_value=-2**80, max_value=2**80).map(str),
    st.floats().map(repr),
    st.text(max_size=20),
    st.text(st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF), min_size=1, max_size=4),  # surrogateescape
)

# Per command: its argv head, then each option's (argv spelling, a good value). "@name" is a positional,
# written after "--" so that a value starting with "-" stays a value.
COMMANDS: dict[str, tuple[tuple[str, ...], dict[str, tuple[str, str]]]] = {
    "reserve": (("reserve",), {
        "owner": ("--owner", "cs"), "cores": ("--cores", "1"), "ram_mb": ("--ram-mb", "600"),
        "start": ("--start", "2026-11-23 10:00"), "hours": ("--hours", "2"),
        "platform_value": ("--platform-value", "5"), "register_as_slave": ("--register-as-slave", "0"),
        "member": ("--member", "1"), "image": ("--image", "img"), "user": ("--user", "ana")}),
    "request": (("request",), {
        "owner": ("--owner", "cs"), "cores": ("--cores", "1"), "ram_mb": ("--ram-mb", "256"),
        "hours": ("--hours", "1"), "platform_value": ("--platform-value", "5"),
        "register_as_slave": ("--register-as-slave", "0"), "member": ("--member", "0"),
        "disk_gb": ("--disk-gb", "1"), "image": ("--image", "img"), "user": ("--user", "bo")}),
    "slave add": (("slave", "add"), {
        "name": ("@name", "s{n}"), "address": ("--address", "10.{a}.{b}"), "cores": ("--cores", "4"),
        "ram_mb": ("--ram-mb", "4096"), "disk_gb": ("--disk-gb", "20"), "status": ("--status", "down")}),
    "image add": (("image", "add"), {
        "name": ("@name", "im{n}"), "disk_file": ("--disk-file", "/var/lib/vcl/images/im{n}/disk.qcow2"),
        "description": ("--description", "an image"), "cores": ("--cores", "1"), "ram_mb": ("--ram-mb", "512"),
        "disk_gb": ("--disk-gb", "2")}),
}
SETTINGS = ["priority_coefficient", "priority.platform_value_max", "platform_value_max", "decline_limit",
            "launch_lease_minutes", "booking.lead_days", "booking.horizon_days", "booking.lookahead_max_hours",
            "booking.max_hours", "booking.move_step", "booking.day_start", "placement_policy", "mac_prefix"]


_serial = itertools.count(1)


def _argv(command: str, values: dict[str, str]) -> list[str]:
    """The command with ``values`` for some options and good values for the others (names and addresses
    new on every call: a slave or image added by one example is not a conflict for the next)."""
    head, options = COMMANDS[command]
    argv, positional = [*head], []
    n = next(_serial)
    for field, (spelling, good) in options.items():
        value = values.get(field, good.format(n=n, a=f"{10 + n // 65536}.{n // 256 % 256}", b=n % 256))
        if spelling.startswith("@"):
            positional.append(value)
        else:
            argv.append(f"{spelling}={value}")  # --opt=VALUE: a value like "-1e308" is never taken for an option
    return [*argv, "--", *positional] if positional else argv


def _dump(path: Path) -> list[str]:
    """The database's content, row by row (the WAL may be checkpointed into the file at any time, so the
    file's bytes are not the measure: its rows are)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def _run(path: Path, argv: list[str]) -> tuple[int, str, str]:
    """`vcl ARGV` in this process, as a shell would run it: --now and --db changes do not outlive it."""
    out, err = io.StringIO(), io.StringIO()
    with _env(VCL_DB_URL=f"sqlite:///{path}", VCL_NOW=NOW), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse: a usage error
            code = stop.code if isinstance(stop.code, int) else 2
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lab database: group cs, one slave, image img, address pools."""
    path = tmp_path_factory.mktemp("fuzz") / "vcl.sqlite"
    for argv in (["db", "init"], ["group", "add", "cs"],
                 ["slave", "add", "s1", "--address", "10.9.0.1", "--cores", "8", "--ram-mb", "16384",
                  "--disk-gb", "100"],
                 ["image", "add", "img", "--disk-file", "/var/lib/vcl/images/img/disk.qcow2"],
                 ["config", "set", "private_pool=10.9.1.0/24", "public_pool=10.9.2.0/24"]):
        code, _, err = _run(path, argv)
        assert code == 0, (argv, err)
    return path


def _field(err: str) -> str:
    """The field an error line names: `vcl: FIELD: message`."""
    assert err.startswith("vcl: "), err
    return err[len("vcl: "):].split(":", 1)[0]


def _check(path: Path, argv: list[str], named: set[str]) -> tuple[int, str]:
    before = _dump(path)
    code, out, err = _run(path, argv)
    assert "Traceback" not in err, err
    assert code in (0, 1, 3), (argv, code, err)
    if code == 1:
        assert out == "" and err.count("\n") == 1 and err.endswith("\n"), (argv, err)
        assert _field(err) in named, (argv, err)
        assert _dump(path) == before, (argv, err)
    return code, err


@pytest.mark.parametrize("command", list(COMMANDS))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_hostile_option_values_are_one_line_errors_that_write_nothing(lab, command, data):
    options = list(COMMANDS[command][1])
    chosen = data.draw(st.lists(st.sampled_from(options), min_size=1, max_size=3, unique=True), label="options")
    values = {field: data.draw(hostile, label=field) for field in chosen}
    named = set(chosen)
    _check(lab, _argv(command, values), named)


@settings(max_examples=50, deadline=None)
@given(key=st.sampled_from(SETTINGS), value=hostile)
def test_hostile_settings_are_one_line_errors_that_write_nothing(lab, key, value):
    code, _ = _check(lab, ["config", "set", "--", f"{key}={value}"],
                     {key, "settings", "booking", "booking.day_end", "booking.horizon_days"}
                     if key.startswith("booking.") else {key, "settings"})
    if code == 0:  # accepted: put the default back, so the next example starts from a usable lab
        assert _run(lab, ["config", "set", "--", *DEFAULTS])[0] == 0


DEFAULTS = ["priority_coefficient=0.2", "platform_value_max=10", "decline_limit=2", "launch_lease_minutes=30",
            "booking.lead_days=1", "booking.horizon_days=14", "booking.lookahead_max_hours=5",
            "booking.max_hours=4", "booking.move_step=1", "booking.day_start=09:00", "placement_policy=spread",
            "mac_prefix=52:54:00"]


@pytest.mark.parametrize(("argv", "field"), [
    (["--now=" + "\x01", "slave", "list"], "now"),
    (["--now=9999-12-31 23:00", "slave", "list"], "VCL_NOW"),
    (["--db=not a url", "slave", "list"], "db"),
    (["audit", "--limit=1e999"], "limit"),
    (["release", "--", str(2**63)], "id"),
    (["launch", "--", "9" * 400], "id"),
    (["priority", "--platform-value=5", "--ram-mb=600", "--minutes=45", "--register-as-slave=1", "--member=1",
      "--coefficient=1e308"], "coefficient"),
    (["config", "set", "--", "x\udcff=1"], "settings"),
    (["config", "set", "--", "novalue"], "settings"),
])
def test_other_hostile_arguments(lab, argv, field):
    _check(lab, argv, {field})


def test_priority_output_is_finite_at_the_edges(lab):
    code, out, err = _run(lab, ["priority", "--platform-value=10", "--ram-mb=1", "--minutes=1",
                                "--register-as-slave=1", "--member=1", "--coefficient=10", "--json"])
    assert code == 0, err
    assert '"priority": 130.0' in out  # 10 + 10 * (10 + 1 - 0 - 0 + 1)


@pytest.mark.parametrize(("argv", "field"), [
    (["reserve", "--owner=cs", "--cores=1", "--ram-mb=600", "--start=2026-11-23 10:00", "--hours=2",
      "--platform-value=1e308", "--register-as-slave=0", "--member=0"], "platform_value"),
    (["slave", "add", "--address=10.9.0.7", f"--cores={2**63}", "--ram-mb=1", "--disk-gb=1", "--", "s7"], "cores"),
    (["image", "add", "--disk-file=/var/lib/vcl/images/x/x.qcow2", "--description=\udcff", "--", "im7"], "description"),
    (["config", "set", "--", "priority_coefficient=1e308"], "priority_coefficient"),
    (["request", "--owner=cs", "--cores=1", "--ram-mb=256", "--hours=9" + "9" * 30, "--platform-value=5",
      "--register-as-slave=0", "--member=0"], "hours"),
    (["audit", "--limit=x"], "limit"),
])
def test_the_real_command_exits_1_with_one_line(lab, argv, field):
    before = _dump(lab)
    env = {**os.environ, "VCL_DB_URL": f"sqlite:///{lab}", "VCL_NOW": NOW}
    args: list[Any] = [str(VCL), *(a.encode("utf-8", "surrogateescape") for a in argv)]  # real undecodable bytes
    proc = subprocess.run(args, env=env, capture_output=True, timeout=60, check=False)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 1 and proc.stdout == b"", err
    assert "Traceback" not in err and err.count("\n") == 1 and _field(err) == field, err
    assert _dump(lab) == before


@pytest.mark.parametrize("hours", ["1e-320", "0.015625"])
def test_a_reservation_under_a_minute_names_hours(lab, hours):
    _check(lab, ["reserve", "--owner=cs", "--cores=1", "--ram-mb=600", "--start=2026-11-23 10:00", f"--hours={hours}",
                 "--platform-value=5", "--register-as-slave=0", "--member=0"], {"hours"})
