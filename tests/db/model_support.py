"""The stateful model test's view of the lab database, and its invariants (tests/db/test_model.py).

Everything here reads the database directly (the SQLAlchemy models of vcl_sched.models) and checks it
against independent counts: sweeps over reservation windows, sums over instances, the addresses the
model knows the master still carries. Each check returns the violations it found, as sentences; the
machine asserts that the list is empty and prints it otherwise. Nothing here calls the scheduler's own
decision code (commitments, promises, calendar), so a bug there cannot hide itself.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select, text

from vcl_sched import db
from vcl_sched.models import AddressPair, AuditLog, Instance, Reservation, Slave

LIVE = ("pending", "running", "suspended")
HOLDS = ("pending", "running")  # pending instances hold capacity only when they have a slave
ENDED = ("stopped", "failed", "lost")
BOOKED = ("accepted", "active")
LOOKAHEAD_HOURS = 5  # booking.lookahead_max_hours, its default (the model does not change it)
# Every table the model writes to, children first: a new example starts from an empty lab (the schema and
# the lock rows stay, so no migration runs per example).
TABLES = ("audit_log", "address_pairs", "instances", "reservations", "memberships", "users", "images", "slaves",
          "groups", "settings")


def reset(url: str) -> None:
    """An empty lab with default settings, as ``vcl init`` leaves it, in milliseconds."""
    eng = db.engine(url)
    with eng.begin() as conn:
        if eng.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        else:
            for table in TABLES:
                conn.execute(text(f"DELETE FROM {table}"))
    db.write(lambda s: db.save_settings(s, db.load_settings(s)), url)


@dataclass(frozen=True)
class Inst:
    id: int
    state: str
    kind: str
    slave_id: int | None
    reservation_id: int | None
    seat: int | None
    cores: int
    ram_mb: int
    disk_gb: int
    mac: str | None
    private_ip: str | None
    public_ip: str | None
    priority: float
    lease_owner: str | None
    lease_until: datetime | None
    ends_at: datetime | None
    user_id: int | None = None

    @property
    def addresses(self) -> tuple[str | None, str | None, str | None]:
        return (self.private_ip, self.public_ip, self.mac)

    def leased(self, now: datetime) -> bool:
        return self.lease_owner is not None and self.lease_until is not None and self.lease_until > now

    def holds(self) -> bool:
        return self.slave_id is not None and self.state in HOLDS


@dataclass(frozen=True)
class Res:
    id: int
    state: str
    seats: int
    cores: int
    ram_mb: int
    start: datetime | None
    end: datetime | None
    hours: float = 0
    prelaunch: int = 1  # 0: a seat runs once a member takes it


@dataclass(frozen=True)
class Host:
    id: int
    name: str
    status: str
    cores_total: int
    cores_used: int
    ram_mb_total: int
    ram_mb_used: int
    disk_gb_total: int
    disk_gb_used: int


@dataclass(frozen=True)
class Pair:
    id: int
    private_ip: str
    public_ip: str
    instance_id: int | None
    mac: str | None
    stale_instance: int | None


@dataclass
class Snap:
    """The whole lab database at one moment (one read transaction)."""

    now: datetime
    slaves: list[Host]
    reservations: list[Res]
    instances: list[Inst]
    pairs: list[Pair]
    committed: dict[int, int] = field(default_factory=dict)  # instance → audit id of its last claim or resume
    booked: dict[int, int] = field(default_factory=dict)  # reservation → audit id of its acceptance or last move

    @property
    def up(self) -> list[Host]:
        return [s for s in self.slaves if s.status == "up"]

    def any_down(self) -> bool:
        return any(s.status != "up" for s in self.slaves)

    def by_id(self) -> dict[int, Inst]:
        return {i.id: i for i in self.instances}

    def live(self) -> list[Inst]:
        return [i for i in self.instances if i.state in LIVE]


def snapshot(url: str, now: datetime) -> Snap:
    with db.read(url) as s:
        slaves = [Host(r.id, r.name, str(r.status), r.cores_total, r.cores_used, r.ram_mb_total, r.ram_mb_used,
                       r.disk_gb_total, r.disk_gb_used) for r in s.scalars(select(Slave).order_by(Slave.id))]
        reservations = [Res(r.id, str(r.state), r.seats, r.cores, r.ram_mb, r.start, r.end, r.hours, r.prelaunch)
                        for r in s.scalars(select(Reservation).order_by(Reservation.id))]
        instances = [Inst(i.id, str(i.state), str(i.kind), i.slave_id, i.reservation_id, i.seat, i.cores, i.ram_mb,
                          i.disk_gb, i.mac, i.private_ip, i.public_ip, i.priority, i.lease_owner, i.lease_until,
                          i.ends_at, i.user_id) for i in s.scalars(select(Instance).order_by(Instance.id))]
        pairs = [Pair(p.id, p.private_ip, p.public_ip, p.instance_id, p.mac, p.stale_instance)
                 for p in s.scalars(select(AddressPair).order_by(AddressPair.id))]
        committed: dict[int, int] = {}
        booked: dict[int, int] = {}
        for aid, kind, oid, action in s.execute(select(AuditLog.id, AuditLog.object_type, AuditLog.object_id,
                                                       AuditLog.action).order_by(AuditLog.id)):
            if kind == "instance" and action in ("claim", "resume"):
                committed[oid] = aid
            elif kind == "reservation" and action in ("accepted", "moved"):
                booked[oid] = aid
    return Snap(now, slaves, reservations, instances, pairs, committed, booked)


def _sweep_peak(windows: Iterable[tuple[datetime, datetime, int]]) -> tuple[int, datetime | None]:
    """The most cores held at one instant by half-open windows, and the first instant it is reached."""
    events = sorted(((s, c) for s, e, c in windows if e > s), key=lambda x: x[0])
    ends = sorted(((e, -c) for s, e, c in windows if e > s), key=lambda x: x[0])
    merged = sorted(events + ends, key=lambda x: (x[0], x[1]))  # at equal times ends (negative) first
    level = peak = 0
    when = None
    for at, delta in merged:
        level += delta
        if level > peak:
            peak, when = level, at
    return peak, when


# --- 1. no time slice over capacity -------------------------------------------------------------------

def calendar_over_capacity(snap: Snap) -> list[str]:
    """Accepted and active reservations' reserved cores (seats × cores) at every instant ≤ the up slaves'
    cores. Returned even when a slave is down: the caller records those instead of failing."""
    pool = sum(s.cores_total for s in snap.up)
    windows = [(r.start, r.end, r.seats * r.cores) for r in snap.reservations
               if r.state in BOOKED and r.start is not None and r.end is not None]
    peak, when = _sweep_peak(windows)
    if peak > pool:
        return [f"calendar: {peak} cores reserved at {when:%Y-%m-%d %H:%M} but the up slaves have {pool}"]
    return []


def _packs(seats: list[tuple[int, int]], free: list[list[int]]) -> bool:
    """Whether the seats (cores, MB) fit into the slaves' free (cores, MB), each seat on one slave: an exact
    search (largest seats first, equal slaves tried once), independent of the scheduler's best-fit."""
    if not seats:
        return True
    (cores, ram), rest = seats[0], seats[1:]
    tried = set()
    for room in free:
        key = (room[0], room[1])
        if key in tried or room[0] < cores or room[1] < ram:
            continue
        tried.add(key)
        room[0] -= cores
        room[1] -= ram
        ok = _packs(rest, free)
        room[0] += cores
        room[1] += ram
        if ok:
            return True
    return False


