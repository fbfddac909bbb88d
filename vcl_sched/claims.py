"""Claims: what an instance holds, taken and given back in the database.

- Choosing a slave in SQL (``choose_slave``): the filters in WHERE and the policy's order, derived from
  its one declaration in ``placement.POLICIES`` (``order_by``), so the database walks the index kept in
  that order and stops at the first slave that fits.
- The claim itself: a compare-and-swap on the slave's generation (``claim_slave``); a lost race raises
  ``db.RetryTransaction`` (``StaleClaim``) and the decision is taken again on fresh state.
- Address pairs and MACs (``allocate_addresses``), the claim transaction of a decided best-effort request
  (``commit_claim``: slave, instance, pair, MAC and audit row, all or none), and giving it all back
  (``release``, ``set_suspended``).

Statements are built once (bound parameters, never formatted text) and ``db.Prepared`` compiles them
once per dialect, so each call only binds values: the request and claim paths run on every launch.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, and_, bindparam, case, func, insert, or_, select, type_coerce, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from . import acting, authz, config, db, placement
from .audit import audit
from .catalogue import user_ref
from .errors import CapacityError, ConflictError, NotFoundError
from .models import AddressPair, Group, Instance, InstanceKind, InstanceState, Slave, SlaveStatus
from .validate import iso, whole

HOLDS_CAPACITY = (InstanceState.PENDING, InstanceState.RUNNING)  # suspended VMs hold only disk


# --- placement in SQL ------------------------------------------------------------------------------

_D_CORES, _D_RAM, _D_DISK = bindparam("d_cores"), bindparam("d_ram"), bindparam("d_disk")
# The status is read as its text: SlaveState holds the string, and the enum round trip was a third
# of the cost of reading every slave (a dispatcher rebuilding its view after a lost race).
_SLAVE_COLUMNS = (Slave.id, Slave.name, Slave.cores_total, Slave.ram_mb_total, Slave.disk_gb_total,
                  Slave.cores_used, Slave.ram_mb_used, Slave.disk_gb_used, type_coerce(Slave.status, String),
                  Slave.generation)
_IS_UP = Slave.status == SlaveStatus.UP
_HAS_CORES = Slave.cores_total - Slave.cores_used >= _D_CORES
_HAS_RAM = Slave.ram_mb_total - Slave.ram_mb_used >= _D_RAM
_HAS_DISK = Slave.disk_gb_total - Slave.disk_gb_used >= _D_DISK
_CASCADE = (_IS_UP, and_(_IS_UP, _HAS_CORES), and_(_IS_UP, _HAS_CORES, _HAS_RAM),
            and_(_IS_UP, _HAS_CORES, _HAS_RAM, _HAS_DISK))
_FILTER_COUNTS = db.Prepared(select(func.count(), *(func.coalesce(func.sum(case((cond, 1), else_=0)), 0)
                                                     for cond in _CASCADE)))
_UP_CORES = db.Prepared(select(func.coalesce(func.sum(Slave.cores_total), 0)).where(_IS_UP, Slave.lend_state.is_(None)))


def sql_attribute(attribute: placement.Attribute) -> ColumnElement[int]:
    """The attribute as the database computes it: the same signed sum, of the columns its fields name."""
    (sign, name), *rest = attribute.terms
    expr: Any = getattr(Slave, name) if sign > 0 else -getattr(Slave, name)
    for sign, name in rest:
        expr = expr + getattr(Slave, name) if sign > 0 else expr - getattr(Slave, name)
    return expr


def order_by(policy: placement.Policy) -> tuple[Any, ...]:
    """ORDER BY for ``policy``, best first: its attribute in the weigher's direction, then the tie-break
    columns, ascending: the order of ``policy.sort_key`` and of the reference ranking (placement.rank)."""
    if policy.order is None:
        raise ValueError(f"policy {policy.name}: a blend of weighers has no SQL order; it is placed in Python")
    terms = [sql_attribute(a).desc() if descending else sql_attribute(a) for a, descending in policy.order]
    return (*terms, *(getattr(Slave, name) for name in policy.tie_break))


_FITS = {"cores": _D_CORES, "ram_mb": _D_RAM, "disk_gb": _D_DISK}


def choose_statement(policy: placement.Policy) -> Any:
    """The slaves that pass the filters, best first (no LIMIT): what ``choose_slave`` runs.

    The filter on the policy's leading attribute is written as that attribute's expression (``free cores
    >= n``): the walk of the index in policy order then starts at the demand. The cores filter of any
    other policy is written as ``cores_used + n <= cores_total`` (the same test): as ``cores_total -
    cores_used >= n`` it would match the pack index's expression, and SQLite's planner would range-scan
    that index and sort, instead of walking the policy's own index in order."""
    order = order_by(policy)
    assert policy.order is not None
    fits = {"cores": Slave.cores_used + _D_CORES <= Slave.cores_total, "ram_mb": _HAS_RAM, "disk_gb": _HAS_DISK}
    lead, descending = policy.order[0]
    if lead.fits is not None and not descending:
        fits[lead.fits] = sql_attribute(lead) >= _FITS[lead.fits]
    return select(*_SLAVE_COLUMNS).where(_IS_UP, *fits.values()).order_by(*order)


