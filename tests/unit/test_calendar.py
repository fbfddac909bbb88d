"""Advance reservations (SPEC §4): booking policy, admission with moves, refusals, best-effort hours."""

from __future__ import annotations

from datetime import datetime, time, timedelta

import pytest

from vcl_sched.calendar import (
    Admission,
    Booking,
    BookingPolicy,
    admit,
    best_effort_hours,
    check_request_policy,
    peak_cores,
)
from vcl_sched.errors import ValidationError

NOW = datetime(2026, 11, 22, 8, 30)
DAY = datetime(2026, 11, 24)
POLICY = BookingPolicy()
HI, MID, LO = 8.79, 8.51, 7.9


def at(hour: float, day: datetime = DAY) -> datetime:
    return day + timedelta(hours=hour)


def bk(id_: int | str, cores: int, start: float, end: float, pi: float = MID, **kw: object) -> Booking:
    return Booking(id_, cores, at(start), at(end), pi, **kw)  # type: ignore[arg-type]


def ask(new: Booking, existing: list[Booking], capacity: int = 8, **kw: object) -> Admission:
    return admit(new, existing, capacity, kw.pop("now", NOW), kw.pop("policy", POLICY))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ policy


def test_window_exactly_at_the_day_edges_is_accepted() -> None:
    check_request_policy(at(9), 4, NOW, POLICY)
    check_request_policy(at(13), 4, NOW, POLICY)


@pytest.mark.parametrize(("start", "hours"), [(16, 2), (8, 2), (8.99, 1), (16.5, 0.75)])
def test_window_outside_the_day_hours_is_refused(start: float, hours: float) -> None:
    with pytest.raises(ValidationError) as err:
        check_request_policy(at(start), hours, NOW, POLICY)
    assert err.value.field == "start"
    assert "must lie between 09:00 and 17:00" in err.value.message


def test_sixteen_to_eighteen_names_the_window() -> None:
    with pytest.raises(ValidationError, match="16:00–18:00 must lie between 09:00 and 17:00"):
        check_request_policy(at(16), 2, NOW, POLICY)


def test_today_is_refused_tomorrow_accepted() -> None:
    with pytest.raises(ValidationError) as err:
        check_request_policy(datetime(2026, 11, 22, 10), 1, NOW, POLICY)
    assert (err.value.field, err.value.message) == ("start", "bookable from 2026-11-23 (next day)")
    check_request_policy(datetime(2026, 11, 23, 9), 1, NOW, POLICY)


def test_lead_days_zero_allows_today_but_not_the_past() -> None:
    policy = BookingPolicy(lead_days=0)
    check_request_policy(datetime(2026, 11, 22, 9), 1, NOW, policy)
    with pytest.raises(ValidationError, match="in the past"):
        check_request_policy(datetime(2026, 11, 22, 8), 1, NOW, BookingPolicy(lead_days=0, day_start=time(7)))


def test_horizon_is_inclusive() -> None:
    check_request_policy(datetime(2026, 12, 6, 9), 1, NOW, POLICY)
    with pytest.raises(ValidationError) as err:
        check_request_policy(datetime(2026, 12, 7, 9), 1, NOW, POLICY)
    assert (err.value.field, err.value.message) == ("start", "no later than 2026-12-06 (14-day horizon)")


def test_at_most_max_hours() -> None:
    with pytest.raises(ValidationError) as err:
        check_request_policy(at(9), 4.5, NOW, POLICY)
    assert err.value.field == "hours"
    assert err.value.message.startswith("at most 4 hours")


@pytest.mark.parametrize("hours", [0, -1, float("nan"), float("inf"), True, "2"])
def test_hours_must_be_finite_and_positive(hours: object) -> None:
    with pytest.raises(ValidationError) as err:
        check_request_policy(at(9), hours, NOW, POLICY)  # type: ignore[arg-type]
    assert err.value.field == "hours"


def test_start_must_be_naive_datetime() -> None:
    from datetime import UTC

    with pytest.raises(ValidationError) as err:
        check_request_policy(at(9).replace(tzinfo=UTC), 1, NOW, POLICY)
    assert err.value.field == "start"


