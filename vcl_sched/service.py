"""What the `vcl` command and the playbooks' modules call: every read and write of the lab database.

The decisions are the pure functions of ``priority``, ``placement``, ``calendar`` and ``preempt``;
this module feeds them from the database and writes their outcome in one transaction
(``db.write``). Claims of cores, RAM, disk and addresses are compare-and-swap updates: a lost race
raises ``RetryTransaction`` and the whole transaction runs again on fresh state.

Every function validates all of its input before it opens a write transaction, so bad input
changes nothing. Results are plain dicts (the CLI prints them as tables or JSON).
"""

from __future__ import annotations

import getpass
import ipaddress
import json
import math
import os
import random
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, and_, bindparam, case, func, insert, select, type_coerce, update
from sqlalchemy.orm import Session

from . import calendar, config, db, placement, preempt
from .errors import CapacityError, ConflictError, NotFoundError, ValidationError
from .models import (
    AddressPair,
    AuditLog,
    Group,
    Image,
    Instance,
    InstanceKind,
    InstanceState,
    Membership,
    Reservation,
    ReservationState,
    Slave,
    SlaveStatus,
    User,
)
from .priority import parse_priority_inputs, priority

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
ACTIVE_BOOKINGS = (ReservationState.ACCEPTED, ReservationState.ACTIVE)
HOLDS_CAPACITY = (InstanceState.PENDING, InstanceState.RUNNING)  # suspended VMs hold only disk
# Single-weigher policies in SQL: ORDER BY the policy's sort key, filters in WHERE. Equal to
# placement.place() for these policies (tests/unit/test_service_placement.py checks it).
SQL_ORDER = {
    "spread": (Slave.cores_used, Slave.id),
    "pack": (Slave.cores_total - Slave.cores_used, Slave.id),
}


# --- small helpers ------------------------------------------------------------------------------

def actor() -> str:
    return os.environ.get("VCL_ACTOR") or getpass.getuser()


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


def iso(value: datetime | None) -> str | None:
    return value.isoformat(sep=" ", timespec="minutes") if value is not None else None


_AUDIT = db.Prepared(insert(AuditLog), ("at", "actor", "object_type", "object_id", "action", "before", "after"))


def audit(q: Session | db.Direct, obj_type: str, obj_id: int, action: str, before: dict | None,
          after: dict | None, at: datetime | None = None) -> None:
    _AUDIT.run(q, {"at": at or config.now(), "actor": actor(), "object_type": obj_type, "object_id": obj_id,
                   "action": action,
                   "before": json.dumps(before, default=str, sort_keys=True) if before is not None else None,
                   "after": json.dumps(after, default=str, sort_keys=True) if after is not None else None})


def _create(session: Session, obj: Any, kind: str, to_row: Any) -> dict[str, Any]:
    """Insert ``obj``, audit its creation, and return its row as the command prints it."""
    session.add(obj)
    session.flush()
    row = to_row(obj)
    audit(session, kind, obj.id, "create", None, row)
    return row


_GROUP_ID = db.Prepared(select(Group.id).where(Group.name == bindparam("name")))
_IMAGE_REF = db.Prepared(select(Image.id, Image.default_disk_gb).where(Image.name == bindparam("name")))


def _group_id(q: Session | db.Direct, name: str, field: str = "owner") -> int:
    group_id = _GROUP_ID.scalar(q, {"name": name})
    if group_id is None:
        raise ValidationError(field, f"no group named {name!r} (add it with `vcl group add {name}`)")
    return group_id


_USER = db.Prepared(select(User.id, User.declines).where(User.name == bindparam("name")))
_NEW_USER = db.Prepared(insert(User).returning(User.id), ("name", "declines", "registered_slave", "created_at"))
_MEMBER = db.Prepared(select(Membership.user_id).where(Membership.user_id == bindparam("uid"),
                                                       Membership.group_id == bindparam("gid")))
_NEW_MEMBER = db.Prepared(insert(Membership), ("user_id", "group_id"))


def _user(q: Session | db.Direct, name: str, group_id: int | None = None) -> tuple[int, int]:
    """The user's id and decline count; a user seen for the first time is created (and audited),
    and joins ``group_id``."""
    row = _USER.first(q, {"name": name})
    if row is not None:
        user_id, declines = row
    else:
        user_id, declines = _NEW_USER.scalar(q, {"name": name, "declines": 0, "registered_slave": 0,
                                                 "created_at": config.now()}), 0
        audit(q, "user", user_id, "create", None, {"name": name})
    if group_id is not None and _MEMBER.first(q, {"uid": user_id, "gid": group_id}) is None:
        _NEW_MEMBER.run(q, {"user_id": user_id, "group_id": group_id})
    return user_id, declines


def _image_ref(q: Session | db.Direct, name: str | None) -> tuple[int, int] | None:
    """The image's id and default disk size, or None without an image."""
    if name is None:
        return None
    row = _IMAGE_REF.first(q, {"name": name})
    if row is None:
        raise ValidationError("image", f"no image named {name!r} (add it with `vcl image add`)")
    return row[0], row[1]


# --- database and settings ------------------------------------------------------------------------

def init(url: str | None = None) -> dict[str, Any]:
    db.upgrade(url)

    def seed(session: Session) -> config.Settings:
        settings = db.load_settings(session)
        db.save_settings(session, settings)  # write defaults for keys never set
        return settings

    settings = db.write(seed, url)
    return {"url": config.safe_url(url or config.db_url()), "schema": db.current_revision(url),
            "settings": settings.to_json()}


def get_settings(url: str | None = None) -> config.Settings:
    db.require_schema(url)
    with db.read(url) as session:
        return db.load_settings(session)