_CHOOSE = {name: choose_statement(policy) for name, policy in placement.POLICIES.items() if policy.order is not None}
TIE_SAMPLE = 64  # after a lost race, choose at random among up to this many equally good slaves
_CHOOSE_BEST = {name: db.Prepared(stmt.limit(1)) for name, stmt in _CHOOSE.items()}
_CHOOSE_TIED = {name: db.Prepared(stmt.limit(TIE_SAMPLE)) for name, stmt in _CHOOSE.items()}


def _demand_params(demand: placement.Demand) -> dict[str, int]:
    return {"d_cores": demand.cores, "d_ram": demand.ram_mb, "d_disk": demand.disk_gb}


def _state(row: Any) -> placement.SlaveState:
    return placement.SlaveState(*row)


_SLAVES = db.Prepared(select(*_SLAVE_COLUMNS).order_by(Slave.id))
_SLAVE = db.Prepared(select(*_SLAVE_COLUMNS).where(Slave.id == bindparam("sid")))


def slave_states(q: Session | db.Direct) -> list[placement.SlaveState]:
    return [_state(r) for r in _SLAVES.all(q)]


def slave_state(q: Session | db.Direct, slave_id: int) -> placement.SlaveState:
    row = _SLAVE.first(q, {"sid": slave_id})
    if row is None:
        raise NotFoundError(f"slave {slave_id}: no such slave")
    return _state(row)


def filter_counts(q: Session | db.Direct, demand: placement.Demand) -> tuple[tuple[str, int], ...]:
    """The filter cascade's counts (as placement.run_filters reports them), in one aggregate query."""
    row = _FILTER_COUNTS.first(q, _demand_params(demand))
    counts = [("all", int(row[0]))]
    for (name, _), n in zip(placement.FILTERS, row[1:], strict=True):
        counts.append((name, int(n)))
        if not n:
            break
    return tuple(counts)


def choose_slave(q: Session | db.Direct, demand: placement.Demand, policy: str, tie_break: str = "lowest-id",
                 rng: random.Random | None = None, explain: bool = True) -> placement.Placement:
    """Place with the database doing filter + weigh (an index walk in policy order).

    With ``explain`` the placement carries the filter cascade's counts (one aggregate scan); a
    request that does not fit always gets them and the reason, from the Python pipeline.
    ``tie_break="random"`` picks among the equally good slaves at random (used after a lost race,
    so concurrent writers stop choosing the same slave, as nova's host_subset_size does)."""
    if policy not in _CHOOSE:
        return placement.place(slave_states(q), demand, policy)
    params = _demand_params(demand)
    if tie_break == "random":
        states = [_state(r) for r in _CHOOSE_TIED[policy].all(q, params)]
        key = placement.get_policy(policy).rank_key
        top = key(states[0]) if states else None
        best = [s for s in states if key(s) == top]
        chosen = (rng or random).choice(best) if best else None
    else:
        row = _CHOOSE_BEST[policy].first(q, params)
        chosen = _state(row) if row is not None else None
    if chosen is None:
        return placement.place(slave_states(q), demand, policy)
    counts = filter_counts(q, demand) if explain else ()
    return placement.Placement(chosen, policy, counts)


