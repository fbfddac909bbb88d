"""Advance reservations (SPEC §4): a time-sliced calendar of reserved cores over a pool of cores.

A :class:`Booking` reserves ``cores`` over the half-open window ``[start, end)``. Datetimes are naive,
in lab local time (all hosts agree on it through NTP). Nothing here does I/O: the caller loads the
bookings, asks :func:`admit`, and applies the returned :class:`Admission` in one transaction.

Policy (:class:`BookingPolicy`, defaults from the seed system): bookable from the next day, inside
09:00–17:00 of one day, at most 4 hours, at most 14 days ahead. :func:`check_request_policy` says
which rule a request breaks, in words an admin can act on.

How :func:`admit` decides
-------------------------
Service order is :func:`~vcl_sched.priority.service_order_key`: higher priority first, then the
client that registers as a slave, then first come (lower ``seq``). The new booking is the latest
comer. A booking is *pinned* when it is ``fixed``, has already started (``start <= now``) or comes
before the new booking in service order; every other existing booking is *movable*.

A *plan* for a candidate start ``s`` of the new booking places, on the new booking's day:

1. every pinned booking at its own window;
2. the new booking at the earliest window ``>= s`` (stepping by ``policy.move_step``) where the
   cores already placed plus its own never exceed ``capacity``;
3. each movable booking, in service order, the same way from its current start.

A window other than a booking's current one must satisfy the policy's day hours, its duration limit
and its horizon (not ``lead_days``: an accepted booking is not refused for being close). Moving never
leaves the day, since the window must end by ``day_end`` of the same day, so only bookings of that
day take part, whatever the size of ``existing``.

Plans are all-or-none: if a movable booking has no window within policy, the plan fails and the next
candidate is where the new booking landed in that plan plus one step. If the new booking itself has no
window left, it is refused, and the reason names the busiest slice of its day.

Why a booking that comes before the new one never moves: pinning it says so, and pinning changes
nothing while the calendar is within capacity (as :func:`admit` keeps it). By induction over service
order, suppose every booking ahead of B kept its window. The set placed before B is then a subset of
the existing bookings at their existing windows, which fit together with B (all of ``existing`` fits),
so B fits at its own window and keeps it. Pinning keeps the guarantee even when the pool has shrunk
under the bookings: a new request never shuffles the bookings that outrank it.

Fast path: if the new booking fits at its requested window beside every existing booking, the plan
for ``s = new.start`` moves nothing (each booking's placed set is a subset of a feasible set), so
:func:`admit` accepts it after one sweep over the day's bookings.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from itertools import accumulate
from typing import Any

from vcl_sched.errors import ValidationError
from vcl_sched.priority import same_priority, service_order_key

MAX_LOOKAHEAD_HOURS = 5
HOUR = timedelta(hours=1)


# --------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class BookingPolicy:
    """When reservations may be booked and how far :func:`admit` may move them.

    Errors name the setting as the site configuration spells it (``booking.<field>``), so a bad
    setting is easy to find.
    """

    lead_days: int = 1  # bookable from the next day: start.date() >= now.date() + lead_days
    day_start: time = time(9, 0)  # the window must lie within [day_start, day_end] of one day
    day_end: time = time(17, 0)
    max_hours: float = 4  # duration limit
    horizon_days: int = 14  # start.date() <= now.date() + horizon_days
    move_step: timedelta = timedelta(hours=1)  # how far a conflicting booking is moved at a time
    lookahead_max_hours: int = 5  # best-effort look-ahead limit N, 1..5

    def __post_init__(self) -> None:
        _check_int_setting("booking.lead_days", self.lead_days, 0, None)
        _check_int_setting("booking.horizon_days", self.horizon_days, self.lead_days, None)
        _check_int_setting("booking.lookahead_max_hours", self.lookahead_max_hours, 1, MAX_LOOKAHEAD_HOURS)
        for name in ("day_start", "day_end"):
            value = getattr(self, name)
            if not isinstance(value, time) or value.tzinfo is not None:
                raise ValidationError(f"booking.{name}", f"must be a naive time of day, got {value!r}")
        if self.day_start >= self.day_end:
            raise ValidationError("booking.day_end", f"must be after day_start {self.day_start:%H:%M}")
        if not _is_real(self.max_hours) or not math.isfinite(self.max_hours) or self.max_hours <= 0:
            raise ValidationError(
                "booking.max_hours", f"must be a finite number of hours > 0, got {self.max_hours!r}"
            )
        if not isinstance(self.move_step, timedelta) or self.move_step <= timedelta(0):
            raise ValidationError("booking.move_step", f"must be a positive duration, got {self.move_step!r}")

    def day_bounds(self, day: date) -> tuple[datetime, datetime]:
        """The bookable part of ``day``: ``[day_start, day_end]`` as datetimes."""
        return datetime.combine(day, self.day_start), datetime.combine(day, self.day_end)


@dataclass(frozen=True, slots=True)
class Booking:
    """Cores reserved over ``[start, end)`` with the priority that orders conflicts."""

    id: int | str
    cores: int
    start: datetime
    end: datetime
    priority: float
    register_as_slave: int = 0
    seq: int = 0  # submission order (first come first served)
    fixed: bool = False  # already started or otherwise immovable: never moved by admit()


@dataclass(frozen=True)
class Move:
    """An existing booking that must move (always later, same day) for a new one to be accepted."""

    id: int | str
    old_start: datetime
    old_end: datetime
    new_start: datetime
    new_end: datetime
    reason: str


@dataclass(frozen=True)
class Admission:
    """The answer of :func:`admit`; applying it means booking the window and every move together."""

    accepted: bool
    start: datetime | None  # the new booking's final window (possibly moved later); None if refused
    end: datetime | None
    moves: tuple[Move, ...]  # existing bookings that must move (later) for this admission
    reason: str  # why moved / why refused ("" if accepted unchanged)


# ---------------------------------------------------------------------------------------- validation


def _is_real(value: Any) -> bool:
    """True for int/float but not bool: ``True`` hours or cores is a mistake, not 1."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_int_setting(name: str, value: Any, minimum: int, maximum: int | None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(name, f"must be a whole number, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ValidationError(name, f"must be {allowed}, got {value}")