def configure(updates: dict[str, str], url: str | None = None) -> dict[str, Any]:
    """Change settings (``booking.max_hours=4``, ``private_pool=10.0.1.16-10.0.1.254`` ...).

    Changing the pools rewrites the free (public, private) pairs; pairs held by instances stay,
    and a change that would drop a held pair is refused."""
    db.require_schema(url)
    for key in updates:
        if key not in config.SETTING_KEYS:
            raise ValidationError(key, f"unknown setting (known: {', '.join(sorted(config.SETTING_KEYS))})")

    def apply(session: Session) -> dict[str, Any]:
        db.lock(session, "addresses")
        current = db.load_settings(session)
        data = current.to_json()
        for key, value in updates.items():
            if key.startswith("booking."):
                data["booking"][key.split(".", 1)[1]] = value
            else:
                data[key] = value
        new = config.settings_from_json(data)
        if (new.private_pool, new.public_pool) != (current.private_pool, current.public_pool):
            _rewrite_pairs(session, new)
        db.save_settings(session, new)
        audit(session, "settings", 0, "update", current.to_json(), new.to_json())
        return new.to_json()

    return db.write(apply, url)


def _rewrite_pairs(session: Session, settings: config.Settings) -> None:
    private = config.parse_pool(settings.private_pool, "private_pool") if settings.private_pool else []
    public = config.parse_pool(settings.public_pool, "public_pool") if settings.public_pool else []
    wanted = list(zip(private, public, strict=False))  # pairs in order; the shorter pool sets the count
    wanted_set = set(wanted)
    held = session.execute(select(AddressPair.private_ip, AddressPair.public_ip, AddressPair.instance_id)
                           .where(AddressPair.instance_id.is_not(None))).all()
    for priv, pub, inst in held:
        if (priv, pub) not in wanted_set:
            raise ConflictError(f"private_pool/public_pool: the pair {pub} → {priv} is held by instance {inst};"
                                " stop it before removing its addresses from the pools")
    session.execute(AddressPair.__table__.delete().where(AddressPair.instance_id.is_(None)))
    held_set = {(p, q) for p, q, _ in held}
    rows = [{"private_ip": p, "public_ip": q} for p, q in wanted if (p, q) not in held_set]
    if rows:
        session.execute(insert(AddressPair), rows)


# --- groups, users, images ----------------------------------------------------------------------

def add_group(name: str, description: str = "", url: str | None = None) -> dict[str, Any]:
    name = check_name("name", name)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        if session.scalar(select(Group.id).where(Group.name == name)) is not None:
            raise ConflictError(f"name: a group named {name!r} exists already")
        group = Group(name=name, description=description, created_at=config.now())
        session.add(group)
        session.flush()
        audit(session, "group", group.id, "create", None, {"name": name})
        return {"id": group.id, "name": name, "description": description}

    return db.write(apply, url)


def list_groups(url: str | None = None) -> list[dict[str, Any]]:
    db.require_schema(url)
    with db.read(url) as session:
        return [{"id": g.id, "name": g.name, "description": g.description}
                for g in session.scalars(select(Group).order_by(Group.name))]


def add_image(name: str, disk_file: str, *, description: str = "", kernel: str | None = None,
              ramdisk: str | None = None, cmdline: str | None = None, cores: Any = 1, ram_mb: Any = 512,
              disk_gb: Any = 2, url: str | None = None) -> dict[str, Any]:
    name = check_name("name", name)
    if not disk_file or not str(disk_file).startswith("/"):
        raise ValidationError("disk_file", f"{disk_file!r} must be an absolute path in the image store")
    for field, value in (("kernel", kernel), ("ramdisk", ramdisk)):
        if value is not None and not str(value).startswith("/"):
            raise ValidationError(field, f"{value!r} must be an absolute path")
    values = {"default_cores": whole("cores", cores), "default_ram_mb": whole("ram_mb", ram_mb, 16),
              "default_disk_gb": whole("disk_gb", disk_gb, 0)}
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        if session.scalar(select(Image.id).where(Image.name == name)) is not None:
            raise ConflictError(f"name: an image named {name!r} exists already")
        image = Image(name=name, description=description, disk_file=disk_file, kernel=kernel, ramdisk=ramdisk,
                      cmdline=cmdline, created_at=config.now(), **values)
        return _create(session, image, "image", _image_row)

    return db.write(apply, url)


def ensure_image(name: str, disk_file: str, *, description: str = "", kernel: str | None = None,
                 ramdisk: str | None = None, cmdline: str | None = None, cores: Any = 1, ram_mb: Any = 512,
                 disk_gb: Any = 2, url: str | None = None) -> tuple[dict[str, Any], bool]:
    """Add the image, or bring a registered one to these values (what a playbook declares). Returns the
    row and whether anything was written."""
    name = check_name("name", name)
    for field, value in (("disk_file", disk_file), ("kernel", kernel), ("ramdisk", ramdisk)):
        if value is not None and not str(value).startswith("/"):
            raise ValidationError(field, f"{value!r} must be an absolute path in the image store")
    if not disk_file:
        raise ValidationError("disk_file", "required: the image's disk in the image store")
    if cmdline is not None and ("\n" in cmdline or len(cmdline) > 1024):
        raise ValidationError("cmdline", "must be one line of at most 1024 characters")
    wanted = {"description": description, "disk_file": disk_file, "kernel": kernel or None,
              "ramdisk": ramdisk or None, "cmdline": cmdline or None, "default_cores": whole("cores", cores),
              "default_ram_mb": whole("ram_mb", ram_mb, 16), "default_disk_gb": whole("disk_gb", disk_gb, 0)}
    db.require_schema(url)

    def apply(session: Session) -> tuple[dict[str, Any], bool]:
        image = session.scalar(select(Image).where(Image.name == name))
        if image is None:
            image = Image(name=name, created_at=config.now(), **wanted)
            return _create(session, image, "image", _image_row), True
        before = {k: getattr(image, k) for k in wanted if getattr(image, k) != wanted[k]}
        if not before:
            return _image_row(image), False
        for key in before:
            setattr(image, key, wanted[key])
        audit(session, "image", image.id, "update", before, {k: wanted[k] for k in before})
        return _image_row(image), True

    return db.write(apply, url)


