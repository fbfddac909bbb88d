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
import os
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

from .calendar import MAX_LOOKAHEAD_HOURS, BookingPolicy
from .errors import ValidationError
from .priority import COEFFICIENT_MAX, DEFAULT_COEFFICIENT, PLATFORM_VALUE_CEILING, PLATFORM_VALUE_MAX
from .validate import bounded, num_text, shown, text_problem, unicast_problem, whole

DEFAULT_MAC_PREFIX = "52:54:00"  # the KVM/QEMU locally administered prefix
DEFAULT_IMAGE_STORE = "/var/lib/vcl/images"
# Where the master keeps users' persistent disks (SPEC §10): STORE/USER_ID/DISK_ID-GENERATION.qcow2.
DEFAULT_DISK_STORE = "/var/lib/vcl/disks"


def default_db_url() -> str:
    if os.geteuid() == 0:
        path = Path("/var/lib/vcl/vcl.sqlite")
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
        path = base / "vcl" / "vcl.sqlite"
    return f"sqlite:///{path}"


def db_url() -> str:
    return os.environ.get("VCL_DB_URL") or default_db_url()


# Years a lab time may have: date arithmetic a year or two ahead (horizons, windows) never overflows.
MIN_YEAR, MAX_YEAR = 1970, 9000


def parse_datetime(value: str, field_name: str) -> datetime:
    """Parse 'YYYY-MM-DD HH:MM' (or any ISO 8601 form) as a naive local time in MIN_YEAR..MAX_YEAR."""
    try:
        if len(value) > 64:
            raise ValueError(value)
        parsed = datetime.fromisoformat(value.strip())
        if parsed.tzinfo is not None:
            # Lab time is local wall-clock time: reservations are "09:00 to 13:00" in the lab's zone.
            parsed = parsed.astimezone().replace(tzinfo=None)
    except (ValueError, TypeError, AttributeError, OverflowError):
        raise ValidationError(field_name, f"{shown(value)} is not a date and time like '2026-11-23 09:00'") from None
    if not MIN_YEAR <= parsed.year <= MAX_YEAR:
        raise ValidationError(field_name, f"{shown(value)}: the year must be between {MIN_YEAR} and {MAX_YEAR}")
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
    home = next((net for net in POOL_NETWORKS if int(net.network_address) <= first <= int(net.broadcast_address)),
                None)
    if home is None or last > int(home.broadcast_address):
        raise ValidationError(field_name, f"{text!r} must lie within one private network"
                                          f" ({', '.join(str(n) for n in POOL_NETWORKS[:3])}, ...): VMs never get"
                                          " public, loopback, multicast or link-local addresses")
    return first, last


# Where VM addresses may come from: RFC 1918, shared address space (RFC 6598), benchmarking (RFC 2544) and the
# documentation networks (RFC 5737); never public, loopback, multicast, link-local or reserved addresses.
POOL_NETWORKS = tuple(ipaddress.IPv4Network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "198.18.0.0/15", "192.0.2.0/24",
    "198.51.100.0/24", "203.0.113.0/24"))


def parse_pool(value: str, field_name: str) -> list[str]:
    """The addresses of a pool, in order."""
    first, last = pool_bounds(value, field_name)
    return [str(ipaddress.IPv4Address(i)) for i in range(first, last + 1)]


def check_image_store(value: Any, field_name: str = "image_store") -> str:
    """The image store (or the disk store, ``field_name``): an absolute, normalised path of printable characters
    (no ``..``, not ``/``), at most :data:`MAX_SETTING_TEXT` characters."""
    what, default = ("images", DEFAULT_IMAGE_STORE) if field_name == "image_store" else ("files", DEFAULT_DISK_STORE)
    if not isinstance(value, str):
        raise ValidationError(field_name, f"{shown(value)} is not text")
    problem = text_problem(value, MAX_SETTING_TEXT)
    if problem:
        raise ValidationError(field_name, problem)
    if not value.isprintable():
        raise ValidationError(field_name, f"{shown(value)} contains characters that are not printable")
    if not value.startswith("/") or value == "/" or value.startswith("//"):
        raise ValidationError(field_name, f"{shown(value)} must be an absolute directory other than /")
    if ".." in value.split("/") or os.path.normpath(value) != value:
        raise ValidationError(field_name, f"{shown(value)} must be a normalised path (no '..', '.', '//' or"
                                          " trailing '/')")
    system = next((d for d in SYSTEM_DIRS if value == d or value.startswith(d + "/")), None)
    if system:
        raise ValidationError(field_name, f"{shown(value)} is inside {system}, a system directory: {what} live in"
                                          f" a directory of their own (default {default})")
    if not IMAGE_STORE_RE.match(value):
        raise ValidationError(field_name, f"{shown(value)}: each name after a '/' is ASCII letters, digits and"
                                          " '._+-', starting with a letter or digit (as image paths are)")
    return value


