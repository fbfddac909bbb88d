"""Choosing a slave for a VM: nova's filter scheduler, simplified (SPEC §3 placement).

``place()`` is the reference pipeline: every filter narrows the list of slaves (and the count left
after each one is kept, so "why was my VM not placed?" always has an answer), then every weigher
gives each survivor a raw number that is normalised to 0..1 over the survivors, multiplied by the
weigher's multiplier and summed; the highest total wins, ties going to the policy's tie-break
(the lowest slave id).

A policy is declared once (``POLICIES``): an ordered list of (attribute, multiplier) weighers and a
tie-break. Everything else is derived from that declaration:
- the reference ranking (``weigh``, ``place``, ``rank``), nova's normalised weighers;
- for a single-weigher policy, its lexicographic order (``Policy.order``, ``Policy.sort_key``):
  min-max normalisation is monotone, so the best weight is the smallest raw value for a negative
  multiplier (the largest for a positive one), then the tie-break. ``PlacementIndex`` keeps slaves
  in that order, and the database walks the same order (``claims.order_by`` turns each attribute,
  a signed sum of slave columns, into the same sum in SQL).

- ``spread``: fewest used cores wins (the seed system's least-loaded slave);
- ``pack``: fewest free cores that still fit wins (the fullest slave that fits).

``PlacementIndex`` answers the same question for a scheduler loop that places many requests on
the same pool (the dispatcher's queue, the benchmark): a decision walks from the best end and
stops at the first slave that passes the filters; tests check it agrees with ``place`` on random
pools, and that the database's order agrees with ``rank``.

No I/O here: the caller reads slaves from the database and writes the claim.
"""

from __future__ import annotations

import bisect
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import NamedTuple

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

FILTERS: tuple[tuple[str, Filter], ...] = (
    ("status_up", lambda s, d: s.status == "up"),
    ("cores", lambda s, d: s.free_cores >= d.cores),
    ("ram", lambda s, d: s.free_ram_mb >= d.ram_mb),
    ("disk", lambda s, d: s.free_disk_gb >= d.disk_gb),
)

# SlaveState's whole-number fields; each is also the ``slaves`` column of the same name.
NUMBER_FIELDS = ("id", "cores_total", "ram_mb_total", "disk_gb_total", "cores_used", "ram_mb_used", "disk_gb_used",
                 "generation")