def calendar_unplaceable(snap: Snap) -> list[str]:
    """At every instant, the seats of accepted and active reservations can be placed on the up slaves, each
    seat whole on one slave (admission's claim that every seat is placeable; a necessary condition checked by
    exact search at each start). Like the sweep, only meaningful while no slave is down."""
    booked = [r for r in snap.reservations if r.state in BOOKED and r.start is not None and r.end is not None]
    for t in sorted({r.start for r in booked}):
        seats = sorted(((r.cores, r.ram_mb) for r in booked if r.start <= t < r.end for _ in range(r.seats)),
                       reverse=True)
        if not _packs(seats, [[s.cores_total, s.ram_mb_total] for s in snap.up]):
            return [f"calendar: the seats reserved at {t:%Y-%m-%d %H:%M} ({seats}) cannot be placed on the up slaves"
                    f" {[(s.name, s.cores_total, s.ram_mb_total) for s in snap.up]}"]
    return []


def bookings_in_policy(snap: Snap) -> list[str]:
    """Accepted bookings (moved or not) keep their length and stay inside one day's 09:00–17:00."""
    bad = []
    for r in snap.reservations:
        if r.state in BOOKED and r.start is not None and r.end is not None:
            opens = r.start.replace(hour=9, minute=0)
            if (r.end - r.start != timedelta(hours=r.hours) or r.start < opens
                    or r.end > opens.replace(hour=17)):
                bad.append(f"reservation {r.id} {r.start:%Y-%m-%d %H:%M}-{r.end:%H:%M} ({r.hours} h) breaks the policy")
    return bad