# Directories of the system itself (pseudo file systems, configuration, programs): never an image store.
SYSTEM_DIRS = ("/dev", "/proc", "/sys", "/run", "/etc", "/boot", "/bin", "/sbin", "/lib", "/lib32", "/lib64",
               "/usr", "/var/lib/dpkg", "/var/lib/apt")
# The same names image paths are made of (vcl_sched/imagepath.py), so every image below the store can be named.
IMAGE_STORE_RE = re.compile(r"^(/[A-Za-z0-9][A-Za-z0-9._+-]*)+$")


LDAP_URL_RE = re.compile(r"^ldaps?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$")


def check_ldap(url: Any, user_dn: Any) -> None:
    """The LDAP settings: both empty (no directory), or a URL of a host (and port) and a DN template with
    ``{user}`` once."""
    for name, value in (("ldap_url", url), ("ldap_user_dn", user_dn)):
        if not isinstance(value, str):
            raise ValidationError(name, f"{shown(value)} is not text")
        problem = text_problem(value, MAX_SETTING_TEXT)
        if problem:
            raise ValidationError(name, problem)
    if bool(url) != bool(user_dn):
        raise ValidationError("ldap_url" if not url else "ldap_user_dn",
                              "set ldap_url and ldap_user_dn together (or neither)")
    if url and not LDAP_URL_RE.match(url):
        raise ValidationError("ldap_url", f"{shown(url)} is not ldap://HOST[:PORT] or ldaps://HOST[:PORT]")
    if user_dn:
        if user_dn.count("{user}") != 1 or user_dn.replace("{user}", "").count("{") \
                or user_dn.replace("{user}", "").count("}"):
            raise ValidationError("ldap_user_dn", f"{shown(user_dn)} must contain {{user}} once and no other braces")
        if "=" not in user_dn:
            raise ValidationError("ldap_user_dn", f"{shown(user_dn)} is not a DN like uid={{user}},dc=example")


def parse_mac_prefix(value: str) -> str:
    parts = str(value).strip().lower().split(":")
    if len(parts) != 3 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts):
        raise ValidationError("mac_prefix", f"{value!r} is not three hex octets like 52:54:00")
    if int(parts[0], 16) & 1:
        raise ValidationError("mac_prefix", f"{value!r} is a multicast prefix (first octet is odd)")
    return ":".join(parts)


# Bounds of the numeric settings. Each keeps the scheduler's arithmetic finite and its loops short:
# a date ``horizon_days`` ahead must exist, a conflicting booking is moved by ``move_step`` at most
# (24 h / 1 min) times a day, and every value ``vcl config`` prints is a finite number.
MAX_DECLINE_LIMIT = 1000
MIN_LAUNCH_LEASE_MINUTES, MAX_LAUNCH_LEASE_MINUTES = 1, 24 * 60
MAX_BOOKING_DAYS = 366  # lead_days and horizon_days: a year ahead at most
MAX_BOOKING_HOURS = 24.0  # max_hours: a booking lies within one day
MIN_MOVE_STEP_HOURS, MAX_MOVE_STEP_HOURS = 1 / 60, 24.0  # one minute .. one day
MAX_SETTING_TEXT = 256  # pools, the policy's name, the MAC prefix
MAX_PRELAUNCH_LEAD_MINUTES = 120
MAX_DISK_QUOTA_GB = 1_000_000.0  # a million GB: a bound for typing mistakes, not a policy


@dataclass(frozen=True)
class _Bound:
    """A numeric setting's range: ``whole`` numbers or reals in [low, high] (``(low, high]`` with
    ``low_open``)."""

    whole: bool
    low: float
    high: float
    low_open: bool = False
    unit: str = ""  # said after the range in an error

    def check(self, name: str, value: Any) -> int | float:
        try:
            if self.whole:
                return whole(name, value, int(self.low), int(self.high))
            return bounded(name, value, self.low, self.high, low_open=self.low_open)
        except ValidationError:
            raise ValidationError(name, f"{shown(value)} must be a {self.describe()}") from None

    def describe(self) -> str:
        low = f"> {num_text(self.low)}" if self.low_open else f">= {num_text(self.low)}"
        return f"{'whole number' if self.whole else 'number'} {low} and <= {num_text(self.high)}{self.unit}"


