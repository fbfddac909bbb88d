"""Preemption: suspend the lowest-priority best-effort VMs strictly below the request, or wait."""

from __future__ import annotations

from vcl_sched.placement import Demand, SlaveState
from vcl_sched.preempt import RunningVM, plan


def full(i: int, cores: int = 4) -> SlaveState:
    return SlaveState(i, f"s{i}", cores, 8192, 100, cores_used=cores, ram_mb_used=4096)


def vm(i: int, slave: int, priority: float, cores: int = 2, ras: int = 0, kind: str = "BE") -> RunningVM:
    return RunningVM(i, slave, cores, 2048, priority, ras, seq=i, kind=kind)


def test_fits_without_preemption():
    result = plan([SlaveState(1, "s1", 4, 8192, 100)], Demand(2, 1024), 9.0, [])
    assert result.action == "place" and result.slave.id == 1 and result.victims == ()


def test_lowest_priority_victims_first_until_it_fits():
    running = [vm(1, 1, 8.0), vm(2, 1, 7.0)]
    result = plan([full(1)], Demand(2, 1024), 9.0, running)
    assert result.action == "suspend"
    assert [v.id for v in result.victims] == [2]
    result = plan([full(1)], Demand(4, 1024), 9.0, running)
    assert [v.id for v in result.victims] == [2, 1]


def test_equal_priority_waits():
    result = plan([full(1)], Demand(2, 1024), 8.0, [vm(1, 1, 8.0), vm(2, 1, 8.0 + 1e-12)])
    assert result.action == "wait"
    assert "equal priorities never preempt" in result.reason


def test_higher_priority_and_reservation_vms_are_never_victims():
    running = [vm(1, 1, 9.5), vm(2, 1, 7.0, kind="AR")]
    result = plan([full(1)], Demand(2, 1024), 9.0, running)
    assert result.action == "wait"


def test_waits_when_suspending_everything_eligible_is_not_enough():
    running = [vm(1, 1, 7.0, cores=1)]  # frees 1 of the 2 cores needed
    result = plan([full(1)], Demand(2, 1024), 9.0, running)
    assert result.action == "wait" and "still would not make room" in result.reason


def test_victims_are_on_one_slave_and_the_least_important_set_wins():
    running = [vm(1, 1, 8.5), vm(2, 2, 7.5), vm(3, 2, 6.0, cores=1)]
    result = plan([full(1), full(2)], Demand(2, 1024), 9.0, running)
    assert result.slave.id == 2
    assert [v.id for v in result.victims] == [3, 2]  # lowest first; both needed on s2
    result = plan([full(1), full(2)], Demand(1, 1024), 9.0, running)
    assert [v.id for v in result.victims] == [3]


def test_among_equal_victims_a_non_registering_client_goes_first_then_the_youngest():
    running = [vm(1, 1, 7.0, ras=0), vm(2, 1, 7.0, ras=1), vm(3, 1, 7.0, ras=0)]
    result = plan([full(1)], Demand(2, 1024), 9.0, running)
    assert [v.id for v in result.victims] == [3]


def test_down_slaves_are_not_considered():
    slave = SlaveState(1, "s1", 4, 8192, 100, cores_used=4, status="down")
    assert plan([slave], Demand(2, 1024), 9.0, [vm(1, 1, 1.0)]).action == "wait"


def test_disk_is_not_freed_by_suspension():
    slave = SlaveState(1, "s1", 4, 8192, 10, cores_used=4, disk_gb_used=10)
    assert plan([slave], Demand(2, 1024, 5), 9.0, [vm(1, 1, 1.0)]).action == "wait"