# --- 2. no core, address pair or MAC held twice ---------------------------------------------------------

def claims_consistent(snap: Snap) -> list[str]:
    bad: list[str] = []
    slaves = {s.id: s for s in snap.slaves}
    cores: dict[int, int] = defaultdict(int)
    ram: dict[int, int] = defaultdict(int)
    disk: dict[int, int] = defaultdict(int)
    for i in snap.instances:
        if i.state in ENDED:
            continue
        if i.state in ("running", "suspended") and (i.slave_id is None or not i.mac or not i.private_ip):
            bad.append(f"instance {i.id} is {i.state} without a slave or addresses")
        if (i.slave_id is None) != (i.mac is None) or (i.mac is None) != (i.private_ip is None):
            bad.append(f"instance {i.id} ({i.state}): slave {i.slave_id} and addresses {i.addresses} must go together")
        if i.slave_id is None:
            continue
        if i.slave_id not in slaves:
            bad.append(f"instance {i.id} on unknown slave {i.slave_id}")
            continue
        if i.state in ("running", "suspended") and slaves[i.slave_id].status == "down":
            bad.append(f"instance {i.id} is {i.state} on down slave {slaves[i.slave_id].name}")
        disk[i.slave_id] += i.disk_gb
        if i.state in HOLDS:
            cores[i.slave_id] += i.cores
            ram[i.slave_id] += i.ram_mb
    for s in snap.slaves:
        if (s.cores_used, s.ram_mb_used, s.disk_gb_used) != (cores[s.id], ram[s.id], disk[s.id]):
            bad.append(f"slave {s.name}: used cores/RAM/disk {s.cores_used}/{s.ram_mb_used}/{s.disk_gb_used}"
                       f" but its instances hold {cores[s.id]}/{ram[s.id]}/{disk[s.id]}")
        if not (0 <= s.cores_used <= s.cores_total and 0 <= s.ram_mb_used <= s.ram_mb_total
                and 0 <= s.disk_gb_used <= s.disk_gb_total):
            bad.append(f"slave {s.name}: used {s.cores_used}/{s.ram_mb_used}/{s.disk_gb_used} outside its totals")
    live = [i for i in snap.live() if i.mac is not None]
    for what, get in (("MAC", lambda i: i.mac), ("private IP", lambda i: i.private_ip),
                      ("public IP", lambda i: i.public_ip)):
        seen: dict[str, int] = {}
        for i in live:
            value = get(i)
            if value in seen:
                bad.append(f"{what} {value} held by instances {seen[value]} and {i.id}")
            seen[value] = i.id
    held = {p.instance_id: p for p in snap.pairs if p.instance_id is not None}
    by_id = snap.by_id()
    for i in live:
        p = held.get(i.id)
        if p is None or (p.private_ip, p.public_ip, p.mac) != i.addresses:
            bad.append(f"instance {i.id} has addresses {i.addresses} but its pair is {p}")
    for p in snap.pairs:
        if p.instance_id is not None:
            owner = by_id.get(p.instance_id)
            if owner is None or owner.state not in LIVE or owner.addresses != (p.private_ip, p.public_ip, p.mac):
                bad.append(f"pair {p.public_ip}/{p.private_ip} is held by instance {p.instance_id}, which is"
                           f" {owner.state if owner else 'missing'} with {owner.addresses if owner else None}")
            if p.stale_instance is not None:
                bad.append(f"pair {p.private_ip} is held by {p.instance_id} while quarantined for {p.stale_instance}")
        elif p.stale_instance is None and p.mac is not None:
            bad.append(f"free pair {p.private_ip} still carries MAC {p.mac}")
    return bad


