"""Class sessions (SPEC §4, §7): weekly series of reservations, members taking their seats, the teacher's view,
cancelling an occurrence or a whole series.

A session is a reservation: a block of seats for a group over a window (``bookings.reserve`` admits it). A
weekly series books one reservation per occurrence, each admitted by the same rules and reported one by one
(accepted, moved with why, refused with why). A member takes a seat: the seat handed to them at prelaunch,
else a prelaunched seat nobody holds, else a new seat (pending: its launch follows) while the block has one
left. The database's unique indexes on a reservation's live seats (a seat number once, a member once) make a
second seat for a member, or a seat taken twice, impossible whatever runs concurrently.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import acting, authz, bookings, config, db, disks
from .audit import audit
from .catalogue import group_ref
from .errors import ConflictError, NotFoundError, ValidationError
from .lifecycle import _new_seat
from .models import (
    Group,
    Instance,
    InstanceKind,
    InstanceState,
    Reservation,
    ReservationState,
    Series,
    Slave,
    User,
)
from .validate import check_name, id_value, iso, shown, whole

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_WEEKS = 52
LIVE = (InstanceState.PENDING, InstanceState.RUNNING, InstanceState.SUSPENDED)


# --- weekly series -------------------------------------------------------------------------------------------

def parse_weekdays(value: Any) -> tuple[int, ...]:
    """``mon,wed`` (or a list of names) as sorted weekday numbers (Monday 0); a ValidationError names the field."""
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    days: set[int] = set()
    for item in items:
        name = str(item).strip().lower()[:3] if isinstance(item, str) else None
        if name not in WEEKDAYS or len(str(item).strip()) > 9:
            raise ValidationError("weekdays", f"{shown(item)} is not a weekday: use {','.join(WEEKDAYS)}")
        days.add(WEEKDAYS.index(name))
    if not days:
        raise ValidationError("weekdays", "name at least one weekday, like mon,wed")
    return tuple(sorted(days))


def series_fields(weekdays: Any, weeks: Any) -> dict[str, Any]:
    """``weekdays`` and ``weeks`` of a weekly session, checked, or {} when neither is given (one of them alone is
    an error naming the other)."""
    if (weekdays is None) != (weeks is None):
        raise ValidationError("weeks" if weeks is None else "weekdays",
                              "a weekly session needs weekdays and weeks together")
    if weekdays is None:
        return {}
    return {"weekdays": ",".join(WEEKDAYS[d] for d in parse_weekdays(weekdays)),
            "weeks": whole("weeks", weeks, 1, MAX_WEEKS)}


def occurrences(first: datetime, weekdays: tuple[int, ...], weeks: int) -> list[datetime]:
    """The starts of a weekly series: on each of ``weekdays``, at ``first``'s time of day, in the ``weeks`` weeks
    from ``first``'s week (days of the first week before ``first`` are skipped)."""
    monday: date = first.date() - timedelta(days=first.weekday())
    starts = []
    for week in range(weeks):
        for day in weekdays:
            when = datetime.combine(monday + timedelta(days=7 * week + day), first.time())
            if when >= first:
                starts.append(when)
    return starts


def reserve_series(*, weekdays: Any, weeks: Any, start: Any, url: str | None = None,
                   **fields: Any) -> dict[str, Any]:
    """A weekly session: one reservation per occurrence (``bookings.reserve`` with the same ``fields``), each
    admitted on its own; the answer lists every occurrence with its outcome. A refusal of one occurrence
    (capacity, or the booking policy: too soon, beyond the horizon) does not stop the others."""
    days = parse_weekdays(weekdays)
    weeks_n = whole("weeks", weeks, 1, MAX_WEEKS)
    first = start if isinstance(start, datetime) else config.parse_datetime(str(start), "start")
    starts = occurrences(first, days, weeks_n)
    if not starts:
        raise ValidationError("weekdays", f"no occurrence on {','.join(WEEKDAYS[d] for d in days)} in {weeks_n}"
                              " week(s) from the start")
    # Every field once, before anything is written: the first occurrence with dry_run checks them all
    # (policy errors of a single date are that occurrence's outcome, below).
    bookings.check_fields(start=first, **{k: v for k, v in fields.items() if k in _CHECKED})
    dry_run = bool(fields.get("dry_run"))
    series_id = None
    if not dry_run:
        series_id = _new_series(fields, days, weeks_n, first, url)
    outcomes = []
    for when in starts:
        try:
            row = bookings.reserve(start=when, series_id=series_id, url=url, **fields)
        except ValidationError as err:
            if err.field != "start":
                raise
            row = {"id": None, "state": "refused", "requested_start": iso(when), "start": None, "end": None,
                   "reason": err.message, "moved": [], "rescheduled": 0}
        outcomes.append(row)
    counts = {state: sum(1 for o in outcomes if o["state"] == state) for state in ("accepted", "refused")}
    moved = sum(1 for o in outcomes if o["state"] == "accepted" and o.get("rescheduled"))
    return {"series": series_id, "weekdays": ",".join(WEEKDAYS[d] for d in days), "weeks": weeks_n,
            "occurrences": outcomes, "accepted": counts["accepted"], "moved": moved, "refused": counts["refused"]}


