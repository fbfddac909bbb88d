"""Bookings: advance reservations (AR) and best-effort requests (BE), SPEC §3 and §4.

The decisions are the pure functions of ``priority``, ``calendar`` (admission, moves, the look-ahead),
``placement`` and ``preempt``; this module feeds them from the database and records their outcome.
A reservation is admitted in one write transaction that holds the calendar lock (moves of lower-priority
bookings and the refusal with its reason included). A best-effort request is decided on a read snapshot
and claimed in a short write (``claims.commit_claim``) whose compare-and-swap sends it back to decide
again when the chosen slave changed meanwhile.

Every function validates all of its input before it opens a write transaction, so bad input changes
nothing. Results are plain dicts (the CLI prints them as tables or JSON).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import acting, authz, calendar, config, db, disks, lending, placement, preempt, promises
from .audit import audit
from .catalogue import get_settings, group_ref, image_ref, user_ref
from .claims import ClaimPlan, StaleClaim, choose_slave, commit_claim, slave_states, up_cores
from .errors import CapacityError, ConflictError, ForbiddenError, ValidationError
from .models import Group, Instance, InstanceState, Reservation, ReservationState
from .priority import PLATFORM_VALUE_CEILING, parse_priority_inputs, priority
from .validate import MAX_CORES, MAX_DISK_GB, MAX_RAM_MB, MAX_SEATS, check_name, flag_value, hours_value, iso, whole

ACTIVE_BOOKINGS = (ReservationState.ACCEPTED, ReservationState.ACTIVE)


# --- what both kinds of booking read --------------------------------------------------------------

def _priority_of(platform_value: Any, register_as_slave: Any, ram_mb: Any, minutes: Any, member: Any,
                 settings: config.Settings) -> tuple[float, Any]:
    inputs = parse_priority_inputs(platform_value, register_as_slave, ram_mb, minutes, member,
                                   platform_value_max=settings.platform_value_max)
    return priority(inputs, settings.priority_coefficient), inputs


def check_fields(*, owner: Any, cores: Any, ram_mb: Any, hours: Any, platform_value: Any = None,
                 register_as_slave: Any = 0, member: Any = None, start: Any = "now", seats: Any = 1,
                 disk_gb: Any = None, image: Any = None, user: Any = None, prelaunch: Any = True) -> None:
    """Every field of a reservation or request checked on its own, without the database (the CLI does this
    before it submits a playbook run): names, bounded numbers, the start. A ValidationError names the field.
    What needs the database (the group, the image, the lab's platform_value_max, the pool) is the playbook's."""
    check_name("owner", owner)
    whole("cores", cores, 1, MAX_CORES)
    ram_n = whole("ram_mb", ram_mb, 1, MAX_RAM_MB)
    hours_f = hours_value("hours", hours)
    whole("seats", seats, 1, MAX_SEATS)
    if disk_gb is not None:
        whole("disk_gb", disk_gb, 0, MAX_DISK_GB)
    for field, value in (("image", image), ("user", user)):
        if value is not None:
            check_name(field, value)
    flag_value("prelaunch", prelaunch)
    if not isinstance(start, datetime) and str(start or "now").strip().lower() != "now":
        config.parse_datetime(str(start), "start")
    # The lab's own platform_value_max is in the database: here only the ceiling any lab may set. Left out,
    # PfV and MON come from the image and the membership (authz.priority_inputs).
    parse_priority_inputs(0 if platform_value is None else platform_value, register_as_slave, ram_n, hours_f * 60,
                          0 if member is None else member, platform_value_max=PLATFORM_VALUE_CEILING)


_BOOKINGS_BETWEEN = db.Prepared(
    select(Reservation.id, Reservation.seats * Reservation.cores, Reservation.start, Reservation.end,
           Reservation.priority,
           Reservation.register_as_slave, Reservation.state)
    .where(Reservation.state.in_([bindparam(f"booked_{s}", s, Reservation.state.type) for s in ACTIVE_BOOKINGS]),
           Reservation.end > bindparam("start"), Reservation.start < bindparam("end")))


def bookings_between(q: Session | db.Direct, start: datetime, end: datetime, now: datetime) -> list[calendar.Booking]:
    rows = _BOOKINGS_BETWEEN.all(q, {"start": start, "end": end})
    return [calendar.Booking(r[0], r[1], r[2], r[3], r[4], r[5], seq=r[0],
                             fixed=r[6] == ReservationState.ACTIVE or r[2] <= now) for r in rows]


def _bookings(session: Session, day: datetime, now: datetime) -> list[calendar.Booking]:
    """Bookings that touch the calendar day of ``day`` (admission never moves one across days)."""
    day_start = datetime.combine(day.date(), datetime.min.time())
    return bookings_between(session, day_start, day_start + timedelta(days=1), now)


# --- advance reservations (AR) -----------------------------------------------------------------------

def _bounded_pfv(derived: Any, given: Any, settings: config.Settings) -> Any:
    """An image's PfV is used within the lab's platform_value_max (an admin may have lowered it since); a value
    typed by hand is checked as it is."""
    if given is not None or not isinstance(derived, int | float):
        return derived
    return min(float(derived), settings.platform_value_max)


def _reservation_row(r: Reservation, owner: str, moves: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    return {"id": r.id, "owner": owner, "seats": r.seats, "cores": r.cores, "ram_mb": r.ram_mb,
            "priority": round(r.priority, 6), "prelaunch": bool(r.prelaunch), "series": r.series_id,
            "platform_value": r.platform_value, "member": r.member, "register_as_slave": r.register_as_slave,
            "keep_disks": bool(r.keep_disks),
            "state": str(r.state), "requested_start": iso(r.requested_start), "start": iso(r.start),
            "end": iso(r.end), "hours": r.hours, "rescheduled": r.rescheduled, "reason": r.reason,
            "moved": list(moves)}


def reserve(*, owner: str, cores: Any, ram_mb: Any, start: Any, hours: Any, platform_value: Any = None,
            register_as_slave: Any = 0, member: Any = None, image: str | None = None, user: str | None = None,
            seats: Any = 1, prelaunch: Any = True, series_id: int | None = None, dry_run: bool = False,
            keep_disks: Any = False, url: str | None = None) -> dict[str, Any]:
    """An advance reservation (SPEC §4): a block of ``seats`` seats of (``cores``, ``ram_mb``) for a group over
    a window; accepted (maybe moved later, maybe moving lower-priority bookings later) or refused with
    the reason. The block must fit in the pool at every instant of its window, and its seats must be
    placeable on the slaves beside every other booking's seats (``promises.check_block``); a seat larger
    than the largest slave, or a block larger than the pool, is refused at once. Invalid input raises
    ValidationError.

    The acting user (``acting.current()``) must be an admin or the group's teacher (``authz.check_book``);
    ``platform_value`` and ``member`` left out are the image's PfV and the booker's membership (admins may give
    them). With ``prelaunch`` every seat is started ``prelaunch_lead_minutes`` before the window opens and handed
    to the group's members in name order; without it a member's seat starts when they take it
    (``sessions.take_seat``)."""
    owner = check_name("owner", owner)
    prelaunch_n = flag_value("prelaunch", prelaunch)
    keep_n = flag_value("keep_disks", keep_disks)
    seats_n = whole("seats", seats, 1, MAX_SEATS)
    cores_n = whole("cores", cores, 1, MAX_CORES)
    ram_n = whole("ram_mb", ram_mb, 1, MAX_RAM_MB)
    start_dt = start if isinstance(start, datetime) else config.parse_datetime(str(start), "start")
    hours_f = hours_value("hours", hours)
    user_name = check_name("user", user) if user is not None else None
    settings = get_settings(url)
    now = config.now()
    actor = acting.current()
    _, asked = _priority_of(0 if platform_value is None else platform_value, register_as_slave, ram_n, hours_f * 60,
                            0 if member is None else member, settings)  # every field checked before the transaction
    calendar.check_request_policy(start_dt, hours_f, now, settings.booking)
    end_dt = start_dt + timedelta(hours=hours_f)

    def apply(session: Session) -> dict[str, Any]:
        db.lock(session, "calendar")
        group_id = group_ref(session, owner)
        authz.check_book(session, actor, group_id, owner)
        img = image_ref(session, image)
        if keep_n and img is None:
            raise ValidationError("keep_disks", "a session keeps its seats' disks of an image: name the image")
        disks.check_image_for_group(session, img[0] if img else None, group_id, owner, image)
        if actor.is_admin:
            user_id = user_ref(session, user_name)[0] if user_name is not None else None
        else:
            if user_name is not None and user_name != actor.name:
                raise ForbiddenError(f"user: {actor.name} books in their own name, not {user_name}'s")
            user_id = actor.user_id
        pfv, mon = authz.priority_inputs(session, actor, group_id, img[0] if img else None, user_id,
                                         platform_value, member)
        ras, ras_warning = lending.effective_ras(session, user_id, asked.register_as_slave, settings.decline_limit)
        pi, inputs = _priority_of(_bounded_pfv(pfv, platform_value, settings), ras, ram_n,
                                  hours_f * 60, mon, settings)
        existing = _bookings(session, start_dt, now)
        res = Reservation(group_id=group_id, user_id=user_id, image_id=img[0] if img else None,
                          prelaunch=prelaunch_n, series_id=series_id, keep_disks=keep_n,
                          seats=seats_n, cores=cores_n, ram_mb=ram_n, requested_start=start_dt, start=None, end=None,
                          hours=hours_f, platform_value=inputs.platform_value,
                          register_as_slave=inputs.register_as_slave, member=inputs.member, priority=pi,
                          rescheduled=0, state=ReservationState.REFUSED, reason="", created_at=now)
        session.add(res)
        session.flush()  # the id is the booking's first-come-first-served sequence number
        new = calendar.Booking(res.id, seats_n * cores_n, start_dt, end_dt, pi, inputs.register_as_slave, seq=res.id)
        capacity = up_cores(session)
        never = promises.impossible(session, cores_n, ram_n, img[1] if img else 0, seats_n)
        if never:
            admission = calendar.Admission(False, None, None, (), never)
        elif capacity == 0:
            admission = calendar.Admission(False, None, None, (), "the pool has no slave up")
        else:
            admission = calendar.admit(new, existing, capacity, now, settings.booking)
        if admission.accepted:
            assert admission.start is not None and admission.end is not None
            block = promises.seats_of(res.id, seats_n, cores_n, ram_n, admission.start, admission.end,
                                      promises.reservation_order(pi, inputs.register_as_slave, res.id))
            moved = {m.id: (m.new_start, m.new_end) for m in admission.moves}
            unplaceable = promises.check_block(session, block, moved)
            if unplaceable:
                admission = calendar.Admission(False, None, None, (), f"the seats cannot all be placed: {unplaceable}")
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
        if ras_warning:
            row["warning"] = ras_warning
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
        return {"cores": up_cores(session), "reservations": rows}


# --- best-effort requests (BE) -----------------------------------------------------------------------

_RUNNING_BE = db.Prepared(
    select(Instance.id, Instance.slave_id, Instance.cores, Instance.ram_mb, Instance.priority,
           Instance.register_as_slave, Instance.kind)
    .where(Instance.state == bindparam("running", InstanceState.RUNNING, Instance.state.type),
           Instance.slave_id.is_not(None)))


def running_be(q: Session | db.Direct) -> list[preempt.RunningVM]:
    return [preempt.RunningVM(r[0], r[1], r[2], r[3], r[4], r[5], seq=r[0], kind=str(r[6])) for r in _RUNNING_BE.all(q)]


def request(*, owner: str, cores: Any, ram_mb: Any, hours: Any, platform_value: Any = None,
            register_as_slave: Any = 0, member: Any = None, disk_gb: Any = None, image: str | None = None,
            user: str | None = None, dry_run: bool = False, explain: bool = True, keep_disk: Any = False,
            url: str | None = None) -> dict[str, Any]:
    """A best-effort VM now (SPEC §3, §4): placed and claimed (cores, RAM, disk, MAC, address pair,
    in one transaction), or the preemption plan (which lower-priority BE VMs to suspend), or wait.

    The decision is taken on a read snapshot, without holding the write lock; the claim is a short
    write transaction whose compare-and-swap on the slave's generation fails if anything changed
    the chosen slave since, and then the request is decided again on fresh state (Placement's
    optimistic claims). The hours granted are capped by the look-ahead: a BE VM may run only until
    its cores are needed by a reservation (at most ``booking.lookahead_max_hours``).

    The acting user must belong to the group (admins: any); ``platform_value`` and ``member`` left out are the
    image's PfV and the user's membership (``authz.priority_inputs``)."""
    owner = check_name("owner", owner)
    cores_n = whole("cores", cores, 1, MAX_CORES)
    ram_n = whole("ram_mb", ram_mb, 1, MAX_RAM_MB)
    disk_n = whole("disk_gb", disk_gb, 0, MAX_DISK_GB) if disk_gb is not None else None
    user_name = check_name("user", user) if user is not None else None
    keep_n = flag_value("keep_disk", keep_disk)
    db.require_schema(url)
    rng = random.Random()  # noqa: S311 - spreads tie-breaks after a lost race; not a secret
    for attempt in range(50):
        with db.read_direct(url) as q:
            plan = _decide_best_effort(q, owner, cores_n, ram_n, disk_n, hours, platform_value,
                                       register_as_slave, member, image, user_name, dry_run,
                                       tie_break="random" if attempt else "lowest-id", rng=rng, explain=explain,
                                       keep_disk=keep_n)
        if dry_run or plan.refused:
            return plan.answer
        try:
            return commit_claim(plan, url)
        except StaleClaim:
            continue
        except IntegrityError as err:
            if "uq_instances_live_keep" not in str(err):
                raise
            raise ConflictError("keep_disk: another VM keeps this user's disk of that image (it started just"
                                " now)") from None
    raise CapacityError("the slaves kept changing under this request: gave up after 50 attempts")


def _decide_best_effort(q: db.Direct, owner: str, cores_n: int, ram_n: int, disk_n: int | None, hours: Any,
                        platform_value: Any, register_as_slave: Any, member: Any, image: str | None,
                        user_name: str | None, dry_run: bool, tie_break: str, rng: random.Random,
                        explain: bool = True, keep_disk: int = 0) -> ClaimPlan:
    settings = db.load_settings(q)
    hours_n = whole("hours", hours, 1, settings.booking.lookahead_max_hours)
    now = config.now()
    actor = acting.current()
    _, asked = _priority_of(0 if platform_value is None else platform_value, register_as_slave, ram_n, hours_n * 60,
                            0 if member is None else member, settings)  # every field checked before the database is
    group_id = group_ref(q, owner)
    authz.check_request(q, actor, group_id, owner, user_name)
    if not actor.is_admin:
        user_name = actor.name
    img = image_ref(q, image)
    disks.check_image_for_group(q, img[0] if img else None, group_id, owner, image)
    if keep_disk and (img is None or user_name is None):
        raise ValidationError("keep_disk", "a disk is kept per user and image: name the image (and, as an admin,"
                                           " the user)")
    user_id = authz.user_id_of(q, user_name) if user_name is not None else None
    if keep_disk:
        keeper = disks.live_keeper(q, user_id, img[0] if img else None)
        if keeper is not None:
            raise ConflictError(f"keep_disk: instance {keeper} already keeps {user_name}'s disk of image {image}:"
                                " one VM at a time starts from a kept disk")
    pfv, mon = authz.priority_inputs(q, actor, group_id, img[0] if img else None, user_id, platform_value, member)
    ras, ras_warning = lending.effective_ras(q, user_id, asked.register_as_slave, settings.decline_limit)
    pi, inputs = _priority_of(_bounded_pfv(pfv, platform_value, settings), ras, ram_n,
                              hours_n * 60, mon, settings)
    disk = disk_n if disk_n is not None else (img[1] if img else 0)
    demand = placement.Demand(cores_n, ram_n, disk)
    answer: dict[str, Any] = {"owner": owner, "kind": "BE", "priority": round(pi, 6), "cores": cores_n,
                              "ram_mb": ram_n, "disk_gb": disk, "hours_requested": hours_n, "dry_run": dry_run,
                              "register_as_slave": inputs.register_as_slave, "id": None}
    plan = ClaimPlan(answer, group_id, img[0] if img else None, user_name, demand, pi,
                     settings.mac_prefix, hours=hours_n, keep_disk=keep_disk)
    if keep_disk:
        answer["keep_disk"] = True
    if ras_warning:
        answer["warning"] = ras_warning
    # The look-ahead (SPEC §4): the longest span, up to the hours asked, over which the VM fits on a slave beside
    # every commitment there (seats of accepted reservations, VMs until their ends) except best-effort VMs of
    # strictly lower priority, which it may suspend. With no reservation ahead, commitments only shrink over
    # time, so a slave with room now has it for every hour asked: the database chooses it (an index walk).
    horizon = now + timedelta(hours=settings.booking.lookahead_max_hours)
    if not bookings_between(q, now, horizon, now):
        chosen = choose_slave(q, demand, settings.placement_policy, tie_break, rng, explain)
        answer["explain"] = chosen.explain()
        if chosen.slave is not None:
            decision = promises.Decision("place", chosen.slave, hours_n)
        else:
            never = promises.impossible(q, cores_n, ram_n, disk)
            if never:
                return _refused(plan, never)
            pre = preempt.plan(slave_states(q), demand, pi, running_be(q), settings.placement_policy)
            decision = promises.Decision(pre.action if pre.action == "suspend" else "wait", pre.slave, hours_n,
                                         pre.victims, pre.reason)
    else:
        never = promises.impossible(q, cores_n, ram_n, disk)
        if never:
            return _refused(plan, never)
        view = promises.view(q, now, settings.booking.lookahead_max_hours)
        running = view.running()
        decision = promises.choose_best_effort(view, slave_states(q), demand, pi, hours_n,
                                               settings.placement_policy, running)
    answer["hours_granted"] = decision.hours if decision.action != "wait" else 0
    if decision.action != "place" or decision.slave is None:
        answer.update(state="waiting", decision=decision.action, reason=decision.reason)
        if decision.slave is not None:
            answer.update(slave=decision.slave.name, suspend=[vm.id for vm in decision.victims])
        return plan
    plan.slave = decision.slave
    plan.ends = now + timedelta(hours=decision.hours)
    answer.update(state="pending", decision="place", slave=decision.slave.name, ends_at=iso(plan.ends),
                  hours_granted=decision.hours,
                  reason="" if decision.hours == hours_n else
                  f"granted {decision.hours} of {hours_n} hours: the cores are committed after that")
    return plan


def _refused(plan: ClaimPlan, reason: str) -> ClaimPlan:
    """A request that can never fit: refused at submission, nothing written (SPEC §3)."""
    plan.answer.update(state="refused", decision="refused", reason=reason, hours_granted=0)
    plan.refused = True
    return plan