SETTING_BOUNDS: dict[str, _Bound] = {
    "priority_coefficient": _Bound(False, 0.0, COEFFICIENT_MAX, low_open=True),
    "platform_value_max": _Bound(False, 0.0, PLATFORM_VALUE_CEILING, low_open=True),
    "decline_limit": _Bound(True, 0, MAX_DECLINE_LIMIT),
    "launch_lease_minutes": _Bound(True, MIN_LAUNCH_LEASE_MINUTES, MAX_LAUNCH_LEASE_MINUTES, unit=" minutes"),
    "prelaunch_lead_minutes": _Bound(True, 0, MAX_PRELAUNCH_LEAD_MINUTES, unit=" minutes"),
    "disk_quota_user_gb": _Bound(False, 0.0, MAX_DISK_QUOTA_GB, unit=" GB"),
    "disk_quota_group_gb": _Bound(False, 0.0, MAX_DISK_QUOTA_GB, unit=" GB"),
    "booking.lead_days": _Bound(True, 0, MAX_BOOKING_DAYS, unit=" days"),
    "booking.horizon_days": _Bound(True, 0, MAX_BOOKING_DAYS, unit=" days"),
    "booking.lookahead_max_hours": _Bound(True, 1, MAX_LOOKAHEAD_HOURS, unit=" hours"),
    "booking.max_hours": _Bound(False, 0.0, MAX_BOOKING_HOURS, low_open=True, unit=" hours"),
    "booking.move_step": _Bound(False, MIN_MOVE_STEP_HOURS, MAX_MOVE_STEP_HOURS, unit=" hours (1 minute)"),
}


@dataclass(frozen=True)
class Settings:
    """Scheduling settings, stored as JSON in the ``settings`` table (``vcl config set``).

    Every number is bounded (:data:`SETTING_BOUNDS`), when set and when read back from the database."""

    priority_coefficient: float = DEFAULT_COEFFICIENT  # Pi = 10 + coefficient * PF (the paper's 0.20)
    placement_policy: str = "spread"  # spread (least used cores, the seed system) or pack
    mac_prefix: str = DEFAULT_MAC_PREFIX
    private_pool: str = ""  # VM private addresses, 'A-B' or CIDR; paired in order with public_pool
    public_pool: str = ""
    decline_limit: int = 2  # declined lendings after which a user's register_as_slave=1 counts as 0 (SPEC §9)
    # PfV of a request is in 0..platform_value_max (SPEC §3 priority.platform_value_max).
    platform_value_max: float = PLATFORM_VALUE_MAX
    # How long a launch may hold an instance before a reconcile run takes it back.
    launch_lease_minutes: int = 30
    # Where the images' files live on the master: every image path is inside it (issue 12, confined paths).
    image_store: str = DEFAULT_IMAGE_STORE
    # The lab's networks, from the inventory (site.yml): what pools and slave addresses are checked against.
    # "" is unknown: the checks that need the value are skipped.
    lab_subnet: str = ""  # the lab LAN, CIDR N/len (the inventory's lab_subnet)
    vm_subnet: str = ""  # the VMs' private network, CIDR (lab_vm_subnet)
    lab_gateway: str = ""  # the LAN's router, an IPv4 address in lab_subnet (lab_gateway)
    vm_gateway: str = ""  # the VMs' gateway (the master's VM-side address), in vm_subnet (lab_vm_gateway)
    master_address: str = ""  # the master's lab address, without prefix
    # A session's seats with prelaunch are started this long before its window opens, so the class finds them
    # running at the bell.
    prelaunch_lead_minutes: int = 10
    # Persistent disks (SPEC §10): where the master keeps them (a directory per user), and how much each user and
    # each group may keep (GB; a user's or a group's own quota, `vcl disk quota`, overrides these).
    disk_store: str = DEFAULT_DISK_STORE
    disk_quota_user_gb: float = 10.0
    disk_quota_group_gb: float = 100.0
    # LDAP login (SPEC §7) for colleges with a directory: "" is none. ldap_url is ldap://HOST[:PORT] or
    # ldaps://HOST[:PORT]; ldap_user_dn is the DN a user binds as, with {user} where the (escaped) login name goes,
    # for example uid={user},ou=people,dc=college,dc=edu.
    ldap_url: str = ""
    ldap_user_dn: str = ""
    booking: BookingPolicy = field(default_factory=BookingPolicy)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["booking"] = booking_to_json(self.booking)
        return data


