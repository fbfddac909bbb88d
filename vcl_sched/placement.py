"""Choosing a slave for a VM: nova's filter scheduler, simplified (SPEC §3 placement).

``place()`` is the reference pipeline: every filter narrows the list of slaves (and the count left
after each one is kept, so "why was my VM not placed?" always has an answer), then every weigher
gives each survivor a raw number that is normalised to 0..1 over the survivors, multiplied by the
weigher's multiplier and summed; the highest total wins, ties going to the lowest slave id.

A policy is an ordered list of (weigher, multiplier):
- ``spread``: fewest used cores wins (the seed system's least-loaded slave);
- ``pack``: fewest free cores that still fit wins (the fullest slave that fits).

``PlacementIndex`` answers the same question for a scheduler loop that places many requests on
the same pool (the dispatcher's queue, the benchmark): slaves are kept sorted by the policy's
single weigher, so a decision walks from the best end and stops at the first slave that passes
the filters. Single-weigher policies make this exactly the argmax of the pipeline (min-max
normalisation is monotone); tests check the two agree on random pools.

No I/O here: the caller reads slaves from the database and writes the claim.
"""

from __future__ import annotations

import bisect
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from .errors import ValidationError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SlaveState:
    id: int
    name: str
    cores_total: int
    ram_mb_total: int
    disk_gb_total: int
    cores_used: int = 0
    ram_mb_used: int = 0
    disk_gb_used: int = 0
    status: str = "up"
    generation: int = 0

    @property
    def free_cores(self) -> int:
        return self.cores_total - self.cores_used

    @property
    def free_ram_mb(self) -> int:
        return self.ram_mb_total - self.ram_mb_used

    @property
    def free_disk_gb(self) -> int:
        return self.disk_gb_total - self.disk_gb_used

    def claimed(self, demand: Demand) -> SlaveState:
        return replace(self, cores_used=self.cores_used + demand.cores, ram_mb_used=self.ram_mb_used + demand.ram_mb,
                       disk_gb_used=self.disk_gb_used + demand.disk_gb, generation=self.generation + 1)

    def released(self, demand: Demand) -> SlaveState:
        return replace(self, cores_used=self.cores_used - demand.cores, ram_mb_used=self.ram_mb_used - demand.ram_mb,
                       disk_gb_used=self.disk_gb_used - demand.disk_gb, generation=self.generation + 1)