@dataclass(frozen=True)
class Attribute:
    """A number a weigher reads off a slave: a signed sum of SlaveState fields (``terms``: (+1 or -1,
    field)). The fields are the ``slaves`` columns of the same names, so the database computes the same
    number from the same declaration. ``fits`` names the Demand field the filters require this attribute
    to reach (free cores >= demand.cores), if any: walking slaves by it ascending, the walk may start at
    the demand."""

    name: str
    terms: tuple[tuple[int, str], ...]
    fits: str | None = None
    of: Callable[[SlaveState], int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.terms or any(sign not in (1, -1) or name not in NUMBER_FIELDS for sign, name in self.terms):
            raise ValueError(f"attribute {self.name}: terms are (+1 or -1, one of {', '.join(NUMBER_FIELDS)})")
        if self.fits is not None and self.fits not in ("cores", "ram_mb", "disk_gb"):
            raise ValueError(f"attribute {self.name}: fits names a Demand field, not {self.fits!r}")
        (s1, f1), *rest = self.terms
        if not rest and s1 == 1:  # the common shapes get a plain function: PlacementIndex calls it per update
            of = attrgetter(f1)
        elif len(rest) == 1 and (s1, rest[0][0]) == (1, -1):
            f2 = rest[0][1]
            of = lambda s: getattr(s, f1) - getattr(s, f2)  # noqa: E731
        else:
            terms = self.terms
            of = lambda s: sum(sign * getattr(s, name) for sign, name in terms)  # noqa: E731
        object.__setattr__(self, "of", of)


ATTRIBUTES: dict[str, Attribute] = {a.name: a for a in (
    Attribute("used_cores", ((1, "cores_used"),)),
    Attribute("free_cores", ((1, "cores_total"), (-1, "cores_used")), fits="cores"),
    Attribute("free_ram_mb", ((1, "ram_mb_total"), (-1, "ram_mb_used")), fits="ram_mb"),
)}


class Weigher(NamedTuple):
    """One term of a policy: the attribute's raw values, min-max normalised over the survivors, times
    ``multiplier``. The multiplier's sign is the direction: negative, a smaller value is better."""

    attribute: str
    multiplier: float


@dataclass(frozen=True)
class Policy:
    """A placement policy, declared once: the Python ranking, the index order and the SQL order all
    come from ``weighers`` and ``tie_break`` (whole-number SlaveState fields, ascending, ending with the
    unique ``id``, so the order is total and every derivation breaks ties alike).

    ``order`` is best first as a lexicographic order of (attribute, descending), before the tie-break,
    and ``sort_key`` that order as a key (ascending = best first); both None for a blend of weighers (a
    sum of normalised values is no lexicographic order: such a policy is placed by the pipeline only)."""

    name: str
    weighers: tuple[Weigher, ...]
    description: str
    tie_break: tuple[str, ...] = ("id",)
    order: tuple[tuple[Attribute, bool], ...] | None = field(init=False, repr=False, compare=False)
    sort_key: Callable[[SlaveState], tuple] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        weighers = tuple(Weigher(*w) for w in self.weighers)
        if not weighers:
            raise ValueError(f"policy {self.name}: at least one weigher")
        for w in weighers:
            if w.attribute not in ATTRIBUTES:
                raise ValueError(f"policy {self.name}: no attribute {w.attribute!r} (known: {', '.join(ATTRIBUTES)})")
            if not w.multiplier:
                raise ValueError(f"policy {self.name}: the multiplier of {w.attribute} is 0")
        if not self.tie_break or self.tie_break[-1] != "id" or not set(self.tie_break) <= set(NUMBER_FIELDS):
            raise ValueError(f"policy {self.name}: tie_break is whole-number fields ending with 'id'")
        object.__setattr__(self, "weighers", weighers)
        order = None
        sort_key = None
        if len(weighers) == 1:
            (attribute, multiplier), = weighers
            order = ((ATTRIBUTES[attribute], multiplier > 0),)
            of, tie = ATTRIBUTES[attribute].of, attrgetter(*self.tie_break)
            if len(self.tie_break) == 1:  # PlacementIndex calls this on every update: keep it a plain tuple
                sort_key = (lambda s: (-of(s), tie(s))) if multiplier > 0 else (lambda s: (of(s), tie(s)))
            else:
                sort_key = (lambda s: (-of(s), *tie(s))) if multiplier > 0 else (lambda s: (of(s), *tie(s)))
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "sort_key", sort_key)

    def rank_key(self, s: SlaveState) -> tuple:
        """``sort_key`` without the tie-break: equal for equally good slaves."""
        if self.order is None:
            raise ValidationError("placement_policy", f"{self.name!r} blends weighers: it has no order; use place()")
        return tuple(-a.of(s) if descending else a.of(s) for a, descending in self.order)

    def tie_key(self, s: SlaveState) -> tuple:
        return tuple(getattr(s, f) for f in self.tie_break)

    def start_key(self, demand: Demand) -> tuple | None:
        """Where a walk in ``sort_key`` order may start: slaves before it cannot pass the filters (their
        leading attribute is below what the demand needs). None: start at the best end."""
        if self.order is None:
            return None
        lead, descending = self.order[0]
        return (getattr(demand, lead.fits),) if lead.fits is not None and not descending else None


POLICIES: dict[str, Policy] = {p.name: p for p in (
    Policy("spread", (Weigher("used_cores", -1.0),), "fewest used cores (least loaded)"),
    Policy("pack", (Weigher("free_cores", -1.0),), "fewest free cores that fit (fullest)"),
)}


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
            known = POLICIES.get(self.policy)
            tail = f"chose {self.slave.name} ({known.description if known else self.policy})"
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
    for attribute, multiplier in policy.weighers:
        value_of = ATTRIBUTES[attribute].of
        raw = [float(value_of(s)) for s in survivors]
        low, high = min(raw), max(raw)
        span = high - low
        for i, value in enumerate(raw):
            normalised = (value - low) / span if span else 0.0
            totals[i] += multiplier * normalised
    return totals


def _best_first(survivors: Sequence[SlaveState], policy: Policy) -> Callable[[int], tuple]:
    """Ascending = best first: the highest weight, then the policy's tie-break."""
    weights = weigh(survivors, policy)
    tie = attrgetter(*policy.tie_break)  # one field: a number, several: a tuple; alike for every slave
    return lambda i: (-weights[i], tie(survivors[i]))


