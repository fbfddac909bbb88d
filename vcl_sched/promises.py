"""The lab's commitments read from the database, and the decisions that keep them (SPEC §3–§4).

One source of truth for what the pool has promised: :func:`view` loads the slaves, the accepted and
active reservations (blocks of seats, placed seat by seat with :func:`commitments.assign_seats`) and
every instance that holds cores, into a :class:`View` with a per-slave :class:`commitments.Ledger`.
Reservation admission (``bookings.reserve``), a best-effort request (``bookings.request``), the
dispatcher (``lifecycle.dispatch_plan``) and a launch's claim (``lifecycle.place``) all decide on it:

- :func:`choose_seat_slave`: the slave a reserved seat runs on (its assigned slave; best-effort VMs
  there are suspended to make room, whatever their priority, SPEC §4);
- :func:`choose_best_effort`: where a best-effort VM goes and for how many hours (1..N), so that it never
  sits in cores a seat or a VM it cannot preempt needs before it ends; the VMs to suspend first
  (strictly lower priority, SPEC §3 step 2), or why it waits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import String, bindparam, func, select, type_coerce

from . import db, placement, preempt
from .commitments import Assignment, Host, Ledger, Seat, assign_seats, seats_of
from .models import Instance, InstanceKind, InstanceState, Reservation, ReservationState, Slave
from .priority import same_priority, service_order_key

HOLDS_CAPACITY = (InstanceState.PENDING, InstanceState.RUNNING)  # suspended VMs hold only disk
BOOKED = (ReservationState.ACCEPTED, ReservationState.ACTIVE)
# A day's seats, for the assignment: those that ended today still shaped where the later ones go.
PLACED = (ReservationState.ACCEPTED, ReservationState.ACTIVE, ReservationState.DONE)
HOUR = timedelta(hours=1)


def _day(moment: datetime) -> datetime:
    return datetime.combine(moment.date(), time.min)


_RESERVATIONS = db.Prepared(
    select(Reservation.id, Reservation.seats, Reservation.cores, Reservation.ram_mb, Reservation.start,
           Reservation.end, Reservation.priority, Reservation.register_as_slave)
    .where(Reservation.state.in_([bindparam(f"placed_{s}", s, Reservation.state.type) for s in PLACED]),
           Reservation.end > bindparam("start"), Reservation.start < bindparam("end")))
_HOLDING = db.Prepared(
    select(Instance.id, Instance.slave_id, Instance.cores, Instance.ram_mb, Instance.priority,
           Instance.register_as_slave, type_coerce(Instance.kind, String), Instance.reservation_id, Instance.seat,
           Instance.ends_at, func.coalesce(Instance.requeued_from, Instance.id), type_coerce(Instance.state, String))
    .where(Instance.state.in_([bindparam(f"hold_{s}", s, Instance.state.type) for s in HOLDS_CAPACITY]),
           Instance.slave_id.is_not(None)))
_SLAVES = db.Prepared(select(Slave.id, Slave.name, Slave.cores_total, Slave.ram_mb_total,
                             type_coerce(Slave.status, String), Slave.lend_until, Slave.lend_state).order_by(Slave.id))


def reservation_order(priority: float, register_as_slave: int, rid: int) -> tuple[Any, ...]:
    return service_order_key(priority, register_as_slave, rid)


def day_seats(q: Any, days: Sequence[datetime], extra: Sequence[Seat] = (),
              moved: dict[int, tuple[datetime, datetime]] | None = None) -> list[Seat]:
    """Every seat of the accepted, active and done reservations on the given days (``moved`` windows replace
    the stored ones, as an admission that moves bookings would leave them), plus ``extra``. Done ones count:
    a block that ended at 10:00 decided, while it ran, where the blocks that run past 10:00 went."""
    seats: list[Seat] = list(extra)
    seen: set[int] = set()
    for day in sorted(set(days)):
        rows = _RESERVATIONS.all(q, {"start": day, "end": day + timedelta(days=1)})
        for rid, n, cores, ram, start, end, pri, ras in rows:
            if rid in seen:
                continue
            seen.add(rid)
            if moved and rid in moved:
                start, end = moved[rid]
            seats += seats_of(rid, n, cores, ram, start, end, reservation_order(pri, ras, rid))
    return seats


def hosts_of(q: Any) -> tuple[list[Host], list[Host]]:
    """(slaves that are up, every registered slave of the lab's own) as commitments see them. A lent PC (SPEC §9)
    is up while it is lent, with its lending's end: it takes best-effort VMs, and seats that end by then; what a
    request can never fit is judged on the lab's own slaves (a PC's owner may take it back)."""
    rows = _SLAVES.all(q)
    every = [Host(r[0], r[1], r[2], r[3], r[5] if r[6] is not None else None) for r in rows]
    up_ids = {r[0] for r in rows if r[4] == "up"}
    return [h for h in every if h.id in up_ids], [h for h in every if h.until is None]


@dataclass(frozen=True, slots=True)
class Holder:
    """An instance that holds cores on a slave now."""

    id: int
    slave_id: int
    cores: int
    ram_mb: int
    priority: float
    register_as_slave: int
    kind: str
    reservation: int | None
    seat: int | None
    ends_at: datetime | None
    seq: int
    state: str = "running"

    def running_vm(self) -> preempt.RunningVM:
        return preempt.RunningVM(self.id, self.slave_id, self.cores, self.ram_mb, self.priority,
                                 self.register_as_slave, seq=self.seq, kind=self.kind)


@dataclass
class View:
    now: datetime
    hosts: list[Host]
    assignment: Assignment
    ledger: Ledger
    holders: list[Holder] = field(default_factory=list)
    seats: list[Seat] = field(default_factory=list)

    def running(self) -> list[preempt.RunningVM]:
        """The VMs that run (candidates for suspension): a claimed launch in progress is nobody's victim."""
        return [h.running_vm() for h in self.holders if h.state == InstanceState.RUNNING]

    def seat_slave(self, reservation: int | None, seat: int | None) -> int | None:
        if reservation is None or seat is None:
            return None
        return self.assignment.slots.get((reservation, seat))


