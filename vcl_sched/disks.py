"""Persistent disks, quotas and captured images (SPEC §10; the seed's PersistentInstance and PersistentDiskImage).

A VM that keeps its disk (``instances.keep_disk``: ``vcl request --keep-disk``, ``vcl reserve --keep-disks`` for
every seat, ``vcl disk keep ID`` on a live VM) hands its qcow2 overlay back to the master's disk store when it
stops, and the next launch for the same user and image, on whichever slave is chosen, starts from it. The database
holds what the store holds:

- one :class:`~vcl_sched.models.Disk` per user and image, with the image version it was made from (``base_*``:
  it stays in the image store while a disk needs it, whatever the image's current version is);
- its file is ``disk_store/USER_ID/ID-GENERATION.qcow2``: names the service makes from ids, never from input. A
  keep writes ``ID.incoming`` (resumable: a second attempt copies only what differs), checks it, renames it to
  the next generation and only then records it (:func:`keep_commit`); until then the previous generation is the
  disk, whole. So a copy that fails in the middle loses nothing.

A keep is two short transactions around the copy (the stop playbook does the copy): :func:`keep_begin` checks the
quotas (user's and group's; a disk's usage counts its incoming copy too) and reserves the new size;
:func:`keep_commit` records the new generation, or :func:`keep_abort` gives the reservation back. Both are
serialised with deletes and captures by the ``disks`` lock (PostgreSQL) or ``BEGIN IMMEDIATE`` (SQLite).

A capture (:func:`capture_begin`, :func:`capture_commit`) turns a kept disk into a new image version: a
flattened copy in a new directory ``image_store/NAME/vN/`` (an image or disk in use is never changed), for the
groups the capturer chooses.

Who may: a disk's owner lists, deletes and keeps their disks; the teacher of the disk's group and admins may too,
and may capture it; quotas are set by admins.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, literal, select
from sqlalchemy.orm import Session

from . import authz, catalogue, config, db, imagepath, people
from .acting import ADMIN, TEACHER, current
from .audit import audit
from .errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from .models import Disk, Group, Image, ImageGroup, Instance, InstanceState, User
from .validate import bounded, check_name, cores_value, iso, ram_value, whole

GB = 1024 ** 3
LIVE = (InstanceState.PENDING, InstanceState.RUNNING, InstanceState.SUSPENDED)
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_DISK_BYTES = 2 ** 50  # a petabyte: a bound on what a slave may report
KEEP_LEASE = timedelta(hours=2)  # a keep whose run died gives its reservation back after this long
MAX_VERSIONS = 9999


# --- paths: made from ids, never from input --------------------------------------------------------------

def disk_dir(settings: config.Settings, user_id: int) -> str:
    return f"{settings.disk_store}/{user_id}"


def disk_path(settings: config.Settings, disk: Disk, generation: int | None = None) -> str | None:
    gen = disk.generation if generation is None else generation
    return f"{disk_dir(settings, disk.user_id)}/{disk.id}-{gen}.qcow2" if gen > 0 else None


def incoming_path(settings: config.Settings, disk: Disk) -> str:
    return f"{disk_dir(settings, disk.user_id)}/{disk.id}.incoming"


# --- rows ----------------------------------------------------------------------------------------------------

def _names(session: Session, disk: Disk) -> tuple[str, str, str]:
    user = session.scalar(select(User.name).where(User.id == disk.user_id)) or ""
    image = session.scalar(select(Image.name).where(Image.id == disk.image_id)) or ""
    group = session.scalar(select(Group.name).where(Group.id == disk.group_id)) or ""
    return user, image, group


def _in_use(session: Session, disk: Disk) -> int | None:
    """The live VM using this disk (it keeps the disk of the same user and image), if any."""
    return live_keeper(session, disk.user_id, disk.image_id)


def _keeping(disk: Disk, now: datetime) -> bool:
    return disk.incoming_instance is not None and disk.incoming_until is not None and disk.incoming_until > now


def disk_row(session: Session, disk: Disk, settings: config.Settings) -> dict[str, Any]:
    user, image, group = _names(session, disk)
    return {"id": disk.id, "user": user, "image": image, "group": group, "generation": disk.generation,
            "size_bytes": disk.size_bytes, "size_gb": round(disk.size_bytes / GB, 3), "sha256": disk.sha256,
            "base_file": disk.base_file, "path": disk_path(settings, disk), "in_use_by": _in_use(session, disk),
            "keeping": disk.incoming_instance if _keeping(disk, config.now()) else None,
            "created_at": iso(disk.created_at), "updated_at": iso(disk.updated_at)}


# --- who may ---------------------------------------------------------------------------------------------------

def _may_manage(session: Session, disk: Disk) -> None:
    """The disk's owner, the teacher who owns its group, admins."""
    actor = people.fresh(session, current())
    if actor.role == ADMIN or (actor.user_id is not None and actor.user_id == disk.user_id) \
            or (actor.role == TEACHER and authz.owns(session, actor, disk.group_id)):
        return
    raise ForbiddenError(f"disk: {disk.id} is not a disk of {actor.name}")


