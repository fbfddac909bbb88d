"""Commitments per slave over time: where each reserved seat will run, and how long a best-effort VM may.

SPEC §4: a reservation is a promise. Counting reserved cores against the pool's total is not enough to
keep it: a block of seats must also be *placed*, seat by seat, on slaves whose cores and RAM are not
promised to other seats at the same time, and a best-effort VM must not sit in the cores a seat will
need before the VM ends. This module answers both, without I/O:

- :func:`assign_seats` places every seat of a set of reservations on the slaves, in time order, as the
  dispatcher will: at each instant, seats that end leave first (windows are half-open), then seats
  that start are placed largest first (then in service order: their reservation's, then the seat's
  number), each on the slave it fits *best* (fewest free cores left, then fewest free MB, then lowest
  id), counting only
  other seats: best-effort VMs are suspended for a seat at its start (§4), so they never decide where
  a seat goes. The function is deterministic, so admission (which refuses a block that cannot be
  placed at some instant of its window) and the dispatcher (which launches each seat on its assigned
  slave) agree; while no slave has lost capacity, every seat of every accepted reservation has room
  on its slave once the best-effort VMs there are suspended.
- :class:`Ledger` holds, per slave, the step functions of committed cores and RAM from now on: the
  seats assigned to it over their windows and the best-effort VMs on it until their ends (a queued
  request enters the ledger when the dispatcher decides to launch it, with the end it gets then).
  :meth:`Ledger.hours` is the best-effort look-ahead on one slave: the whole hours (0..N) a VM may run
  there before the slave's commitments would exceed its totals.

Bookings never span two days (a window lies within one day's hours), so the caller assigns one day at
a time; the ledger takes windows of any day.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

HOUR = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Host:
    """A slave as commitments see it: its totals (used capacity is what the windows say)."""

    id: int
    name: str
    cores: int
    ram_mb: int
    until: datetime | None = None  # a lent PC (SPEC §9): its lending ends then; a seat must end by it

    def covers(self, seat: Seat) -> bool:
        """Whether a seat may run here: a lab slave always, a lent PC when its lending covers the seat's window."""
        return self.until is None or seat.end <= self.until


@dataclass(frozen=True, slots=True)
class Seat:
    """Seat ``seat`` (0-based) of reservation ``reservation``: (cores, RAM) over ``[start, end)``."""

    reservation: int
    seat: int
    cores: int
    ram_mb: int
    start: datetime
    end: datetime
    order: tuple[Any, ...] = ()  # the reservation's service-order key: lower is placed first

    @property
    def key(self) -> tuple[int, int]:
        return (self.reservation, self.seat)


@dataclass(frozen=True)
class Assignment:
    """Where each seat runs (``slots``: seat key → host id); ``failed`` is the first seat with no room."""

    slots: dict[tuple[int, int], int]
    failed: Seat | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.failed is None


def seats_of(reservation: int, seats: int, cores: int, ram_mb: int, start: datetime, end: datetime,
             order: tuple[Any, ...] = ()) -> list[Seat]:
    return [Seat(reservation, n, cores, ram_mb, start, end, order) for n in range(seats)]