def _image_row(i: Image) -> dict[str, Any]:
    return {"id": i.id, "name": i.name, "description": i.description, "disk_file": i.disk_file, "kernel": i.kernel,
            "ramdisk": i.ramdisk, "cmdline": i.cmdline, "cores": i.default_cores, "ram_mb": i.default_ram_mb,
            "disk_gb": i.default_disk_gb}


def list_images(url: str | None = None) -> list[dict[str, Any]]:
    db.require_schema(url)
    with db.read(url) as session:
        return [_image_row(i) for i in session.scalars(select(Image).order_by(Image.name))]


# --- slaves -------------------------------------------------------------------------------------

def _slave_row(s: Slave) -> dict[str, Any]:
    return {"id": s.id, "name": s.name, "address": s.address, "status": str(s.status),
            "cores_total": s.cores_total, "cores_used": s.cores_used, "cores_free": s.cores_total - s.cores_used,
            "ram_mb_total": s.ram_mb_total, "ram_mb_used": s.ram_mb_used, "ram_mb_free": s.ram_mb_total - s.ram_mb_used,
            "disk_gb_total": s.disk_gb_total, "disk_gb_used": s.disk_gb_used,
            "disk_gb_free": s.disk_gb_total - s.disk_gb_used, "generation": s.generation, "joined_at": iso(s.joined_at)}


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


def add_slave(name: str, address: str, cores: Any, ram_mb: Any, disk_gb: Any, status: str = "up",
              url: str | None = None) -> dict[str, Any]:
    name, address, capacity = slave_input(name, address, cores, ram_mb, disk_gb)
    state = _slave_status(status)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        for column, value, what in ((Slave.name, name, "name"), (Slave.address, address, "address")):
            other = session.scalar(select(Slave.name).where(column == value))
            if other is not None:
                raise ConflictError(f"{what}: slave {other!r} already has {what} {value}")
        now = config.now()
        slave = Slave(name=name, address=address, status=state, generation=0, joined_at=now, updated_at=now,
                      cores_used=0, ram_mb_used=0, disk_gb_used=0, **capacity)
        return _create(session, slave, "slave", _slave_row)

    return db.write(apply, url)


def _slave_status(value: str) -> SlaveStatus:
    try:
        return SlaveStatus(str(value).strip().lower())
    except ValueError:
        raise ValidationError("status", f"{value!r}: choose one of up, down, draining") from None


def set_slave_status(name: str, status: str, url: str | None = None) -> dict[str, Any]:
    name = check_name("name", name)
    state = _slave_status(status)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        slave = session.scalar(select(Slave).where(Slave.name == name))
        if slave is None:
            raise NotFoundError(f"name: no slave named {name!r}")
        before = str(slave.status)
        if before != state:
            slave.status = state
            slave.generation += 1
            slave.updated_at = config.now()
            audit(session, "slave", slave.id, "status", {"status": before}, {"status": str(state)})
        return _slave_row(slave)

    return db.write(apply, url)


def list_slaves(url: str | None = None) -> list[dict[str, Any]]:
    db.require_schema(url)
    with db.read(url) as session:
        return [_slave_row(s) for s in session.scalars(select(Slave).order_by(Slave.name))]


# --- placement in SQL and claims ------------------------------------------------------------------
# Statements are built once (bound parameters, never formatted text) and db.Prepared compiles them
# once per dialect, so each call only binds values: the request and claim paths run on every launch.

_D_CORES, _D_RAM, _D_DISK = bindparam("d_cores"), bindparam("d_ram"), bindparam("d_disk")
# The status is read as its text: SlaveState holds the string, and the enum round trip was a third
# of the cost of reading every slave (a dispatcher rebuilding its view after a lost race).
_SLAVE_COLUMNS = (Slave.id, Slave.name, Slave.cores_total, Slave.ram_mb_total, Slave.disk_gb_total,
                  Slave.cores_used, Slave.ram_mb_used, Slave.disk_gb_used, type_coerce(Slave.status, String),
                  Slave.generation)
_IS_UP = Slave.status == SlaveStatus.UP
_HAS_CORES = Slave.cores_total - Slave.cores_used >= _D_CORES
_HAS_RAM = Slave.ram_mb_total - Slave.ram_mb_used >= _D_RAM
_HAS_DISK = Slave.disk_gb_total - Slave.disk_gb_used >= _D_DISK
_CASCADE = (_IS_UP, and_(_IS_UP, _HAS_CORES), and_(_IS_UP, _HAS_CORES, _HAS_RAM),
            and_(_IS_UP, _HAS_CORES, _HAS_RAM, _HAS_DISK))
_FILTER_COUNTS = db.Prepared(select(func.count(), *(func.coalesce(func.sum(case((cond, 1), else_=0)), 0)
                                                     for cond in _CASCADE)))