def _may_capture(session: Session, disk: Disk) -> None:
    actor = people.fresh(session, current())
    if actor.role == ADMIN or (actor.role == TEACHER and authz.owns(session, actor, disk.group_id)):
        return
    raise ForbiddenError(f"disk: {actor.name} may not capture disk {disk.id}: the teacher of its group or an admin"
                         " captures disks")


def _disk(session: Session, disk_id: int) -> Disk:
    disk = session.get(Disk, disk_id)
    if disk is None:
        raise NotFoundError(f"disk: no disk {disk_id}")
    return disk


# --- quotas ----------------------------------------------------------------------------------------------------

def _used(session: Session, column: Any, value: int, skip: int | None = None) -> int:
    """Bytes the disks of a user (or a group) take: each counts its file, or its incoming copy when larger (while
    the keep's lease lasts: a keep whose run died gives its reservation back when its lease ends)."""
    now = config.now()
    rows = session.execute(select(Disk.id, Disk.size_bytes, Disk.incoming_bytes, Disk.incoming_until)
                           .where(column == value)).all()
    return sum(max(size, incoming if incoming and until is not None and until > now else 0)
               for did, size, incoming, until in rows if did != skip)


def _limits(session: Session, user_id: int, group_id: int, settings: config.Settings) -> tuple[float, float]:
    user_q = session.scalar(select(User.disk_quota_gb).where(User.id == user_id))
    group_q = session.scalar(select(Group.disk_quota_gb).where(Group.id == group_id))
    return (settings.disk_quota_user_gb if user_q is None else user_q,
            settings.disk_quota_group_gb if group_q is None else group_q)


def _gb(n: float) -> str:
    return f"{n / GB:.3f}".rstrip("0").rstrip(".") + " GB"


def _check_quota(session: Session, disk: Disk, new_bytes: int, settings: config.Settings) -> None:
    user_gb, group_gb = _limits(session, disk.user_id, disk.group_id, settings)
    own = max(disk.size_bytes, new_bytes)  # the previous generation stays until the new one is recorded
    user, _, group = _names(session, disk)
    for who, column, value, limit in ((f"user {user}", Disk.user_id, disk.user_id, user_gb),
                                      (f"group {group}", Disk.group_id, disk.group_id, group_gb)):
        total = _used(session, column, value, skip=disk.id) + own
        if total > limit * GB:
            raise ValidationError("quota", f"{who} would keep {_gb(total)} of disks, over the quota of"
                                           f" {_gb(limit * GB)}: delete a disk (vcl disk delete) or ask an admin to"
                                           " raise the quota (vcl disk quota); the VM keeps running")