BOOKING_KEYS = {f.name for f in fields(BookingPolicy)}
# Other spellings `vcl config set` takes (of bounded settings): SPEC §3 names the PfV ceiling
# priority.platform_value_max.
SETTING_ALIASES = {"priority.platform_value_max": "platform_value_max"}
SETTING_KEYS = ({f.name for f in fields(Settings) if f.name != "booking"} | {f"booking.{k}" for k in BOOKING_KEYS}
                | set(SETTING_ALIASES))


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


def booking_from_json(data: Any) -> BookingPolicy:
    if not isinstance(data, dict):
        raise ValidationError("booking", f"{shown(data)} is not a set of booking.* settings")
    kwargs: dict[str, Any] = {}
    defaults = BookingPolicy()
    for key, value in data.items():
        if key not in BOOKING_KEYS:
            raise ValidationError(f"booking.{_key_name(key)}", "unknown booking setting")
        current = getattr(defaults, key)
        kwargs[key] = _coerce(f"booking.{key}", current, value)
    try:
        return BookingPolicy(**kwargs)
    except ValidationError:
        raise
    except (TypeError, ValueError, OverflowError) as err:
        raise ValidationError("booking", str(err)) from None


def _key_name(key: Any) -> str:
    """A settings key as an error message may show it: itself when it is plain text, else its repr."""
    return key if isinstance(key, str) and text_problem(key, 64) is None else shown(key)


def _coerce(name: str, current: Any, value: Any) -> Any:
    """``value`` (text from `vcl config set`, or JSON read from the database) as the type of ``current``,
    within its bounds; a ValidationError names the setting otherwise."""
    bound = SETTING_BOUNDS.get(name)
    if bound is not None:
        number = bound.check(name, value)
        return timedelta(hours=number) if isinstance(current, timedelta) else number
    if isinstance(value, time) and isinstance(current, time):
        return value
    if not isinstance(value, str):
        raise ValidationError(name, f"{shown(value)} is not text")
    problem = text_problem(value, MAX_SETTING_TEXT)
    if problem:
        raise ValidationError(name, problem)
    if isinstance(current, time):
        try:
            return time.fromisoformat(value.strip())
        except ValueError:
            raise ValidationError(name, f"{shown(value)} is not a time of day like 09:00") from None
    return value


def settings_from_json(data: Any) -> Settings:
    """Settings from their JSON form (the database's rows, or the current settings with `vcl config set`'s
    changes); every value is checked, and an error names the setting."""
    if not isinstance(data, dict):
        raise ValidationError("settings", f"{shown(data)} is not a set of settings")
    defaults = Settings()
    kwargs: dict[str, Any] = {}
    aliased: dict[str, Any] = {}
    for key, value in data.items():
        if key == "booking":
            kwargs["booking"] = booking_from_json(value)
        elif key in SETTING_ALIASES:
            # the alias is what `vcl config set` was given: it wins over the stored spelling
            aliased[SETTING_ALIASES[key]] = SETTING_BOUNDS[SETTING_ALIASES[key]].check(key, value)
        elif key in SETTING_KEYS:
            kwargs[key] = _coerce(key, getattr(defaults, key), value)
        else:
            raise ValidationError(_key_name(key), "unknown setting")
    kwargs.update(aliased)
    settings = Settings(**kwargs)
    validate_settings(settings)
    return settings


def _setting_values(s: Settings) -> dict[str, Any]:
    """Every bounded setting by its name, as :data:`SETTING_BOUNDS` measures it (move_step in hours)."""
    values: dict[str, Any] = {}
    for name in SETTING_BOUNDS:
        if name.startswith("booking."):
            value = getattr(s.booking, name.split(".", 1)[1])
            if isinstance(value, timedelta):
                value = value.total_seconds() / 3600
        else:
            value = getattr(s, name)
        values[name] = value
    return values