# Spread states the cores filter as `cores_used + n <= cores_total` (the same test): written as
# `cores_total - cores_used >= n` it matches the pack index's expression, and SQLite's planner would
# then range-scan that index and sort, instead of walking ix_slaves_spread in order.
_CORES_FILTER = {"spread": Slave.cores_used + _D_CORES <= Slave.cores_total, "pack": _HAS_CORES}
_CHOOSE = {name: select(*_SLAVE_COLUMNS).where(_IS_UP, _CORES_FILTER[name], _HAS_RAM, _HAS_DISK).order_by(*order)
           for name, order in SQL_ORDER.items()}
TIE_SAMPLE = 64  # after a lost race, choose at random among up to this many equally good slaves
_CHOOSE_BEST = {name: db.Prepared(stmt.limit(1)) for name, stmt in _CHOOSE.items()}
_CHOOSE_TIED = {name: db.Prepared(stmt.limit(TIE_SAMPLE)) for name, stmt in _CHOOSE.items()}
# The claim transaction (commit_claim) runs these on the DBAPI cursor (db.write_direct), where
# SQLAlchemy's per-statement cost was most of a claim's time; other writers run them in a Session.
_CLAIM = db.Prepared(update(Slave).where(Slave.id == bindparam("sid"), Slave.generation == bindparam("gen"))
                     .values(cores_used=Slave.cores_used + _D_CORES, ram_mb_used=Slave.ram_mb_used + _D_RAM,
                             disk_gb_used=Slave.disk_gb_used + _D_DISK, generation=Slave.generation + 1,
                             updated_at=bindparam("now")))
_RELEASE = (update(Slave).where(Slave.id == bindparam("sid"))
            .values(cores_used=Slave.cores_used - _D_CORES, ram_mb_used=Slave.ram_mb_used - _D_RAM,
                    disk_gb_used=Slave.disk_gb_used - _D_DISK, generation=Slave.generation + 1,
                    updated_at=bindparam("now")))
# One statement takes the lowest free pair; PostgreSQL skips pairs other transactions are taking
# (SQLite, whose writers are serialised, has no FOR UPDATE: its compiler leaves the clause out).
_TAKE_PAIR = db.Prepared(
    update(AddressPair)
    .where(AddressPair.id == select(AddressPair.id).where(AddressPair.instance_id.is_(None)).order_by(AddressPair.id)
           .limit(1).with_for_update(skip_locked=True).scalar_subquery())
    .values(instance_id=bindparam("iid"), mac=bindparam("mac"))
    .returning(AddressPair.private_ip, AddressPair.public_ip))
_SET_ADDRESSES = db.Prepared(update(Instance).where(Instance.id == bindparam("iid"))
                             .values(mac=bindparam("mac"), private_ip=bindparam("priv"), public_ip=bindparam("pub")))
_NEW_INSTANCE = db.Prepared(insert(Instance).returning(Instance.id), (
    "image_id", "group_id", "user_id", "slave_id", "cores", "ram_mb", "disk_gb", "state", "kind", "priority",
    "register_as_slave", "ends_at", "created_at", "updated_at"))
_COUNT_PAIRS = db.Prepared(select(func.count(), func.count(AddressPair.instance_id)).select_from(AddressPair))
_DECLINE = db.Prepared(update(User).where(User.id == bindparam("uid"), User.declines < bindparam("limit"))
                       .values(declines=User.declines + 1))
_REGISTERED = db.Prepared(update(User).where(User.id == bindparam("uid"), User.registered_slave != 1)
                          .values(registered_slave=1))


def _demand_params(demand: placement.Demand) -> dict[str, int]:
    return {"d_cores": demand.cores, "d_ram": demand.ram_mb, "d_disk": demand.disk_gb}


def _state(row: Any) -> placement.SlaveState:
    return placement.SlaveState(*row)


_SLAVES = db.Prepared(select(*_SLAVE_COLUMNS).order_by(Slave.id))
_SLAVE = db.Prepared(select(*_SLAVE_COLUMNS).where(Slave.id == bindparam("sid")))


def slave_states(q: Session | db.Direct) -> list[placement.SlaveState]:
    return [_state(r) for r in _SLAVES.all(q)]


def slave_state(q: Session | db.Direct, slave_id: int) -> placement.SlaveState:
    row = _SLAVE.first(q, {"sid": slave_id})
    if row is None:
        raise NotFoundError(f"slave {slave_id}: no such slave")
    return _state(row)


def filter_counts(q: Session | db.Direct, demand: placement.Demand) -> tuple[tuple[str, int], ...]:
    """The filter cascade's counts (as placement.run_filters reports them), in one aggregate query."""
    row = _FILTER_COUNTS.first(q, _demand_params(demand))
    counts = [("all", int(row[0]))]
    for (name, _), n in zip(placement.FILTERS, row[1:], strict=True):
        counts.append((name, int(n)))
        if not n:
            break
    return tuple(counts)


def choose_slave(q: Session | db.Direct, demand: placement.Demand, policy: str, tie_break: str = "lowest-id",
                 rng: random.Random | None = None, explain: bool = True) -> placement.Placement:
    """Place with the database doing filter + weigh (an index walk in policy order).

    With ``explain`` the placement carries the filter cascade's counts (one aggregate scan); a
    request that does not fit always gets them and the reason, from the Python pipeline.
    ``tie_break="random"`` picks among the equally good slaves at random (used after a lost race,
    so concurrent writers stop choosing the same slave, as nova's host_subset_size does)."""
    if policy not in SQL_ORDER:
        return placement.place(slave_states(q), demand, policy)
    params = _demand_params(demand)
    if tie_break == "random":
        states = [_state(r) for r in _CHOOSE_TIED[policy].all(q, params)]
        key = placement.get_policy(policy).sort_key
        assert key is not None
        top = key(states[0])[:-1] if states else None
        best = [s for s in states if key(s)[:-1] == top]
        chosen = (rng or random).choice(best) if best else None
    else:
        row = _CHOOSE_BEST[policy].first(q, params)
        chosen = _state(row) if row is not None else None
    if chosen is None:
        return placement.place(slave_states(q), demand, policy)
    counts = filter_counts(q, demand) if explain else ()
    return placement.Placement(chosen, policy, counts)


