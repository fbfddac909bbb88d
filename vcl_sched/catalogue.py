"""The catalogue: the lab's settings and address pools, groups, users, images and slaves (read and write).

Every write validates its input first (``validate``), then runs in one transaction (``db.write``) with its
audit row; a duplicate name is a ``ConflictError`` naming the field. The lookups ``group_ref``,
``image_ref`` and ``user_ref`` run inside other writers' transactions (bookings, claims), on a
``Session`` or a ``db.Direct`` cursor alike.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from sqlalchemy import bindparam, insert, select
from sqlalchemy.orm import Session

from . import authz, config, db, imagepath, people
from .audit import audit
from .errors import ConflictError, NotFoundError, ValidationError
from .models import AddressPair, Group, Image, Membership, Slave, User
from .priority import PLATFORM_VALUE_CEILING
from .validate import bounded, check_name, cores_value, disk_value, iso, ram_value, slave_input, slave_status

# --- rows created with their audit row; lookups inside other writers' transactions (bookings, claims) ---

def _create(session: Session, obj: Any, kind: str, to_row: Any) -> dict[str, Any]:
    """Insert ``obj``, audit its creation, and return its row as the command prints it."""
    session.add(obj)
    session.flush()
    row = to_row(obj)
    audit(session, kind, obj.id, "create", None, row)
    return row


_GROUP_ID = db.Prepared(select(Group.id).where(Group.name == bindparam("name")))
_IMAGE_REF = db.Prepared(select(Image.id, Image.default_disk_gb).where(Image.name == bindparam("name")))


def group_ref(q: Session | db.Direct, name: str, field: str = "owner") -> int:
    group_id = _GROUP_ID.scalar(q, {"name": name})
    if group_id is None:
        raise ValidationError(field, f"no group named {name!r} (add it with `vcl group add {name}`)")
    return group_id


_USER = db.Prepared(select(User.id, User.declines).where(User.name == bindparam("name")))
_NEW_USER = db.Prepared(insert(User).returning(User.id),
                        ("name", "declines", "registered_slave", "created_at", "role", "auth"))
_MEMBER = db.Prepared(select(Membership.user_id).where(Membership.user_id == bindparam("uid"),
                                                       Membership.group_id == bindparam("gid")))
_NEW_MEMBER = db.Prepared(insert(Membership), ("user_id", "group_id"))


def user_ref(q: Session | db.Direct, name: str, group_id: int | None = None) -> tuple[int, int]:
    """The user's id and decline count; a user seen for the first time is created (and audited),
    and joins ``group_id``."""
    row = _USER.first(q, {"name": name})
    if row is not None:
        user_id, declines = row
    else:
        user_id, declines = _NEW_USER.scalar(q, {"name": name, "declines": 0, "registered_slave": 0,
                                                 "created_at": config.now(), "role": "student", "auth": "local"}), 0
        audit(q, "user", user_id, "create", None, {"name": name})
    if group_id is not None and _MEMBER.first(q, {"uid": user_id, "gid": group_id}) is None:
        _NEW_MEMBER.run(q, {"user_id": user_id, "group_id": group_id})
    return user_id, declines


def image_ref(q: Session | db.Direct, name: str | None) -> tuple[int, int] | None:
    """The image's id and default disk size, or None without an image."""
    if name is None:
        return None
    name = check_name("image", name)
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

    The batch is checked as a whole, whatever the order of its keys (new subnets and new pools at once);
    a batch that changes nothing writes nothing (no audit row). Changing the pools rewrites the free
    (public, private) pairs; pairs held by instances stay, and a change that would drop a held pair is
    refused. Changing the pools or the lab's networks is refused when a registered slave's address
    would no longer fit (outside lab_subnet, a gateway's or the master's, inside a pool)."""
    db.require_schema(url)
    _known_keys(updates)

    def apply(session: Session) -> dict[str, Any]:
        authz.require_admin(session, "config")
        db.lock(session, "addresses")
        current = db.load_settings(session)
        new = merged_settings(current, updates)
        if new.to_json() == current.to_json():
            return current.to_json()
        if (new.private_pool, new.public_pool) != (current.private_pool, current.public_pool):
            _rewrite_pairs(session, new)
        if any(getattr(new, key) != getattr(current, key) for key in ADDRESS_SETTINGS):
            _check_slave_addresses(session, new)
        if new.image_store != current.image_store and os.path.lexists(new.image_store) \
                and not os.path.isdir(new.image_store):
            # Where the store exists on this machine (the controller is often the master), it is a directory.
            raise ValidationError("image_store", f"{new.image_store} exists here and is not a directory")
        db.save_settings(session, new)
        audit(session, "settings", 0, "update", current.to_json(), new.to_json())
        return new.to_json()

    return db.write(apply, url)


def _known_keys(updates: dict[str, Any]) -> None:
    for key in updates:
        if key not in config.SETTING_KEYS:
            raise ValidationError(config._key_name(key),
                                  f"unknown setting (known: {', '.join(sorted(config.SETTING_KEYS))})")


def merged_settings(current: config.Settings, updates: dict[str, Any]) -> config.Settings:
    """``current`` with the batch ``updates`` (``KEY=VALUE`` of `vcl config set`) applied, checked as a whole:
    the order of the keys never matters (new subnets and the pools inside them may come in one batch)."""
    _known_keys(updates)
    data = current.to_json()
    for key, value in updates.items():
        if key.startswith("booking."):
            data["booking"][key.split(".", 1)[1]] = value
        else:
            data[key] = value
    return config.settings_from_json(data)


#: The settings a registered slave's address is checked against.
ADDRESS_SETTINGS = ("private_pool", "public_pool", *config.NETWORK_SETTINGS)


def _check_slave_addresses(session: Session, settings: config.Settings) -> None:
    """Every registered slave's address still fits the lab's networks and pools; else the setting it breaks."""
    for name, address in session.execute(select(Slave.name, Slave.address).order_by(Slave.name)):
        try:
            parsed = ipaddress.IPv4Address(address)
        except ValueError:
            continue  # a row written around the service layer: the inventory plugin leaves it out
        conflict = config.host_address_conflict(parsed, settings)
        if conflict is not None:
            field, why = conflict
            raise ValidationError(field, f"slave {name}: {why}")


def check_host_address(session: Session, address: str) -> None:
    """A slave's address (already one unicast IPv4 host, ``validate.slave_input``) against the lab's networks
    and pools as this transaction sees them (``vcl slave add``, registration); serialised with ``configure``."""
    db.lock(session, "addresses")
    problem = config.host_address_problem(ipaddress.IPv4Address(address), db.load_settings(session))
    if problem:
        raise ValidationError("address", problem)


def _rewrite_pairs(session: Session, settings: config.Settings) -> None:
    private = config.parse_pool(settings.private_pool, "private_pool") if settings.private_pool else []
    public = config.parse_pool(settings.public_pool, "public_pool") if settings.public_pool else []
    hosts = {a: n for n, a in session.execute(select(Slave.name, Slave.address))}
    for field, pool in (("private_pool", private), ("public_pool", public)):
        taken = sorted(set(pool) & set(hosts), key=ipaddress.IPv4Address)
        if taken:
            raise ValidationError(field, f"contains {taken[0]}, the address of slave {hosts[taken[0]]}: a VM would"
                                         " take a host's address")
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

def add_group(name: str, description: str = "", url: str | None = None, owner: str | None = None) -> dict[str, Any]:
    """A new group (people.add_group: its owner, who may create one)."""
    return people.add_group(name, description, owner=owner, url=url)


def list_groups(url: str | None = None) -> list[dict[str, Any]]:
    """Groups with their owner and member count, as the acting user may see them (people.list_groups)."""
    return people.list_groups(url)


def _image_text(disk_file: Any, kernel: Any, ramdisk: Any, cmdline: Any) -> None:
    """What can be checked of an image's files before the store is read (vcl_sched/imagepath.py: the rest is
    checked against the ``image_store`` setting in the write's transaction)."""
    for field, value in (("disk_file", disk_file), ("kernel", kernel), ("ramdisk", ramdisk)):
        if field == "disk_file" or value not in (None, ""):
            imagepath.text(value, field)
    if cmdline is not None and (not isinstance(cmdline, str) or not cmdline.isprintable() or len(cmdline) > 1024):
        raise ValidationError("cmdline", "must be one line of at most 1024 printable characters")