def validate_settings(s: Settings) -> None:
    """Check a Settings object as a whole: each number in its bounds and of its type, the policy's name,
    the MAC prefix, the pools (which must not overlap). A ValidationError names the setting."""
    from .placement import POLICIES  # local import: placement imports nothing from here

    for name, value in _setting_values(s).items():
        bound = SETTING_BOUNDS[name]
        kind_ok = (isinstance(value, int) if bound.whole else isinstance(value, int | float)) \
            and not isinstance(value, bool)
        if not kind_ok:
            raise ValidationError(name, f"{shown(value)} must be a {bound.describe()}")
        bound.check(name, value)
    for name in ("placement_policy", "mac_prefix", "private_pool", "public_pool", *NETWORK_SETTINGS):
        value = getattr(s, name)
        problem = text_problem(value, MAX_SETTING_TEXT) if isinstance(value, str) else f"{shown(value)} is not text"
        if problem:
            raise ValidationError(name, problem)
    check_image_store(s.image_store)
    check_image_store(s.disk_store, "disk_store")
    if s.disk_store == s.image_store or s.disk_store.startswith(s.image_store + "/") \
            or s.image_store.startswith(s.disk_store + "/"):
        raise ValidationError("disk_store", f"{shown(s.disk_store)} must lie outside the image store"
                                            f" {shown(s.image_store)} (and the image store outside it)")
    check_ldap(s.ldap_url, s.ldap_user_dn)
    if s.placement_policy not in POLICIES:
        raise ValidationError("placement_policy", f"{shown(s.placement_policy)}: choose one of {', '.join(POLICIES)}")
    parse_mac_prefix(s.mac_prefix)
    private = pool_bounds(s.private_pool, "private_pool") if s.private_pool else None
    public = pool_bounds(s.public_pool, "public_pool") if s.public_pool else None
    if private and public and private[0] <= public[1] and public[0] <= private[1]:
        first = ipaddress.IPv4Address(max(private[0], public[0]))
        raise ValidationError("public_pool", f"overlaps private_pool at {first}")
    check_lab_network(s, private, public)


# --- the lab's networks: one set of checks for `vcl config set`, the inventory pre-flight and slave addresses ---

NETWORK_SETTINGS = ("lab_subnet", "vm_subnet", "lab_gateway", "vm_gateway", "master_address")
Bounds = tuple[int, int]


def parse_network(value: Any, field_name: str) -> ipaddress.IPv4Network:
    """An IPv4 network 'N/len' (host bits clear), exactly: no spaces around it (it is written into configs)."""
    text = str(value)
    try:
        if len(text) > 64:
            raise ValueError("too long")
        return ipaddress.IPv4Network(text, strict=True)
    except ValueError as err:
        raise ValidationError(field_name, f"{shown(value)} is not an IPv4 network N/len ({err})") from None


def parse_host_address(value: Any, field_name: str) -> ipaddress.IPv4Address:
    """One unicast IPv4 host address (no prefix, no spaces around it)."""
    text = str(value)
    try:
        if len(text) > 64:
            raise ValueError(text)
        address = ipaddress.IPv4Address(text)
    except ValueError:
        raise ValidationError(field_name, f"{shown(value)} is not an IPv4 address") from None
    problem = unicast_problem(address)
    if problem:
        raise ValidationError(field_name, problem)
    return address


def subnets_overlap_problem(lan: ipaddress.IPv4Network, vm: ipaddress.IPv4Network, lan_name: str) -> str:
    """Why the VMs' network cannot sit next to the lab LAN, or ""."""
    return f"{vm} overlaps {lan_name} {lan}" if lan.overlaps(vm) else ""


def edge_address(address: ipaddress.IPv4Address, net: ipaddress.IPv4Network) -> bool:
    """Whether ``address`` is ``net``'s network or broadcast address (which no host may have)."""
    return net.prefixlen < 31 and address in (net.network_address, net.broadcast_address)


def in_network_problem(address: ipaddress.IPv4Address, net: ipaddress.IPv4Network, where: str = "") -> str:
    """Why ``address`` cannot be a host of ``net`` (outside it, or its network or broadcast address), or "".
    ``where`` names the network in the message (``"lab_subnet "``)."""
    if address not in net:
        return f"{address} is outside {where}{net}"
    if edge_address(address, net):
        return f"{address} is the network or broadcast address of {where}{net}"
    return ""


def show_bounds(bounds: Bounds) -> str:
    return f"{ipaddress.IPv4Address(bounds[0])}-{ipaddress.IPv4Address(bounds[1])}"


def pool_inside(bounds: Bounds, net: ipaddress.IPv4Network) -> bool:
    """Whether a pool lies within ``net``'s host addresses (never its network or broadcast address)."""
    return int(net.network_address) < bounds[0] and bounds[1] < int(net.broadcast_address)


