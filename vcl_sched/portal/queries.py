"""What the portal's pages read that the service layer has no call for: a person's groups and images, the
sessions of their groups, a page of slaves, and the timeline's profile. Read-only, bound parameters only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, and_, func, or_, select, type_coerce

from .. import db
from ..acting import ADMIN, TEACHER, Actor
from ..bookings import _reservation_row
from ..claims import HOLDS_CAPACITY, instance_row
from ..models import (
    Group,
    Image,
    ImageGroup,
    Instance,
    InstanceKind,
    InstanceState,
    Membership,
    Reservation,
    ReservationState,
    Slave,
    SlaveStatus,
)
from ..validate import iso

BOOKED = (ReservationState.ACCEPTED, ReservationState.ACTIVE)
LIVE = (*HOLDS_CAPACITY, InstanceState.SUSPENDED)
PAGE = 100


def groups_of(actor: Actor, url: str) -> list[str]:
    """The groups a person requests for: an admin every group, a teacher the groups they own and belong to, a
    student the groups they belong to."""
    with db.read(url) as s:
        query = select(Group.name).order_by(Group.name)
        if actor.role != ADMIN:
            member = select(Membership.group_id).where(Membership.user_id == actor.user_id)
            cond = Group.id.in_(member)
            if actor.role == TEACHER:
                cond = or_(cond, Group.owner_id == actor.user_id)
            query = query.where(cond)
        return list(s.scalars(query))


def owned_groups(actor: Actor, url: str) -> list[str]:
    """The groups a teacher books sessions for (an admin: every group)."""
    with db.read(url) as s:
        query = select(Group.name).order_by(Group.name)
        if actor.role != ADMIN:
            query = query.where(Group.owner_id == actor.user_id)
        return list(s.scalars(query))


def images_for(groups: list[str], url: str) -> list[dict[str, Any]]:
    """Images any of these groups may use (an image with no groups is for every group)."""
    with db.read(url) as s:
        limited = select(ImageGroup.image_id)
        allowed = (select(ImageGroup.image_id).join(Group, Group.id == ImageGroup.group_id)
                   .where(Group.name.in_(groups)))
        query = (select(Image.name, Image.description, Image.default_cores, Image.default_ram_mb,
                        Image.default_disk_gb)
                 .where(or_(Image.id.not_in(limited), Image.id.in_(allowed))).order_by(Image.name))
        return [{"name": n, "description": d, "cores": c, "ram_mb": r, "disk_gb": g}
                for n, d, c, r, g in s.execute(query)]


def vms_of(actor: Actor, url: str, page: int = 0) -> tuple[list[dict[str, Any]], int]:
    """A page of live VMs, newest first: a student's own, a teacher's own and their groups', every one for an
    admin; and how many there are. The page's ids are chosen first (an index walk on the state, no join), then
    only those rows are read whole."""
    with db.read(url) as s:
        cond = Instance.state.in_(LIVE)
        if actor.role != ADMIN:
            owned = select(Group.id).where(Group.owner_id == actor.user_id)
            cond = and_(cond, or_(Instance.user_id == actor.user_id, Instance.group_id.in_(owned)))
        total = s.scalar(select(func.count(Instance.id)).where(cond)) or 0
        ids = list(s.scalars(select(Instance.id).where(cond).order_by(Instance.id.desc())
                             .limit(PAGE).offset(page * PAGE)))
        if not ids:
            return [], total
        rows = s.execute(select(Instance, Slave.name, Group.name).outerjoin(Slave, Slave.id == Instance.slave_id)
                         .join(Group, Group.id == Instance.group_id).where(Instance.id.in_(ids))
                         .order_by(Instance.id.desc())).all()
        image_ids = {inst.image_id for inst, _, _ in rows if inst.image_id is not None}
        images = {iid: name for iid, name in s.execute(select(Image.id, Image.name).where(Image.id.in_(image_ids)))}
        out = []
        for inst, slave, group in rows:
            row = instance_row(inst, slave, group)
            row["user_id"] = inst.user_id
            row["image"] = images.get(inst.image_id)
            out.append(row)
        return out, total


def vm_owner(instance_id: int, url: str) -> tuple[int | None, str | None, int | None]:
    """(owner's user id, state, console port) of a VM, or (None, None, None) when there is none."""
    with db.read(url) as s:
        row = s.execute(select(Instance.user_id, type_coerce(Instance.state, String), Instance.console_port)
                        .where(Instance.id == instance_id)).first()
        return (row[0], row[1], row[2]) if row else (None, None, None)


def sessions_of(groups: list[str], url: str, since: datetime, limit: int = 200) -> list[dict[str, Any]]:
    """The reservations (class sessions) of these groups that end after ``since``, refused ones too (their
    outcome), soonest first."""
    with db.read(url) as s:
        query = (select(Reservation, Group.name).join(Group, Group.id == Reservation.group_id)
                 .where(Group.name.in_(groups),
                        or_(Reservation.end > since,
                            and_(Reservation.state == ReservationState.REFUSED,
                                 Reservation.requested_start > since - timedelta(days=1))))
                 .order_by(func.coalesce(Reservation.start, Reservation.requested_start), Reservation.id).limit(limit))
        return [_reservation_row(r, g) for r, g in s.execute(query)]


def my_seats(actor: Actor, url: str) -> list[dict[str, Any]]:
    """The running sessions of a person's groups, each with the seat they hold (if any)."""
    with db.read(url) as s:
        member = select(Membership.group_id).where(Membership.user_id == actor.user_id)
        rows = s.execute(select(Reservation, Group.name).join(Group, Group.id == Reservation.group_id)
                         .where(Reservation.group_id.in_(member), Reservation.state == ReservationState.ACTIVE)
                         .order_by(Reservation.start))
        out = []
        for res, group in rows:
            held = s.execute(select(Instance).where(Instance.reservation_id == res.id,
                                                    Instance.user_id == actor.user_id,
                                                    Instance.kind == InstanceKind.AR,
                                                    Instance.state.in_(LIVE))).scalars().first()
            out.append({"id": res.id, "group": group, "start": iso(res.start), "end": iso(res.end),
                        "seats": res.seats, "cores": res.cores, "ram_mb": res.ram_mb,
                        "vm": instance_row(held) if held is not None else None})
        return out


def slaves_page(url: str, page: int = 0) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """A page of slaves by name, and the pool's totals."""
    with db.read(url) as s:
        rows = s.execute(select(Slave.name, Slave.address, type_coerce(Slave.status, String), Slave.cores_total,
                                Slave.cores_used, Slave.ram_mb_total, Slave.ram_mb_used, Slave.lend_state)
                         .order_by(Slave.name).limit(PAGE).offset(page * PAGE)).all()
        totals = s.execute(select(func.count(), func.coalesce(func.sum(Slave.cores_total), 0),
                                  func.coalesce(func.sum(Slave.cores_used), 0))).one()
        up = s.scalar(select(func.count()).where(Slave.status == SlaveStatus.UP)) or 0
        return ([{"name": n, "address": a, "status": st, "cores_total": ct, "cores_used": cu, "ram_mb_total": rt,
                  "ram_mb_used": ru, "lend_state": ls} for n, a, st, ct, cu, rt, ru, ls in rows],
                {"slaves": int(totals[0]), "cores": int(totals[1]), "cores_used": int(totals[2]), "up": int(up)})


@dataclass(frozen=True)
class Profile:
    """The timeline's data: from ``start`` for ``hours`` hours, per hour the pool's cores (lab slaves up), the
    cores reserved by accepted and running sessions, and the cores best-effort VMs hold."""

    start: datetime
    hours: int
    capacity: list[int]
    reserved: list[int]
    best_effort: list[int]


def profile(url: str, now: datetime, hours: int) -> Profile:
    start = now.replace(minute=0, second=0, microsecond=0)
    end = start + timedelta(hours=hours)
    with db.read(url) as s:
        capacity = int(s.scalar(select(func.coalesce(func.sum(Slave.cores_total), 0))
                                .where(Slave.status == SlaveStatus.UP, Slave.lend_state.is_(None))) or 0)
        bookings = s.execute(select(Reservation.start, Reservation.end, Reservation.seats * Reservation.cores)
                             .where(Reservation.state.in_(BOOKED), Reservation.start < end,
                                    Reservation.end > start)).all()
        be = s.execute(select(Instance.ends_at, func.sum(Instance.cores))
                       .where(Instance.kind == InstanceKind.BE, Instance.state.in_(HOLDS_CAPACITY))
                       .group_by(Instance.ends_at)).all()
    reserved = [0] * hours
    best = [0] * hours
    for b_start, b_end, cores in bookings:
        first = max(0, int((b_start - start) // timedelta(hours=1)))
        last = min(hours, -int(-(b_end - start) // timedelta(hours=1)))
        for h in range(first, last):
            reserved[h] += int(cores)
    for ends, cores in be:
        last = hours if ends is None else min(hours, -int(-(ends - start) // timedelta(hours=1)))
        for h in range(0, max(0, last)):
            best[h] += int(cores)
    return Profile(start, hours, [capacity] * hours, reserved, best)