def add_image(name: str, disk_file: str, *, description: str = "", kernel: str | None = None,
              ramdisk: str | None = None, cmdline: str | None = None, cores: Any = 1, ram_mb: Any = 512,
              disk_gb: Any = 2, platform_value: Any = 5, url: str | None = None) -> dict[str, Any]:
    name = check_name("name", name)
    # The files' shape first (no database needed); where they lie is checked against the store in the transaction.
    _image_text(disk_file, kernel, ramdisk, cmdline)
    values = {"default_cores": cores_value("cores", cores), "default_ram_mb": ram_value("ram_mb", ram_mb, 16),
              "default_disk_gb": disk_value("disk_gb", disk_gb), "platform_value": _pfv(platform_value)}
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        authz.require_admin(session, "image")
        imagepath.image_files(db.load_settings(session).image_store, disk_file, kernel, ramdisk)
        if session.scalar(select(Image.id).where(Image.name == name)) is not None:
            raise ConflictError(f"name: an image named {name!r} exists already")
        image = Image(name=name, description=description, disk_file=disk_file, kernel=kernel or None,
                      ramdisk=ramdisk or None, cmdline=cmdline, created_at=config.now(), **values)
        return _create(session, image, "image", image_row)

    return db.write(apply, url)


def ensure_image(name: str, disk_file: str, *, description: str = "", kernel: str | None = None,
                 ramdisk: str | None = None, cmdline: str | None = None, cores: Any = 1, ram_mb: Any = 512,
                 disk_gb: Any = 2, platform_value: Any = 5, url: str | None = None) -> tuple[dict[str, Any], bool]:
    """Add the image, or bring a registered one to these values (what a playbook declares). Returns the
    row and whether anything was written."""
    name = check_name("name", name)
    _image_text(disk_file, kernel, ramdisk, cmdline)
    wanted = {"description": description, "disk_file": disk_file, "kernel": kernel or None,
              "ramdisk": ramdisk or None, "cmdline": cmdline or None, "default_cores": cores_value("cores", cores),
              "default_ram_mb": ram_value("ram_mb", ram_mb, 16), "default_disk_gb": disk_value("disk_gb", disk_gb),
              "platform_value": _pfv(platform_value)}
    db.require_schema(url)

    def apply(session: Session) -> tuple[dict[str, Any], bool]:
        authz.require_admin(session, "image")
        imagepath.image_files(db.load_settings(session).image_store, disk_file, kernel, ramdisk)
        image = session.scalar(select(Image).where(Image.name == name))
        if image is None:
            image = Image(name=name, created_at=config.now(), **wanted)
            return _create(session, image, "image", image_row), True
        before = {k: getattr(image, k) for k in wanted if getattr(image, k) != wanted[k]}
        if not before:
            return image_row(image), False
        for key in before:
            setattr(image, key, wanted[key])
        audit(session, "image", image.id, "update", before, {k: wanted[k] for k in before})
        return image_row(image), True

    return db.write(apply, url)


