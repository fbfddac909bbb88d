"""Para-scheduling priority (SPEC §3): the formula, its worked values, input checks and tie-breaks."""

from __future__ import annotations

import math

import pytest

from vcl_sched.errors import ValidationError
from vcl_sched.priority import (
    PriorityInputs,
    parse_priority_inputs,
    platform_factor,
    priority,
    same_priority,
    service_order_key,
)

GOOD = {"platform_value": 5, "register_as_slave": 1, "ram_mb": 600, "minutes": 45, "member": 1}


def inputs(**changes: object) -> PriorityInputs:
    return parse_priority_inputs(**{**GOOD, **changes})


# ------------------------------------------------------------------------------------ worked values


def test_worked_value_small_helper_request() -> None:
    p = parse_priority_inputs(5, 1, 600, 45, 1)
    # PF is -6.03548...: the spec's "≈ -6.036" is off in the last digit, so allow 1e-3 here.
    assert platform_factor(p) == pytest.approx(-6.036, abs=1e-3)
    assert round(priority(p), 3) == 8.793


def test_worked_value_big_long_request() -> None:
    p = parse_priority_inputs(5, 0, 200, 120, 0)
    assert round(platform_factor(p), 3) == -7.431
    assert round(priority(p), 3) == 8.514


def test_formula_term_by_term() -> None:
    p = parse_priority_inputs(2.5, 0, 1024, math.e, 1)
    # log2(1024) = 10 and ln(e) = 1 exactly, so PF = 2.5 + 0 - 10 - 1 + 1.
    assert platform_factor(p) == pytest.approx(-7.5)
    assert priority(p, coefficient=0.5) == pytest.approx(10 - 3.75)


def test_coefficient_defaults_to_the_papers_value() -> None:
    p = inputs()
    assert priority(p) == pytest.approx(10 + 0.20 * platform_factor(p))


@pytest.mark.parametrize(
    ("field", "bigger", "effect"),
    [("ram_mb", 1200, -1.0), ("minutes", 45 * math.e, -1.0), ("register_as_slave", 0, -1.0), ("member", 0, -1.0)],
)
def test_each_term_moves_the_factor_by_its_weight(field: str, bigger: float, effect: float) -> None:
    assert platform_factor(inputs(**{field: bigger})) - platform_factor(inputs()) == pytest.approx(effect)


# ----------------------------------------------------------------------------------------- parsing


def test_strings_from_extra_vars_are_converted() -> None:
    p = parse_priority_inputs(" 5 ", "1", "600", "45.0", "0")
    assert p == PriorityInputs(5.0, 1, 600.0, 45.0, 0)
    assert isinstance(p.register_as_slave, int) and isinstance(p.ram_mb, float)


@pytest.mark.parametrize("value", [0, 1, "0", "1", " 1 ", True, False])
@pytest.mark.parametrize("field", ["register_as_slave", "member"])
def test_flags_accept_zero_and_one(field: str, value: object) -> None:
    assert getattr(inputs(**{field: value}), field) == int(str(value).strip() == "1" or value is True)


@pytest.mark.parametrize("value", [2, -1, "yes", "true", "no", "", 0.5, 1.0, None, "01x"])
@pytest.mark.parametrize("field", ["register_as_slave", "member"])
def test_flags_refuse_anything_else(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as err:
        inputs(**{field: value})
    assert err.value.field == field
    assert "0 or 1" in err.value.message


@pytest.mark.parametrize("value", ["abc", "", None, float("nan"), float("inf"), "-inf", "nan", True, [5]])
@pytest.mark.parametrize("field", ["platform_value", "ram_mb", "minutes"])
def test_numbers_refuse_non_numbers_and_non_finite(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as err:
        inputs(**{field: value})
    assert err.value.field == field


@pytest.mark.parametrize("value", [0, -1, "0", "-600", -0.0, 0.5, 1e-300])
@pytest.mark.parametrize("field", ["ram_mb", "minutes"])
def test_ram_and_minutes_must_be_at_least_one(field: str, value: object) -> None:
    # At least 1 MB and 1 minute: log2(R) and ln(E) stay >= 0, so a tiny value buys no priority.
    with pytest.raises(ValidationError) as err:
        inputs(**{field: value})
    assert err.value.field == field
    assert "between 1 and" in err.value.message


@pytest.mark.parametrize("value", [0, "3.5", 10, "10.0", -0.0])
def test_platform_value_within_zero_and_the_maximum(value: object) -> None:
    assert inputs(platform_value=value).platform_value == float(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-100, -0.5, "-3.5", 10.001, 1e6, "1e308"])
def test_platform_value_outside_zero_and_the_maximum_is_refused(value: object) -> None:
    with pytest.raises(ValidationError) as err:
        inputs(platform_value=value)
    assert err.value.field == "platform_value"


def test_direct_construction_is_checked_too() -> None:
    with pytest.raises(ValidationError) as err:
        PriorityInputs(5, 1, -600, 45, 1)
    assert err.value.field == "ram_mb"


@pytest.mark.parametrize("coefficient", [0, -0.2, float("nan"), float("inf"), True, "0.2", None])
def test_coefficient_must_be_finite_and_positive(coefficient: object) -> None:
    with pytest.raises(ValidationError) as err:
        priority(inputs(), coefficient)  # type: ignore[arg-type]
    assert err.value.field == "priority_coefficient"


# ------------------------------------------------------------------------------------ service order


def test_higher_priority_is_served_first() -> None:
    keys = [service_order_key(8.5, 1, 1), service_order_key(8.8, 0, 2), service_order_key(7.0, 1, 0)]
    assert sorted(keys) == [keys[1], keys[0], keys[2]]


def test_equal_priority_slave_registration_goes_first() -> None:
    assert service_order_key(8.5, 1, 9) < service_order_key(8.5, 0, 1)


def test_still_equal_first_come_first_served() -> None:
    assert service_order_key(8.5, 0, 3) < service_order_key(8.5, 0, 4)


def test_float_noise_never_reorders_equal_priorities() -> None:
    pi = priority(inputs())
    noisy = pi + 4e-15  # the same Pi computed along another float path
    assert pi != noisy
    assert same_priority(pi, noisy)
    # Equal Pi, so RAS decides, not the noise: the request registering as a slave goes first.
    assert service_order_key(pi, 1, 2) < service_order_key(noisy, 0, 1)
    assert service_order_key(noisy, 0, 1) < service_order_key(pi, 0, 2)


def test_differences_above_the_tolerance_count() -> None:
    assert not same_priority(8.5, 8.5 + 1e-7)
    assert service_order_key(8.5 + 1e-7, 0, 9) < service_order_key(8.5, 1, 1)


def test_worked_requests_order() -> None:
    small = priority(parse_priority_inputs(5, 1, 600, 45, 1))
    big = priority(parse_priority_inputs(5, 0, 200, 120, 0))
    assert service_order_key(small, 1, 2) < service_order_key(big, 0, 1)