_CHECKED = ("owner", "cores", "ram_mb", "hours", "platform_value", "register_as_slave", "member", "seats",
            "image", "user", "prelaunch")


def _new_series(fields: dict[str, Any], days: tuple[int, ...], weeks: int, first: datetime,
                url: str | None) -> int:
    actor = acting.current()
    owner = check_name("owner", fields["owner"])

    def apply(session: Session) -> int:
        group_id = group_ref(session, owner)
        authz.check_book(session, actor, group_id, owner)
        series = Series(group_id=group_id, user_id=actor.user_id, weekdays=",".join(WEEKDAYS[d] for d in days),
                        weeks=weeks, first_start=first, hours=float(fields["hours"]), created_at=config.now())
        session.add(series)
        session.flush()
        audit(session, "series", series.id, "create", None,
              {"group": owner, "weekdays": series.weekdays, "weeks": weeks, "first": iso(first)})
        return series.id

    return db.write(apply, url)


# --- taking a seat -------------------------------------------------------------------------------------------

def _reservation(session: Session, rid: int, lock: bool = False) -> tuple[Reservation, str]:
    query = select(Reservation).where(Reservation.id == rid)
    res = session.scalars(query.with_for_update() if lock else query).first()
    if res is None:
        raise NotFoundError(f"reservation: no reservation {rid}")
    group = session.get(Group, res.group_id)
    assert group is not None
    return res, group.name


def _seat_row(inst: Instance, user: str | None, slave: str | None) -> dict[str, Any]:
    return {"seat": (inst.seat or 0) + 1, "id": inst.id, "user": user, "state": str(inst.state), "slave": slave,
            "public_ip": inst.public_ip, "private_ip": inst.private_ip, "started_at": iso(inst.started_at),
            "ends_at": iso(inst.ends_at)}


def take_seat(reservation: Any, user: Any = None, url: str | None = None) -> dict[str, Any]:
    """``user`` (default: the acting user) takes a seat of the session ``reservation``: the one they hold already
    (``changed`` False: a member never gets two), else a prelaunched seat nobody holds, else a new seat while
    the block has one left (``state`` pending: launch it with ``vcl.lab.launch -e id=ID``). Refused, naming the
    field, outside the window, when every seat is taken, for a non-member, or for someone the acting user may
    not act for (``authz.check_seat``)."""
    rid = id_value("reservation", reservation)
    actor = acting.current()
    name = check_name("user", user) if user is not None else actor.name
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        now = config.now()
        res, group = _reservation(session, rid, lock=True)
        uid = authz.user_id_of(session, name)
        authz.check_seat(session, actor, res.group_id, group, uid, name)
        assert uid is not None
        if res.state == ReservationState.ACCEPTED:
            raise ConflictError(f"reservation: session {rid} opens at {iso(res.start)}: its seats are taken from then")
        if res.state != ReservationState.ACTIVE or res.end is None or res.end <= now:
            raise ConflictError(f"reservation: session {rid} is {res.state}: its seats are gone")
        live = session.scalars(select(Instance).where(Instance.reservation_id == rid, Instance.state.in_(LIVE))
                               .order_by(Instance.seat)).all()
        for inst in live:
            if inst.user_id == uid:
                return {**_seat_row(inst, name, None), "reservation": rid, "changed": False,
                        "how": "already held"}
        for inst in live:
            if inst.user_id is None:
                keep = 1 if inst.keep_disk and disks.live_keeper(session, uid, inst.image_id) is None else 0
                taken = session.execute(update(Instance).where(Instance.id == inst.id, Instance.user_id.is_(None))
                                        .values(user_id=uid, updated_at=now, keep_disk=keep)).rowcount
                if taken == 1:
                    session.refresh(inst)
                    audit(session, "instance", inst.id, "seat_taken", {"user": None},
                          {"user": name, "reservation": rid, "seat": (inst.seat or 0) + 1})
                    return {**_seat_row(inst, name, None), "reservation": rid, "changed": True,
                            "how": "prelaunched seat"}
        used = {inst.seat for inst in live}
        free = [n for n in range(res.seats) if n not in used]
        if not free:
            raise ConflictError(f"reservation: all {res.seats} seats of session {rid} are taken")
        inst = _new_seat(session, res, free[0], now, user_id=uid)
        audit(session, "instance", inst.id, "queued", None,
              {"reservation": rid, "kind": "AR", "seat": free[0] + 1, "user": name})
        return {**_seat_row(inst, name, None), "reservation": rid, "changed": True, "how": "new seat"}

    for _attempt in range(3):
        try:
            return db.write(apply, url)
        except IntegrityError:  # another run took that seat (or a seat for this member) first: look again
            continue
    raise ConflictError(f"reservation: the seats of session {rid} kept changing: try again")