@dataclass(frozen=True, slots=True)
class Demand:
    cores: int
    ram_mb: int
    disk_gb: int = 0

    def __post_init__(self) -> None:
        for name, low in (("cores", 1), ("ram_mb", 1), ("disk_gb", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValidationError(name, f"{value!r} must be a whole number >= {low}")


Filter = Callable[[SlaveState, Demand], bool]
Weigher = Callable[[SlaveState], float]

FILTERS: tuple[tuple[str, Filter], ...] = (
    ("status_up", lambda s, d: s.status == "up"),
    ("cores", lambda s, d: s.free_cores >= d.cores),
    ("ram", lambda s, d: s.free_ram_mb >= d.ram_mb),
    ("disk", lambda s, d: s.free_disk_gb >= d.disk_gb),
)

WEIGHERS: dict[str, Weigher] = {
    "used_cores": lambda s: s.cores_used,
    "free_cores": lambda s: s.free_cores,
    "free_ram_mb": lambda s: s.free_ram_mb,
}


@dataclass(frozen=True)
class Policy:
    name: str
    weighers: tuple[tuple[str, float], ...]
    description: str
    # Fast path for PlacementIndex: ascending sort key equal to "best first" for the pipeline, and
    # the key to bisect to before walking (skips slaves that cannot have enough free cores).
    sort_key: Callable[[SlaveState], tuple] | None = field(default=None, compare=False)
    start_key: Callable[[Demand], tuple] | None = field(default=None, compare=False)


POLICIES: dict[str, Policy] = {
    "spread": Policy("spread", (("used_cores", -1.0),), "fewest used cores (least loaded)",
                     sort_key=lambda s: (s.cores_used, s.id)),
    "pack": Policy("pack", (("free_cores", -1.0),), "fewest free cores that fit (fullest)",
                   sort_key=lambda s: (s.free_cores, s.id), start_key=lambda d: (d.cores,)),
}


def get_policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValidationError("placement_policy", f"{name!r}: choose one of {', '.join(POLICIES)}") from None


@dataclass(frozen=True)
class Placement:
    slave: SlaveState | None
    policy: str
    survivors: tuple[tuple[str, int], ...] = ()  # ("all", n) then (filter, n left) in order
    reason: str = ""

    @property
    def placed(self) -> bool:
        return self.slave is not None

    def explain(self) -> str:
        counts = " → ".join(f"{name} {n}" for name, n in self.survivors)
        if self.slave is not None:
            tail = f"chose {self.slave.name} ({POLICIES[self.policy].description})"
        else:
            tail = f"not placed: {self.reason}"
        return f"{counts}; {tail}" if counts else tail


def _why_not(demand: Demand, failed: str, before: Sequence[SlaveState]) -> str:
    if failed == "status_up":
        return "no slave is up"
    attr, unit, label = {"cores": ("free_cores", "", "cores"), "ram": ("free_ram_mb", " MB", "RAM"),
                         "disk": ("free_disk_gb", " GB", "disk")}[failed]
    best = max(before, key=lambda s: (getattr(s, attr), -s.id))
    need = {"cores": demand.cores, "ram": demand.ram_mb, "disk": demand.disk_gb}[failed]
    return (f"no slave has {need}{unit} free {label} (most free: {getattr(best, attr)}{unit} on {best.name},"
            f" among {len(before)} slaves left by the earlier filters)")


def run_filters(slaves: Iterable[SlaveState], demand: Demand) -> tuple[list[SlaveState], list[tuple[str, int]], str]:
    """Apply FILTERS in order; return survivors, counts after each filter, and why none survived."""
    current = list(slaves)
    counts = [("all", len(current))]
    for name, keep in FILTERS:
        before = current
        current = [s for s in current if keep(s, demand)]
        counts.append((name, len(current)))
        log.debug("filter %s: %d of %d slaves left", name, len(current), len(before))
        if not current:
            reason = _why_not(demand, name, before) if before else "there are no slaves"
            return [], counts, reason
    return current, counts, ""


def weigh(survivors: Sequence[SlaveState], policy: Policy) -> list[float]:
    """Sum of multiplier * min-max normalised raw weight, per survivor (nova/weights.py)."""
    totals = [0.0] * len(survivors)
    for weigher_name, multiplier in policy.weighers:
        raw = [float(WEIGHERS[weigher_name](s)) for s in survivors]
        low, high = min(raw), max(raw)
        span = high - low
        for i, value in enumerate(raw):
            normalised = (value - low) / span if span else 0.0
            totals[i] += multiplier * normalised
    return totals


def place(slaves: Iterable[SlaveState], demand: Demand, policy: str | Policy = "spread") -> Placement:
    """The reference decision: filters, then weighers; highest weight wins, ties to the lowest id."""
    pol = policy if isinstance(policy, Policy) else get_policy(policy)
    survivors, counts, reason = run_filters(slaves, demand)
    if not survivors:
        return Placement(None, pol.name, tuple(counts), reason)
    weights = weigh(survivors, pol)
    best = max(range(len(survivors)), key=lambda i: (weights[i], -survivors[i].id))
    return Placement(survivors[best], pol.name, tuple(counts))


class PlacementIndex:
    """Slaves that are up, sorted best-first for a single-weigher policy; O(log n) updates."""

    def __init__(self, slaves: Iterable[SlaveState], policy: str | Policy = "spread") -> None:
        self.policy = policy if isinstance(policy, Policy) else get_policy(policy)
        if self.policy.sort_key is None:
            raise ValidationError("placement_policy", f"{self.policy.name!r} has no indexed form; use place()")
        self._key = self.policy.sort_key
        self._slaves: dict[int, SlaveState] = {}
        self._keys: list[tuple] = []
        for s in slaves:
            self._slaves[s.id] = s
        self._keys = sorted((*self._key(s), s.id) for s in self._slaves.values() if s.status == "up")

    def __len__(self) -> int:
        return len(self._slaves)

    def slaves(self) -> list[SlaveState]:
        return list(self._slaves.values())

    def get(self, slave_id: int) -> SlaveState:
        return self._slaves[slave_id]

    def place(self, demand: Demand, rng: random.Random | None = None, ties: int = 64) -> Placement:
        """The best slave for ``demand``; ties go to the lowest id, or with ``rng`` to a random one
        of up to ``ties`` equally good slaves (writers that share a pool then rarely collide)."""
        keys = self._keys
        start = 0
        if self.policy.start_key is not None:
            start = bisect.bisect_left(keys, self.policy.start_key(demand))
        slaves = self._slaves
        cores, ram, disk = demand.cores, demand.ram_mb, demand.disk_gb
        if rng is None:  # the hot path: the first slave in policy order that fits
            for i in range(start, len(keys)):
                s = slaves[keys[i][-1]]
                if (s.cores_total - s.cores_used >= cores and s.ram_mb_total - s.ram_mb_used >= ram
                        and s.disk_gb_total - s.disk_gb_used >= disk):
                    return Placement(s, self.policy.name)
        else:
            tied: list[SlaveState] = []
            best_key: tuple | None = None
            for i in range(start, len(keys)):
                if best_key is not None and keys[i][:-2] != best_key:
                    break  # past the equally good slaves
                s = slaves[keys[i][-1]]
                if (s.cores_total - s.cores_used >= cores and s.ram_mb_total - s.ram_mb_used >= ram
                        and s.disk_gb_total - s.disk_gb_used >= disk):
                    best_key = keys[i][:-2]
                    tied.append(s)
                    if len(tied) >= ties:
                        break
            if tied:
                return Placement(rng.choice(tied), self.policy.name)
        # Not placed: the full pipeline explains why (rare, and worth the cost).
        return place(self._slaves.values(), demand, self.policy)

    def update(self, slave: SlaveState) -> None:
        """Replace a slave's state (after a claim, a release, a status change)."""
        old = self._slaves.get(slave.id)
        if old is not None and old.status == "up":
            old_key = (*self._key(old), old.id)
            i = bisect.bisect_left(self._keys, old_key)
            if i < len(self._keys) and self._keys[i] == old_key:
                del self._keys[i]
        self._slaves[slave.id] = slave
        if slave.status == "up":
            bisect.insort(self._keys, (*self._key(slave), slave.id))


def first_fit(slaves: Sequence[SlaveState], demand: Demand) -> SlaveState | None:
    """The floor the benchmark compares with: a bare scan for the first slave that fits."""
    for s in slaves:
        if (s.status == "up" and s.cores_total - s.cores_used >= demand.cores
                and s.ram_mb_total - s.ram_mb_used >= demand.ram_mb
                and s.disk_gb_total - s.disk_gb_used >= demand.disk_gb):
            return s
    return None
