"""Property tests for advance reservations: random pools and request streams, admitted one by one.

Every invariant is checked against an independent brute-force count of reserved cores, not against
the module's own sweep.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vcl_sched.calendar import Admission, Booking, BookingPolicy, admit, best_effort_hours, check_request_policy
from vcl_sched.priority import service_order_key

NOW = datetime(2026, 11, 22, 8, 30)
FIRST_DAY = datetime(2026, 11, 23)
PRIORITIES = [7.5, 8.0, 8.5, 8.5 + 1e-12, 9.0]  # 8.5 and 8.5 + 1e-12 are equal for the scheduler
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def requests(draw: st.DrawFn) -> list[tuple]:
    """(day, start in half hours after 09:00, length in half hours, cores, priority, RAS, fixed once accepted)."""
    out = []
    for _ in range(draw(st.integers(1, 25))):
        length = draw(st.integers(1, 8))
        out.append(
            (
                draw(st.integers(0, 1)),
                draw(st.integers(0, 16 - length)),
                length,
                draw(st.integers(1, 6)),
                draw(st.sampled_from(PRIORITIES)),
                draw(st.integers(0, 1)),
                draw(st.booleans()) and draw(st.booleans()),
            )
        )
    return out


def to_booking(seq: int, req: tuple) -> Booking:
    day, slot, length, cores, pi, ras, _ = req
    start = FIRST_DAY + timedelta(days=day, hours=9, minutes=30 * slot)
    return Booking(f"r{seq}", cores, start, start + timedelta(minutes=30 * length), pi, ras, seq)


def load_at(bookings: list[Booking], moment: datetime) -> int:
    return sum(b.cores for b in bookings if b.start <= moment < b.end)


def brute_peak(bookings: list[Booking], start: datetime, end: datetime) -> int:
    """Reserved cores can only rise at a booking's start, so checking those instants (and ``start``) suffices."""
    moments = {start} | {b.start for b in bookings if start < b.start < end}
    return max(load_at(bookings, m) for m in moments)


def in_policy(start: datetime, end: datetime, policy: BookingPolicy) -> bool:
    opens, closes = policy.day_bounds(start.date())
    return opens <= start and end <= closes and end - start <= timedelta(hours=policy.max_hours)


def run_stream(capacity: int, stream: list[tuple], policy: BookingPolicy) -> tuple[list[Admission], dict]:
    """Admit the stream one by one, applying accepted admissions; check every invariant on the way."""
    state: dict[str, Booking] = {}
    answers = []
    for seq, req in enumerate(stream):
        new = to_booking(seq, req)
        check_request_policy(new.start, (new.end - new.start) / timedelta(hours=1), NOW, policy)
        existing = list(state.values())
        adm = admit(new, existing, capacity, NOW, policy)
        answers.append(adm)
        fits_as_asked = brute_peak(existing, new.start, new.end) + new.cores <= capacity
        if fits_as_asked:
            assert adm == Admission(True, new.start, new.end, (), "")
        if not adm.accepted:
            assert adm.reason
            assert (adm.start, adm.end, adm.moves) == (None, None, ())
            continue
        assert adm.start is not None and adm.end is not None
        assert adm.start >= new.start and adm.end - adm.start == new.end - new.start
        assert in_policy(adm.start, adm.end, policy)
        assert (adm.start == new.start) == (adm.reason == "")
        new_key = service_order_key(new.priority, new.register_as_slave, new.seq)
        for move in adm.moves:
            old = state[move.id]
            assert not old.fixed
            assert (move.old_start, move.old_end) == (old.start, old.end)
            assert move.new_start > old.start and move.new_end - move.new_start == old.end - old.start
            assert in_policy(move.new_start, move.new_end, policy)
            assert service_order_key(old.priority, old.register_as_slave, old.seq) > new_key
            assert move.reason.startswith("moved ") and str(new.id) in move.reason
            state[move.id] = Booking(
                old.id, old.cores, move.new_start, move.new_end, old.priority, old.register_as_slave, old.seq, old.fixed
            )
        state[new.id] = Booking(
            new.id, new.cores, adm.start, adm.end, new.priority, new.register_as_slave, new.seq, fixed=req[6]
        )
        everything = list(state.values())
        for b in everything:
            assert load_at(everything, b.start) <= capacity, f"over capacity at {b.start}"
    return answers, state


@SETTINGS
@given(capacity=st.integers(1, 12), stream=requests())
def test_stream_never_overbooks_and_only_lower_bookings_move_later(capacity: int, stream: list[tuple]) -> None:
    run_stream(capacity, stream, BookingPolicy())


@SETTINGS
@given(capacity=st.integers(1, 12), stream=requests())
def test_half_hour_moves_keep_the_same_invariants(capacity: int, stream: list[tuple]) -> None:
    run_stream(capacity, stream, BookingPolicy(move_step=timedelta(minutes=30)))


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(1, 12), stream=requests(), seed=st.integers(0, 2**32))
def test_processing_is_deterministic_and_ignores_input_order(capacity: int, stream: list[tuple], seed: int) -> None:
    policy = BookingPolicy()
    answers, state = run_stream(capacity, stream, policy)
    assert run_stream(capacity, stream, policy) == (answers, state)
    existing = list(state.values())
    shuffled = existing.copy()
    random.Random(seed).shuffle(shuffled)
    probe = to_booking(len(stream), (0, 2, 4, max(1, capacity // 2), 8.5, 1, False))
    assert admit(probe, existing, capacity, NOW, policy) == admit(probe, shuffled, capacity, NOW, policy)


@SETTINGS
@given(
    capacity=st.integers(1, 12),
    cores=st.integers(1, 12),
    now_minutes=st.integers(0, 8 * 60),
    stream=requests(),
    running=st.lists(st.tuples(st.integers(1, 4), st.integers(-60, 8 * 60)), max_size=4),
    lookahead=st.integers(1, 5),
)
def test_best_effort_hours_matches_brute_force(
    capacity: int, cores: int, now_minutes: int, stream: list[tuple], running: list, lookahead: int
) -> None:
    policy = BookingPolicy(lookahead_max_hours=lookahead)
    now = FIRST_DAY + timedelta(hours=9, minutes=now_minutes)
    bookings = [to_booking(i, req) for i, req in enumerate(stream)]
    be = [(c, now + timedelta(minutes=m)) for c, m in running]
    as_bookings = [Booking(f"be{i}", c, now, ends, 0.0) for i, (c, ends) in enumerate(be) if ends > now]
    hours = best_effort_hours(cores, now, bookings, capacity, be, policy)
    assert 0 <= hours <= lookahead
    everything = bookings + as_bookings

    def fits(h: int) -> bool:
        return brute_peak(everything, now, now + timedelta(hours=h)) + cores <= capacity

    assert all(fits(h) for h in range(1, hours + 1))
    assert hours == lookahead or not fits(hours + 1)
