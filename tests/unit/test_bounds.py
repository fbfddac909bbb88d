"""Every bound at its edge and one past it (issue 11 item 8): the checks of ``vcl_sched.validate``, the
priority's inputs and coefficient (``vcl_sched.priority``), the settings (``vcl_sched.config``), and the
`vcl` command's output (JSON never holds NaN or an infinity) and one-line errors."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from vcl_sched import cli, config, db, service, validate
from vcl_sched.errors import ValidationError, VclError
from vcl_sched.priority import (
    COEFFICIENT_MAX,
    PLATFORM_VALUE_CEILING,
    PLATFORM_VALUE_MAX,
    PriorityInputs,
    parse_priority_inputs,
    platform_factor,
    priority,
)
from vcl_sched.validate import (
    MAX_CORES,
    MAX_DISK_GB,
    MAX_HOURS_BOOKING,
    MAX_ID,
    MAX_MINUTES,
    MAX_NUMBER,
    MAX_RAM_MB,
    MAX_SEATS,
    MAX_TEXT,
)


def up(x: float) -> float:
    return math.nextafter(x, math.inf)


def down(x: float) -> float:
    return math.nextafter(x, -math.inf)


def refused(field: str, call, *args, **kwargs) -> ValidationError:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError) as err:
        call(*args, **kwargs)
    assert err.value.field == field, err.value
    assert "\n" not in str(err.value) and len(str(err.value)) < 300  # one short line, whatever the input
    return err.value


# --------------------------------------------------------------------------------------- validate

def test_named_maxima() -> None:
    assert (MAX_ID, MAX_CORES, MAX_RAM_MB, MAX_DISK_GB, MAX_SEATS, MAX_HOURS_BOOKING) == (
        2**31 - 1, 1024, 16 * 1024 * 1024, 1 << 20, 1000, 24 * 14)
    assert MAX_MINUTES == MAX_HOURS_BOOKING * 60 and MAX_RAM_MB < MAX_ID and MAX_DISK_GB < MAX_ID


def test_whole_is_never_unbounded() -> None:
    assert validate.whole("id", MAX_ID) == MAX_ID
    assert validate.whole("id", str(MAX_ID)) == MAX_ID
    refused("id", validate.whole, "id", MAX_ID + 1)
    refused("id", validate.whole, "id", str(2**63))  # the SQLite overflow of old
    assert validate.whole("n", 1) == 1
    refused("n", validate.whole, "n", 0)
    assert validate.whole("n", 0, 0) == 0 and validate.whole("n", 7, 0, 7) == 7
    refused("n", validate.whole, "n", 8, 0, 7)


@pytest.mark.parametrize("value", ["9" * 400, "-" + "9" * 400, 10**400, "1e999", "-1e999", "1e308", "nan",
                                   "inf", float("nan"), float("inf"), -float("inf"), True, False, None, b"4",
                                   bytearray(b"4"), [4], {"a": 4}, (4,), 4.5, "4.5", "", " ", "four", "0x10",
                                   "{{ 4 }}", "\udcff", "4\x00"])
def test_whole_refuses_anything_else_naming_the_field(value: object) -> None:
    refused("cores", validate.whole, "cores", value)


def test_whole_refuses_an_int_too_long_to_print() -> None:
    err = refused("cores", validate.whole, "cores", 10**5000)  # repr() itself fails on it
    assert "too long to show" in err.message


@pytest.mark.parametrize(("value", "expected"), [(4, 4), ("4", 4), (" 4 ", 4), (4.0, 4), ("4.0", 4), ("1e3", 1000)])
def test_whole_accepts_whole_numbers_and_their_text(value: object, expected: int) -> None:
    assert validate.whole("cores", value, 1, 1024) == expected


def test_positive_has_a_finite_ceiling() -> None:
    assert validate.positive("hours", MAX_NUMBER) == MAX_NUMBER
    refused("hours", validate.positive, "hours", up(MAX_NUMBER))
    refused("hours", validate.positive, "hours", "1e308")
    refused("hours", validate.positive, "hours", 10**400)
    assert validate.positive("hours", 5e-324) == 5e-324
    refused("hours", validate.positive, "hours", 0)
    refused("hours", validate.positive, "hours", -0.0)
    assert validate.positive("hours", 24, high=24) == 24
    refused("hours", validate.positive, "hours", up(24), high=24)
    for value in ("nan", "inf", True, None, [1], b"1"):
        refused("hours", validate.positive, "hours", value)


def test_bounded_edges() -> None:
    assert validate.bounded("x", 0, 0, 1) == 0.0 and validate.bounded("x", "-0", 0, 1) == 0.0
    refused("x", validate.bounded, "x", down(0.0), 0, 1)
    refused("x", validate.bounded, "x", 0, 0, 1, low_open=True)
    assert validate.bounded("x", 1, 0, 1, low_open=True) == 1.0
    refused("x", validate.bounded, "x", up(1.0), 0, 1)


@pytest.mark.parametrize(("check", "field", "low", "high"), [
    (validate.id_value, "id", 1, MAX_ID),
    (validate.cores_value, "cores", 1, MAX_CORES),
    (validate.ram_value, "ram_mb", 1, MAX_RAM_MB),
    (validate.disk_value, "disk_gb", 0, MAX_DISK_GB),
    (validate.seats_value, "seats", 1, MAX_SEATS),
])
def test_resource_checks_at_their_edges(check, field: str, low: int, high: int) -> None:  # type: ignore[no-untyped-def]
    assert check(field, low) == low and check(field, str(high)) == high
    refused(field, check, field, low - 1)
    refused(field, check, field, high + 1)


def test_hours_value_at_its_edges() -> None:
    assert validate.hours_value("hours", MAX_HOURS_BOOKING) == MAX_HOURS_BOOKING
    refused("hours", validate.hours_value, "hours", up(MAX_HOURS_BOOKING))
    assert validate.hours_value("hours", validate.MIN_HOURS) == validate.MIN_HOURS == 1 / 60
    refused("hours", validate.hours_value, "hours", down(validate.MIN_HOURS))
    refused("hours", validate.hours_value, "hours", 0)


def test_text_value() -> None:
    assert validate.text_value("description", "é" * MAX_TEXT) == "é" * MAX_TEXT
    refused("description", validate.text_value, "description", "x" * (MAX_TEXT + 1))
    for bad in ("a\nb", "\x00", "\x1b[2J", "\x7f", "\udcff", 4, None, b"x"):
        refused("description", validate.text_value, "description", bad)
    assert validate.text_value("description", "{{ lookup('pipe', 'id') }} !!python/object") is not None  # data


def test_names() -> None:
    assert validate.check_name("name", "a" * 63) == "a" * 63
    refused("name", validate.check_name, "name", "a" * 64)
    assert validate.check_name("name", 2024) == "2024"  # YAML reads `name: 2024` as an int
    for bad in (True, None, b"s1", ["s1"], "s1\nx", "s\udcff", "-s1", "", 10**5000):
        refused("name", validate.check_name, "name", bad)


def test_slave_input_bounds() -> None:
    _, _, capacity = validate.slave_input("s1", "10.0.0.1", MAX_CORES, MAX_RAM_MB, MAX_DISK_GB)
    assert capacity == {"cores_total": MAX_CORES, "ram_mb_total": MAX_RAM_MB, "disk_gb_total": MAX_DISK_GB}
    refused("cores", validate.slave_input, "s1", "10.0.0.1", MAX_CORES + 1, 1, 1)
    refused("ram_mb", validate.slave_input, "s1", "10.0.0.1", 1, MAX_RAM_MB + 1, 1)
    refused("disk_gb", validate.slave_input, "s1", "10.0.0.1", 1, 1, MAX_DISK_GB + 1)
    refused("disk_gb", validate.slave_input, "s1", "10.0.0.1", 1, 1, 0)
    refused("address", validate.slave_input, "s1", "1" * 5000, 1, 1, 1)
    refused("address", validate.slave_input, "s1", None, 1, 1, 1)


# --------------------------------------------------------------------------------------- priority

GOOD = {"platform_value": 5, "register_as_slave": 1, "ram_mb": 600, "minutes": 45, "member": 1}


def inputs(**changes: object) -> PriorityInputs:
    return parse_priority_inputs(**{**GOOD, **changes})  # type: ignore[arg-type]


def test_platform_value_edges() -> None:
    assert PLATFORM_VALUE_MAX == 10
    assert inputs(platform_value=0).platform_value == 0
    assert inputs(platform_value=PLATFORM_VALUE_MAX).platform_value == PLATFORM_VALUE_MAX
    refused("platform_value", inputs, platform_value=down(0.0))
    refused("platform_value", inputs, platform_value=up(PLATFORM_VALUE_MAX))
    refused("platform_value", inputs, platform_value="1e308")


def test_platform_value_max_keyword() -> None:
    assert inputs(platform_value=3, platform_value_max=3).platform_value == 3
    refused("platform_value", inputs, platform_value=up(3.0), platform_value_max=3)
    assert inputs(platform_value=PLATFORM_VALUE_CEILING,
                  platform_value_max=PLATFORM_VALUE_CEILING).platform_value == PLATFORM_VALUE_CEILING
    for bad in (0, up(PLATFORM_VALUE_CEILING), float("inf"), float("nan"), True, "10", 10**400):
        refused("priority.platform_value_max", inputs, platform_value_max=bad)
    # The dataclass alone holds PfV to the ceiling (the setting's largest value).
    assert PriorityInputs(PLATFORM_VALUE_CEILING, 0, 1, 1, 0).platform_value == PLATFORM_VALUE_CEILING
    refused("platform_value", PriorityInputs, up(PLATFORM_VALUE_CEILING), 0, 1, 1, 0)


@pytest.mark.parametrize(("field", "high"), [("ram_mb", MAX_RAM_MB), ("minutes", MAX_MINUTES)])
def test_ram_and_minutes_edges(field: str, high: int) -> None:
    assert getattr(inputs(**{field: 1}), field) == 1
    assert getattr(inputs(**{field: high}), field) == high
    refused(field, inputs, **{field: down(1.0)})
    refused(field, inputs, **{field: up(float(high))})
    refused(field, inputs, **{field: "9" * 400})
    refused(field, inputs, **{field: 10**400})


def test_coefficient_edges() -> None:
    assert COEFFICIENT_MAX == 10
    assert priority(inputs(), COEFFICIENT_MAX) == pytest.approx(10 + 10 * platform_factor(inputs()))
    assert priority(inputs(), 5e-324) == 10  # tiny but > 0: Pi stays finite
    for bad in (up(COEFFICIENT_MAX), 1e308, 10**400, 0, -0.0, float("nan"), float("inf")):
        refused("priority_coefficient", priority, inputs(), bad)


def test_worked_values_are_unchanged() -> None:
    assert round(priority(parse_priority_inputs(5, 1, 600, 45, 1)), 3) == 8.793
    assert round(priority(parse_priority_inputs(5, 0, 200, 120, 0)), 3) == 8.514


def test_the_extreme_corners_are_finite_and_inside_the_documented_range() -> None:
    highest = priority(PriorityInputs(PLATFORM_VALUE_CEILING, 1, 1, 1, 1), COEFFICIENT_MAX)
    lowest = priority(PriorityInputs(0, 0, MAX_RAM_MB, MAX_MINUTES, 0), COEFFICIENT_MAX)
    assert highest == 10 + 10 * (PLATFORM_VALUE_CEILING + 2)
    assert lowest == pytest.approx(10 - 10 * (math.log2(MAX_RAM_MB) + math.log(MAX_MINUTES)))
    assert -330 < lowest < highest <= 10030


valid_number = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(pfv=st.floats(0, PLATFORM_VALUE_CEILING), ras=st.sampled_from([0, 1]), ram=st.floats(1, MAX_RAM_MB),
       minutes=st.floats(1, MAX_MINUTES), mon=st.sampled_from([0, 1]),
       c=st.floats(0, COEFFICIENT_MAX, exclude_min=True))
def test_priority_is_finite_for_every_valid_input(pfv: float, ras: int, ram: float, minutes: float, mon: int,
                                                  c: float) -> None:
    pi = priority(parse_priority_inputs(pfv, ras, ram, minutes, mon, platform_value_max=PLATFORM_VALUE_CEILING), c)
    assert math.isfinite(pi) and -330 < pi <= 10030
    json.dumps(pi, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.floats(), st.integers(min_value=-10**400, max_value=10**400), st.text(max_size=30)))
def test_any_number_either_passes_its_bound_or_names_the_field(value: object) -> None:
    try:
        p = inputs(platform_value=value)
    except ValidationError as err:
        assert err.field == "platform_value"
    else:
        assert 0 <= p.platform_value <= PLATFORM_VALUE_MAX


# --------------------------------------------------------------------------------------- settings

def from_json(**changes: object) -> config.Settings:
    data = config.Settings().to_json()
    for key, value in changes.items():
        if key.startswith("booking_"):
            data["booking"][key[len("booking_"):]] = value
        else:
            data[key] = value
    return config.settings_from_json(data)


EDGES = [  # (setting, lowest accepted, one below, highest accepted, one above)
    ("priority_coefficient", 5e-324, 0.0, COEFFICIENT_MAX, up(COEFFICIENT_MAX)),
    ("platform_value_max", 5e-324, 0.0, PLATFORM_VALUE_CEILING, up(PLATFORM_VALUE_CEILING)),
    ("decline_limit", 0, -1, 1000, 1001),
    ("launch_lease_minutes", 1, 0, 1440, 1441),
    ("booking.lead_days", 0, -1, 14, 366 + 1),  # highest: horizon_days (14) must stay >= lead_days
    ("booking.horizon_days", 1, -1, 366, 367),
    ("booking.lookahead_max_hours", 1, 0, 5, 6),
    ("booking.max_hours", 5e-324, 0.0, 24, up(24.0)),
    ("booking.move_step", 1 / 60, down(1 / 60), 24, up(24.0)),
]


@pytest.mark.parametrize(("name", "low", "below", "high", "above"), EDGES)
def test_every_numeric_setting_at_its_edges(name: str, low: float, below: float, high: float, above: float) -> None:
    key = name.replace("booking.", "booking_")
    for value in (low, high, str(low) if isinstance(low, int) else repr(low)):
        s = from_json(**{key: value})
        json.dumps(s.to_json(), allow_nan=False)
    for value in (below, above, "1e308", "nan", "inf", "9" * 400, True, None, [1]):
        refused(name, from_json, **{key: value})


def test_setting_types_are_checked_where_whole_numbers_are_needed() -> None:
    refused("decline_limit", from_json, decline_limit=2.5)
    refused("booking.lookahead_max_hours", from_json, booking_lookahead_max_hours="2.5")
    assert from_json(booking_max_hours="2.5").booking.max_hours == 2.5
    assert from_json(booking_move_step=0.5).booking.move_step == timedelta(minutes=30)


def test_platform_value_max_is_set_under_the_specs_name_too() -> None:
    s = from_json(**{"priority.platform_value_max": "5", "platform_value_max": 10})
    assert s.platform_value_max == 5.0 and "priority.platform_value_max" not in s.to_json()
    assert "priority.platform_value_max" in config.SETTING_KEYS and "platform_value_max" in config.SETTING_KEYS
    refused("priority.platform_value_max", from_json, **{"priority.platform_value_max": "1001"})


def test_defaults() -> None:
    s = config.Settings()
    assert (s.priority_coefficient, s.platform_value_max, s.launch_lease_minutes, s.decline_limit) == (0.2, 10.0, 30, 2)
    config.validate_settings(s)


def test_settings_built_directly_are_checked_as_a_whole() -> None:
    base = config.Settings()
    refused("decline_limit", config.validate_settings, replace(base, decline_limit=10**30))
    refused("decline_limit", config.validate_settings, replace(base, decline_limit="2"))  # type: ignore[arg-type]
    refused("priority_coefficient", config.validate_settings, replace(base, priority_coefficient=float("inf")))
    refused("launch_lease_minutes", config.validate_settings, replace(base, launch_lease_minutes=True))
    refused("booking.horizon_days", config.validate_settings,
            replace(base, booking=replace(base.booking, horizon_days=10**6)))
    refused("booking.move_step", config.validate_settings,
            replace(base, booking=replace(base.booking, move_step=timedelta(seconds=1))))
    refused("placement_policy", config.validate_settings, replace(base, placement_policy="sp\x00read"))


@pytest.mark.parametrize(("data", "field"), [
    ({"booking": [1]}, "booking"),
    ({"booking": "x"}, "booking"),
    ({"booking": {"nope": 1}}, "booking.nope"),
    ({"mac_prefix": 52}, "mac_prefix"),
    ({"private_pool": "10.0.0.0/24\n"}, "private_pool"),
    ({"booking": {"day_start": "9" * 100}}, "booking.day_start"),
    ({"nope\n": 1}, "'nope\\n'"),
])
def test_stored_shapes_that_are_wrong_name_the_setting(data: dict, field: str) -> None:
    refused(field, config.settings_from_json, data)


def test_settings_must_be_a_mapping() -> None:
    refused("settings", config.settings_from_json, [1])


def test_lab_times_have_bounded_years() -> None:
    assert config.parse_datetime(f"{config.MAX_YEAR}-12-31 23:59", "start").year == config.MAX_YEAR
    refused("start", config.parse_datetime, f"{config.MAX_YEAR + 1}-01-01 00:00", "start")
    assert config.parse_datetime(f"{config.MIN_YEAR}-01-01 00:00", "start").year == config.MIN_YEAR
    refused("start", config.parse_datetime, f"{config.MIN_YEAR - 1}-12-31 23:59", "start")
    refused("start", config.parse_datetime, "9" * 5000, "start")
    refused("start", config.parse_datetime, None, "start")  # type: ignore[arg-type]


# ---------------------------------------------------------- stored settings and ids, on both backends

def _store(url: str, key: str, raw: str) -> None:
    with db.engine(url).begin() as conn:
        conn.execute(text("UPDATE settings SET value = :v WHERE key = :k"), {"v": raw, "k": key})


@pytest.mark.parametrize(("key", "raw", "field"), [
    ("priority_coefficient", "1e308", "priority_coefficient"),
    ("priority_coefficient", "NaN", "priority_coefficient"),
    ("decline_limit", str(10**30), "decline_limit"),
    ("booking", '{"horizon_days": 100000}', "booking.horizon_days"),
    ("booking", "[1, 2]", "booking"),
])
def test_a_bad_stored_setting_is_named_when_read(db_url, capsys, key, raw, field):
    service.add_group("cs", url=db_url)
    _store(db_url, key, raw)
    refused(field, service.get_settings, db_url)
    code = cli.main(["request", "--owner=cs", "--cores=1", "--ram-mb=256", "--hours=1", "--platform-value=5",
                     "--register-as-slave=0", "--member=0"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and err.startswith(f"vcl: {field}:"), err


def test_ids_beyond_32_bits_never_reach_the_database(db_url, capsys):
    assert cli.main(["release", str(MAX_ID)]) == 1  # the largest id: looked up, not found
    assert "no instance" in capsys.readouterr().err
    for value in (str(MAX_ID + 1), str(2**63), "9" * 400):
        assert cli.main(["release", value]) == 1
        assert capsys.readouterr().err.startswith("vcl: id: ")
    assert cli.main(["slave", "add", "s1", "--address=10.0.0.1", f"--cores={MAX_CORES}", f"--ram-mb={MAX_RAM_MB}",
                     f"--disk-gb={MAX_DISK_GB}"]) == 0
    assert cli.main(["slave", "add", "s2", "--address=10.0.0.2", f"--cores={2**31}", "--ram-mb=1",
                     "--disk-gb=1"]) == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith("vcl: cores: ")


# --------------------------------------------------------------------------------------- the CLI

def test_json_output_refuses_nan_and_infinity(capsys):
    args = argparse.Namespace(json=True)
    for bad in (float("nan"), float("inf"), [1, -float("inf")]):
        with pytest.raises(VclError, match="not valid JSON"):
            cli.emit(args, {"priority": bad}, str)
    assert capsys.readouterr().out == ""  # nothing half-printed
    cli.emit(args, {"priority": 8.793}, str)
    assert json.loads(capsys.readouterr().out) == {"priority": 8.793}


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["slave", "add", "s1", "--cores"])
    err = capsys.readouterr().err
    assert stop.value.code == cli.EXIT_USAGE and err.count("\n") == 1 and err.startswith("vcl slave add: error:")
    with pytest.raises(SystemExit):
        cli.main(["slave", "list", "extra\nline"])
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("argv", [["audit", "--limit=0"], ["audit", f"--limit={cli.AUDIT_LIMIT_MAX + 1}"],
                                  ["audit", "--limit=x"]])
def test_audit_limit_is_bounded(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.setenv("VCL_DB_URL", f"sqlite:///{tmp_path}/a.sqlite")
    assert cli.main(["db", "init"]) == 0
    assert cli.main(["audit", f"--limit={cli.AUDIT_LIMIT_MAX}"]) == 0
    capsys.readouterr()
    assert cli.main(argv) == 1 and capsys.readouterr().err.startswith("vcl: limit: ")


def test_config_show_is_finite_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VCL_DB_URL", f"sqlite:///{tmp_path}/c.sqlite")
    assert cli.main(["db", "init"]) == 0
    assert cli.main(["config", "set", "priority_coefficient=10", "priority.platform_value_max=1000",
                     "booking.move_step=0.016666666666666666", "launch_lease_minutes=1440"]) == 0
    capsys.readouterr()
    assert cli.main(["config", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert shown["priority_coefficient"] == 10 and shown["platform_value_max"] == 1000
    assert shown["launch_lease_minutes"] == 1440 and shown["booking"]["move_step"] == pytest.approx(1 / 60)