_CAPACITY = db.Prepared(select(func.coalesce(func.sum(Slave.cores_total), 0)).where(_IS_UP))


def claim_slave(q: Session | db.Direct, slave: placement.SlaveState, demand: placement.Demand) -> None:
    """Compare-and-swap claim (Placement's generation check); a lost race retries the decision."""
    result = _CLAIM.run(q, {"sid": slave.id, "gen": slave.generation, "now": config.now(), **_demand_params(demand)})
    if result.rowcount != 1:
        raise db.RetryTransaction


def release_slave(session: Session, slave_id: int, cores: int, ram_mb: int, disk_gb: int) -> None:
    session.connection().execute(_RELEASE, {"sid": slave_id, "d_cores": cores, "d_ram": ram_mb, "d_disk": disk_gb,
                                            "now": config.now()})


def new_mac(prefix: str) -> str:
    tail = secrets.token_bytes(3)
    return prefix + "".join(f":{b:02x}" for b in tail)


def allocate_addresses(q: Session | db.Direct, instance_id: int, mac_prefix: str) -> tuple[str, str, str]:
    """Take the lowest free (public, private) pair and a fresh MAC for an instance, and record
    them on the instance. A MAC drawn twice hits the unique constraint and the transaction reruns."""
    mac = new_mac(mac_prefix)
    row = _TAKE_PAIR.first(q, {"iid": instance_id, "mac": mac})
    if row is None:
        total, held = _COUNT_PAIRS.first(q)
        if held < total:
            raise db.RetryTransaction  # PostgreSQL: every free pair is being taken by another transaction
        raise CapacityError(f"addresses: all {total} (public, private) address pairs are in use"
                            " (widen private_pool/public_pool with `vcl config set`)")
    private_ip, public_ip = row
    _SET_ADDRESSES.run(q, {"iid": instance_id, "mac": mac, "priv": private_ip, "pub": public_ip})
    return mac, private_ip, public_ip


def release_addresses(session: Session, instance_id: int) -> None:
    session.execute(update(AddressPair).where(AddressPair.instance_id == instance_id)
                    .values(instance_id=None, mac=None))


# --- requests: reservations (AR) and best-effort (BE) ----------------------------------------------

def _priority_of(platform_value: Any, register_as_slave: Any, ram_mb: Any, minutes: Any, member: Any,
                 coefficient: float) -> tuple[float, Any]:
    inputs = parse_priority_inputs(platform_value, register_as_slave, ram_mb, minutes, member)
    return priority(inputs, coefficient), inputs


_BOOKINGS_BETWEEN = db.Prepared(
    select(Reservation.id, Reservation.cores, Reservation.start, Reservation.end, Reservation.priority,
           Reservation.register_as_slave, Reservation.state)
    .where(Reservation.state.in_([bindparam(f"booked_{s}", s, Reservation.state.type) for s in ACTIVE_BOOKINGS]),
           Reservation.end > bindparam("start"), Reservation.start < bindparam("end")))


def _bookings_between(q: Session | db.Direct, start: datetime, end: datetime, now: datetime) -> list[calendar.Booking]:
    rows = _BOOKINGS_BETWEEN.all(q, {"start": start, "end": end})
    return [calendar.Booking(r[0], r[1], r[2], r[3], r[4], r[5], seq=r[0],
                             fixed=r[6] == ReservationState.ACTIVE or r[2] <= now) for r in rows]


def _bookings(session: Session, day: datetime, now: datetime) -> list[calendar.Booking]:
    """Bookings that touch the calendar day of ``day`` (admission never moves one across days)."""
    day_start = datetime.combine(day.date(), datetime.min.time())
    return _bookings_between(session, day_start, day_start + timedelta(days=1), now)


def _capacity(q: Session | db.Direct) -> int:
    return int(_CAPACITY.scalar(q))