def assign_seats(hosts: Sequence[Host], seats: Iterable[Seat],
                 pinned: Mapping[tuple[int, int], int] | None = None) -> Assignment:
    """Place ``seats`` on ``hosts`` over time (see the module docs); stops at the first seat with no room.

    ``pinned`` seats (key → host id) are where they already run: they take their room on that host whatever
    the best fit would say, so the assignment never disagrees with what runs. A lent PC takes a seat only when
    its lending covers the seat's whole window, and only where no slave of the lab's own has room."""
    free = {h.id: [h.cores, h.ram_mb] for h in hosts}
    by_id = {h.id: h for h in hosts}
    ordered = sorted(seats, key=lambda s: (s.start, -s.cores, -s.ram_mb, s.order, s.reservation, s.seat))
    ends: list[tuple[datetime, int, int, int, int]] = []  # a heap: (end, n, host, cores, ram)
    slots: dict[tuple[int, int], int] = {}
    for n, seat in enumerate(ordered):
        # Seats that ended by this start give their room back first (half-open windows).
        while ends and ends[0][0] <= seat.start:
            _, _, host, cores, ram = heapq.heappop(ends)
            free[host][0] += cores
            free[host][1] += ram
        best: tuple[Any, ...] | None = None
        pin = pinned.get(seat.key) if pinned else None
        if pin is not None and pin in free:
            best = (0, 0, pin)
        for host_id, (cores, ram) in free.items() if best is None else ():
            host = by_id[host_id]
            if cores >= seat.cores and ram >= seat.ram_mb and host.covers(seat):
                rank = (host.until is not None, cores - seat.cores, ram - seat.ram_mb, host_id)
                if best is None or rank < best:
                    best = rank
        if best is None:
            busy = sum(e[3] for e in ends)
            total = sum(h.cores for h in hosts)
            largest = max((h.cores for h in hosts), default=0)
            reason = (f"seat {seat.seat + 1} of reservation {seat.reservation} ({seat.cores} cores, {seat.ram_mb} MB)"
                      f" finds no slave with room at {seat.start:%Y-%m-%d %H:%M}: {busy} of {total} cores are"
                      f" held by seats then (largest slave {largest} cores)")
            return Assignment(slots, seat, reason)
        host_id = best[-1]
        free[host_id][0] -= seat.cores
        free[host_id][1] -= seat.ram_mb
        slots[seat.key] = host_id
        heapq.heappush(ends, (seat.end, n, host_id, seat.cores, seat.ram_mb))
    return Assignment(slots)


@dataclass
class _Window:
    start: datetime
    end: datetime
    cores: int
    ram_mb: int
    tag: Any = None  # what put it there (for excluding preemptible VMs)


class Ledger:
    """Committed cores and RAM per slave from ``now`` on (see the module docs)."""

    def __init__(self, hosts: Iterable[Host], now: datetime) -> None:
        self.now = now
        self.hosts = {h.id: h for h in hosts}
        self.windows: dict[int, list[_Window]] = {h: [] for h in self.hosts}

    def add(self, host_id: int | None, start: datetime, end: datetime | None, cores: int, ram_mb: int,
            tag: Any = None) -> None:
        """Commit ``cores``/``ram_mb`` on a host over ``[start, end)`` (``end`` None: for ever)."""
        if host_id not in self.windows:
            return
        start = max(start, self.now)
        end = end if end is not None else datetime.max
        if end > start:
            self.windows[host_id].append(_Window(start, end, cores, ram_mb, tag))

    def remove(self, tag: Any) -> None:
        for windows in self.windows.values():
            windows[:] = [w for w in windows if w.tag != tag]

    def free_until(self, host_id: int, cores: int, ram_mb: int, ignore: Any = None) -> datetime | None:
        """The first instant from now at which ``cores``/``ram_mb`` more would exceed the host's totals
        (``self.now`` when they do not fit now; None when they fit for ever). Windows whose tag
        ``ignore`` accepts (a callable) are left out: VMs the caller may suspend."""
        host = self.hosts.get(host_id)
        if host is None or cores > host.cores or ram_mb > host.ram_mb:
            return self.now
        events: dict[datetime, list[int]] = {}
        for w in self.windows[host_id]:
            if ignore is not None and ignore(w.tag):
                continue
            for at, sign in ((w.start, 1), (w.end, -1)):
                delta = events.setdefault(at, [0, 0])
                delta[0] += sign * w.cores
                delta[1] += sign * w.ram_mb
        level_c = level_r = 0
        for at in sorted(events):
            level_c += events[at][0]
            level_r += events[at][1]
            if level_c + cores > host.cores or level_r + ram_mb > host.ram_mb:
                return max(at, self.now)
        return None

    def hours(self, host_id: int, cores: int, ram_mb: int, max_hours: int, ignore: Any = None) -> int:
        """Whole hours (0..``max_hours``) a VM of ``cores``/``ram_mb`` may run on the host from now."""
        until = self.free_until(host_id, cores, ram_mb, ignore)
        if until is None:
            return max_hours
        return max(0, min(max_hours, int((until - self.now) // HOUR)))

    def committed_at(self, host_id: int, at: datetime) -> tuple[int, int]:
        """Cores and RAM committed on a host at instant ``at``."""
        windows = [w for w in self.windows.get(host_id, ()) if w.start <= at < w.end]
        return sum(w.cores for w in windows), sum(w.ram_mb for w in windows)