def _check_cores(cores: Any) -> None:
    if not isinstance(cores, int) or isinstance(cores, bool) or cores < 1:
        raise ValidationError("cores", f"must be a whole number >= 1, got {cores!r}")


def _check_hours(hours: Any, policy: BookingPolicy) -> float:
    if not _is_real(hours) or not math.isfinite(hours) or hours <= 0:
        raise ValidationError("hours", f"must be a finite number of hours > 0, got {hours!r}")
    if hours > policy.max_hours:
        raise ValidationError("hours", f"at most {policy.max_hours:g} hours, got {hours:g}")
    return float(hours)


def _hm(moment: datetime | time) -> str:
    return moment.strftime("%H:%M")


def _outside_day_hours(start: datetime, end: datetime, policy: BookingPolicy) -> str | None:
    """Why ``[start, end)`` is not inside the bookable hours of ``start``'s day, or None."""
    opens, closes = policy.day_bounds(start.date())
    if start < opens or end > closes:
        return (
            f"{_hm(start)}–{_hm(end)} must lie between {_hm(policy.day_start)} and "
            f"{_hm(policy.day_end)} on one day"
        )
    return None


def _lead_text(lead_days: int) -> str:
    return {0: "today", 1: "next day"}.get(lead_days, f"{lead_days} days ahead")


def check_request_policy(start: datetime, hours: float, now: datetime, policy: BookingPolicy) -> None:
    """Refuse a reservation request that breaks the booking policy, naming the option to change.

    Raises ValidationError("hours", ...) for a duration that is not finite, not > 0 or too long, and
    ValidationError("start", ...) for a start too soon, beyond the horizon or outside the day hours.
    """
    if not isinstance(start, datetime) or start.tzinfo is not None:
        raise ValidationError("start", f"must be a naive date and time in lab local time, got {start!r}")
    hours = _check_hours(hours, policy)
    first = now.date() + timedelta(days=policy.lead_days)
    if start.date() < first:
        raise ValidationError("start", f"bookable from {first.isoformat()} ({_lead_text(policy.lead_days)})")
    if start < now:
        raise ValidationError("start", f"{start:%Y-%m-%d %H:%M} is in the past")
    last = now.date() + timedelta(days=policy.horizon_days)
    if start.date() > last:
        raise ValidationError(
            "start", f"no later than {last.isoformat()} ({policy.horizon_days}-day horizon)"
        )
    outside = _outside_day_hours(start, start + timedelta(hours=hours), policy)
    if outside:
        raise ValidationError("start", outside)


