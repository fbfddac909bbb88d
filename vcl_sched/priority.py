"""Para-scheduling priorities (SPEC §3): the platform factor PF and the priority Pi of a request.

    PF = PfV + RAS − log2(R) − ln(E) + MON
    Pi = 10 + c · PF            (c is the ``priority_coefficient`` setting, 0.20 in the paper)

Higher Pi is served first; on equal Pi the request whose client registers as a slave (RAS=1) goes
first; still equal, first come first served (lower submission ``seq``).

"Equal" is decided on Pi rounded to 9 decimal places (:data:`PRIORITY_DECIMALS`), i.e. a tolerance
of about 1e-9. The same Pi computed through a different float path (a value read back from the
database, a sum done in another order) differs only around 1e-15, so without rounding two requests
the spec calls equal could be ordered by float noise instead of by RAS and arrival. Rounding, unlike
``abs(a - b) <= 1e-9``, is transitive, so :func:`same_priority` and :func:`service_order_key` always
agree; the price is that two values less than 1e-9 apart that straddle a rounding boundary count
as different, which no real input can produce on purpose.

Inputs come from the CLI and from playbook extra-vars, so numbers may arrive as strings; they are
converted and checked here, once, and a :class:`PriorityInputs` can only hold valid values.

Bounds (SPEC §3: nobody outranks everyone by typing a big number, and Pi stays finite):

- PfV in ``0..platform_value_max`` (the setting ``priority.platform_value_max``, default 10, itself
  at most :data:`PLATFORM_VALUE_CEILING`); the dataclass alone enforces the ceiling;
- R in ``1..MAX_RAM_MB`` MB and E in ``1..MAX_MINUTES`` minutes (two weeks): at least 1, so log2(R)
  and ln(E) are >= 0 and a tiny value cannot buy a boost either;
- the coefficient c in ``(0, COEFFICIENT_MAX]``.

With every input bounded, PF lies in [-log2(MAX_RAM_MB) - ln(MAX_MINUTES), PLATFORM_VALUE_CEILING + 2]
= [-33.9, 1002], so Pi = 10 + c · PF lies in [-329, 10030]: finite by construction, never NaN or
infinite; and at |Pi| <= 1e4 a float's spacing (~2e-12) stays far below the 1e-9 tie tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from vcl_sched.errors import ValidationError
from vcl_sched.validate import MAX_MINUTES, MAX_RAM_MB, num_text, shown

DEFAULT_COEFFICIENT = 0.20
PRIORITY_DECIMALS = 9
PLATFORM_VALUE_MAX = 10.0  # SPEC §3: the default of the setting priority.platform_value_max
PLATFORM_VALUE_CEILING = 1000.0  # the largest priority.platform_value_max may be
COEFFICIENT_MAX = 10.0  # c <= 10 (50x the paper's 0.20): with PF bounded, Pi stays finite (see above)


def _to_number(field: str, value: Any) -> float:
    """Return ``value`` as a finite float; accept ints, floats and numeric strings, refuse booleans.

    Booleans are refused because ``True`` for ``ram_mb`` is always a mistake (a flag passed in the
    wrong position), never a request for 1 MB.
    """
    if isinstance(value, bool):
        raise ValidationError(field, f"must be a number, not the boolean {value!r}")
    if isinstance(value, str) and len(value) > 64:
        raise ValidationError(field, f"must be a number, got {shown(value)}")
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an int beyond the float range
            raise ValidationError(field, f"must be a finite number, got {shown(value)}") from None
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValidationError(field, f"must be a number, got {shown(value)}") from None
    else:
        raise ValidationError(field, f"must be a number, got {type(value).__name__} {shown(value)}")
    if not math.isfinite(number):
        raise ValidationError(field, f"must be a finite number, got {shown(value)}")
    return number


def _to_range(field: str, value: Any, low: float, high: float, why: str = "") -> float:
    """Return ``value`` as a finite float in ``[low, high]``; the error says the range (and why)."""
    number = _to_number(field, value)
    if not low <= number <= high:
        raise ValidationError(field, f"must be between {num_text(low)} and {num_text(high)}{why}, got {shown(value)}")
    return number + 0.0  # -0.0 becomes 0.0


def _to_flag(field: str, value: Any) -> int:
    """Return a 0/1 flag as an int; accept 0/1, True/False and the strings "0"/"1", nothing else.

    "yes"/"true" are refused on purpose: extra-vars pass them as plain strings, and guessing which
    spellings mean 1 is how a typo silently becomes a priority change.
    """
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    raise ValidationError(field, f"must be 0 or 1, got {value!r}")


@dataclass(frozen=True)
class PriorityInputs:
    """The five inputs of a request's priority, already checked (see :func:`parse_priority_inputs`).

    Construction normalises: numbers become floats, flags become ints 0/1; anything else raises
    :class:`~vcl_sched.errors.ValidationError` naming the field.
    """

    platform_value: float
    register_as_slave: int  # 0/1
    ram_mb: float
    minutes: float
    member: int  # 0/1

    def __post_init__(self) -> None:
        normalised = {
            "platform_value": _to_range("platform_value", self.platform_value, 0, PLATFORM_VALUE_CEILING),
            "register_as_slave": _to_flag("register_as_slave", self.register_as_slave),
            "ram_mb": _to_range("ram_mb", self.ram_mb, 1, MAX_RAM_MB, " MB"),
            "minutes": _to_range("minutes", self.minutes, 1, MAX_MINUTES, " minutes"),
            "member": _to_flag("member", self.member),
        }
        for name, value in normalised.items():
            object.__setattr__(self, name, value)


def _bounded_number(field: str, value: Any, ceiling: float) -> float:
    """``value`` as a float > 0 and <= ``ceiling``; anything else raises ValidationError naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(field, f"must be a number, got {shown(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not (math.isfinite(number) and 0 < number <= ceiling):
        raise ValidationError(field, f"must be a number > 0 and <= {num_text(ceiling)}, got {shown(value)}")
    return number


def check_platform_value_max(value: Any) -> float:
    """The setting ``priority.platform_value_max``: a number > 0 and <= PLATFORM_VALUE_CEILING."""
    return _bounded_number("priority.platform_value_max", value, PLATFORM_VALUE_CEILING)


def parse_priority_inputs(
    platform_value: Any, register_as_slave: Any, ram_mb: Any, minutes: Any, member: Any,
    *, platform_value_max: float = PLATFORM_VALUE_MAX,
) -> PriorityInputs:
    """Build :class:`PriorityInputs` from CLI / extra-vars values (numbers or strings).

    Raises ValidationError naming the first bad field: non-numbers, NaN, infinities, ``platform_value``
    outside ``0..platform_value_max``, ``ram_mb`` outside 1..MAX_RAM_MB, ``minutes`` outside
    1..MAX_MINUTES, ``register_as_slave`` / ``member`` other than 0 or 1; a bad ``platform_value_max``
    names ``priority.platform_value_max``.
    """
    limit = check_platform_value_max(platform_value_max)
    inputs = PriorityInputs(
        platform_value=platform_value,
        register_as_slave=register_as_slave,
        ram_mb=ram_mb,
        minutes=minutes,
        member=member,
    )
    if inputs.platform_value > limit:
        raise ValidationError("platform_value", f"must be between 0 and {num_text(limit)}"
                              f" (priority.platform_value_max), got {shown(platform_value)}")
    return inputs


def platform_factor(p: PriorityInputs) -> float:
    """PF = PfV + RAS − log2(R) − ln(E) + MON: big, long requests rank lower; helpers rank higher."""
    return p.platform_value + p.register_as_slave - math.log2(p.ram_mb) - math.log(p.minutes) + p.member


def check_coefficient(coefficient: Any) -> float:
    """The coefficient must be a number in ``(0, COEFFICIENT_MAX]``: > 0, or a higher PF would no
    longer mean a higher Pi; bounded, so Pi stays finite (see the module's docstring)."""
    return _bounded_number("priority_coefficient", coefficient, COEFFICIENT_MAX)


def priority(p: PriorityInputs, coefficient: float = DEFAULT_COEFFICIENT) -> float:
    """Pi = 10 + c · PF; raises ValidationError("priority_coefficient") unless 0 < c <= COEFFICIENT_MAX.

    Finite for every valid input: PriorityInputs bounds PF and the check bounds c."""
    return 10 + check_coefficient(coefficient) * platform_factor(p)


def _rank(pi: float) -> float:
    """Pi as compared by the scheduler: rounded to 9 decimals so float noise never breaks a tie."""
    return round(pi, PRIORITY_DECIMALS)


def same_priority(a: float, b: float) -> bool:
    """True when the spec calls two priorities equal: equal once rounded to 9 decimals (~1e-9)."""
    return _rank(a) == _rank(b)


def service_order_key(priority: float, register_as_slave: int, seq: int) -> tuple[float, int, int]:
    """Sort key whose ascending order is the order of service.

    Higher Pi first; equal Pi (see :func:`same_priority`) → RAS=1 first; still equal → lower ``seq``
    (earlier submission) first.
    """
    return (-_rank(priority), -register_as_slave, seq)