def view(q: Any, now: datetime, hours: int, skip: frozenset[int] = frozenset()) -> View:
    """The commitments from ``now`` for ``hours`` ahead (instances in ``skip`` are left out: the dispatcher
    is about to stop them)."""
    up, _ = hosts_of(q)
    until = now + hours * HOUR
    days = []
    day = _day(now)
    while day < until:
        days.append(day)
        day += timedelta(days=1)
    seats = day_seats(q, days)
    holders = [Holder(*row) for row in _HOLDING.all(q) if row[0] not in skip]
    assignment = _assign_by_day(up, seats, _pins(holders))
    ledger = Ledger(up, now)
    for seat in seats:
        host = assignment.slots.get(seat.key)
        if host is not None and seat.end > now and seat.start < until:
            ledger.add(host, seat.start, seat.end, seat.cores, seat.ram_mb, ("seat", seat.key))
    for h in holders:
        if h.kind == InstanceKind.AR and assignment.slots.get((h.reservation, h.seat)) == h.slave_id:
            continue  # its seat's window is on this slave already
        ledger.add(h.slave_id, now, h.ends_at, h.cores, h.ram_mb, ("vm", h.id, h.kind, h.priority))
    return View(now, up, assignment, ledger, holders, seats)


def _pins(holders: Sequence[Holder]) -> dict[tuple[int, int], int]:
    """Seats that hold a slave now (running, or claimed by a launch) are assigned where they are."""
    return {(h.reservation, h.seat): h.slave_id for h in holders
            if h.kind == InstanceKind.AR and h.reservation is not None and h.seat is not None}


@lru_cache(maxsize=64)
def _assign_day(hosts: tuple[Host, ...], seats: tuple[Seat, ...],
                pinned: tuple[tuple[tuple[int, int], int], ...]) -> Assignment:
    """One day's assignment, remembered: it is a pure function of the slaves, the day's seats and where the
    running ones are, and a dispatch run that launches a class asks for the same one once per seat."""
    return assign_seats(hosts, seats, dict(pinned))


