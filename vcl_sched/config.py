"""Where the database is, what time it is, and the lab's scheduling settings.

- ``VCL_DB_URL``: SQLAlchemy URL of the lab database. Default: an embedded SQLite file at
  ``/var/lib/vcl/vcl.sqlite`` for root (the controller of a real lab), else
  ``$XDG_DATA_HOME/vcl/vcl.sqlite`` (``~/.local/share/vcl/vcl.sqlite``).
- ``VCL_NOW``: ISO 8601 local time that replaces the clock, so tests and simulations are
  deterministic. The ``--now`` option of the ``vcl`` command sets it for one run.

Settings (pools, policies, coefficients) live in the database's ``settings`` table so that every
controller sharing a PostgreSQL database schedules by the same rules; ``Settings`` is their typed,
validated form.
"""

from __future__ import annotations

import ipaddress
import math
import os
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

from .calendar import BookingPolicy
from .errors import ValidationError

DEFAULT_MAC_PREFIX = "52:54:00"  # the KVM/QEMU locally administered prefix


def default_db_url() -> str:
    if os.geteuid() == 0:
        path = Path("/var/lib/vcl/vcl.sqlite")
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
        path = base / "vcl" / "vcl.sqlite"
    return f"sqlite:///{path}"


def db_url() -> str:
    return os.environ.get("VCL_DB_URL") or default_db_url()


def parse_datetime(value: str, field_name: str) -> datetime:
    """Parse 'YYYY-MM-DD HH:MM' (or any ISO 8601 form) as a naive local time."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except (ValueError, AttributeError):
        raise ValidationError(field_name, f"{value!r} is not a date and time like '2026-11-23 09:00'") from None
    if parsed.tzinfo is not None:
        # Lab time is local wall-clock time: reservations are "09:00 to 13:00" in the lab's zone.
        parsed = parsed.astimezone().replace(tzinfo=None)
    return parsed


def now() -> datetime:
    """The current local time, or ``VCL_NOW`` when set (deterministic tests and simulations)."""
    fixed = os.environ.get("VCL_NOW")
    if fixed:
        return parse_datetime(fixed, "VCL_NOW")
    return datetime.now().replace(microsecond=0)


def safe_url(url: str) -> str:
    """The database URL with its password hidden, for messages and output."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def pool_bounds(value: str, field_name: str) -> tuple[int, int]:
    """An address pool, 'A-B' (inclusive range) or a CIDR network (its usable hosts), IPv4, as
    (first, last) integers. Checked without listing its addresses: this runs on every request."""
    text = str(value).strip()
    try:
        if "-" in text:
            first_s, last_s = (part.strip() for part in text.split("-", 1))
            first, last = int(ipaddress.IPv4Address(first_s)), int(ipaddress.IPv4Address(last_s))
            if last < first:
                raise ValidationError(field_name, f"{text!r}: the range ends before it starts")
        else:
            net = ipaddress.IPv4Network(text, strict=True)
            if net.num_addresses <= 2:
                first, last = int(net.network_address), int(net.broadcast_address)
            else:
                first, last = int(net.network_address) + 1, int(net.broadcast_address) - 1
    except ValueError as err:
        raise ValidationError(field_name, f"{text!r} is not an IPv4 range 'A-B' or network 'N/len': {err}") from None
    if last - first + 1 > 65536:
        raise ValidationError(field_name, f"{text!r} holds {last - first + 1} addresses; at most 65536")
    return first, last


def parse_pool(value: str, field_name: str) -> list[str]:
    """The addresses of a pool, in order."""
    first, last = pool_bounds(value, field_name)
    return [str(ipaddress.IPv4Address(i)) for i in range(first, last + 1)]


def parse_mac_prefix(value: str) -> str:
    parts = str(value).strip().lower().split(":")
    if len(parts) != 3 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts):
        raise ValidationError("mac_prefix", f"{value!r} is not three hex octets like 52:54:00")
    if int(parts[0], 16) & 1:
        raise ValidationError("mac_prefix", f"{value!r} is a multicast prefix (first octet is odd)")
    return ":".join(parts)