def usage(user: str | None = None, group: str | None = None, url: str | None = None) -> dict[str, Any]:
    """Disk usage and quotas: of the acting user (and, for a teacher, of the groups they own); admins see every
    user and group, or the one named."""
    db.require_schema(url)
    if user is not None:
        user = check_name("user", user)
    if group is not None:
        group = check_name("group", group)
    with db.read(url) as session:
        settings = db.load_settings(session)
        actor = people.fresh(session, current())
        users = select(User.id, User.name, User.disk_quota_gb)
        groups = select(Group.id, Group.name, Group.disk_quota_gb)
        if user is not None:
            users = users.where(User.name == user)
        if group is not None:
            groups = groups.where(Group.name == group)
        if actor.role != ADMIN:
            if user is not None and user != actor.name and actor.role != TEACHER:
                raise ForbiddenError(f"user: {actor.name} may see only their own disk usage")
            owned = select(Group.id).where(Group.owner_id == actor.user_id)
            users = users.where((User.id == actor.user_id) | User.id.in_(
                select(Disk.user_id).where(Disk.group_id.in_(owned))))
            groups = groups.where(Group.id.in_(owned))
        out_users = []
        for uid, name, quota in session.execute(users.order_by(User.name)):
            used = _used(session, Disk.user_id, uid)
            count = session.scalar(select(func.count()).select_from(Disk).where(Disk.user_id == uid)) or 0
            if used == 0 and count == 0 and user is None and uid != actor.user_id:
                continue
            limit = settings.disk_quota_user_gb if quota is None else quota
            out_users.append({"user": name, "disks": count, "used_bytes": used, "used_gb": round(used / GB, 3),
                              "quota_gb": limit, "own_quota": quota is not None})
        out_groups = []
        for gid, name, quota in session.execute(groups.order_by(Group.name)):
            used = _used(session, Disk.group_id, gid)
            count = session.scalar(select(func.count()).select_from(Disk).where(Disk.group_id == gid)) or 0
            if used == 0 and count == 0 and group is None:
                continue
            limit = settings.disk_quota_group_gb if quota is None else quota
            out_groups.append({"group": name, "disks": count, "used_bytes": used, "used_gb": round(used / GB, 3),
                               "quota_gb": limit, "own_quota": quota is not None})
        return {"users": out_users, "groups": out_groups}


def set_quota(gb: Any, user: str | None = None, group: str | None = None, url: str | None = None) -> dict[str, Any]:
    """A user's or a group's own quota in GB (``None`` or ``"default"``: back to the lab's setting). Admins only.
    A quota below what is already kept is allowed: it stops the next keep, never deletes a disk."""
    if (user is None) == (group is None):
        raise ValidationError("user", "name a user or a group (one of them)")
    field = "user" if user is not None else "group"
    name = check_name(field, user if user is not None else group)
    value = None if gb in (None, "default", "") else bounded("gb", gb, 0.0, config.MAX_DISK_QUOTA_GB)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        authz.require_admin(session, "quota")
        row: Any = session.scalar(select(User if user is not None else Group).where(
            (User.name if user is not None else Group.name) == name))
        if row is None:
            raise NotFoundError(f"{field}: no {field} named {name!r}")
        before = row.disk_quota_gb
        if before != value:
            row.disk_quota_gb = value
            audit(session, field, row.id, "disk_quota", {"disk_quota_gb": before}, {"disk_quota_gb": value})
        return {field: name, "quota_gb": value, "changed": before != value}

    return db.write(apply, url)


# --- listing and deleting -----------------------------------------------------------------------------------

def list_disks(user: str | None = None, url: str | None = None) -> list[dict[str, Any]]:
    """Disks the acting user may see: their own; a teacher also those of their groups; admins every disk (or
    the named user's)."""
    db.require_schema(url)
    if user is not None:
        user = check_name("user", user)
    with db.read(url) as session:
        settings = db.load_settings(session)
        actor = people.fresh(session, current())
        query = select(Disk).order_by(Disk.id)
        if user is not None:
            query = query.where(Disk.user_id.in_(select(User.id).where(User.name == user)))
        if actor.role != ADMIN:
            owned = select(Group.id).where(Group.owner_id == actor.user_id)
            query = query.where((Disk.user_id == actor.user_id) | Disk.group_id.in_(owned))
        return [disk_row(session, d, settings) for d in session.scalars(query)]