# ------------------------------------------------------------------------------------- load profile


def peak_cores(bookings: Iterable[Booking], start: datetime, end: datetime) -> int:
    """Most cores reserved at any instant of ``[start, end)`` (0 for an empty interval).

    A sweep over start/end events, O(k log k); at equal times ends sort before starts (negative
    deltas first), which is what half-open windows mean: back-to-back bookings do not overlap.
    """
    events: list[tuple[datetime, int]] = []
    for b in bookings:
        if b.start < end and b.end > start:
            events.append((max(b.start, start), b.cores))
            events.append((b.end, -b.cores))
    events.sort()
    peak = level = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return peak


class _Profile:
    """Reserved cores as a step function: ``levels[i]`` on ``[times[i], times[i+1])``, 0 outside.

    Planning adds one booking at a time and asks for the peak over a window; with the levels in a
    plain list both are a bisect plus a slice, so the inner loops run in C.
    """

    __slots__ = ("levels", "times")

    def __init__(self, times: list[datetime], levels: list[int]) -> None:
        self.times = times
        self.levels = levels

    @classmethod
    def of(cls, windows: Iterable[tuple[datetime, datetime, int]]) -> _Profile:
        deltas: dict[datetime, int] = {}
        for start, end, cores in windows:
            deltas[start] = deltas.get(start, 0) + cores
            deltas[end] = deltas.get(end, 0) - cores
        times = sorted(deltas)
        return cls(times, list(accumulate(deltas[t] for t in times)))

    def copy(self) -> _Profile:
        return _Profile(self.times.copy(), self.levels.copy())

    def peak(self, start: datetime, end: datetime) -> int:
        first = max(bisect_right(self.times, start) - 1, 0)
        return max(self.levels[first : bisect_left(self.times, end)], default=0)

    def add(self, start: datetime, end: datetime, cores: int) -> None:
        i = self._split(start)
        j = self._split(end)
        self.levels[i:j] = [level + cores for level in self.levels[i:j]]

    def _split(self, moment: datetime) -> int:
        """Index of a breakpoint at ``moment``, inserting one (same level) if needed."""
        i = bisect_left(self.times, moment)
        if i == len(self.times) or self.times[i] != moment:
            self.times.insert(i, moment)
            self.levels.insert(i, self.levels[i - 1] if i else 0)
        return i

    def busiest(self, start: datetime, end: datetime) -> tuple[int, datetime, datetime]:
        """The highest level in ``[start, end)`` and the first maximal run of time it holds."""
        i = bisect_right(self.times, start) - 1
        j = bisect_left(self.times, end)
        cuts = [start, *self.times[i + 1 : j], end]
        levels = [self.levels[i] if i >= 0 else 0, *self.levels[i + 1 : j]]
        peak = max(levels)
        first = last = levels.index(peak)
        while last + 1 < len(levels) and levels[last + 1] == peak:
            last += 1
        return peak, cuts[first], cuts[last + 1]


# -------------------------------------------------------------------------------------------- admit


def _order(b: Booking) -> tuple[float, int, int]:
    return service_order_key(b.priority, b.register_as_slave, b.seq)


def _fmt_delta(delta: timedelta) -> str:
    """``1 h``, ``30 min``, ``1 h 30 min``: how far a booking moved, to the minute."""
    hours, minutes = divmod(round(delta.total_seconds() / 60), 60)
    parts = [f"{hours} h"] if hours else []
    if minutes or not hours:
        parts.append(f"{minutes} min")
    return " ".join(parts)


def _fmt_priorities(high: float, low: float) -> str:
    """``8.79 > 8.51``, with more decimals when two decimals would print the same number."""
    for decimals in range(2, 10):
        text_high, text_low = f"{high:.{decimals}f}", f"{low:.{decimals}f}"
        if text_high != text_low:
            break
    return f"{text_high} > {text_low}"