def _reservation_row(r: Reservation, owner: str, moves: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    return {"id": r.id, "owner": owner, "cores": r.cores, "ram_mb": r.ram_mb, "priority": round(r.priority, 6),
            "state": str(r.state), "requested_start": iso(r.requested_start), "start": iso(r.start),
            "end": iso(r.end), "hours": r.hours, "rescheduled": r.rescheduled, "reason": r.reason,
            "moved": list(moves)}


def reserve(*, owner: str, cores: Any, ram_mb: Any, start: Any, hours: Any, platform_value: Any,
            register_as_slave: Any, member: Any, image: str | None = None, user: str | None = None,
            dry_run: bool = False, url: str | None = None) -> dict[str, Any]:
    """An advance reservation (SPEC §4): accepted (maybe moved later, maybe moving lower-priority
    bookings later) or refused with the reason. Invalid input raises ValidationError."""
    owner = check_name("owner", owner)
    cores_n = whole("cores", cores)
    ram_n = whole("ram_mb", ram_mb)
    start_dt = start if isinstance(start, datetime) else config.parse_datetime(str(start), "start")
    hours_f = positive("hours", hours)
    user_name = check_name("user", user) if user is not None else None
    settings = get_settings(url)
    now = config.now()
    pi, inputs = _priority_of(platform_value, register_as_slave, ram_n, hours_f * 60, member,
                              settings.priority_coefficient)
    calendar.check_request_policy(start_dt, hours_f, now, settings.booking)
    end_dt = start_dt + timedelta(hours=hours_f)

    def apply(session: Session) -> dict[str, Any]:
        db.lock(session, "calendar")
        group_id = _group_id(session, owner)
        img = _image_ref(session, image)
        user_id = _user(session, user_name, group_id)[0] if user_name is not None else None
        existing = _bookings(session, start_dt, now)
        res = Reservation(group_id=group_id, user_id=user_id, image_id=img[0] if img else None,
                          cores=cores_n, ram_mb=ram_n, requested_start=start_dt, start=None, end=None,
                          hours=hours_f, platform_value=inputs.platform_value,
                          register_as_slave=inputs.register_as_slave, member=inputs.member, priority=pi,
                          rescheduled=0, state=ReservationState.REFUSED, reason="", created_at=now)
        session.add(res)
        session.flush()  # the id is the booking's first-come-first-served sequence number
        new = calendar.Booking(res.id, cores_n, start_dt, end_dt, pi, inputs.register_as_slave, seq=res.id)
        capacity = _capacity(session)
        if capacity == 0:
            admission = calendar.Admission(False, None, None, (), "the pool has no slave up")
        else:
            admission = calendar.admit(new, existing, capacity, now, settings.booking)
        step = settings.booking.move_step
        if admission.accepted:
            res.state = ReservationState.ACCEPTED
            res.start, res.end = admission.start, admission.end
            assert admission.start is not None
            res.rescheduled = round((admission.start - start_dt) / step)
        res.reason = admission.reason
        moves = []
        for move in admission.moves:
            other = session.get(Reservation, move.id)
            assert other is not None
            before = {"start": iso(other.start), "end": iso(other.end)}
            other.rescheduled += round((move.new_start - move.old_start) / step)
            other.start, other.end, other.reason = move.new_start, move.new_end, move.reason
            moves.append({"id": other.id, "from": before["start"], "to": iso(move.new_start), "reason": move.reason})
            after = {"start": iso(other.start), "end": iso(other.end)}
            audit(session, "reservation", other.id, "moved", before, after, now)
        row = _reservation_row(res, owner, moves)
        row["dry_run"] = dry_run
        audit(session, "reservation", res.id, str(res.state), None, row, now)
        if dry_run:
            raise db.DryRun({**row, "id": None})
        return row

    return db.write(apply, url)


def list_reservations(url: str | None = None, include_all: bool = False) -> dict[str, Any]:
    db.require_schema(url)
    with db.read(url) as session:
        query = select(Reservation, Group.name).join(Group, Group.id == Reservation.group_id)
        if not include_all:
            query = query.where(Reservation.state.in_(ACTIVE_BOOKINGS))
        rows = [_reservation_row(r, g) for r, g in session.execute(query.order_by(Reservation.start, Reservation.id))]
        return {"cores": _capacity(session), "reservations": rows}


def _instance_row(i: Instance, slave: str | None = None, owner: str | None = None) -> dict[str, Any]:
    return {"id": i.id, "owner": owner, "slave": slave, "kind": str(i.kind), "state": str(i.state),
            "priority": round(i.priority, 6), "cores": i.cores, "ram_mb": i.ram_mb, "disk_gb": i.disk_gb,
            "mac": i.mac, "private_ip": i.private_ip, "public_ip": i.public_ip, "console_port": i.console_port,
            "started_at": iso(i.started_at), "ends_at": iso(i.ends_at), "reservation_id": i.reservation_id}


_RUNNING_BE = db.Prepared(
    select(Instance.id, Instance.slave_id, Instance.cores, Instance.ram_mb, Instance.priority,
           Instance.register_as_slave, Instance.kind)
    .where(Instance.state.in_([bindparam(f"hold_{s}", s, Instance.state.type) for s in HOLDS_CAPACITY]),
           Instance.slave_id.is_not(None)))


def _running_be(q: Session | db.Direct) -> list[preempt.RunningVM]:
    return [preempt.RunningVM(r[0], r[1], r[2], r[3], r[4], r[5], seq=r[0], kind=str(r[6])) for r in _RUNNING_BE.all(q)]


@dataclass
class ClaimPlan:
    """A decided best-effort request, for the short write that applies it (``commit_claim``)."""

    answer: dict[str, Any]
    group_id: int
    image_id: int | None
    user_name: str | None
    demand: placement.Demand
    priority: float  # exact; answer["priority"] is rounded for display
    decline_limit: int
    mac_prefix: str
    slave: placement.SlaveState | None = None
    ends: datetime | None = None


def request(*, owner: str, cores: Any, ram_mb: Any, hours: Any, platform_value: Any, register_as_slave: Any,
            member: Any, disk_gb: Any = None, image: str | None = None, user: str | None = None,
            dry_run: bool = False, explain: bool = True, url: str | None = None) -> dict[str, Any]:
    """A best-effort VM now (SPEC §3, §4): placed and claimed (cores, RAM, disk, MAC, address pair,
    in one transaction), or the preemption plan (which lower-priority BE VMs to suspend), or wait.

    The decision is taken on a read snapshot, without holding the write lock; the claim is a short
    write transaction whose compare-and-swap on the slave's generation fails if anything changed
    the chosen slave since, and then the request is decided again on fresh state (Placement's
    optimistic claims). The hours granted are capped by the look-ahead: a BE VM may run only until
    its cores are needed by a reservation (at most ``booking.lookahead_max_hours``)."""
    owner = check_name("owner", owner)
    cores_n = whole("cores", cores)
    ram_n = whole("ram_mb", ram_mb)
    disk_n = whole("disk_gb", disk_gb, 0) if disk_gb is not None else None
    user_name = check_name("user", user) if user is not None else None
    db.require_schema(url)
    rng = random.Random()  # noqa: S311 - spreads tie-breaks after a lost race; not a secret
    for attempt in range(50):
        with db.read_direct(url) as q:
            plan = _decide_best_effort(q, owner, cores_n, ram_n, disk_n, hours, platform_value,
                                       register_as_slave, member, image, user_name, dry_run,
                                       tie_break="random" if attempt else "lowest-id", rng=rng, explain=explain)
        if dry_run:
            return plan.answer
        try:
            return commit_claim(plan, url)
        except StaleClaim:
            continue
    raise CapacityError("the slaves kept changing under this request: gave up after 50 attempts")


def _decide_best_effort(q: db.Direct, owner: str, cores_n: int, ram_n: int, disk_n: int | None, hours: Any,
                        platform_value: Any, register_as_slave: Any, member: Any, image: str | None,
                        user_name: str | None, dry_run: bool, tie_break: str, rng: random.Random,
                        explain: bool = True) -> ClaimPlan:
    settings = db.load_settings(q)
    hours_n = whole("hours", hours, 1, settings.booking.lookahead_max_hours)
    now = config.now()
    pi, inputs = _priority_of(platform_value, register_as_slave, ram_n, hours_n * 60, member,
                              settings.priority_coefficient)
    group_id = _group_id(q, owner)
    img = _image_ref(q, image)
    disk = disk_n if disk_n is not None else (img[1] if img else 0)
    demand = placement.Demand(cores_n, ram_n, disk)
    answer: dict[str, Any] = {"owner": owner, "kind": "BE", "priority": round(pi, 6), "cores": cores_n,
                              "ram_mb": ram_n, "disk_gb": disk, "hours_requested": hours_n, "dry_run": dry_run,
                              "register_as_slave": inputs.register_as_slave, "id": None}
    plan = ClaimPlan(answer, group_id, img[0] if img else None, user_name, demand, pi, settings.decline_limit,
                       settings.mac_prefix)
    # The look-ahead weighs this VM against reserved cores only: other best-effort VMs hold cores now,
    # but placement and preemption deal with them, and a starting reservation suspends BE VMs.
    horizon = now + timedelta(hours=settings.booking.lookahead_max_hours)
    bookings = _bookings_between(q, now, horizon, now)
    chosen = None
    if not bookings:
        # With no booking ahead the look-ahead only asks whether the pool has `cores` at all, and a
        # slave that fits answers it: every capacity >= cores gives the same hours. Choosing first
        # spares the common request a scan of every slave (_capacity).
        chosen = choose_slave(q, demand, settings.placement_policy, tie_break, rng, explain)
    capacity = chosen.slave.cores_total if chosen and chosen.slave else _capacity(q)
    granted = calendar.best_effort_hours(cores_n, now, bookings, capacity, [], settings.booking)
    hours_granted = min(hours_n, granted)
    answer["hours_granted"] = hours_granted
    if hours_granted == 0:
        answer.update(state="waiting", decision="wait",
                      reason=f"{cores_n} cores are not free of reservations for even 1 hour from {iso(now)}")
        return plan
    if chosen is None:
        chosen = choose_slave(q, demand, settings.placement_policy, tie_break, rng, explain)
    answer["explain"] = chosen.explain()
    if chosen.slave is None:
        pre = preempt.plan(slave_states(q), demand, pi, _running_be(q), settings.placement_policy)
        answer.update(state="waiting", decision="suspend" if pre.action == "suspend" else "wait", reason=pre.reason,
                      slave=pre.slave.name if pre.slave else None, suspend=[v.id for v in pre.victims])
        return plan
    plan.slave = chosen.slave
    plan.ends = now + timedelta(hours=hours_granted)
    answer.update(state="pending", decision="place", slave=chosen.slave.name, ends_at=iso(plan.ends),
                  reason="" if hours_granted == hours_n else
                  f"granted {hours_granted} of {hours_n} hours: the cores are reserved after that")
    return plan


StaleClaim = db.RetryTransaction


def new_claim_plan(slave: placement.SlaveState, demand: placement.Demand, *, group_id: int, priority: float,
                   ends: datetime, mac_prefix: str = config.DEFAULT_MAC_PREFIX, register_as_slave: int = 0,
                   image_id: int | None = None) -> ClaimPlan:
    """A claim decided elsewhere (the dispatcher's in-memory PlacementIndex): ``slave`` carries
    the generation the decision saw."""
    answer = {"kind": "BE", "priority": round(priority, 6), "cores": demand.cores, "ram_mb": demand.ram_mb,
              "disk_gb": demand.disk_gb, "register_as_slave": register_as_slave, "id": None, "state": "pending",
              "decision": "place", "slave": slave.name, "ends_at": iso(ends), "reason": "", "dry_run": False}
    return ClaimPlan(answer, group_id, image_id, None, demand, priority, 0, mac_prefix, slave, ends)


def commit_claim(plan: ClaimPlan, url: str | None = None) -> dict[str, Any]:
    """Apply a decided request in one transaction: the slave's cores, RAM and disk by compare-and-swap
    on its generation, an address pair and a MAC, the instance row and its audit row. Raises
    ``StaleClaim`` when the slave changed since the decision: decide again on fresh state."""
    return db.write_direct(lambda tx: _apply_best_effort(tx, plan), url, retry_races=False)


def _apply_best_effort(tx: db.Direct, plan: ClaimPlan) -> dict[str, Any]:
    answer = dict(plan.answer)
    now = config.now()
    user_id = None
    if plan.user_name is not None:
        user_id, declines = _user(tx, plan.user_name)
        # SPEC §3.4: a client may decline to register as a slave `decline_limit` times (atomic check).
        if not answer["register_as_slave"]:
            if _DECLINE.run(tx, {"uid": user_id, "limit": plan.decline_limit}).rowcount != 1:
                answer.update(state="refused", decision="refused",
                              reason=f"user {plan.user_name} declined to register as a slave {declines} times"
                                     f" (limit {plan.decline_limit}): register (register_as_slave=1) to be served")
                raise db.DryRun(answer)  # a refusal writes nothing
        else:
            _REGISTERED.run(tx, {"uid": user_id})
    values = {"image_id": plan.image_id, "group_id": plan.group_id, "user_id": user_id, "slave_id": None,
              "cores": plan.demand.cores, "ram_mb": plan.demand.ram_mb, "disk_gb": plan.demand.disk_gb,
              "state": InstanceState.PENDING, "kind": InstanceKind.BE, "priority": plan.priority,
              "register_as_slave": answer["register_as_slave"], "ends_at": None, "created_at": now, "updated_at": now}
    if plan.slave is None:  # wait or suspend first: keep it in the queue (pending, no slave) for the dispatcher
        inst_id = _NEW_INSTANCE.scalar(tx, values)
        answer["id"] = inst_id
        audit(tx, "instance", inst_id, "queued", None, {"decision": answer["decision"], "reason": answer["reason"]},
              now)
        return answer
    claim_slave(tx, plan.slave, plan.demand)
    values.update(slave_id=plan.slave.id, ends_at=plan.ends)
    inst_id = _NEW_INSTANCE.scalar(tx, values)
    mac, private_ip, public_ip = allocate_addresses(tx, inst_id, plan.mac_prefix)
    answer.update(id=inst_id, mac=mac, private_ip=private_ip, public_ip=public_ip)
    audit(tx, "instance", inst_id, "claim", None, {k: answer[k] for k in (
        "slave", "cores", "ram_mb", "disk_gb", "mac", "private_ip", "public_ip", "ends_at")}, now)
    return answer


def release(instance_id: Any, state: str = "stopped", url: str | None = None) -> dict[str, Any]:
    """End an instance: its cores, RAM, disk and addresses go back to the pool."""
    iid = whole("id", instance_id)
    final = InstanceState(state)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        inst = session.get(Instance, iid)
        if inst is None:
            raise NotFoundError(f"id: no instance {iid}")
        if inst.state in (InstanceState.STOPPED, InstanceState.FAILED, InstanceState.LOST):
            raise ConflictError(f"id: instance {iid} is already {inst.state}")
        before = str(inst.state)
        if inst.slave_id is not None:
            holds = inst.state in HOLDS_CAPACITY
            release_slave(session, inst.slave_id, inst.cores if holds else 0, inst.ram_mb if holds else 0,
                          inst.disk_gb)
        release_addresses(session, inst.id)
        inst.state = final
        inst.updated_at = config.now()
        audit(session, "instance", inst.id, "release", {"state": before}, {"state": str(final)})
        return _instance_row(inst)

    return db.write(apply, url)


def set_suspended(instance_id: Any, suspended: bool, url: str | None = None) -> dict[str, Any]:
    """Record a suspension (cores and RAM back to the slave; disk kept) or a resume (claimed again)."""
    iid = whole("id", instance_id)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        inst = session.get(Instance, iid)
        if inst is None or inst.slave_id is None:
            raise NotFoundError(f"id: no placed instance {iid}")
        want_from = InstanceState.RUNNING if suspended else InstanceState.SUSPENDED
        if inst.state != want_from and not (suspended and inst.state == InstanceState.PENDING):
            raise ConflictError(f"id: instance {iid} is {inst.state}, not {want_from}")
        slave = slave_state(session, inst.slave_id)
        demand = placement.Demand(inst.cores, inst.ram_mb, 0)
        if suspended:
            release_slave(session, slave.id, inst.cores, inst.ram_mb, 0)
        else:
            if slave.free_cores < inst.cores or slave.free_ram_mb < inst.ram_mb:
                raise CapacityError(f"id: slave {slave.name} has no room to resume instance {iid} yet")
            claim_slave(session, slave, demand)
        before = str(inst.state)
        inst.state = InstanceState.SUSPENDED if suspended else InstanceState.RUNNING
        inst.updated_at = config.now()
        audit(session, "instance", inst.id, "suspend" if suspended else "resume", {"state": before},
              {"state": str(inst.state)})
        return _instance_row(inst)

    return db.write(apply, url)


def list_instances(url: str | None = None, include_all: bool = False) -> list[dict[str, Any]]:
    db.require_schema(url)
    with db.read(url) as session:
        query = (select(Instance, Slave.name, Group.name).outerjoin(Slave, Slave.id == Instance.slave_id)
                 .join(Group, Group.id == Instance.group_id))
        if not include_all:
            query = query.where(Instance.state.in_((*HOLDS_CAPACITY, InstanceState.SUSPENDED)))
        return [_instance_row(i, s, g) for i, s, g in session.execute(query.order_by(Instance.id))]


def audit_log(url: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    db.require_schema(url)
    with db.read(url) as session:
        rows = session.scalars(select(AuditLog).order_by(AuditLog.id.desc()).limit(limit))
        return [{"id": a.id, "at": iso(a.at), "actor": a.actor, "object": f"{a.object_type}/{a.object_id}",
                 "action": a.action, "before": a.before, "after": a.after} for a in rows]