def _assign_by_day(hosts: Sequence[Host], seats: Sequence[Seat],
                   pinned: dict[tuple[int, int], int] | None = None) -> Assignment:
    """Seats of different days never meet: assign each day on its own and merge. A day that cannot be
    placed whole (the pool lost capacity) keeps the seats placed before the first that failed."""
    slots: dict[tuple[int, int], int] = {}
    failed, reason = None, ""
    by_day: dict[Any, list[Seat]] = {}
    for seat in seats:
        by_day.setdefault(seat.start.date(), []).append(seat)
    for day in sorted(by_day):
        day_seats_ = sorted(by_day[day], key=lambda s: (s.reservation, s.seat))
        keys = {s.key for s in day_seats_}
        pins = tuple(sorted((k, v) for k, v in (pinned or {}).items() if k in keys))
        result = _assign_day(tuple(hosts), tuple(day_seats_), pins)
        slots.update(result.slots)
        if result.failed is not None and failed is None:
            failed, reason = result.failed, result.reason
    return Assignment(slots, failed, reason)


def check_block(q: Any, new: list[Seat], moved: dict[int, tuple[datetime, datetime]]) -> str:
    """Why the day's seats (with ``new`` and the ``moved`` windows) cannot all be placed, or ""."""
    up, _ = hosts_of(q)
    days = sorted({_day(s.start) for s in new})
    seats = day_seats(q, days, new, moved)
    result = _assign_by_day(up, seats, _pins([Holder(*row) for row in _HOLDING.all(q)]))
    return result.reason if result.failed is not None else ""


def impossible(q: Any, cores: int, ram_mb: int, disk_gb: int = 0, seats: int = 1) -> str:
    """Why a request can never fit the lab as registered (SPEC §3: refused at submission), or ""."""
    _, every = hosts_of(q)
    if not every:
        return "the lab has no slave registered"
    biggest_cores = max(h.cores for h in every)
    biggest_ram = max(h.ram_mb for h in every)
    pool = sum(h.cores for h in every)
    largest = f"the largest slave has {biggest_cores} cores and {biggest_ram} MB; the pool has {pool} cores"
    if cores > biggest_cores:
        return f"cores: {cores} per VM can never fit: {largest}"
    if ram_mb > biggest_ram:
        return f"ram_mb: {ram_mb} MB per VM can never fit: {largest}"
    if disk_gb:
        biggest_disk = max(r[0] for r in _DISKS.all(q))
        if disk_gb > biggest_disk:
            return f"disk_gb: {disk_gb} GB can never fit: the largest slave has {biggest_disk} GB"
    if seats * cores > pool:
        return f"seats: {seats} seats of {cores} cores need {seats * cores} cores: {largest}"
    return ""


_DISKS = db.Prepared(select(Slave.disk_gb_total))


# --- decisions -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    action: str  # "place", "suspend" (victims first, then place on slave), "wait"
    slave: placement.SlaveState | None = None
    hours: int = 0
    victims: tuple[preempt.RunningVM, ...] = ()
    reason: str = ""


def _lower_be(priority: float) -> Any:
    """A ledger filter: best-effort VMs the request may suspend (strictly lower priority)."""
    def ignore(tag: Any) -> bool:
        return (isinstance(tag, tuple) and tag[0] == "vm" and tag[2] == InstanceKind.BE
                and tag[3] < priority and not same_priority(tag[3], priority))
    return ignore


