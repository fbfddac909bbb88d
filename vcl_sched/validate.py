"""Input checks shared by the service layer: names, whole numbers, bounds, addresses, statuses.

Every check returns the value in its checked form or raises ``ValidationError`` naming the field the
caller gave (the CLI option or the module parameter), so bad input fails before any write begins.
``iso`` is the one text form of a time in the results.

Every number has a ceiling: a value the database columns hold on both backends (PostgreSQL's
``INTEGER`` is 32-bit) and that no real lab reaches, so a typed ``1e308`` or 400 nines is a one-line
error naming the field, never an overflow deep in a driver. The maxima:

==================  ===========================  ==================================================
constant            value                        why
==================  ===========================  ==================================================
MAX_ID              2**31 - 1                    ids and counts: PostgreSQL ``INTEGER``
MAX_CORES           1024                         cores of one slave or one request
MAX_RAM_MB          16 * 1024 * 1024 (16 TiB)    RAM of one slave or one request, in MB
MAX_DISK_GB         1 << 20 (1 PiB)              disk of one slave, image or request, in GB
MAX_SEATS           1000                         seats of one reservation block
MAX_HOURS_BOOKING   24 * 14 (two weeks)          hours of one booking or request
MIN_HOURS           1 / 60 (one minute)          the shortest duration (the priority's E >= 1 min)
MAX_NUMBER          1e6                          default ceiling of :func:`positive`
MAX_TEXT            4096                         characters of a free-text value (paths, notes)
==================  ===========================  ==================================================
"""

from __future__ import annotations

import ipaddress
import math
import re
import unicodedata
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .errors import ValidationError

if TYPE_CHECKING:
    from .models import SlaveStatus

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

MAX_ID = 2**31 - 1
MAX_CORES = 1024
MAX_RAM_MB = 16 * 1024 * 1024
MAX_DISK_GB = 1 << 20
MAX_SEATS = 1000
MAX_HOURS_BOOKING = 24 * 14
MIN_HOURS = 1 / 60  # one minute
MAX_MINUTES = MAX_HOURS_BOOKING * 60
MAX_NUMBER = 1e6
MAX_TEXT = 4096

# Text longer than this is not a number anyone typed: refused before it is parsed.
_MAX_NUMBER_TEXT = 64