def delete_disk(disk_id: Any, url: str | None = None) -> dict[str, Any]:
    """Forget a disk and hand back the files to remove from the store (``files``): refused while a VM uses it
    or a keep is copying it. The row goes first: a file left by a failed removal is never used again."""
    did = whole("disk", disk_id)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        db.lock(session, "disks")
        disk = _disk(session, did)
        _may_manage(session, disk)
        settings = db.load_settings(session)
        user = _in_use(session, disk)
        if user is not None:
            raise ConflictError(f"disk: {did} is in use by instance {user}: stop it first")
        if _keeping(disk, config.now()):
            raise ConflictError(f"disk: {did} is being kept by instance {disk.incoming_instance}: try again once"
                                " its stop has ended")
        row = disk_row(session, disk, settings)
        files = [p for p in (disk_path(settings, disk), incoming_path(settings, disk)) if p]
        audit(session, "disk", did, "delete", {"size_bytes": disk.size_bytes, "generation": disk.generation}, None)
        session.delete(disk)
        return {**row, "deleted": True, "files": files, "disk_dir": disk_dir(settings, disk.user_id)}

    return db.write(apply, url)


# --- keeping a VM's disk ----------------------------------------------------------------------------------------

def set_keep(instance_id: Any, keep: Any = True, url: str | None = None) -> dict[str, Any]:
    """Make a live VM keep its disk at stop (or not). Turned on for a VM that was launched without it, the VM's
    own overlay becomes the user's disk of its image at stop (a previous disk of that image is replaced)."""
    iid = whole("id", instance_id)
    on = 1 if keep in (True, 1, "1", "true", "yes", "on") else 0 if keep in (False, 0, "0", "false", "no", "off") \
        else None
    if on is None:
        raise ValidationError("keep", f"{keep!r} must be true or false")
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        inst = session.get(Instance, iid)
        if inst is None:
            raise NotFoundError(f"id: no instance {iid}")
        authz.check_instance(session, current(), inst.user_id, inst.group_id)
        if on and inst.state not in LIVE:
            raise ConflictError(f"id: instance {iid} is {inst.state}: only a live VM's disk can be kept")
        if on and inst.slave_id is not None and inst.state != InstanceState.PENDING and not inst.launched_from:
            raise ConflictError(f"id: instance {iid} was launched before VCL recorded the image files a VM starts"
                                " from: its disk cannot be kept (stop it and request a VM that keeps its disk)")
        if on and (inst.user_id is None or inst.image_id is None):
            raise ValidationError("id", f"instance {iid} has no user or no image: a disk is kept per user and image"
                                        " (a seat nobody took has no user yet)")
        if on and not inst.keep_disk:
            other = live_keeper(session, inst.user_id, inst.image_id)  # not this VM: it does not keep yet
            if other is not None:
                raise ConflictError(f"id: instance {other} already keeps this user's disk of that image")
        changed = inst.keep_disk != on
        if changed:
            audit(session, "instance", iid, "keep_disk", {"keep_disk": inst.keep_disk}, {"keep_disk": on})
            inst.keep_disk = on
            inst.updated_at = config.now()
        return {"id": iid, "keep_disk": bool(on), "changed": changed}

    return db.write(apply, url)


_LIVE_KEEPER = db.Prepared(select(Instance.id).where(
    Instance.user_id == bindparam("uid"), Instance.image_id == bindparam("iid"), Instance.keep_disk == 1,
    Instance.state.in_([literal(str(s)) for s in LIVE])).limit(1))