def place(slaves: Iterable[SlaveState], demand: Demand, policy: str | Policy = "spread") -> Placement:
    """The reference decision: filters, then weighers; highest weight wins, ties to the tie-break
    (the lowest id)."""
    pol = policy if isinstance(policy, Policy) else get_policy(policy)
    survivors, counts, reason = run_filters(slaves, demand)
    if not survivors:
        return Placement(None, pol.name, tuple(counts), reason)
    best = min(range(len(survivors)), key=_best_first(survivors, pol))
    return Placement(survivors[best], pol.name, tuple(counts))


def rank(slaves: Iterable[SlaveState], demand: Demand, policy: str | Policy = "spread") -> list[SlaveState]:
    """Every slave that passes the filters, best first by the reference pipeline (``place`` takes the
    first): the order the database's ORDER BY must give (tests/db/test_placement_sql.py)."""
    pol = policy if isinstance(policy, Policy) else get_policy(policy)
    survivors = run_filters(slaves, demand)[0]
    if not survivors:
        return []
    key = _best_first(survivors, pol)
    return [survivors[i] for i in sorted(range(len(survivors)), key=key)]


class PlacementIndex:
    """Slaves that are up, sorted best-first for a single-weigher policy; O(log n) updates."""

    def __init__(self, slaves: Iterable[SlaveState], policy: str | Policy = "spread") -> None:
        self.policy = policy if isinstance(policy, Policy) else get_policy(policy)
        if self.policy.sort_key is None or self.policy.order is None:
            raise ValidationError("placement_policy", f"{self.policy.name!r} has no indexed form; use place()")
        # Entries are sort_key(s): the rank part, then the tie-break, which ends with the slave's id.
        self._key = self.policy.sort_key
        self._rank = len(self.policy.order)
        self._slaves: dict[int, SlaveState] = {}
        for s in slaves:
            self._slaves[s.id] = s
        self._keys: list[tuple] = sorted(self._key(s) for s in self._slaves.values() if s.status == "up")

    def __len__(self) -> int:
        return len(self._slaves)

    def slaves(self) -> list[SlaveState]:
        return list(self._slaves.values())

    def get(self, slave_id: int) -> SlaveState:
        return self._slaves[slave_id]

    def place(self, demand: Demand, rng: random.Random | None = None, ties: int = 64) -> Placement:
        """The best slave for ``demand``; ties go to the tie-break (the lowest id), or with ``rng`` to a
        random one of up to ``ties`` equally good slaves (writers that share a pool then rarely collide)."""
        keys = self._keys
        start = 0
        start_key = self.policy.start_key(demand)
        if start_key is not None:
            start = bisect.bisect_left(keys, start_key)
        slaves = self._slaves
        cores, ram, disk = demand.cores, demand.ram_mb, demand.disk_gb
        if rng is None:  # the hot path: the first slave in policy order that fits
            for i in range(start, len(keys)):
                s = slaves[keys[i][-1]]
                if (s.cores_total - s.cores_used >= cores and s.ram_mb_total - s.ram_mb_used >= ram
                        and s.disk_gb_total - s.disk_gb_used >= disk):
                    return Placement(s, self.policy.name)
        else:
            rank = self._rank
            tied: list[SlaveState] = []
            best_key: tuple | None = None
            for i in range(start, len(keys)):
                if best_key is not None and keys[i][:rank] != best_key:
                    break  # past the equally good slaves
                s = slaves[keys[i][-1]]
                if (s.cores_total - s.cores_used >= cores and s.ram_mb_total - s.ram_mb_used >= ram
                        and s.disk_gb_total - s.disk_gb_used >= disk):
                    best_key = keys[i][:rank]
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
            old_key = self._key(old)
            i = bisect.bisect_left(self._keys, old_key)
            if i < len(self._keys) and self._keys[i] == old_key:
                del self._keys[i]
        self._slaves[slave.id] = slave
        if slave.status == "up":
            bisect.insort(self._keys, self._key(slave))


def first_fit(slaves: Sequence[SlaveState], demand: Demand) -> SlaveState | None:
    """The floor the benchmark compares with: a bare scan for the first slave that fits."""
    for s in slaves:
        if (s.status == "up" and s.cores_total - s.cores_used >= demand.cores
                and s.ram_mb_total - s.ram_mb_used >= demand.ram_mb
                and s.disk_gb_total - s.disk_gb_used >= demand.disk_gb):
            return s
    return None