def test_settings_follow_the_policy() -> None:
    policy = BookingPolicy(lead_days=2, day_start=time(8), day_end=time(20), max_hours=6, horizon_days=3)
    check_request_policy(datetime(2026, 11, 25, 14), 6, NOW, policy)
    with pytest.raises(ValidationError, match=r"bookable from 2026-11-24 \(2 days ahead\)"):
        check_request_policy(datetime(2026, 11, 23, 9), 1, NOW, policy)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"day_start": time(17), "day_end": time(9)}, "booking.day_end"),
        ({"day_start": time(9), "day_end": time(9)}, "booking.day_end"),
        ({"max_hours": 0}, "booking.max_hours"),
        ({"max_hours": float("inf")}, "booking.max_hours"),
        ({"lookahead_max_hours": 0}, "booking.lookahead_max_hours"),
        ({"lookahead_max_hours": 6}, "booking.lookahead_max_hours"),
        ({"lead_days": -1}, "booking.lead_days"),
        ({"lead_days": 1.5}, "booking.lead_days"),
        ({"horizon_days": 0}, "booking.horizon_days"),
        ({"move_step": timedelta(0)}, "booking.move_step"),
        ({"day_start": "09:00"}, "booking.day_start"),
    ],
)
def test_policy_settings_are_validated(changes: dict, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        BookingPolicy(**changes)
    assert err.value.field == field


# --------------------------------------------------------------------------------------- peak cores


def test_peak_cores_half_open_windows() -> None:
    books = [bk(1, 3, 9, 11), bk(2, 4, 11, 13), bk(3, 2, 10, 12)]
    assert peak_cores(books, at(9), at(13)) == 6
    assert peak_cores(books, at(9), at(10)) == 3
    assert peak_cores(books, at(12), at(13)) == 4  # booking 3 ends exactly at 12:00
    assert peak_cores(books, at(13), at(17)) == 0
    assert peak_cores(books, at(11), at(11)) == 0
    assert peak_cores([], at(9), at(17)) == 0


# ------------------------------------------------------------------------------------------- admit


def test_fits_unchanged() -> None:
    adm = ask(bk("n", 4, 10, 12, seq=9), [bk(1, 4, 9, 13, seq=1)])
    assert adm == Admission(True, at(10), at(12), (), "")


def test_back_to_back_is_not_a_conflict() -> None:
    adm = ask(bk("n", 8, 13, 15, LO, seq=9), [bk(1, 8, 9, 13, HI, seq=1)])
    assert (adm.accepted, adm.start, adm.moves) == (True, at(13), ())


def test_lower_priority_booking_moves_one_hour_later() -> None:
    low = bk(1, 6, 10, 12, MID, seq=1)
    adm = ask(bk("n", 4, 10, 12, HI, seq=2), [low])
    assert (adm.accepted, adm.start, adm.end, adm.reason) == (True, at(10), at(12), "")
    (move,) = adm.moves
    assert (move.id, move.old_start, move.new_start, move.new_end) == (1, at(10), at(12), at(14))
    assert move.reason == "moved 2 h later for reservation n (priority 8.79 > 8.51)"


def test_moves_step_by_step_within_policy() -> None:
    low = bk(1, 6, 10, 12, MID, seq=1)
    adm = ask(bk("n", 4, 11, 12, HI, seq=2), [low])
    (move,) = adm.moves
    assert move.new_start == at(12)  # 11:00 would still overlap 11:00–12:00
    assert move.reason.startswith("moved 2 h later")


def test_higher_priority_booking_never_moves_the_new_one_moves_instead() -> None:
    high = bk(1, 6, 10, 12, HI, seq=1)
    adm = ask(bk("n", 4, 10, 12, MID, seq=2), [high])
    assert (adm.accepted, adm.start, adm.end, adm.moves) == (True, at(12), at(14), ())
    assert adm.reason == "moved from 10:00 to 12:00: 6 of 8 cores reserved by higher-priority bookings"


def test_equal_priority_first_come_keeps_its_window() -> None:
    first = bk(1, 6, 10, 12, MID, seq=1)
    adm = ask(bk("n", 4, 10, 12, MID, seq=2), [first])
    assert (adm.start, adm.moves) == (at(12), ())


def test_equal_priority_slave_registration_wins() -> None:
    first = bk(1, 6, 10, 12, MID, seq=1, register_as_slave=0)
    adm = ask(bk("n", 4, 10, 12, MID + 1e-12, seq=2, register_as_slave=1), [first])
    assert adm.start == at(10)
    (move,) = adm.moves
    assert "equal priority 8.51, registers as a slave" in move.reason


def test_fixed_booking_never_moves_even_with_lower_priority() -> None:
    fixed = bk(1, 6, 10, 12, LO, seq=1, fixed=True)
    adm = ask(bk("n", 4, 10, 12, HI, seq=2), [fixed])
    assert (adm.start, adm.moves) == (at(12), ())
    assert "higher-priority or fixed bookings" in adm.reason


def test_started_booking_never_moves() -> None:
    now = datetime(2026, 11, 24, 10, 30)
    policy = BookingPolicy(lead_days=0)
    running = bk(1, 6, 10, 12, LO, seq=1)
    adm = ask(bk("n", 4, 11, 12, HI, seq=2), [running], now=now, policy=policy)
    assert (adm.start, adm.moves) == (at(12), ())


def test_cascade_moves_only_lower_bookings_in_priority_order() -> None:
    existing = [bk("top", 4, 10, 12, 9.5, seq=1), bk("a", 4, 10, 12, 8.0, seq=2), bk("b", 6, 12, 14, 7.0, seq=3)]
    adm = ask(bk("n", 4, 10, 12, 8.5, seq=9), existing)
    assert adm.start == at(10)
    moved = {m.id: (m.new_start, m.new_end) for m in adm.moves}
    # "a" must leave 10–12; "a" outranks "b", so "a" takes 12–14 and pushes "b" on to 14–16.
    assert moved == {"a": (at(12), at(14)), "b": (at(14), at(16))}
    assert "top" not in moved


def test_all_or_none_new_booking_moves_when_a_lower_one_cannot() -> None:
    # "long" has lower priority but cannot move later (16:00 + 2 h > 17:00): the new booking yields.
    existing = [bk("long", 6, 15, 17, LO, seq=1)]
    adm = ask(bk("n", 4, 15, 16, HI, seq=2), existing)
    assert adm.accepted is False
    assert adm.reason.startswith("no window within policy: 6 of 8 cores reserved 15:00–17:00 on 2026-11-24 (needs 4)")
    assert "lower-priority reservation long could not move later within policy" in adm.reason


def test_plan_moves_on_when_lower_booking_cannot_make_room() -> None:
    existing = [bk("late", 6, 13, 17, LO, seq=1)]
    adm = ask(bk("n", 4, 12, 14, HI, seq=2), existing)
    # Every start from 12:00 to 15:00 overlaps "late", which cannot move past 17:00; 16:00 is too late.
    assert adm.accepted is False
    adm = ask(bk("n", 4, 10, 12, HI, seq=2), [bk("late", 6, 11, 13, LO, seq=1), bk("x", 6, 15, 17, HI, seq=0)])
    # Plan at 10:00 moves "late" to 12–14 (fits): accepted unchanged with one move.
    assert (adm.start, [m.new_start for m in adm.moves]) == (at(10), [at(12)])


def test_new_moved_by_lower_booking_reason() -> None:
    # At 11:00 and 12:00 the lower "stuck" (9–13) would have to move into "wall" (14–17): the new one waits.
    existing = [bk("stuck", 6, 9, 13, LO, seq=1), bk("wall", 8, 14, 17, HI, seq=0)]
    adm = ask(bk("n", 4, 11, 12, MID, seq=2), existing)
    assert (adm.accepted, adm.start, adm.moves) == (True, at(13), ())
    assert adm.reason == (
        "moved from 11:00 to 13:00: lower-priority reservation stuck could not move later within policy "
        "to make room at 11:00"
    )


def test_refused_names_the_busiest_slice() -> None:
    existing = [bk(1, 8, 10, 14, HI, seq=1), bk(2, 4, 14, 17, HI, seq=2), bk(3, 6, 9, 10, HI, seq=3)]
    adm = ask(bk("n", 4, 9, 13, MID, seq=9), existing)
    assert adm == Admission(
        False, None, None, (), "no window within policy: 8 of 8 cores reserved 10:00–14:00 on 2026-11-24 (needs 4)"
    )


def test_more_cores_than_the_pool_is_refused_not_raised() -> None:
    adm = ask(bk("n", 9, 10, 12), [])
    assert adm.accepted is False
    assert adm.reason == "needs 9 cores but the pool has only 8"


def test_other_days_are_ignored() -> None:
    other_day = [Booking(i, 8, at(10, DAY + timedelta(days=1)), at(14, DAY + timedelta(days=1)), HI) for i in range(3)]
    adm = ask(bk("n", 8, 10, 14, LO, seq=9), other_day)
    assert (adm.accepted, adm.start, adm.moves) == (True, at(10), ())


def test_moves_never_leave_the_day_or_the_policy() -> None:
    policy = BookingPolicy(move_step=timedelta(minutes=30))
    existing = [bk("low", 4, 14, 16, LO, seq=1)]
    adm = ask(bk("n", 8, 14, 15, HI, seq=2), existing, policy=policy)
    (move,) = adm.moves
    assert (move.new_start, move.new_end) == (at(15), at(17))
    assert move.reason.startswith("moved 1 h later")
    adm = ask(bk("n", 8, 14, 15.5, HI, seq=2), existing, policy=policy)
    assert adm.accepted is False


def test_move_reason_shows_enough_decimals() -> None:
    adm = ask(bk("n", 4, 10, 12, 8.5144, seq=2), [bk(1, 6, 10, 12, 8.5141, seq=1)])
    assert "(priority 8.514 > 8.514" not in adm.moves[0].reason
    assert "(priority 8.5144 > 8.5141)" in adm.moves[0].reason


def test_move_reason_in_minutes() -> None:
    policy = BookingPolicy(move_step=timedelta(minutes=30))
    adm = ask(bk("n", 4, 10, 10.5, HI, seq=2), [bk(1, 6, 10, 11, LO, seq=1)], policy=policy)
    assert adm.moves[0].reason.startswith("moved 30 min later")


def test_existing_order_does_not_matter() -> None:
    existing = [bk(i, 2, 9 + i % 4, 11 + i % 4, 8 + (i % 5) / 10, seq=i) for i in range(10)]
    new = bk("n", 6, 10, 13, 8.35, seq=99)
    assert ask(new, existing) == ask(new, list(reversed(existing)))


@pytest.mark.parametrize(
    ("new", "field"),
    [
        (Booking("n", 0, at(10), at(11), MID), "cores"),
        (Booking("n", -2, at(10), at(11), MID), "cores"),
        (Booking("n", True, at(10), at(11), MID), "cores"),  # type: ignore[arg-type]
        (Booking("n", 2, at(11), at(11), MID), "end"),
        (Booking("n", 2, at(11), at(10), MID), "end"),
        (Booking("n", 2, datetime(2026, 11, 22, 10), datetime(2026, 11, 22, 11), MID), "start"),
        (Booking("n", 2, at(9), at(14), MID), "hours"),
    ],
)
def test_malformed_requests_raise(new: Booking, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        ask(new, [])
    assert err.value.field == field


def test_capacity_must_be_a_whole_number() -> None:
    with pytest.raises(ValidationError) as err:
        ask(bk("n", 1, 10, 11), [], capacity=-1)
    assert err.value.field == "capacity"


def test_an_overloaded_calendar_does_not_move_higher_bookings() -> None:
    # The pool shrank to 4 cores under two higher bookings: they stay, the new one is refused.
    existing = [bk(1, 4, 9, 17, HI, seq=1, fixed=False), bk(2, 4, 9, 13, HI, seq=2)]
    adm = ask(bk("n", 1, 10, 11, MID, seq=3), existing, capacity=4)
    assert (adm.accepted, adm.moves) == (False, ())
    assert "8 of 4 cores reserved 10:00–13:00" in adm.reason


def test_many_existing_bookings_fast_path() -> None:
    existing = [
        Booking(i, 1, at(9 + i % 8, DAY + timedelta(days=i % 14)), at(10 + i % 8, DAY + timedelta(days=i % 14)), MID)
        for i in range(10_000)
    ]
    adm = ask(bk("n", 1, 9, 10, seq=10_001), existing, capacity=1000)
    assert (adm.accepted, adm.moves) == (True, ())


# ------------------------------------------------------------------------------------- best effort


def test_best_effort_empty_calendar_is_capped_at_the_lookahead() -> None:
    assert best_effort_hours(4, at(9), [], 8, [], POLICY) == 5
    assert best_effort_hours(4, at(9), [], 8, [], BookingPolicy(lookahead_max_hours=3)) == 3


def test_best_effort_stops_before_the_next_reservation() -> None:
    booking = bk(1, 6, 11.5, 13)
    assert best_effort_hours(4, at(9), [booking], 8, [], POLICY) == 2  # 9–11 fine, 9–12 overlaps 11:30
    assert best_effort_hours(2, at(9), [booking], 8, [], POLICY) == 5  # 2 + 6 fits


def test_best_effort_zero_when_cores_are_reserved_now() -> None:
    assert best_effort_hours(4, at(10), [bk(1, 6, 9, 12)], 8, [], POLICY) == 0
    assert best_effort_hours(9, at(10), [], 8, [], POLICY) == 0


def test_best_effort_counts_running_vms_until_they_end() -> None:
    running = [(4, at(11)), (2, at(9.5))]  # the second one already ended
    assert best_effort_hours(4, at(10), [], 8, running, POLICY) == 5
    assert best_effort_hours(5, at(10), [], 8, running, POLICY) == 0
    assert best_effort_hours(5, at(10), [], 8, [(4, at(11))], BookingPolicy()) == 0
    assert best_effort_hours(4, at(10), [bk(1, 2, 10.5, 17)], 8, running, POLICY) == 0


def test_best_effort_partial_between_vm_end_and_reservation() -> None:
    # A BE VM frees 4 cores at 11:00; a reservation takes 6 cores from 13:00.
    assert best_effort_hours(4, at(10), [bk(1, 6, 13, 17)], 8, [(4, at(10.5))], POLICY) == 3


def test_best_effort_validates_cores() -> None:
    with pytest.raises(ValidationError) as err:
        best_effort_hours(0, at(10), [], 8, [], POLICY)
    assert err.value.field == "cores"


def test_later_candidate_may_need_moves_too() -> None:
    # At 10:00–12:00 the lower "x" (9–13) would have to move into "wall"; from 13:00 the new booking
    # fits once the lower "y" moves one hour later, which the core-time shortcut must not skip.
    existing = [
        bk("wall", 3, 14, 17, 9.5, seq=0),
        bk("x", 6, 9, 13, LO, seq=1),
        bk("y", 5, 13, 14, LO, seq=2),
    ]
    adm = ask(bk("n", 4, 10, 11, HI, seq=9), existing)
    assert (adm.accepted, adm.start, adm.end) == (True, at(13), at(14))
    assert [(m.id, m.new_start, m.new_end) for m in adm.moves] == [("y", at(14), at(15))]
    assert adm.reason == (
        "moved from 10:00 to 13:00: lower-priority reservation x could not move later within policy "
        "to make room at 10:00"
    )


def test_over_capacity_day_checks_every_lower_booking() -> None:
    # The pool shrank to 4 cores: "b" already overlaps "a". Planning places everyone in service order,
    # so "b" moves as well as "c", even though only "c" meets the new booking.
    existing = [bk("a", 4, 9, 10, HI, seq=1), bk("b", 4, 9, 10, LO, seq=2), bk("c", 4, 10, 11, LO, seq=3)]
    adm = ask(bk("n", 4, 10, 11, MID, seq=9), existing, capacity=4)
    assert (adm.accepted, adm.start) == (True, at(10))
    assert [(m.id, m.new_start) for m in adm.moves] == [("b", at(11)), ("c", at(12))]