@dataclass(frozen=True)
class Settings:
    """Scheduling settings, stored as JSON in the ``settings`` table (``vcl config set``)."""

    priority_coefficient: float = 0.20  # Pi = 10 + coefficient * PF (the paper's 0.20)
    placement_policy: str = "spread"  # spread (least used cores, the seed system) or pack
    mac_prefix: str = DEFAULT_MAC_PREFIX
    private_pool: str = ""  # VM private addresses, 'A-B' or CIDR; paired in order with public_pool
    public_pool: str = ""
    decline_limit: int = 2  # requests a client may make without registering as a slave (SPEC §3.4)
    booking: BookingPolicy = field(default_factory=BookingPolicy)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["booking"] = booking_to_json(self.booking)
        return data


BOOKING_KEYS = {f.name for f in fields(BookingPolicy)}
SETTING_KEYS = {f.name for f in fields(Settings) if f.name != "booking"} | {f"booking.{k}" for k in BOOKING_KEYS}


def booking_to_json(policy: BookingPolicy) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(BookingPolicy):
        value = getattr(policy, f.name)
        if isinstance(value, time):
            value = value.strftime("%H:%M")
        elif isinstance(value, timedelta):
            value = value.total_seconds() / 3600  # hours
        out[f.name] = value
    return out


def booking_from_json(data: dict[str, Any]) -> BookingPolicy:
    kwargs: dict[str, Any] = {}
    defaults = BookingPolicy()
    for key, value in data.items():
        if key not in BOOKING_KEYS:
            raise ValidationError(f"booking.{key}", "unknown booking setting")
        current = getattr(defaults, key)
        kwargs[key] = _coerce(f"booking.{key}", current, value)
    try:
        return BookingPolicy(**kwargs)
    except ValidationError:
        raise
    except (TypeError, ValueError) as err:
        raise ValidationError("booking", str(err)) from None


def _coerce(name: str, current: Any, value: Any) -> Any:
    try:
        if isinstance(current, time):
            return time.fromisoformat(str(value))
        if isinstance(current, timedelta):
            hours = float(value)
            if not math.isfinite(hours) or hours <= 0:
                raise ValueError("must be a positive number of hours")
            return timedelta(hours=hours)
        if isinstance(current, bool):
            raise ValueError("booleans are not settings here")
        if isinstance(current, int):
            as_float = float(value)
            if not as_float.is_integer():
                raise ValueError("must be a whole number")
            return int(as_float)
        if isinstance(current, float):
            as_float = float(value)
            if not math.isfinite(as_float):
                raise ValueError("must be a finite number")
            return as_float
        return str(value)
    except (TypeError, ValueError) as err:
        raise ValidationError(name, f"{value!r}: {err}") from None


def settings_from_json(data: dict[str, Any]) -> Settings:
    defaults = Settings()
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "booking":
            kwargs["booking"] = booking_from_json(value)
        elif key in SETTING_KEYS:
            kwargs[key] = _coerce(key, getattr(defaults, key), value)
        else:
            raise ValidationError(key, "unknown setting")
    settings = Settings(**kwargs)
    validate_settings(settings)
    return settings


def validate_settings(s: Settings) -> None:
    from .placement import POLICIES  # local import: placement imports nothing from here

    if not (math.isfinite(s.priority_coefficient) and s.priority_coefficient > 0):
        raise ValidationError("priority_coefficient", f"{s.priority_coefficient!r} must be a positive number")
    if s.placement_policy not in POLICIES:
        raise ValidationError("placement_policy", f"{s.placement_policy!r}: choose one of {', '.join(POLICIES)}")
    parse_mac_prefix(s.mac_prefix)
    if s.decline_limit < 0:
        raise ValidationError("decline_limit", "must be 0 or more")
    private = pool_bounds(s.private_pool, "private_pool") if s.private_pool else None
    public = pool_bounds(s.public_pool, "public_pool") if s.public_pool else None
    if private and public and private[0] <= public[1] and public[0] <= private[1]:
        first = ipaddress.IPv4Address(max(private[0], public[0]))
        raise ValidationError("public_pool", f"overlaps private_pool at {first}")