def live_keeper(q: Session | db.Direct, user_id: int | None, image_id: int | None) -> int | None:
    """The live VM keeping this user's disk of this image, if any (a second one is refused)."""
    if user_id is None or image_id is None:
        return None
    return _LIVE_KEEPER.scalar(q, {"uid": user_id, "iid": image_id})


def for_launch(session: Session, inst: Instance, settings: config.Settings) -> dict[str, Any] | None:
    """The kept disk a launch of ``inst`` starts from (path in the store, checksum, size, the base files), or None
    (no disk kept yet, or the VM does not keep its disk)."""
    if not inst.keep_disk or inst.user_id is None or inst.image_id is None:
        return None
    disk = session.scalar(select(Disk).where(Disk.user_id == inst.user_id, Disk.image_id == inst.image_id))
    if disk is None or disk.generation == 0 or disk.sha256 is None:
        return None
    return {"id": disk.id, "path": disk_path(settings, disk), "sha256": disk.sha256, "size_bytes": disk.size_bytes,
            "generation": disk.generation, "disk_file": disk.base_file, "kernel": disk.base_kernel,
            "ramdisk": disk.base_ramdisk, "cmdline": disk.base_cmdline}


def _size(value: Any, field: str = "size_bytes") -> int:
    return whole(field, value, 0, MAX_DISK_BYTES)


def _sha(value: Any) -> str:
    if not isinstance(value, str) or not SHA256_RE.match(value):
        raise ValidationError("sha256", "must be 64 lowercase hexadecimal digits (sha256sum)")
    return value


def keep_begin(instance_id: Any, size_bytes: Any, url: str | None = None) -> dict[str, Any]:
    """Before a stopping VM's overlay is copied to the store: check the quotas for ``size_bytes`` (the overlay's
    size on the slave) and reserve them; the disk row is made on the first keep. Returns the paths the copy
    writes (``incoming``) and will become (``path``), and the base the overlay must be backed by."""
    iid = whole("id", instance_id)
    size = _size(size_bytes)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        db.lock(session, "disks")
        inst = session.get(Instance, iid)
        if inst is None:
            raise NotFoundError(f"id: no instance {iid}")
        authz.check_instance(session, current(), inst.user_id, inst.group_id)
        if not inst.keep_disk or inst.user_id is None or inst.image_id is None:
            raise ConflictError(f"id: instance {iid} does not keep its disk")
        if inst.state not in LIVE or inst.slave_id is None:
            raise ConflictError(f"id: instance {iid} is {inst.state} with no slave: there is no disk to keep")
        base = json.loads(inst.launched_from) if inst.launched_from else None
        if not base or not base.get("disk_file"):
            raise ConflictError(f"id: instance {iid} has no record of the image it was launched from")
        settings = db.load_settings(session)
        now = config.now()
        disk = session.scalar(select(Disk).where(Disk.user_id == inst.user_id, Disk.image_id == inst.image_id))
        if disk is None:
            disk = Disk(user_id=inst.user_id, image_id=inst.image_id, group_id=inst.group_id,
                        base_file=base["disk_file"], base_kernel=base.get("kernel"),
                        base_ramdisk=base.get("ramdisk"), base_cmdline=base.get("cmdline"), generation=0,
                        size_bytes=0, created_at=now, updated_at=now)
            session.add(disk)
            session.flush()
            audit(session, "disk", disk.id, "create", None, {"user_id": inst.user_id, "image_id": inst.image_id})
        elif _keeping(disk, now) and disk.incoming_instance != iid:
            raise ConflictError(f"disk: {disk.id} is being kept by instance {disk.incoming_instance}")
        _check_quota(session, disk, size, settings)
        disk.incoming_bytes = size
        disk.incoming_instance = iid
        disk.incoming_until = now + KEEP_LEASE
        disk.updated_at = now
        return {"disk": disk.id, "incoming": incoming_path(settings, disk),
                "path": disk_path(settings, disk, disk.generation + 1), "previous": disk_path(settings, disk),
                "dir": disk_dir(settings, disk.user_id), "base_file": base["disk_file"], "size_bytes": size}

    return db.write(apply, url)