def up_cores(q: Session | db.Direct) -> int:
    """The cores of the lab's own slaves that are up: the pool the calendar books (no promise rests on a lent PC,
    whose owner may take it back)."""
    return int(_UP_CORES.scalar(q))


# --- claims: slaves by compare-and-swap, address pairs and MACs ----------------------------------------

# The claim transaction (commit_claim) runs these on the DBAPI cursor (db.write_direct), where
# SQLAlchemy's per-statement cost was most of a claim's time; other writers run them in a Session.
_CLAIM = db.Prepared(update(Slave).where(Slave.id == bindparam("sid"), Slave.generation == bindparam("gen"))
                     .values(cores_used=Slave.cores_used + _D_CORES, ram_mb_used=Slave.ram_mb_used + _D_RAM,
                             disk_gb_used=Slave.disk_gb_used + _D_DISK, generation=Slave.generation + 1,
                             updated_at=bindparam("now")))
_RELEASE = (update(Slave).where(Slave.id == bindparam("sid"))
            .values(cores_used=Slave.cores_used - _D_CORES, ram_mb_used=Slave.ram_mb_used - _D_RAM,
                    disk_gb_used=Slave.disk_gb_used - _D_DISK, generation=Slave.generation + 1,
                    updated_at=bindparam("now")))
# One statement takes the lowest free pair; PostgreSQL skips pairs other transactions are taking
# (SQLite, whose writers are serialised, has no FOR UPDATE: its compiler leaves the clause out).
_TAKE_PAIR = db.Prepared(
    update(AddressPair)
    .where(AddressPair.id == select(AddressPair.id).where(AddressPair.instance_id.is_(None),
                                                          AddressPair.stale_instance.is_(None)).order_by(AddressPair.id)
           .limit(1).with_for_update(skip_locked=True).scalar_subquery())
    .values(instance_id=bindparam("iid"), mac=bindparam("mac"))
    .returning(AddressPair.private_ip, AddressPair.public_ip))
_SET_ADDRESSES = db.Prepared(update(Instance).where(Instance.id == bindparam("iid"))
                             .values(mac=bindparam("mac"), private_ip=bindparam("priv"), public_ip=bindparam("pub")))
_NEW_INSTANCE = db.Prepared(insert(Instance).returning(Instance.id), (
    "image_id", "group_id", "user_id", "slave_id", "cores", "ram_mb", "disk_gb", "state", "kind", "priority",
    "register_as_slave", "hours", "ends_at", "created_at", "updated_at", "keep_disk"))
_COUNT_PAIRS = db.Prepared(select(func.count(), func.count(AddressPair.instance_id),
                                  func.count(AddressPair.stale_instance)).select_from(AddressPair))

def claim_slave(q: Session | db.Direct, slave: placement.SlaveState, demand: placement.Demand) -> None:
    """Compare-and-swap claim (Placement's generation check); a lost race retries the decision."""
    result = _CLAIM.run(q, {"sid": slave.id, "gen": slave.generation, "now": config.now(), **_demand_params(demand)})
    if result.rowcount != 1:
        raise db.RetryTransaction


def release_slave(session: Session, slave_id: int, cores: int, ram_mb: int, disk_gb: int) -> None:
    session.connection().execute(_RELEASE, {"sid": slave_id, "d_cores": cores, "d_ram": ram_mb, "d_disk": disk_gb,
                                            "now": config.now()})