def _why_outranks(new: Booking, other: Booking) -> str:
    if same_priority(new.priority, other.priority):
        return f"equal priority {new.priority:.2f}, registers as a slave"
    return f"priority {_fmt_priorities(new.priority, other.priority)}"


@dataclass(frozen=True)
class _Plan:
    """One plan: where the new booking landed, the moves made, and the booking that did not fit."""

    landed: datetime | None  # None: the new booking has no window within policy from the candidate
    moved: tuple[tuple[Booking, datetime], ...] = ()
    blocked: Booking | None = None  # a movable booking with no window within policy: plan failed


class _Planner:
    """The plans of one :func:`admit` call; only the new booking's day takes part."""

    def __init__(
        self, new: Booking, day: list[Booking], capacity: int, now: datetime, policy: BookingPolicy
    ) -> None:
        self.new, self.day, self.capacity, self.now, self.policy = new, day, capacity, now, policy
        new_order = _order(new)
        pinned: list[Booking] = []
        self.movable: list[Booking] = []
        for b in sorted(day, key=_order):  # stable: equal keys keep the caller's order
            if b.fixed or b.start <= now or _order(b) <= new_order:
                pinned.append(b)
            else:
                self.movable.append(b)
        self.pinned_lower_fixed = any(_order(b) > new_order for b in pinned)
        self.base = _Profile.of((b.start, b.end, b.cores) for b in pinned)
        self.horizon = now.date() + timedelta(days=policy.horizon_days)

    def _may_move(self, b: Booking) -> bool:
        """Whether ``b``'s window may change at all: same duration and date, so check them once."""
        return b.end - b.start <= timedelta(hours=self.policy.max_hours) and b.start.date() <= self.horizon

    def _earliest(self, profile: _Profile, b: Booking, start_from: datetime) -> datetime | None:
        """Earliest start ``>= start_from`` on ``b``'s grid where ``b`` fits, or None within policy.

        ``b``'s current window needs no policy check (it was accepted); any other window must end by
        ``day_end`` of the same day and start no earlier than ``day_start``.
        """
        duration, step = b.end - b.start, self.policy.move_step
        opens, closes = self.policy.day_bounds(b.start.date())
        may_move = self._may_move(b)
        t = start_from
        while True:
            moved = t != b.start
            if moved and (not may_move or t + duration > closes):
                return None
            if (not moved or t >= opens) and profile.peak(t, t + duration) + b.cores <= self.capacity:
                return t
            t += step

    def plan(self, s: datetime) -> _Plan:
        profile = self.base.copy()
        new = self.new
        landed = self._earliest(profile, new, s)
        if landed is None:
            return _Plan(None)
        profile.add(landed, landed + (new.end - new.start), new.cores)
        moved: list[tuple[Booking, datetime]] = []
        for b in self.movable:
            t = self._earliest(profile, b, b.start)
            if t is None:
                return _Plan(landed, tuple(moved), b)
            profile.add(t, t + (b.end - b.start), b.cores)
            if t != b.start:
                moved.append((b, t))
        return _Plan(landed, tuple(moved))

    def decide(self) -> Admission:
        first: _Plan | None = None
        s = self.new.start
        while True:
            plan = self.plan(s)
            if first is None:
                first = plan
            if plan.landed is None:
                return self._refused(first)
            if plan.blocked is None:
                return self._accepted(plan, first)
            s = plan.landed + self.policy.move_step

    def _accepted(self, plan: _Plan, first: _Plan) -> Admission:
        new = self.new
        assert plan.landed is not None and first.landed is not None
        moves = tuple(self._move(b, t) for b, t in plan.moved)
        reason = ""
        if plan.landed != new.start:
            reason = f"moved from {_hm(new.start)} to {_hm(plan.landed)}: "
            if first.landed != new.start:
                whom = "higher-priority or fixed" if self.pinned_lower_fixed else "higher-priority"
                peak = self.base.peak(new.start, new.end)
                reason += f"{peak} of {self.capacity} cores reserved by {whom} bookings"
            else:
                reason += self._blocked_text(first)
        return Admission(True, plan.landed, plan.landed + (new.end - new.start), moves, reason)

    def _move(self, b: Booking, new_start: datetime) -> Move:
        why = f"for reservation {self.new.id} ({_why_outranks(self.new, b)})"
        return Move(
            b.id,
            b.start,
            b.end,
            new_start,
            new_start + (b.end - b.start),
            f"moved {_fmt_delta(new_start - b.start)} later {why}",
        )

    def _blocked_text(self, plan: _Plan) -> str:
        assert plan.blocked is not None and plan.landed is not None
        return (
            f"lower-priority reservation {plan.blocked.id} could not move later within policy "
            f"to make room at {_hm(plan.landed)}"
        )

    def _refused(self, first: _Plan) -> Admission:
        new = self.new
        _, closes = self.policy.day_bounds(new.start.date())
        everyone = _Profile.of((b.start, b.end, b.cores) for b in self.day)
        peak, since, until = everyone.busiest(new.start, max(closes, new.end))
        reason = (
            f"no window within policy: {peak} of {self.capacity} cores reserved "
            f"{_hm(since)}–{_hm(until)} on {new.start.date().isoformat()} (needs {new.cores})"
        )
        if first.blocked is not None:
            reason += f"; {self._blocked_text(first)}"
        return Admission(False, None, None, (), reason)


