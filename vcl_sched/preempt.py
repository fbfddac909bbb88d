"""Preemption (SPEC §3 step 2): which best-effort VMs to suspend so a request fits, or "wait".

Only best-effort VMs whose priority is strictly below the request's may be suspended; with equal
priorities the request waits. Suspension (libvirt managedsave) frees a VM's cores and RAM on its
slave but not its disk, so victims must all sit on the one slave that will take the request.

Victims are taken lowest priority first (then, among equals, a client that did not register as a
slave before one that did, then the youngest first, so the least work is interrupted). Among the
slaves where suspending can make room, the one whose most important victim is least important
wins, then the one needing the fewest victims, then the lowest id.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .placement import Demand, Placement, Policy, SlaveState, place
from .priority import same_priority, service_order_key


@dataclass(frozen=True, slots=True)
class RunningVM:
    id: int
    slave_id: int
    cores: int
    ram_mb: int
    priority: float
    register_as_slave: int = 0
    seq: int = 0
    kind: str = "BE"


@dataclass(frozen=True)
class Preemption:
    action: str  # "place" (fits now), "suspend" (victims first, then place on slave), "wait"
    slave: SlaveState | None
    victims: tuple[RunningVM, ...]
    reason: str
    placement: Placement | None = None


def victim_order(vm: RunningVM) -> tuple:
    # The reverse of service order: the VM that would be served last is suspended first.
    key = service_order_key(vm.priority, vm.register_as_slave, vm.seq)
    return tuple(-k for k in key)


def plan(slaves: Sequence[SlaveState], demand: Demand, priority: float, running: Iterable[RunningVM],
         policy: str | Policy = "spread") -> Preemption:
    placement = place(slaves, demand, policy)
    if placement.placed:
        return Preemption("place", placement.slave, (), "", placement)

    eligible: dict[int, list[RunningVM]] = {}
    for vm in running:
        if vm.kind == "BE" and priority > vm.priority and not same_priority(priority, vm.priority):
            eligible.setdefault(vm.slave_id, []).append(vm)

    best: tuple[tuple, SlaveState, tuple[RunningVM, ...]] | None = None
    for slave in slaves:
        if slave.status != "up" or slave.free_disk_gb < demand.disk_gb:
            continue
        if slave.cores_total < demand.cores or slave.ram_mb_total < demand.ram_mb:
            continue
        cores, ram = slave.free_cores, slave.free_ram_mb
        chosen: list[RunningVM] = []
        for vm in sorted(eligible.get(slave.id, ()), key=victim_order):
            if cores >= demand.cores and ram >= demand.ram_mb:
                break
            chosen.append(vm)
            cores += vm.cores
            ram += vm.ram_mb
        if cores < demand.cores or ram < demand.ram_mb or not chosen:
            continue
        # Rank: the most important victim should be as unimportant as possible, then fewer victims.
        most_important = min(service_order_key(v.priority, v.register_as_slave, v.seq) for v in chosen)
        rank = (tuple(-k for k in most_important), len(chosen), slave.id)
        if best is None or rank < best[0]:
            best = (rank, slave, tuple(chosen))

    if best is None:
        return Preemption("wait", None, (), _why_wait(placement, priority, eligible), placement)
    _, slave, victims = best
    names = ", ".join(f"#{v.id} (priority {v.priority:.3f})" for v in victims)
    return Preemption("suspend", slave, victims,
                      f"{placement.reason}; suspending best-effort VM(s) {names} on {slave.name} makes room",
                      placement)


def _why_wait(placement: Placement, priority: float, eligible: dict[int, list[RunningVM]]) -> str:
    if not eligible:
        return (f"{placement.reason}; no running best-effort VM has a priority below {priority:.3f}"
                " (equal priorities never preempt), so the request waits")
    return (f"{placement.reason}; suspending every best-effort VM of lower priority on any one slave"
            " still would not make room, so the request waits")
