"""Seats placed over time and the per-slave ledger (vcl_sched.commitments): pure functions, no database."""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from vcl_sched.commitments import Host, Ledger, Seat, assign_seats, seats_of

DAY = datetime(2026, 11, 23)


def at(hour: float) -> datetime:
    return DAY + timedelta(hours=hour)


HOSTS = [Host(1, "s1", 8, 16384), Host(2, "s2", 4, 8192)]


def test_seats_go_where_they_fit_best_and_reuse_room_after_a_window_ends():
    a = seats_of(1, 2, 2, 1024, at(9), at(11))  # two seats of 2 cores
    b = seats_of(2, 1, 4, 1024, at(11), at(13))  # starts as a ends: half-open windows do not overlap
    result = assign_seats(HOSTS, a + b)
    assert result.ok
    # best fit: the first seat fills the 4-core slave least (4 - 2 = 2 left beats 6 left), the second fills it
    assert result.slots[(1, 0)] == 2 and result.slots[(1, 1)] == 2
    assert result.slots[(2, 0)] == 2  # s2 is empty again at 11:00 and is the best fit for 4 cores


def test_a_block_that_does_not_pack_is_refused_with_the_seat_and_time():
    # 8 + 4 = 12 cores: the cores add up, but three seats of 4 do not go onto an 8 and a 4 beside a 2-core seat
    small = seats_of(1, 1, 2, 512, at(9), at(12))
    block = seats_of(2, 3, 4, 512, at(10), at(12), order=(1,))
    result = assign_seats(HOSTS, small + block)
    assert not result.ok and result.failed == block[2]
    assert "seat 3 of reservation 2 (4 cores, 512 MB) finds no slave with room at 2026-11-23 10:00" in result.reason


def test_the_order_among_seats_starting_together_is_service_order():
    first = seats_of(7, 1, 4, 512, at(9), at(10), order=(-9.0,))  # higher priority: placed first
    second = seats_of(3, 1, 8, 512, at(9), at(10), order=(-8.0,))
    result = assign_seats(HOSTS, second + first)
    assert result.slots == {(7, 0): 2, (3, 0): 1}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5), st.integers(1, 8), st.integers(9, 15), st.integers(1, 4)),
                min_size=1, max_size=12))
def test_an_assignment_never_puts_more_on_a_slave_than_it_has(specs):
    seats = [Seat(i, n, cores, 512, at(start), at(min(start + hours, 17))) for i, (seats_n, cores, start, hours)
             in enumerate(specs) for n in range(seats_n)]
    result = assign_seats(HOSTS, seats)
    placed = [s for s in seats if s.key in result.slots]
    for moment in {s.start for s in placed}:
        for host in HOSTS:
            used = sum(s.cores for s in placed if result.slots[s.key] == host.id and s.start <= moment < s.end)
            assert used <= host.cores
    if result.ok:
        assert len(placed) == len(seats)


def test_the_ledger_gives_a_best_effort_vm_the_hours_before_a_seat_needs_its_cores():
    ledger = Ledger(HOSTS, at(8))
    ledger.add(2, at(10), at(12), 4, 1024, ("seat", (1, 0)))
    assert ledger.hours(2, 1, 512, 5) == 2  # 08:00 to 10:00, then the seat holds every core of s2
    assert ledger.hours(1, 8, 512, 5) == 5
    ledger.add(1, at(8), at(9.5), 6, 1024, ("vm", 9, "BE", 7.0))
    assert ledger.hours(1, 4, 512, 5) == 0  # 6 + 4 > 8 until 09:30: it does not fit now
    assert ledger.free_until(1, 4, 512) == at(8)
    assert ledger.hours(1, 2, 512, 5) == 5
    # A VM of lower priority may be suspended: the filter leaves it out.
    assert ledger.hours(1, 4, 512, 5, ignore=lambda tag: tag[0] == "vm" and tag[3] < 8.0) == 5
    ledger.remove(("vm", 9, "BE", 7.0))
    assert ledger.committed_at(1, at(9)) == (0, 0)
    assert ledger.hours(3, 1, 1, 5) == 0  # an unknown slave fits nothing


def test_seats_that_already_run_are_assigned_where_they_run():
    seats = seats_of(1, 2, 2, 512, at(9), at(12))
    free_choice = assign_seats(HOSTS, seats)
    assert free_choice.slots == {(1, 0): 2, (1, 1): 2}
    pinned = assign_seats(HOSTS, seats, {(1, 0): 1})  # seat 0 runs on s1 (say, relaunched after a loss)
    assert pinned.slots == {(1, 0): 1, (1, 1): 2}