def keep_commit(instance_id: Any, disk_id: Any, size_bytes: Any, sha256: Any, info: Any,
                url: str | None = None) -> dict[str, Any]:
    """The copy, checked (``info``: qemu-img's JSON of it, :func:`check_qemu_info`; its size and checksum equal
    the slave's) and renamed to the next generation: record it. The disk now starts the user's next launch of its
    image. Returns the previous generation's file (``remove``) for the caller to delete."""
    iid, did = whole("id", instance_id), whole("disk", disk_id)
    size, digest = _size(size_bytes), _sha(sha256)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        db.lock(session, "disks")
        disk = _disk(session, did)
        if disk.incoming_instance != iid:
            raise ConflictError(f"disk: {did} is not being kept by instance {iid} (its keep ended or was taken"
                                " back)")
        check_qemu_info(info, disk.base_file)
        settings = db.load_settings(session)
        previous = disk_path(settings, disk)
        before = {"generation": disk.generation, "size_bytes": disk.size_bytes, "sha256": disk.sha256}
        disk.generation += 1
        disk.size_bytes, disk.sha256 = size, digest
        disk.incoming_bytes = disk.incoming_instance = disk.incoming_until = None
        disk.updated_at = config.now()
        audit(session, "disk", did, "keep", before, {"generation": disk.generation, "size_bytes": size,
                                                     "sha256": digest, "instance": iid})
        return {**disk_row(session, disk, settings), "remove": previous}

    return db.write(apply, url)


def keep_abort(instance_id: Any, disk_id: Any, url: str | None = None) -> dict[str, Any]:
    """A keep that failed gives its reservation back; the previous generation stays the disk. A disk that never
    had a file (its first keep failed) is forgotten."""
    iid, did = whole("id", instance_id), whole("disk", disk_id)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        db.lock(session, "disks")
        disk = session.get(Disk, did)
        if disk is None or disk.incoming_instance != iid:
            return {"disk": did, "changed": False}
        if disk.generation == 0:
            audit(session, "disk", did, "delete", None, {"reason": "its first keep failed"})
            session.delete(disk)
            return {"disk": did, "changed": True, "forgotten": True}
        disk.incoming_bytes = disk.incoming_instance = disk.incoming_until = None
        disk.updated_at = config.now()
        audit(session, "disk", did, "keep_abort", {"instance": iid}, None)
        return {"disk": did, "changed": True, "forgotten": False}

    return db.write(apply, url)


# --- capturing a disk as an image version ---------------------------------------------------------------------

def _groups(session: Session, names: Any) -> list[tuple[int, str]]:
    if names in (None, "", []):
        return []
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    if not isinstance(names, list | tuple):
        raise ValidationError("groups", "must be a list of group names")
    out = []
    for raw in names:
        name = check_name("groups", raw.strip() if isinstance(raw, str) else raw)
        gid = session.scalar(select(Group.id).where(Group.name == name))
        if gid is None:
            raise ValidationError("groups", f"no group named {name!r}")
        out.append((gid, name))
    return sorted(set(out))


def _next_version(settings: config.Settings, name: str, image: Image | None, existing: Any) -> int:
    """The version after the highest of the image's current path and ``existing`` (the names of the version
    directories the store holds on the master: ``v1``, ``v2``...)."""
    if existing is None:
        existing = []
    if not isinstance(existing, list | tuple) or len(existing) > 100_000:
        raise ValidationError("taken", "must be a list of the image's version directory names")
    taken = set()
    if image is not None:
        m = re.match(rf"^{re.escape(settings.image_store)}/{re.escape(name)}/v([0-9]+)/", image.disk_file)
        if m:
            taken.add(int(m.group(1)))
    for entry in existing:
        if isinstance(entry, str) and re.fullmatch(r"v[0-9]{1,4}", entry):
            taken.add(int(entry[1:]))
    version = max(taken, default=0) + 1
    if version > MAX_VERSIONS:
        raise ConflictError(f"image: {name} has {MAX_VERSIONS} versions already")
    return version