def _pfv(value: Any) -> float:
    """An image's platform value (SPEC §3): 0..the ceiling any lab may set; requests use it within the lab's own
    platform_value_max."""
    return bounded("platform_value", value, 0.0, PLATFORM_VALUE_CEILING)


def image_row(i: Image) -> dict[str, Any]:
    return {"id": i.id, "name": i.name, "description": i.description, "disk_file": i.disk_file, "kernel": i.kernel,
            "ramdisk": i.ramdisk, "cmdline": i.cmdline, "cores": i.default_cores, "ram_mb": i.default_ram_mb,
            "disk_gb": i.default_disk_gb, "platform_value": i.platform_value}


def list_images(url: str | None = None) -> list[dict[str, Any]]:
    db.require_schema(url)
    with db.read(url) as session:
        return [image_row(i) for i in session.scalars(select(Image).order_by(Image.name))]


# --- slaves -------------------------------------------------------------------------------------

def slave_row(s: Slave) -> dict[str, Any]:
    return {"id": s.id, "name": s.name, "address": s.address, "status": str(s.status),
            "cores_total": s.cores_total, "cores_used": s.cores_used, "cores_free": s.cores_total - s.cores_used,
            "ram_mb_total": s.ram_mb_total, "ram_mb_used": s.ram_mb_used, "ram_mb_free": s.ram_mb_total - s.ram_mb_used,
            "disk_gb_total": s.disk_gb_total, "disk_gb_used": s.disk_gb_used,
            "disk_gb_free": s.disk_gb_total - s.disk_gb_used, "generation": s.generation, "joined_at": iso(s.joined_at)}


def add_slave(name: str, address: str, cores: Any, ram_mb: Any, disk_gb: Any, status: str = "up",
              url: str | None = None) -> dict[str, Any]:
    name, address, capacity = slave_input(name, address, cores, ram_mb, disk_gb)
    state = slave_status(status)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        authz.require_admin(session, "slave")
        for column, value, what in ((Slave.name, name, "name"), (Slave.address, address, "address")):
            other = session.scalar(select(Slave.name).where(column == value))
            if other is not None:
                raise ConflictError(f"{what}: slave {other!r} already has {what} {value}")
        check_host_address(session, address)  # the lab's networks and pools (issue 12)
        in_pool = session.scalar(select(AddressPair.id).where(
            (AddressPair.private_ip == address) | (AddressPair.public_ip == address)))
        if in_pool is not None:
            raise ValidationError("address", f"{address} is in the VMs' address pools (vcl config): a host must not"
                                             " have an address a VM may get")
        now = config.now()
        slave = Slave(name=name, address=address, status=state, generation=0, joined_at=now, updated_at=now,
                      cores_used=0, ram_mb_used=0, disk_gb_used=0, **capacity)
        return _create(session, slave, "slave", slave_row)

    return db.write(apply, url)


def set_slave_status(name: str, status: str, url: str | None = None) -> dict[str, Any]:
    name = check_name("name", name)
    state = slave_status(status)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        authz.require_admin(session, "slave")
        slave = session.scalar(select(Slave).where(Slave.name == name))
        if slave is None:
            raise NotFoundError(f"name: no slave named {name!r}")
        before = str(slave.status)
        if before != state:
            slave.status = state
            slave.generation += 1
            slave.updated_at = config.now()
            audit(session, "slave", slave.id, "status", {"status": before}, {"status": str(state)})
        return slave_row(slave)

    return db.write(apply, url)


def list_slaves(url: str | None = None) -> list[dict[str, Any]]:
    db.require_schema(url)
    with db.read(url) as session:
        return [slave_row(s) for s in session.scalars(select(Slave).order_by(Slave.name))]