def choose_best_effort(v: View, states: Sequence[placement.SlaveState], demand: placement.Demand, priority: float,
                       max_hours: int, policy: str, running: Sequence[preempt.RunningVM] = (),
                       allow_preempt: bool = True) -> Decision:
    """Where a best-effort VM goes now and for how long (see the module docs)."""
    preemptible = _lower_be(priority)
    hours = {s.id: v.ledger.hours(s.id, demand.cores, demand.ram_mb, max_hours, preemptible)
             for s in states if s.status == "up"}
    best = max(hours.values(), default=0)
    if best == 0:
        return Decision("wait", reason=(f"no slave has {demand.cores} cores and {demand.ram_mb} MB free of reservations"
                                        f" and running VMs for even 1 hour from {v.now:%Y-%m-%d %H:%M}"))
    eligible = [s for s in states if hours.get(s.id, 0) == best]
    chosen = placement.place(eligible, demand, policy)
    if chosen.slave is not None:
        return Decision("place", chosen.slave, best)
    # No slave with the longest window has room now: any slave with a window, then preemption.
    for h in range(best - 1, 0, -1):
        chosen = placement.place([s for s in states if hours.get(s.id, 0) == h], demand, policy)
        if chosen.slave is not None:
            return Decision("place", chosen.slave, h)
    if not allow_preempt:
        return Decision("wait", reason=chosen.reason)
    windows = [s for s in states if hours.get(s.id, 0) >= 1]
    pre = preempt.plan(windows, demand, priority, running, policy)
    if pre.action == "suspend" and pre.slave is not None:
        return Decision("suspend", pre.slave, hours[pre.slave.id], pre.victims, pre.reason)
    return Decision("wait", reason=pre.reason)


def choose_seat_slave(v: View, states: Sequence[placement.SlaveState], demand: placement.Demand,
                      reservation: int | None, seat: int | None, running: Sequence[preempt.RunningVM],
                      policy: str, exclude: frozenset[int] = frozenset(), only_assigned: bool = False) -> Decision:
    """Where a reserved seat runs: its assigned slave, suspending best-effort VMs there as needed (any
    priority); if the pool lost the capacity its assignment counted on, any slave where it fits or
    where suspending best-effort VMs makes room. A seat prelaunched before its window opens
    (``only_assigned``) runs only on its assigned slave: elsewhere the cores may be promised to other blocks
    until then."""
    by_id = {s.id: s for s in states}
    target = v.seat_slave(reservation, seat)
    if target is not None and target not in exclude and target in by_id and by_id[target].status == "up":
        slave = by_id[target]
        fits = slave.free_cores >= demand.cores and slave.free_ram_mb >= demand.ram_mb
        if fits and slave.free_disk_gb >= demand.disk_gb:
            return Decision("place", slave)
        cores, ram, victims = slave.free_cores, slave.free_ram_mb, []
        on_slave = sorted((vm for vm in running if vm.slave_id == target and vm.kind == InstanceKind.BE),
                          key=preempt.victim_order)
        for vm in on_slave:
            if cores >= demand.cores and ram >= demand.ram_mb:
                break
            victims.append(vm)
            cores, ram = cores + vm.cores, ram + vm.ram_mb
        if cores >= demand.cores and ram >= demand.ram_mb and slave.free_disk_gb >= demand.disk_gb:
            names = ", ".join(f"#{vm.id}" for vm in victims)
            return Decision("suspend", slave, 0, tuple(victims),
                            f"reserved seat on {slave.name}: suspending best-effort VM(s) {names}")
    if only_assigned:
        where = by_id[target].name if target in by_id else "its slave"
        return Decision("wait", reason=f"prelaunched seat: {where} has no room for it before the window opens")
    seat_end = next((s.end for s in v.seats if s.key == (reservation, seat)), None)
    short = {h.id for h in v.hosts if h.until is not None and (seat_end is None or seat_end > h.until)}
    others = [s for s in states if s.id not in exclude and s.id not in short]
    pre = preempt.plan(others, demand, math.inf, [vm for vm in running if vm.kind == InstanceKind.BE], policy)
    if pre.action == "place" and pre.slave is not None:
        return Decision("place", pre.slave)
    if pre.action == "suspend" and pre.slave is not None:
        return Decision("suspend", pre.slave, 0, pre.victims, pre.reason)
    return Decision("wait", reason=f"reserved seat: {pre.reason}")
