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

Cost. :func:`admit` reads ``existing`` once to keep the new booking's day (pass only that day's
bookings when you have them: the scan of 10,000 bookings is most of a fast decision). Then:

- if the new booking fits at its requested window beside every existing booking, the plan for
  ``s = new.start`` moves nothing (each booking's placed set is a subset of a feasible set), so it is
  accepted after one O(k log k) sweep over the day, and the same shortcut applies to later candidates;
- within a plan, a movable booking that meets none of the windows the plan added keeps its window
  unchecked (same subset argument), so only the conflicting part of the day costs profile updates;
- a candidate whose landing cannot succeed by counting core-time (``_Planner.cannot_fit``) fails
  without placing anyone. All three shortcuts give exactly the answer the full plan would.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from itertools import accumulate
from typing import Any, NamedTuple

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
            raise ValidationError("booking.max_hours", f"must be a finite number of hours > 0, got {self.max_hours!r}")
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
        return f"{_hm(start)}–{_hm(end)} must lie between {_hm(policy.day_start)} and {_hm(policy.day_end)} on one day"
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
        raise ValidationError("start", f"no later than {last.isoformat()} ({policy.horizon_days}-day horizon)")
    outside = _outside_day_hours(start, start + timedelta(hours=hours), policy)
    if outside:
        raise ValidationError("start", outside)


# ------------------------------------------------------------------------------------- load profile


def peak_cores(bookings: Iterable[Booking], start: datetime, end: datetime) -> int:
    """Most cores reserved at any instant of ``[start, end)`` (0 for an empty interval).

    A sweep over start/end events, O(k log k); at equal times ends sort before starts (negative
    deltas first), which is what half-open windows mean: back-to-back bookings do not overlap.
    Levels never go below 0, so the running maximum needs no floor.
    """
    if not start < end:
        return 0
    overlapping = [b for b in bookings if b.start < end and b.end > start]
    # Ends at or after ``end`` cannot raise the peak (every start inside is earlier), so drop them.
    events = [(b.start if b.start > start else start, b.cores) for b in overlapping]
    events += [(b.end, -b.cores) for b in overlapping if b.end < end]
    events.sort()
    return max(accumulate(delta for _, delta in events), default=0)


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

    def add(self, start: Any, end: Any, cores: int) -> None:
        times, levels = self.times, self.levels
        i = bisect_left(times, start)
        if i == len(times) or times[i] != start:  # split the segment holding ``start``
            times.insert(i, start)
            levels.insert(i, levels[i - 1] if i else 0)
        j = bisect_left(times, end, i)
        if j == len(times) or times[j] != end:  # j > i here, so levels[j - 1] exists
            times.insert(j, end)
            levels.insert(j, levels[j - 1])
        levels[i:j] = [level + cores for level in levels[i:j]]

    def integral(self, start: Any, end: Any) -> int:
        """Core-time (cores × time units) reserved over ``[start, end)``."""
        i = max(bisect_right(self.times, start) - 1, 0)
        total = 0
        for k in range(i, len(self.times) - 1):
            lo, hi = max(self.times[k], start), min(self.times[k + 1], end)
            if hi <= lo:
                if self.times[k] >= end:
                    break
                continue
            total += self.levels[k] * (hi - lo)
        return total

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


_TICK = timedelta(microseconds=1)  # the planner's unit: exact integer times, fast to compare


class _Slot(NamedTuple):
    """A booking of the planned day, its times as integer microseconds since that day's midnight.

    A NamedTuple rather than a frozen dataclass: planning builds hundreds per call, and a tuple is
    several times cheaper to construct.
    """

    booking: Booking
    cores: int
    start: int
    end: int
    opens: int  # day_start of the booking's own day: a moved window may not start earlier
    closes: int  # day_end of the booking's own day: a moved window may not end later
    may_move: bool  # duration and date allow a moved window at all (they never change with a move)


@dataclass(frozen=True)
class _Plan:
    """One plan: where the new booking landed, the moves made, and the booking that did not fit."""

    landed: int | None  # None: the new booking has no window within policy from the candidate
    moved: tuple[tuple[_Slot, int], ...] = ()
    blocked: Booking | None = None  # a movable booking with no window within policy: plan failed
    hopeless: bool = False  # failed without trying: the core-time bound rules out this landing

    @property
    def succeeded(self) -> bool:
        return self.landed is not None and self.blocked is None and not self.hopeless


class _Planner:
    """The plans of one :func:`admit` call; only the new booking's day takes part."""

    def __init__(self, new: Booking, day: list[Booking], capacity: int, now: datetime, policy: BookingPolicy) -> None:
        self.capacity, self.policy = capacity, policy
        self.midnight = datetime.combine(new.start.date(), time.min)
        self.step = policy.move_step // _TICK
        self.max_duration = timedelta(hours=policy.max_hours)
        self.horizon = now.date() + timedelta(days=policy.horizon_days)
        self._bounds: dict[date, tuple[int, int]] = {}
        # Bookings share a handful of start and end times: convert each distinct one once.
        moments = {new.start, new.end, *(b.start for b in day), *(b.end for b in day)}
        self._ticks = {moment: (moment - self.midnight) // _TICK for moment in moments}
        ticks = self._ticks
        self.new = self._slot(new)
        self.new_order = _order(new)
        pinned: list[tuple[int, int, int]] = []
        movable: list[tuple[tuple[float, int, int], int, Booking]] = []
        self.pinned_lower_fixed = False
        for i, b in enumerate(day):
            if self._outranks_new(b):
                pinned.append((ticks[b.start], ticks[b.end], b.cores))
            elif b.fixed or b.start <= now:
                pinned.append((ticks[b.start], ticks[b.end], b.cores))
                self.pinned_lower_fixed = True
            else:
                movable.append((_order(b), i, b))  # i: equal keys keep the caller's order
        movable.sort()
        self.movable = [self._slot(b) for _, _, b in movable]
        self.everyone = _Profile.of([*pinned, *((m.start, m.end, m.cores) for m in self.movable)])
        self.base = _Profile.of(pinned)
        self.within_capacity = max(self.everyone.levels, default=0) <= capacity

    def _outranks_new(self, b: Booking) -> bool:
        """Whether ``b`` comes before the new booking in service order (it then stays put).

        Priorities more than 1e-6 apart compare the same raw or rounded, so the rounding inside
        service_order_key (slow for floats) is only paid near a tie.
        """
        gap = b.priority - self.new.booking.priority
        if gap > 1e-6 or gap < -1e-6:
            return gap > 0
        return _order(b) <= self.new_order

    def _slot(self, b: Booking) -> _Slot:
        day = b.start.date()
        if day not in self._bounds:
            opens, closes = self.policy.day_bounds(day)
            self._bounds[day] = (self._tick(opens), self._tick(closes))
        opens_tick, closes_tick = self._bounds[day]
        may_move = b.end - b.start <= self.max_duration and day <= self.horizon
        # tuple.__new__ skips NamedTuple's Python-level __new__, which costs more than the rest of this.
        ticks = self._ticks
        return tuple.__new__(_Slot, (b, b.cores, ticks[b.start], ticks[b.end], opens_tick, closes_tick, may_move))

    def _tick(self, moment: datetime) -> int:
        return (moment - self.midnight) // _TICK

    def _time(self, tick: int) -> datetime:
        return self.midnight + tick * _TICK

    def _earliest(self, profile: _Profile, slot: _Slot, start_from: int) -> int | None:
        """Earliest start ``>= start_from`` on the slot's step grid where it fits, or None.

        The slot's current window needs no policy check (it was accepted, or checked as a request);
        any other window must lie within the day hours of the same day. Once a window ends past
        ``closes`` every later one does too, so the search stops there.
        """
        duration, room, t = slot.end - slot.start, self.capacity - slot.cores, start_from
        while True:
            moved = t != slot.start
            if moved and (not slot.may_move or t + duration > slot.closes):
                return None
            if (not moved or t >= slot.opens) and profile.peak(t, t + duration) <= room:
                return t
            t += self.step

    def plan(self, s: int, *, find_blocker: bool = False) -> _Plan:
        """Place the new booking from candidate ``s``, then every movable booking in service order.

        When the day is within capacity (the usual case), a movable booking whose window meets no
        window added in this plan (the new booking's, or a moved one's new window) keeps its window
        without a check: everything placed before it over its window is a subset of the current
        calendar, which fits. Such bookings wait in ``pending`` and enter the profile only when a
        later booking needs a check, so a plan where nothing conflicts costs one pass over the day.
        On an over-capacity day every booking is checked.

        Unless ``find_blocker`` asks which booking stops the plan (for the reason text), a landing
        that :meth:`cannot_fit` rules out fails without placing anyone.
        """
        profile = self.base.copy()
        new = self.new
        landed = self._earliest(profile, new, s)
        if landed is None:
            return _Plan(None)
        new_end = landed + new.end - new.start
        if self.within_capacity and self.everyone.peak(landed, new_end) + new.cores <= self.capacity:
            return _Plan(landed)  # fits beside everyone as they are: as in admit()'s fast path, nobody moves
        if not find_blocker and self.cannot_fit(landed):
            return _Plan(landed, hopeless=True)
        profile.add(landed, new_end, new.cores)
        added = [(landed, new_end)]
        span_lo, span_hi = landed, new_end  # bounds of ``added``: most bookings fall outside
        pending: list[_Slot] = []
        moved: list[tuple[_Slot, int]] = []
        peak, add, capacity, lazy = profile.peak, profile.add, self.capacity, self.within_capacity
        for slot in self.movable:
            start, end, cores = slot.start, slot.end, slot.cores
            if lazy and (end <= span_lo or start >= span_hi or not any(start < hi and end > lo for lo, hi in added)):
                pending.append(slot)
                continue
            for waiting in pending:  # they are placed already; the profile must show them now
                add(waiting.start, waiting.end, waiting.cores)
            pending.clear()
            if peak(start, end) + cores <= capacity:
                add(start, end, cores)
                continue
            t = self._earliest(profile, slot, start + self.step)
            if t is None:
                return _Plan(landed, tuple(moved), slot.booking)
            add(t, t + end - start, cores)
            added.append((t, t + end - start))
            span_lo, span_hi = min(span_lo, t), max(span_hi, t + end - start)
            moved.append((slot, t))
        return _Plan(landed, tuple(moved))

    def cannot_fit(self, landed: int) -> bool:
        """True when no plan with the new booking at ``landed`` can succeed, by counting core-time.

        Take A = [a, day_end) for any ``a`` up to ``landed``. A booking moved later but still ending by
        day_end overlaps A at least as much as before, pinned ones do not move, and the new booking
        lies wholly in A, so a successful plan holds at least the calendar's current core-time in A
        plus the new booking's. More than ``capacity`` × |A| cannot fit, so the plan would fail anyway.
        """
        z = self.new.closes
        surplus = self.new.cores * (self.new.end - self.new.start) - self.capacity * (z - landed)
        surplus += self.everyone.integral(landed, z)
        if surplus > 0:
            return True
        # Widen A leftwards one segment at a time; it only helps while the calendar is over capacity.
        times, levels = self.everyone.times, self.everyone.levels
        i = bisect_right(times, landed) - 1
        edge = landed
        while i >= 0:
            surplus += (levels[i] - self.capacity) * (edge - times[i])
            if surplus > 0:
                return True
            edge, i = times[i], i - 1
        return False

    def decide(self) -> Admission:
        first = plan = self.plan(self.new.start, find_blocker=True)
        while plan.landed is not None and not plan.succeeded:
            plan = self.plan(plan.landed + self.step)
        if plan.landed is None:
            return self._refused(first)
        return self._accepted(plan, first)

    def _accepted(self, plan: _Plan, first: _Plan) -> Admission:
        new = self.new
        assert plan.landed is not None
        start = self._time(plan.landed)
        reason = ""
        if plan.landed != new.start:
            reason = f"moved from {_hm(new.booking.start)} to {_hm(start)}: "
            if first.landed != new.start:
                whom = "higher-priority or fixed" if self.pinned_lower_fixed else "higher-priority"
                peak = self.base.peak(new.start, new.end)
                reason += f"{peak} of {self.capacity} cores reserved by {whom} bookings"
            else:
                reason += self._blocked_text(first)
        moves = tuple(self._move(slot, t) for slot, t in plan.moved)
        return Admission(True, start, start + (new.booking.end - new.booking.start), moves, reason)

    def _move(self, slot: _Slot, new_start: int) -> Move:
        b, new = slot.booking, self.new.booking
        start = self._time(new_start)
        why = f"for reservation {new.id} ({_why_outranks(new, b)})"
        return Move(
            b.id,
            b.start,
            b.end,
            start,
            start + (b.end - b.start),
            f"moved {_fmt_delta(start - b.start)} later {why}",
        )

    def _blocked_text(self, plan: _Plan) -> str:
        assert plan.blocked is not None and plan.landed is not None
        return (
            f"lower-priority reservation {plan.blocked.id} could not move later within policy "
            f"to make room at {_hm(self._time(plan.landed))}"
        )

    def _refused(self, first: _Plan) -> Admission:
        new = self.new
        peak, since, until = self.everyone.busiest(new.start, max(new.closes, new.end))
        reason = (
            f"no window within policy: {peak} of {self.capacity} cores reserved "
            f"{_hm(self._time(since))}–{_hm(self._time(until))} on {self.midnight.date().isoformat()} "
            f"(needs {new.cores})"
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


def admit(new: Booking, existing: Sequence[Booking], capacity: int, now: datetime, policy: BookingPolicy) -> Admission:
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