def ended_hold_nothing(snap: Snap) -> list[str]:
    """An instance that ended keeps no slave, MAC or address: once its pair is free again, another VM may take
    it, and two rows must never show the same address."""
    return [f"instance {i.id} is {i.state} but keeps slave {i.slave_id} / addresses {i.addresses}"
            for i in snap.instances
            if i.state in ENDED and (i.slave_id is not None or i.mac or i.private_ip or i.public_ip)]


def master_reuse(snap: Snap, master: dict[int, set[tuple[str, str, str]]]) -> list[str]:
    """An address or MAC is used again only after the master's entries of its former VM are gone: no live
    instance holds an address the model knows the master still carries for another instance."""
    bad = []
    carried: dict[str, int] = {}
    for owner, entries in master.items():
        for entry in entries:
            for value in entry:
                carried[value] = owner
    for i in snap.live():
        for value in i.addresses:
            if value is not None and carried.get(value, i.id) != i.id:
                bad.append(f"instance {i.id} ({i.state}) got {value}, which the master still carries for"
                           f" instance {carried[value]}")
    return bad


# --- 4. and 5. ends ----------------------------------------------------------------------------------

def ends_set(snap: Snap) -> list[str]:
    bad = []
    horizon = snap.now + timedelta(hours=LOOKAHEAD_HOURS)
    for i in snap.live():
        if i.ends_at is None and (i.state in ("running", "suspended") or i.kind == "AR" or i.slave_id is not None):
            bad.append(f"instance {i.id} ({i.kind}, {i.state}, slave {i.slave_id}) has no end")
        if i.kind == "BE" and i.ends_at is not None and i.ends_at > horizon:
            bad.append(f"best-effort instance {i.id} ends at {i.ends_at}, beyond the {LOOKAHEAD_HOURS} h look-ahead")
    return bad


def expired_after_dispatch(snap: Snap) -> list[str]:
    """Right after a dispatch nothing runs (or waits to run) past its end, except a launch that holds a
    live lease (that launch ends it)."""
    bad = []
    for i in snap.live():
        if i.ends_at is not None and i.ends_at <= snap.now and not (i.state == "pending" and i.leased(snap.now)):
            bad.append(f"instance {i.id} is {i.state} at {snap.now:%H:%M}, past its end {i.ends_at:%H:%M}")
    return bad


# --- 3. and 6. reservations are promises -------------------------------------------------------------

def _live_seats_twice(snap: Snap, key, what) -> list[str]:
    """Live AR instances that share ``key(i)`` (None: not counted); ``what(key)`` says what was doubled."""
    seen: dict[tuple, int] = {}
    bad = []
    for i in snap.live():
        k = key(i) if i.kind == "AR" else None
        if k is None:
            continue
        if k in seen:
            bad.append(f"{what(k)}: {seen[k]} and {i.id}")
        seen[k] = i.id
    return bad


def one_seat_per_member(snap: Snap) -> list[str]:
    """A member holds at most one live seat of a reservation."""
    return _live_seats_twice(snap, lambda i: (i.reservation_id, i.user_id) if i.user_id is not None else None,
                             lambda k: f"user {k[1]} holds two seats of reservation {k[0]}")


def one_instance_per_seat(snap: Snap) -> list[str]:
    return _live_seats_twice(snap, lambda i: (i.reservation_id, i.seat),
                             lambda k: f"seat {k} has two live instances")