def shown(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters: error messages stay one short line whatever the
    input (``repr`` also escapes newlines, control characters and lone surrogates)."""
    try:
        text = repr(value)
    except ValueError:  # an int too long for repr (Python's 4300-digit limit)
        return f"<{type(value).__name__} too long to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def num_text(x: float) -> str:
    """A bound as people write it: 16777216 and 0.5, not 1.67772e+07."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _parse_number(field: str, value: Any, what: str) -> int | float:
    """An int or a float from an int, a float or numeric text; anything else (booleans, None, bytes,
    lists, dicts, over-long text) is a ValidationError naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValidationError(field, f"{shown(value)} is not {what}")
    if not isinstance(value, str):
        return value
    text = value.strip()
    if len(text) > _MAX_NUMBER_TEXT:
        raise ValidationError(field, f"{shown(value)} is not {what} (too long)")
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ValidationError(field, f"{shown(value)} is not {what}") from None


def whole(field: str, value: Any, low: int = 1, high: int | None = None) -> int:
    """A whole number in ``low..high`` (``high`` defaults to :data:`MAX_ID`, never unbounded).

    Accepts ints, integral floats and their text (``"4"``, ``"4.0"``, ``"1e3"``); refuses booleans,
    non-finite values, fractions, over-long text and every other type, naming ``field``."""
    ceiling = MAX_ID if high is None else high
    number = _parse_number(field, value, "a whole number")
    if isinstance(number, float):
        if not math.isfinite(number) or not number.is_integer():
            raise ValidationError(field, f"{shown(value)} is not a whole number")
        number = int(number)
    if not low <= number <= ceiling:
        raise ValidationError(field, f"{shown(number)} must be between {low} and {ceiling}")
    return number


def bounded(field: str, value: Any, low: float, high: float, *, low_open: bool = False) -> float:
    """A finite number in ``[low, high]`` (``(low, high]`` with ``low_open``), as a float."""
    number = _parse_number(field, value, "a number")
    try:
        as_float = float(number)
    except OverflowError:  # an int beyond the float range
        raise ValidationError(field, f"{shown(value)} must be at most {num_text(high)}") from None
    if not math.isfinite(as_float):
        raise ValidationError(field, f"{shown(value)} is not a finite number")
    if as_float > high or as_float < low or (low_open and as_float == low):
        bound = (f"> {num_text(low)} and <= {num_text(high)}" if low_open
                 else f"between {num_text(low)} and {num_text(high)}")
        raise ValidationError(field, f"{shown(value)} must be a number {bound}")
    return as_float + 0.0  # -0.0 becomes 0.0


def positive(field: str, value: Any, high: float = MAX_NUMBER) -> float:
    """A finite number > 0 and <= ``high`` (default :data:`MAX_NUMBER`), as a float."""
    return bounded(field, value, 0.0, high, low_open=True)


def id_value(field: str, value: Any) -> int:
    """A row id: 1..:data:`MAX_ID`."""
    return whole(field, value, 1, MAX_ID)


def cores_value(field: str, value: Any, low: int = 1) -> int:
    """A number of cores: ``low``..:data:`MAX_CORES`."""
    return whole(field, value, low, MAX_CORES)


def ram_value(field: str, value: Any, low: int = 1) -> int:
    """RAM in MB: ``low``..:data:`MAX_RAM_MB`."""
    return whole(field, value, low, MAX_RAM_MB)


def disk_value(field: str, value: Any, low: int = 0) -> int:
    """Disk in GB: ``low`` (default 0)..:data:`MAX_DISK_GB`."""
    return whole(field, value, low, MAX_DISK_GB)


def seats_value(field: str, value: Any) -> int:
    """Seats of a reservation block: 1..:data:`MAX_SEATS`."""
    return whole(field, value, 1, MAX_SEATS)


def hours_value(field: str, value: Any, high: float = MAX_HOURS_BOOKING) -> float:
    """A duration in hours: :data:`MIN_HOURS` (one minute: the priority's E is at least 1 minute) to
    ``high`` (default :data:`MAX_HOURS_BOOKING`)."""
    return bounded(field, value, MIN_HOURS, high)


def text_value(field: str, value: Any, max_len: int = MAX_TEXT) -> str:
    """Free text (a description, a path, a kernel command line): a string of at most ``max_len``
    characters, valid UTF-8 (no lone surrogates, which is how Python carries undecodable bytes of
    argv) and without control characters (newlines, NUL, escape sequences)."""
    if not isinstance(value, str):
        raise ValidationError(field, f"{shown(value)} is not text")
    problem = text_problem(value, max_len)
    if problem:
        raise ValidationError(field, problem)
    return value


def text_problem(value: str, max_len: int = MAX_TEXT) -> str | None:
    """Why ``value`` is not acceptable free text (see :func:`text_value`), or None."""
    if len(value) > max_len:
        return f"{shown(value)} is longer than {max_len} characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{shown(value)} is not valid UTF-8"
    if any(unicodedata.category(c) == "Cc" for c in value):
        return f"{shown(value)} contains control characters"
    return None


def check_name(field: str, value: Any) -> str:
    """A name (slave, group, image, user): 1-63 letters, digits, '.', '_' or '-', starting alnum.
    Numbers are taken as their text (YAML reads ``name: 2024`` as an int); None, booleans, bytes and
    containers are refused."""
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < 10**63:
        text = str(value)
    else:
        text = ""
    if not NAME_RE.fullmatch(text):
        raise ValidationError(field, f"{shown(value)} must be 1-63 letters, digits, '.', '_' or '-' (starting alnum)")
    return text


# A slave's name is an inventory host name: never a name Ansible or the inventory plugin gives a meaning.
RESERVED_HOST_NAMES = frozenset({"localhost", "all", "ungrouped", "vcl_registered", "vcl_master", "vcl_slaves",
                                 "vcl_clients", "vcl_lent", "127.0.0.1", "::1"})
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
HOST_NAME_RE = re.compile(rf"^(?=.{{1,63}}$){_LABEL}(\.{_LABEL})*$")


def host_name_problem(name: Any) -> str:
    """Why ``name`` cannot be a slave's (inventory host) name, or ""."""
    text = name if isinstance(name, str) else str(name)
    if not HOST_NAME_RE.match(text):
        return f"{shown(text)} is not a host name (letters, digits and '-', dot-separated labels, at most 63)"
    if text.lower() in RESERVED_HOST_NAMES or text.lower().startswith("vcl_status_"):
        return f"{shown(text)} is a name the inventory already gives a meaning (localhost, all, a group)"
    return ""


def host_name(field: str, value: Any) -> str:
    """A slave's name as the inventory knows it (:func:`host_name_problem`), or ValidationError naming FIELD."""
    problem = host_name_problem(value)
    if problem:
        raise ValidationError(field, problem)
    return value if isinstance(value, str) else str(value)


def unicast_problem(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Why ``address`` cannot be a host's or a VM's address (not one unicast machine), or ""."""
    if address.version != 4:
        return f"{address} is not IPv4 (the lab is IPv4)"
    for flag, what in (("is_unspecified", "the unspecified address"), ("is_loopback", "a loopback address"),
                       ("is_multicast", "a multicast address"), ("is_link_local", "a link-local address"),
                       ("is_reserved", "a reserved address (240.0.0.0/4, the broadcast 255.255.255.255)")):
        if getattr(address, flag):
            return f"{address} is {what}"
    return ""


def slave_input(name: Any, address: Any, cores: Any, ram_mb: Any, disk_gb: Any) -> tuple[str, str, dict[str, int]]:
    """A slave's name, address and total capacity, checked; a bad value names its field."""
    name = check_name("name", name)
    problem = host_name_problem(name)
    if problem:
        raise ValidationError("name", problem)
    try:
        text = address if isinstance(address, str) else str(address) if address is not None else ""
        if len(text) > 64:
            raise ValueError(text)
        parsed = ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValidationError("address", f"{shown(address)} is not an IP address") from None
    problem = unicast_problem(parsed)
    if problem:
        raise ValidationError("address", problem)
    address = str(parsed)
    capacity = {"cores_total": cores_value("cores", cores), "ram_mb_total": ram_value("ram_mb", ram_mb),
                "disk_gb_total": disk_value("disk_gb", disk_gb, 1)}
    return name, address, capacity


def slave_status(value: Any) -> SlaveStatus:
    from .models import SlaveStatus  # here, not at the top: priority imports this module's bounds

    try:
        return SlaveStatus(str(value).strip().lower())
    except ValueError:
        raise ValidationError("status", f"{shown(value)}: choose one of up, down, draining") from None


def iso(value: datetime | None) -> str | None:
    return value.isoformat(sep=" ", timespec="minutes") if value is not None else None


def flag_value(field: str, value: Any) -> int:
    """A yes/no option (``prelaunch``): True/False, 0/1, or the strings "true"/"false"/"0"/"1" as Ansible and
    the command line give them; 0 or 1."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, str) and value.strip().lower() in ("0", "1", "true", "false"):
        return 1 if value.strip().lower() in ("1", "true") else 0
    raise ValidationError(field, f"must be true or false, got {shown(value)}")