# --- the teacher's view, cancelling --------------------------------------------------------------------------

def session_view(reservation: Any, url: str | None = None) -> dict[str, Any]:
    """A session as its teacher sees it: the reservation, and each seat with who holds it, its VM's state, slave
    and public address (free seats too). A member who is a student sees only their own seat."""
    rid = id_value("reservation", reservation)
    actor = acting.current()
    db.require_schema(url)
    with db.read(url) as session:
        res, group = _reservation(session, rid)
        sees_all = authz.check_session(session, actor, res.group_id, group)
        rows = session.execute(
            select(Instance, User.name, Slave.name).outerjoin(User, User.id == Instance.user_id)
            .outerjoin(Slave, Slave.id == Instance.slave_id)
            .where(Instance.reservation_id == rid, Instance.kind == InstanceKind.AR)
            .order_by(Instance.seat, Instance.id)).all()
        latest: dict[int, dict[str, Any]] = {}
        for inst, user, slave in rows:  # a seat's last instance tells its state (a lost one was relaunched)
            latest[inst.seat or 0] = _seat_row(inst, user, slave)
        seats = [latest.get(n, {"seat": n + 1, "id": None, "user": None, "state": "free", "slave": None,
                                "public_ip": None, "private_ip": None, "started_at": None, "ends_at": None})
                 for n in range(res.seats)]
        if not sees_all:
            seats = [s for s in seats if s["user"] == actor.name]
        members = [name for _, name in authz.members(session, res.group_id)] if sees_all else [actor.name]
        held = {s["user"] for s in seats if s["user"] and s["state"] in LIVE}
        return {"reservation": bookings._reservation_row(res, group), "group": group, "seats": seats,
                "members": members, "members_without_seat": [m for m in members if m not in held],
                "running": sum(1 for s in seats if s["state"] == InstanceState.RUNNING)}


def cancel(reservation: Any = None, series: Any = None, url: str | None = None) -> dict[str, Any]:
    """Cancel one occurrence (``reservation``) or every occurrence still to come or running of a ``series``. A
    cancelled session frees its cores in the calendar; its running seats end now (the next dispatch stops
    them). Admins, or the group's teacher."""
    if (reservation is None) == (series is None):
        raise ValidationError("reservation", "give a reservation or a series (one of them)")
    rid = id_value("reservation", reservation) if reservation is not None else None
    sid = id_value("series", series) if series is not None else None
    actor = acting.current()
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        db.lock(session, "calendar")
        now = config.now()
        if rid is not None:
            targets = [_reservation(session, rid)[0]]
        else:
            if session.get(Series, sid) is None:
                raise NotFoundError(f"series: no series {sid}")
            targets = list(session.scalars(select(Reservation).where(Reservation.series_id == sid)
                                           .order_by(Reservation.start, Reservation.id)))
        cancelled, ended = [], []
        for res in targets:
            group = session.get(Group, res.group_id)
            assert group is not None
            authz.check_session(session, actor, res.group_id, group.name, change=True)
            if res.state not in bookings.ACTIVE_BOOKINGS:
                if rid is not None:
                    raise ConflictError(f"reservation: {rid} is {res.state}: nothing to cancel")
                continue
            before = str(res.state)
            res.state = ReservationState.CANCELLED
            res.reason = (res.reason + "; " if res.reason else "") + f"cancelled by {actor.name}"
            for inst in session.scalars(select(Instance).where(Instance.reservation_id == res.id,
                                                               Instance.state.in_(LIVE))):
                inst.ends_at, inst.updated_at = now, now
                ended.append(inst.id)
            audit(session, "reservation", res.id, "cancelled", {"state": before}, {"state": "cancelled"})
            cancelled.append(res.id)
        return {"cancelled": cancelled, "ending": ended, "series": sid, "changed": bool(cancelled)}

    return db.write(apply, url)


def check_vm(instance_id: Any, url: str | None = None) -> dict[str, Any]:
    """May the acting user act on VM ``instance_id`` (stop, suspend, resume, launch it, see it)? Its owner, the
    teacher of its group and admins may; the answer is the VM as ``lifecycle.describe`` gives it. A playbook run
    on someone's behalf (``acting_user``) calls this before anything else."""
    from . import lifecycle

    iid = id_value("id", instance_id)
    actor = acting.current()
    db.require_schema(url)
    with db.read(url) as session:
        inst = session.get(Instance, iid)
        if inst is None:
            raise NotFoundError(f"id: no instance {iid}")
        authz.check_instance(session, actor, inst.user_id, inst.group_id)
    return lifecycle.describe(iid, url)