def release_move_hold(session: Session, inst: Instance) -> None:
    """A move off a lent PC held room on another slave (``lending.move_begin``): give it back (its cores and RAM
    too where the VM was to run on there) and forget the move."""
    if inst.moving_to is None:
        return
    run = inst.moving_hold == "run"
    release_slave(session, inst.moving_to, inst.cores if run else 0, inst.ram_mb if run else 0, inst.disk_gb)
    inst.moving_to = inst.moving_hold = None


def new_mac(prefix: str) -> str:
    tail = secrets.token_bytes(3)
    return prefix + "".join(f":{b:02x}" for b in tail)


def allocate_addresses(q: Session | db.Direct, instance_id: int, mac_prefix: str) -> tuple[str, str, str]:
    """Take the lowest free (public, private) pair and a fresh MAC for an instance, and record
    them on the instance. A MAC drawn twice hits the unique constraint and the transaction reruns."""
    mac = new_mac(mac_prefix)
    row = _TAKE_PAIR.first(q, {"iid": instance_id, "mac": mac})
    if row is None:
        total, held, stale = _COUNT_PAIRS.first(q)
        if held + stale < total:
            raise db.RetryTransaction  # PostgreSQL: every free pair is being taken by another transaction
        waiting = f", {stale} of them until reconcile confirms the master dropped their entries" if stale else ""
        raise CapacityError(f"addresses: all {total} (public, private) address pairs are in use{waiting}"
                            " (widen private_pool/public_pool with `vcl config set`)")
    private_ip, public_ip = row
    _SET_ADDRESSES.run(q, {"iid": instance_id, "mac": mac, "priv": private_ip, "pub": public_ip})
    return mac, private_ip, public_ip


def release_addresses(session: Session, instance_id: int) -> None:
    """The instance's pair is free again: only once the master no longer carries its entries."""
    session.execute(update(AddressPair).where(AddressPair.instance_id == instance_id)
                    .values(instance_id=None, mac=None))


def quarantine_addresses(session: Session, instance_id: int) -> None:
    """Give the instance's pair back while the master may still carry its DHCP host, alias and DNAT chain:
    the pair (and its MAC) stays out of use until ``net_gone`` confirms they are gone."""
    session.execute(update(AddressPair).where(AddressPair.instance_id == instance_id)
                    .values(instance_id=None, stale_instance=instance_id))


def net_gone(session: Session, instance_id: int) -> int:
    """The master's entries of ``instance_id`` are gone: its quarantined pair is free. Returns pairs freed."""
    result = session.execute(update(AddressPair).where(AddressPair.stale_instance == instance_id)
                             .values(stale_instance=None, mac=None))
    return int(result.rowcount or 0)


# --- the claim transaction of a best-effort request, and giving claims back ---------------------------

def instance_row(i: Instance, slave: str | None = None, owner: str | None = None) -> dict[str, Any]:
    return {"id": i.id, "owner": owner, "slave": slave, "kind": str(i.kind), "state": str(i.state),
            "priority": round(i.priority, 6), "cores": i.cores, "ram_mb": i.ram_mb, "disk_gb": i.disk_gb,
            "mac": i.mac, "private_ip": i.private_ip, "public_ip": i.public_ip, "console_port": i.console_port,
            "started_at": iso(i.started_at), "ends_at": iso(i.ends_at), "reservation_id": i.reservation_id}


@dataclass
class ClaimPlan:
    """A decided best-effort request, for the short write that applies it (``commit_claim``)."""

    answer: dict[str, Any]
    group_id: int
    image_id: int | None
    user_name: str | None
    demand: placement.Demand
    priority: float  # exact; answer["priority"] is rounded for display
    mac_prefix: str
    slave: placement.SlaveState | None = None
    ends: datetime | None = None
    hours: int | None = None  # asked for: a queued request's end is fixed when it launches
    keep_disk: int = 0  # keeps its disk at stop and starts from the user's kept disk of the image (SPEC §10)
    refused: bool = False  # can never fit: nothing is written