def _check_new(new: Booking, capacity: int, now: datetime, policy: BookingPolicy) -> None:
    _check_cores(new.cores)
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 0:
        raise ValidationError("capacity", f"must be a whole number of cores >= 0, got {capacity!r}")
    if not new.end > new.start:
        raise ValidationError("end", f"must be after start {new.start:%Y-%m-%d %H:%M}")
    check_request_policy(new.start, (new.end - new.start) / HOUR, now, policy)


def admit(
    new: Booking, existing: Sequence[Booking], capacity: int, now: datetime, policy: BookingPolicy
) -> Admission:
    """Decide whether ``new`` can be booked over a pool of ``capacity`` cores; see the module docs.

    Raises ValidationError for a malformed request (``cores`` < 1, ``end`` not after ``start``, or a
    window that breaks :func:`check_request_policy`); a request that is valid but cannot fit is
    refused with a reason instead. ``existing`` must not contain ``new``; ids are not checked for
    uniqueness (that is the database's job). Existing bookings with equal service-order keys keep
    the order in which they are given.
    """
    _check_new(new, capacity, now, policy)
    if new.cores > capacity:
        return Admission(False, None, None, (), f"needs {new.cores} cores but the pool has only {capacity}")
    midnight = datetime.combine(new.start.date(), time.min)
    next_midnight = midnight + timedelta(days=1)
    day = [b for b in existing if b.start < next_midnight and b.end > midnight]
    if peak_cores(day, new.start, new.end) + new.cores <= capacity:
        return Admission(True, new.start, new.end, (), "")
    return _Planner(new, day, capacity, now, policy).decide()


# -------------------------------------------------------------------------------------- best effort


def best_effort_hours(
    cores: int,
    now: datetime,
    bookings: Sequence[Booking],
    capacity: int,
    be_running: Sequence[tuple[int, datetime]],
    policy: BookingPolicy,
) -> int:
    """How many whole hours (0..``lookahead_max_hours``) a best-effort VM of ``cores`` may run now.

    The largest h such that over ``[now, now + h hours)`` the reserved cores, the cores of running BE
    VMs (each ``(cores, ends)`` counted while ``ends`` is later) and ``cores`` never exceed
    ``capacity``. A BE VM must be gone before a reservation needs its cores, so the offer stops at
    the first hour that would collide; 0 means it cannot start now.
    """
    _check_cores(cores)
    if cores > capacity:
        return 0
    until = now + timedelta(hours=policy.lookahead_max_hours)
    windows = [(max(b.start, now), b.end, b.cores) for b in bookings if b.start < until and b.end > now]
    windows += [(now, ends, be_cores) for be_cores, ends in be_running if ends > now]
    profile = _Profile.of(windows)
    hours = 0
    for h in range(1, policy.lookahead_max_hours + 1):
        if profile.peak(now, now + h * HOUR) + cores > capacity:
            break
        hours = h
    return hours