def capture_begin(disk_id: Any, image: Any, taken: Any = None, url: str | None = None) -> dict[str, Any]:
    """Where a capture of a kept disk writes the new image version: ``image_store/IMAGE/vN/`` (a directory no
    image or disk uses: after the highest of ``taken``, the version directories the master's store holds, which the
    playbook lists in ``image_dir``). Refused while the disk is in use or being kept (the file would change under
    the copy).
    The capturer must be allowed to capture the disk, and, for an image that exists, be an admin or its owner."""
    did = whole("disk", disk_id)
    name = check_name("image", image)
    if taken is not None and (not isinstance(taken, list | tuple) or not all(isinstance(t, str) for t in taken)):
        raise ValidationError("taken", "must be a list of the image's version directory names")
    db.require_schema(url)
    with db.read(url) as session:
        disk = _disk(session, did)
        _may_capture(session, disk)
        if disk.generation == 0:
            raise ConflictError(f"disk: {did} has no kept file yet")
        if _in_use(session, disk) is not None or _keeping(disk, config.now()):
            raise ConflictError(f"disk: {did} is in use: stop its VM first (a disk in use is never captured)")
        settings = db.load_settings(session)
        existing = session.scalar(select(Image).where(Image.name == name))
        _may_change_image(session, existing)
        version = _next_version(settings, name, existing, taken)
        target = f"{settings.image_store}/{name}/v{version}"
        files = {"disk_file": f"{target}/disk.qcow2"}
        for key, value in (("kernel", disk.base_kernel), ("ramdisk", disk.base_ramdisk)):
            if value:
                files[key] = f"{target}/{os.path.basename(value)}"
        imagepath.image_files(settings.image_store, files["disk_file"], files.get("kernel"), files.get("ramdisk"))
        return {"disk": did, "source": disk_path(settings, disk), "sha256": disk.sha256, "base_file": disk.base_file,
                "dir": target, "version": version, "files": files, "beside": {
                    files[k]: v for k, v in (("kernel", disk.base_kernel), ("ramdisk", disk.base_ramdisk)) if v},
                "cmdline": disk.base_cmdline, "image": name, "image_store": settings.image_store,
                "image_dir": f"{settings.image_store}/{name}"}


def _may_change_image(session: Session, image: Image | None) -> None:
    if image is None:
        return
    actor = people.fresh(session, current())
    if actor.role == ADMIN or (actor.user_id is not None and image.owner_id == actor.user_id):
        return
    raise ForbiddenError(f"image: {image.name} exists and is not {actor.name}'s: choose another name (admins and"
                         " the teacher who captured an image make its new versions)")