def pool_outside_problem(bounds: Bounds, net: ipaddress.IPv4Network, net_name: str) -> str:
    """Why a pool is not inside its network ``net_name``, or ""."""
    return "" if pool_inside(bounds, net) else f"{show_bounds(bounds)} is not inside {net_name} {net}"


def pools_overlap_problem(private: Bounds, public: Bounds, private_name: str) -> str:
    if private[0] <= public[1] and public[0] <= private[1]:
        return f"{show_bounds(public)} overlaps {private_name} {show_bounds(private)}"
    return ""


def pool_holds(bounds: Bounds, address: ipaddress.IPv4Address) -> bool:
    return bounds[0] <= int(address) <= bounds[1]


def _networks(s: Settings) -> tuple[ipaddress.IPv4Network | None, ipaddress.IPv4Network | None]:
    lan = parse_network(s.lab_subnet, "lab_subnet") if s.lab_subnet else None
    vm = parse_network(s.vm_subnet, "vm_subnet") if s.vm_subnet else None
    return lan, vm


def reserved_addresses(s: Settings) -> dict[ipaddress.IPv4Address, str]:
    """The addresses the settings give to hosts (gateways, the master), by the setting that names them."""
    return {parse_host_address(getattr(s, name), name): name
            for name in ("lab_gateway", "vm_gateway", "master_address") if getattr(s, name)}


def check_lab_network(s: Settings, private: Bounds | None, public: Bounds | None) -> None:
    """The network settings against each other and the pools (the pre-flight's checks on the database's copy):
    the subnets do not overlap, the gateways and the master are hosts of their subnets and distinct, each pool
    lies inside its subnet and holds no gateway nor the master's address. Unknown ("") values are skipped."""
    lan, vm = _networks(s)
    if lan and vm and (problem := subnets_overlap_problem(lan, vm, "lab_subnet")):
        raise ValidationError("vm_subnet", problem)
    seen: dict[ipaddress.IPv4Address, str] = {}
    for name, net, net_name in (("lab_gateway", lan, "lab_subnet "), ("vm_gateway", vm, "vm_subnet "),
                                ("master_address", lan, "lab_subnet ")):
        if not getattr(s, name):
            continue
        address = parse_host_address(getattr(s, name), name)
        if net is not None and (problem := in_network_problem(address, net, net_name)):
            raise ValidationError(name, problem)
        if address in seen:
            raise ValidationError(name, f"{address} is already {seen[address]}")
        seen[address] = name
    if private and vm and (problem := pool_outside_problem(private, vm, "vm_subnet")):
        raise ValidationError("private_pool", problem)
    if public and lan and (problem := pool_outside_problem(public, lan, "lab_subnet")):
        raise ValidationError("public_pool", problem)
    for name, bounds in (("private_pool", private), ("public_pool", public)):
        for address, owner in seen.items():
            if bounds and pool_holds(bounds, address):
                raise ValidationError(name, f"{show_bounds(bounds)} contains {address} ({owner}): a VM would take"
                                            " a host's address")


def host_address_conflict(address: ipaddress.IPv4Address, s: Settings) -> tuple[str, str] | None:
    """The setting a lab host (a slave) with ``address`` would break, and why; None when it fits: inside
    lab_subnet (when known) and not its network or broadcast address, not in vm_subnet, not a gateway nor the
    master's address, not in either pool (a VM could get it)."""
    lan, vm = _networks(s)
    if lan is not None and (problem := in_network_problem(address, lan, "lab_subnet ")):
        return "lab_subnet", problem
    if vm is not None and address in vm:
        return "vm_subnet", f"{address} is inside vm_subnet {vm}, the VMs' network"
    owner = reserved_addresses(s).get(address)
    if owner:
        return owner, f"{address} is the {owner} setting's address"
    for name in ("private_pool", "public_pool"):
        value = getattr(s, name)
        if value and pool_holds(pool_bounds(value, name), address):
            return name, f"{address} is in {name} {value.strip()}: a VM may get it"
    return None


def host_address_problem(address: ipaddress.IPv4Address, s: Settings) -> str:
    """Why a slave cannot have ``address`` (a unicast IPv4 host that fits the settings ``s``), or ""."""
    problem = unicast_problem(address)
    if problem:
        return problem
    conflict = host_address_conflict(address, s)
    return conflict[1] if conflict else ""