StaleClaim = db.RetryTransaction


def new_claim_plan(slave: placement.SlaveState, demand: placement.Demand, *, group_id: int, priority: float,
                   ends: datetime, mac_prefix: str = config.DEFAULT_MAC_PREFIX, register_as_slave: int = 0,
                   image_id: int | None = None) -> ClaimPlan:
    """A claim decided elsewhere (the dispatcher's in-memory PlacementIndex): ``slave`` carries
    the generation the decision saw."""
    answer = {"kind": "BE", "priority": round(priority, 6), "cores": demand.cores, "ram_mb": demand.ram_mb,
              "disk_gb": demand.disk_gb, "register_as_slave": register_as_slave, "id": None, "state": "pending",
              "decision": "place", "slave": slave.name, "ends_at": iso(ends), "reason": "", "dry_run": False}
    return ClaimPlan(answer, group_id, image_id, None, demand, priority, mac_prefix, slave, ends)


def commit_claim(plan: ClaimPlan, url: str | None = None) -> dict[str, Any]:
    """Apply a decided request in one transaction: the slave's cores, RAM and disk by compare-and-swap
    on its generation, an address pair and a MAC, the instance row and its audit row. Raises
    ``StaleClaim`` when the slave changed since the decision: decide again on fresh state."""
    return db.write_direct(lambda tx: _apply_best_effort(tx, plan), url, retry_races=False)


def _apply_best_effort(tx: db.Direct, plan: ClaimPlan) -> dict[str, Any]:
    answer = dict(plan.answer)
    now = config.now()
    user_id = None
    if plan.user_name is not None:
        user_id, _declines = user_ref(tx, plan.user_name)
    values = {"image_id": plan.image_id, "group_id": plan.group_id, "user_id": user_id, "slave_id": None,
              "cores": plan.demand.cores, "ram_mb": plan.demand.ram_mb, "disk_gb": plan.demand.disk_gb,
              "state": InstanceState.PENDING, "kind": InstanceKind.BE, "priority": plan.priority,
              "register_as_slave": answer["register_as_slave"], "hours": plan.hours, "ends_at": None,
              "created_at": now, "updated_at": now, "keep_disk": plan.keep_disk}
    if plan.slave is None:  # wait or suspend first: keep it in the queue (pending, no slave) for the dispatcher
        inst_id = _NEW_INSTANCE.scalar(tx, values)
        answer["id"] = inst_id
        audit(tx, "instance", inst_id, "queued", None, {"decision": answer["decision"], "reason": answer["reason"]},
              now)
        return answer
    claim_slave(tx, plan.slave, plan.demand)
    values.update(slave_id=plan.slave.id, ends_at=plan.ends)
    inst_id = _NEW_INSTANCE.scalar(tx, values)
    mac, private_ip, public_ip = allocate_addresses(tx, inst_id, plan.mac_prefix)
    answer.update(id=inst_id, mac=mac, private_ip=private_ip, public_ip=public_ip)
    audit(tx, "instance", inst_id, "claim", None, {k: answer[k] for k in (
        "slave", "cores", "ram_mb", "disk_gb", "mac", "private_ip", "public_ip", "ends_at")}, now)
    return answer


