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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from vcl_sched.errors import ValidationError

DEFAULT_COEFFICIENT = 0.20
PRIORITY_DECIMALS = 9


def _to_number(field: str, value: Any) -> float:
    """Return ``value`` as a finite float; accept ints, floats and numeric strings, refuse booleans.

    Booleans are refused because ``True`` for ``ram_mb`` is always a mistake (a flag passed in the
    wrong position), never a request for 1 MB.
    """
    if isinstance(value, bool):
        raise ValidationError(field, f"must be a number, not the boolean {value!r}")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValidationError(field, f"must be a number, got {value!r}") from None
    else:
        raise ValidationError(field, f"must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(number):
        raise ValidationError(field, f"must be a finite number, got {value!r}")
    return number


def _to_positive(field: str, value: Any) -> float:
    """Return ``value`` as a float > 0: log2(R) and ln(E) are undefined at or below zero."""
    number = _to_number(field, value)
    if number <= 0:
        raise ValidationError(field, f"must be greater than 0, got {value!r}")
    return number


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
            "platform_value": _to_number("platform_value", self.platform_value),
            "register_as_slave": _to_flag("register_as_slave", self.register_as_slave),
            "ram_mb": _to_positive("ram_mb", self.ram_mb),
            "minutes": _to_positive("minutes", self.minutes),
            "member": _to_flag("member", self.member),
        }
        for name, value in normalised.items():
            object.__setattr__(self, name, value)


def parse_priority_inputs(
    platform_value: Any, register_as_slave: Any, ram_mb: Any, minutes: Any, member: Any
) -> PriorityInputs:
    """Build :class:`PriorityInputs` from CLI / extra-vars values (numbers or strings).

    Raises ValidationError naming the first bad field: non-numbers, NaN, infinities, ``ram_mb`` or
    ``minutes`` not > 0, ``register_as_slave`` / ``member`` other than 0 or 1.
    """
    return PriorityInputs(
        platform_value=platform_value,
        register_as_slave=register_as_slave,
        ram_mb=ram_mb,
        minutes=minutes,
        member=member,
    )


def platform_factor(p: PriorityInputs) -> float:
    """PF = PfV + RAS − log2(R) − ln(E) + MON: big, long requests rank lower; helpers rank higher."""
    return p.platform_value + p.register_as_slave - math.log2(p.ram_mb) - math.log(p.minutes) + p.member


def _check_coefficient(coefficient: Any) -> float:
    """The coefficient must be a finite number > 0, or a higher PF would no longer mean a higher Pi."""
    if isinstance(coefficient, bool) or not isinstance(coefficient, int | float):
        raise ValidationError("priority_coefficient", f"must be a number, got {coefficient!r}")
    if not math.isfinite(coefficient) or coefficient <= 0:
        raise ValidationError("priority_coefficient", f"must be a finite number > 0, got {coefficient!r}")
    return float(coefficient)


def priority(p: PriorityInputs, coefficient: float = DEFAULT_COEFFICIENT) -> float:
    """Pi = 10 + c · PF; raises ValidationError("priority_coefficient") unless c is finite and > 0."""
    return 10 + _check_coefficient(coefficient) * platform_factor(p)


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