def capture_commit(disk_id: Any, image: Any, disk_file: Any, *, kernel: Any = None, ramdisk: Any = None,
                   cmdline: Any = None, groups: Any = None, cores: Any = None, ram_mb: Any = None,
                   platform_value: Any = None, description: str = "", url: str | None = None) -> dict[str, Any]:
    """Record a captured version (its files are written and checked): a new image, or the image's new current
    version (VMs running the previous one keep it; the previous files stay in the store). ``groups``: the groups
    it is for (none: every group; a teacher may name only groups they own). ``cores``, ``ram_mb`` and
    ``platform_value`` default to the disk's image's."""
    did = whole("disk", disk_id)
    name = check_name("image", image)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        db.lock(session, "disks")
        disk = _disk(session, did)
        _may_capture(session, disk)
        settings = db.load_settings(session)
        imagepath.image_files(settings.image_store, disk_file, kernel or None, ramdisk or None)
        source = session.get(Image, disk.image_id)
        chosen = _groups(session, groups)
        actor = people.fresh(session, current())
        if actor.role != ADMIN:
            for gid, gname in chosen:
                if not authz.owns(session, actor, gid):
                    raise ForbiddenError(f"groups: {actor.name} does not own group {gname}")
            if not chosen:
                chosen = [(disk.group_id, _names(session, disk)[2])]  # a teacher's capture is for the disk's group
        values = {
            "default_cores": cores_value("cores", cores if cores is not None else source.default_cores),
            "default_ram_mb": ram_value("ram_mb", ram_mb if ram_mb is not None else source.default_ram_mb, 16),
            "platform_value": catalogue._pfv(platform_value if platform_value is not None else source.platform_value),
        }
        existing = session.scalar(select(Image).where(Image.name == name))
        _may_change_image(session, existing)
        now = config.now()
        files = {"disk_file": disk_file, "kernel": kernel or None, "ramdisk": ramdisk or None,
                 "cmdline": cmdline if cmdline is not None else disk.base_cmdline}
        if existing is None:
            img = Image(name=name, description=description or f"captured from disk {did}", created_at=now,
                        default_disk_gb=source.default_disk_gb, owner_id=actor.user_id, **files, **values)
            session.add(img)
            session.flush()
            audit(session, "image", img.id, "capture", None, {"disk": did, **files})
        else:
            img = existing
            before = {k: getattr(img, k) for k in (*files, *values)}
            for key, value in {**files, **values}.items():
                setattr(img, key, value)
            audit(session, "image", img.id, "capture", before, {"disk": did, **files})
        session.execute(delete(ImageGroup).where(ImageGroup.image_id == img.id))
        if chosen:
            session.execute(insert(ImageGroup), [{"image_id": img.id, "group_id": gid} for gid, _ in chosen])
        row = catalogue.image_row(img)
        return {**row, "groups": [g for _, g in chosen], "from_disk": did}

    return db.write(apply, url)


_IMAGE_GROUPS = db.Prepared(select(ImageGroup.group_id).where(ImageGroup.image_id == bindparam("iid")))


def image_groups(q: Session | db.Direct, image_id: int) -> list[int]:
    return [row[0] for row in _IMAGE_GROUPS.all(q, {"iid": image_id})]


def check_image_for_group(q: Any, image_id: int | None, group_id: int, group: str, image: str | None) -> None:
    """An image with groups is for those groups only (admins may use it for any)."""
    if image_id is None:
        return
    allowed = image_groups(q, image_id)
    if not allowed or group_id in allowed:
        return
    actor = people.fresh(q, current())
    if actor.role == ADMIN:
        return
    raise ForbiddenError(f"image: {image} is not for group {group}")


def check_qemu_info(info: Any, base_file: str, field: str = "info") -> None:
    """What ``qemu-img info --output=json`` says of a disk a slave handed back, before the store keeps it: a
    qcow2 backed by exactly the disk's base (a qcow2 in the image store) and nothing else (no external data
    file, no other backing file: a lent PC's file must not make the next slave read anything but the base)."""
    if not isinstance(info, dict):
        raise ValidationError(field, "expected the JSON object of qemu-img info")
    if info.get("format") != "qcow2":
        raise ValidationError(field, f"the disk is {str(info.get('format'))[:40]!r}, not qcow2: nothing is kept")
    backing = info.get("full-backing-filename", info.get("backing-filename"))
    if backing != base_file or info.get("backing-filename") != base_file:
        raise ValidationError(field, f"the disk is backed by {str(backing)[:200]!r}, not its base {base_file!r}:"
                                     " nothing is kept")
    if info.get("backing-filename-format", "qcow2") != "qcow2":
        raise ValidationError(field, "the disk's backing file format is not qcow2: nothing is kept")
    data = (info.get("format-specific") or {}).get("data") or {}
    if data.get("data-file") or data.get("data-file-raw"):
        raise ValidationError(field, "the disk names an external data file: nothing is kept")
    if not isinstance(info.get("virtual-size"), int) or info["virtual-size"] <= 0:
        raise ValidationError(field, "the disk has no virtual size")