def release(instance_id: Any, state: str = "stopped", url: str | None = None) -> dict[str, Any]:
    """End an instance that does not run: its cores, RAM, disk and addresses go back to the pool.

    A VM that runs or is suspended (or whose launch is in progress) is refused with the command to use:
    its domain and the master's entries must go first (``vcl stop``), or the next VM would get addresses
    the master still routes to it. A claimed launch that never finished gives its pair back quarantined
    (reconcile confirms the master carries nothing of it before the pair is used again)."""
    iid = whole("id", instance_id)
    final = InstanceState(state)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        inst = session.get(Instance, iid)
        if inst is None:
            raise NotFoundError(f"id: no instance {iid}")
        authz.check_instance(session, acting.current(), inst.user_id, inst.group_id)
        if inst.state in (InstanceState.STOPPED, InstanceState.FAILED, InstanceState.LOST):
            raise ConflictError(f"id: instance {iid} is already {inst.state}")
        now = config.now()
        if inst.state in (InstanceState.RUNNING, InstanceState.SUSPENDED):
            raise ConflictError(f"id: instance {iid} is {inst.state}: stop it with `vcl stop {iid}` (the playbook"
                                f" vcl.lab.stop removes its domain and the master's entries, then releases it)")
        if inst.lease_owner is not None and inst.lease_until is not None and inst.lease_until > now:
            raise ConflictError(f"id: instance {iid} is being launched until {inst.lease_until:%H:%M}: stop it"
                                f" with `vcl stop {iid}` once the launch ends")
        before = str(inst.state)
        if inst.slave_id is not None:
            holds = inst.state in HOLDS_CAPACITY
            release_slave(session, inst.slave_id, inst.cores if holds else 0, inst.ram_mb if holds else 0,
                          inst.disk_gb)
        quarantine_addresses(session, inst.id)
        inst.slave_id = None
        inst.mac = inst.private_ip = inst.public_ip = None
        inst.console_port = None
        inst.lease_owner = inst.lease_until = None
        inst.state = final
        inst.updated_at = now
        audit(session, "instance", inst.id, "release", {"state": before}, {"state": str(final)})
        return instance_row(inst)

    return db.write(apply, url)


def set_suspended(instance_id: Any, suspended: bool, url: str | None = None) -> dict[str, Any]:
    """Record a suspension (cores and RAM back to the slave; disk kept) or a resume (claimed again)."""
    iid = whole("id", instance_id)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        inst = session.get(Instance, iid)
        if inst is None or inst.slave_id is None:
            raise NotFoundError(f"id: no placed instance {iid}")
        want_from = InstanceState.RUNNING if suspended else InstanceState.SUSPENDED
        if inst.state != want_from:  # a pending launch is never suspended: its launch holds it
            raise ConflictError(f"id: instance {iid} is {inst.state}, not {want_from}")
        slave = slave_state(session, inst.slave_id)
        demand = placement.Demand(inst.cores, inst.ram_mb, 0)
        if suspended:
            release_slave(session, slave.id, inst.cores, inst.ram_mb, 0)
        else:
            if slave.free_cores < inst.cores or slave.free_ram_mb < inst.ram_mb:
                raise CapacityError(f"id: slave {slave.name} has no room to resume instance {iid} yet")
            claim_slave(session, slave, demand)
        before = str(inst.state)
        inst.state = InstanceState.SUSPENDED if suspended else InstanceState.RUNNING
        inst.updated_at = config.now()
        audit(session, "instance", inst.id, "suspend" if suspended else "resume", {"state": before},
              {"state": str(inst.state)})
        return instance_row(inst)

    return db.write(apply, url)


def list_instances(url: str | None = None, include_all: bool = False) -> list[dict[str, Any]]:
    db.require_schema(url)
    with db.read(url) as session:
        query = (select(Instance, Slave.name, Group.name).outerjoin(Slave, Slave.id == Instance.slave_id)
                 .join(Group, Group.id == Instance.group_id))
        if not include_all:
            query = query.where(Instance.state.in_((*HOLDS_CAPACITY, InstanceState.SUSPENDED)))
        actor = acting.current()
        if not actor.is_controller:
            # People who are not the controller's admin see their own VMs; a teacher also their groups' seats.
            actor = authz.fresh(session, actor)
            if not actor.is_admin:
                query = query.where(or_(Instance.user_id == actor.user_id, Group.owner_id == actor.user_id))
        return [instance_row(i, s, g) for i, s, g in session.execute(query.order_by(Instance.id))]