def seats_not_running(snap: Snap, skip_seats: set[tuple[int, int]]) -> list[str]:
    """Right after a dispatch inside a reservation's window: it is active and each of its seats runs."""
    bad = []
    running = {(i.reservation_id, i.seat) for i in snap.instances if i.kind == "AR" and i.state == "running"}
    for r in snap.reservations:
        if r.start is None or r.end is None or not (r.start <= snap.now < r.end) or r.state not in BOOKED:
            continue
        if r.state != "active":
            bad.append(f"reservation {r.id} ({r.start:%H:%M}-{r.end:%H:%M}) is {r.state} at {snap.now:%H:%M}")
            continue
        # A seat of a session without prelaunch runs once a member has taken it (it has a live instance).
        taken = {i.seat for i in snap.live() if i.kind == "AR" and i.reservation_id == r.id}
        missing = [n for n in range(r.seats) if (r.id, n) not in skip_seats and (r.id, n) not in running
                   and (r.prelaunch or n in taken)]
        if missing:
            states = {(i.seat, i.id): i.state for i in snap.instances if i.reservation_id == r.id}
            bad.append(f"reservation {r.id} ({r.seats} x {r.cores} cores, {r.start:%H:%M}-{r.end:%H:%M}):"
                       f" seats {missing} not running at {snap.now:%H:%M}; its instances {states}")
    return bad


def seat_waits_behind_best_effort(snap: Snap) -> list[str]:
    """Right after a dispatch (with no launch failure injected), a reserved seat that waits could not have
    been placed on any up slave even by suspending every best-effort VM there: an AR never waits behind BE.
    Once its window has opened: a prelaunched seat before its window starts only on its own slave and never
    suspends anyone (best-effort VMs are suspended for a seat at its start, SPEC §4), so it may wait until then
    (found by the model, M4: a seat whose slave was down waited at start - 10 min behind a best-effort VM)."""
    bad = []
    booked = {r.id: r for r in snap.reservations}
    be = defaultdict(lambda: [0, 0])
    for i in snap.instances:
        if i.kind == "BE" and i.holds():
            be[i.slave_id][0] += i.cores
            be[i.slave_id][1] += i.ram_mb
    for i in snap.instances:
        if i.kind != "AR" or i.state != "pending" or i.leased(snap.now):
            continue
        r = booked.get(i.reservation_id)
        if r is None or r.state != "active" or (i.ends_at is not None and i.ends_at <= snap.now):
            continue
        if r.start is not None and snap.now < r.start:  # prelaunched, before the bell
            continue
        for s in snap.up:
            free_c = s.cores_total - s.cores_used + be[s.id][0]
            free_r = s.ram_mb_total - s.ram_mb_used + be[s.id][1]
            if free_c >= i.cores and free_r >= i.ram_mb:
                bad.append(f"seat instance {i.id} ({i.cores} cores) waits while slave {s.name} has"
                           f" {s.cores_total - s.cores_used} free cores and {be[s.id][0]} in best-effort VMs")
                break
    return bad


# --- 7. no best-effort VM is committed into cores a reservation needs -----------------------------------

def best_effort_in_reserved_cores(snap: Snap, user_resumed: set[int]) -> list[str]:
    """A best-effort VM claimed (or resumed by the dispatcher) never sits in cores that reservations
    accepted before it need: at every instant of its window, their seats' cores plus its own ≤ the pool.
    A pool-wide (so weaker) form of the per-slave look-ahead, counted independently. Not checked while a
    slave is down (capacity lost), nor for a VM the model itself resumed (an admin's resume)."""
    if snap.any_down():
        return []
    pool = sum(s.cores_total for s in snap.slaves)
    bad = []
    for b in snap.instances:
        if b.kind != "BE" or not b.holds() or b.id not in snap.committed or b.id in user_resumed or b.ends_at is None:
            continue
        mark = snap.committed[b.id]
        before = [r for r in snap.reservations if r.state in BOOKED and r.start is not None and r.end is not None
                  and snap.booked.get(r.id, 1 << 62) < mark and r.end > snap.now and r.start < b.ends_at]
        for t in sorted({snap.now} | {r.start for r in before if r.start > snap.now}):
            reserved = sum(r.seats * r.cores for r in before if r.start <= t < r.end)
            if reserved + b.cores > pool:
                bad.append(f"best-effort VM {b.id} ({b.cores} cores, until {b.ends_at:%H:%M}) meets, at {t:%H:%M},"
                           f" {reserved} cores reserved before it was placed: the pool has {pool}")
                break
    return bad
