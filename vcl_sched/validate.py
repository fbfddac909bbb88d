"""Input checks shared by the service layer: names, whole numbers, bounds, addresses, statuses.

Every check returns the value in its checked form or raises ``ValidationError`` naming the field the
caller gave (the CLI option or the module parameter), so bad input fails before any write begins.
``iso`` is the one text form of a time in the results.
"""

from __future__ import annotations

import ipaddress
import math
import re
from datetime import datetime
from typing import Any

from .errors import ValidationError
from .models import SlaveStatus

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def check_name(field: str, value: Any) -> str:
    text = str(value).strip() if value is not None else ""
    if not NAME_RE.match(text):
        raise ValidationError(field, f"{value!r} must be 1-63 letters, digits, '.', '_' or '-' (starting alnum)")
    return text


def whole(field: str, value: Any, low: int = 1, high: int | None = None) -> int:
    if isinstance(value, bool):
        raise ValidationError(field, f"{value!r} is not a whole number")
    try:
        number = float(str(value).strip()) if not isinstance(value, int | float) else float(value)
    except ValueError:
        raise ValidationError(field, f"{value!r} is not a whole number") from None
    if not math.isfinite(number) or not number.is_integer():
        raise ValidationError(field, f"{value!r} is not a whole number")
    if number < low or (high is not None and number > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValidationError(field, f"{int(number)} must be {bound}")
    return int(number)


def positive(field: str, value: Any) -> float:
    try:
        number = float(str(value).strip()) if not isinstance(value, int | float) else float(value)
    except ValueError:
        raise ValidationError(field, f"{value!r} is not a number") from None
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise ValidationError(field, f"{value!r} must be a number > 0")
    return number


def slave_input(name: Any, address: Any, cores: Any, ram_mb: Any, disk_gb: Any) -> tuple[str, str, dict[str, int]]:
    """A slave's name, address and total capacity, checked; a bad value names its field."""
    name = check_name("name", name)
    try:
        address = str(ipaddress.ip_address(str(address).strip()))
    except ValueError:
        raise ValidationError("address", f"{address!r} is not an IP address") from None
    capacity = {"cores_total": whole("cores", cores), "ram_mb_total": whole("ram_mb", ram_mb),
                "disk_gb_total": whole("disk_gb", disk_gb)}
    return name, address, capacity


def slave_status(value: str) -> SlaveStatus:
    try:
        return SlaveStatus(str(value).strip().lower())
    except ValueError:
        raise ValidationError("status", f"{value!r}: choose one of up, down, draining") from None


def iso(value: datetime | None) -> str | None:
    return value.isoformat(sep=" ", timespec="minutes") if value is not None else None
