"""Lend your PC (SPEC §3 step 4, §9): a client that asked with register_as_slave=1 joins the pool once its request
is served, and leaves it again without losing anyone's VM.

The playbooks do the work on the hosts (``lend.yml`` bootstraps the PC with the slave roles and registers it,
``reclaim.yml`` moves its VMs away); this module records each step in one transaction, serialised with the other
lending steps by the ``lending`` lock (PostgreSQL; SQLite's writers are serialised anyway):

- :func:`owed`: served requests whose user promised a PC and was not asked yet.
- :func:`enrol`: the PC joins as a slave, lent by its owner until ``lend_until``; a served request's promise is
  kept. A lent PC takes best-effort VMs, and reserved seats only where its lending covers their whole window
  (``promises.hosts_of``); the calendar's pool is the lab's own slaves, so no promise rests on a lent PC.
- :func:`decline`: the user declines (or the PC did not answer at enrolment): the user is warned; after
  ``decline_limit`` declines their register_as_slave=1 counts as 0 (:func:`effective_ras`, for every kind of
  request, by the user's identity; a request without a user cannot promise a PC and counts as 0).
- :func:`reclaim`: the owner (or the end of the lending window, :func:`due`) takes the PC back: it drains (no new
  VMs); :func:`move_begin` holds room on another slave for each VM, :func:`move_commit` records the VM there,
  :func:`move_abort` gives the room back; :func:`finish` takes the drained PC out of the pool.
- A lent PC that reconcile finds switched off becomes ``gone`` (``lifecycle.reconcile``): its VMs are the dead-slave
  case, and it gets no VM when it answers again until its owner lends it again.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from . import acting, authz, config, db, placement
from .audit import audit
from .catalogue import check_host_address, slave_row
from .claims import claim_slave, instance_row, release_move_hold, release_slave, slave_states
from .errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from .lifecycle import domain_name
from .models import Instance, InstanceState, Slave, SlaveStatus, User
from .validate import check_name, iso, slave_input, whole

LENT, RECLAIMING, GONE = "lent", "reclaiming", "gone"
LEND_STATES = (LENT, RECLAIMING, GONE)
ANSWERS = ("lent", "declined", "unreachable")
MAX_LEND_HOURS = 24 * 28  # four weeks: a longer lending is lent again
ON_SLAVE = (InstanceState.PENDING, InstanceState.RUNNING, InstanceState.SUSPENDED)
#: A request is served once its VM ran: then its promise is due.
SERVED = (InstanceState.RUNNING, InstanceState.SUSPENDED, InstanceState.STOPPED)


def _ras_warning(declines: int, limit: int) -> str:
    return (f"register_as_slave: counted as 0: {declines} declined lending(s), the limit is {limit}"
            " (lend your PC when asked to have it count again)")


_DECLINES = db.Prepared(select(User.declines).where(User.id == bindparam("uid")))


def effective_ras(q: Any, user_id: int | None, register_as_slave: int, limit: int) -> tuple[int, str]:
    """(RAS as the priority counts it, a warning or ""): a promise to lend a PC is kept by a person, so a request
    without a user counts as 0, and so does one whose user declined ``limit`` times or more (SPEC §9)."""
    if not register_as_slave:
        return 0, ""
    if user_id is None:
        return 0, "register_as_slave: counted as 0: a request without a user cannot promise a PC (give the user)"
    declines = _DECLINES.scalar(q, {"uid": user_id})
    if declines is not None and declines >= limit:
        return 0, _ras_warning(declines, limit)
    return 1, ""


def lend_row(s: Slave, owner: str | None) -> dict[str, Any]:
    return {**slave_row(s), "lent_by": owner, "lend_until": iso(s.lend_until), "lend_state": s.lend_state}


def _instance(session: Session, instance_id: Any, lock: bool = True) -> Instance:
    iid = whole("id", instance_id)
    if lock:
        db.lock(session, "lending")
    inst = session.get(Instance, iid)
    if inst is None:
        raise NotFoundError(f"id: no instance {iid}")
    return inst


def _owes(inst: Instance) -> None:
    """``inst`` is a served request whose user promised a PC and has not answered yet, or ConflictError."""
    if not inst.register_as_slave or inst.user_id is None:
        raise ConflictError(f"id: instance {inst.id} did not promise a PC (register_as_slave=0 or no user)")
    if inst.state not in SERVED or inst.started_at is None:
        raise ConflictError(f"id: instance {inst.id} is {inst.state}: its user is asked to lend once it is served")
    if inst.lend_answer is not None:
        raise ConflictError(f"id: instance {inst.id}'s user already answered ({inst.lend_answer})")


def owed(url: str | None = None) -> list[dict[str, Any]]:
    """Served requests with register_as_slave=1 whose user was not asked to lend yet, oldest first."""
    db.require_schema(url)
    with db.read(url) as session:
        actor = authz.fresh(session, acting.current())
        query = (select(Instance.id, User.name, Instance.started_at, User.declines)
                 .join(User, User.id == Instance.user_id)
                 .where(Instance.register_as_slave == 1, Instance.lend_answer.is_(None),
                        Instance.state.in_(SERVED), Instance.started_at.is_not(None)).order_by(Instance.id))
        if not actor.is_admin:
            query = query.where(Instance.user_id == actor.user_id)
        return [{"id": r[0], "user": r[1], "served_at": iso(r[2]), "declines": r[3]}
                for r in session.execute(query)]


def decline(instance_id: Any, reason: str = "declined", url: str | None = None) -> dict[str, Any]:
    """The user of a served register_as_slave=1 request does not lend (``declined``), or their PC did not answer
    at enrolment (``unreachable``): counted against them, with the warning they get."""
    if reason not in ("declined", "unreachable"):
        raise ValidationError("reason", f"{reason!r} is not declined or unreachable")
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        inst = _instance(session, instance_id)
        authz.check_instance(session, acting.current(), inst.user_id, inst.group_id)
        _owes(inst)
        user = session.get(User, inst.user_id)
        assert user is not None
        limit = db.load_settings(session).decline_limit
        inst.lend_answer = reason
        user.declines += 1
        now = config.now()
        inst.updated_at = now
        audit(session, "instance", inst.id, "lend_" + reason, None, {"user": user.name, "declines": user.declines})
        why = (f"user {user.name} declined to lend their PC" if reason == "declined"
               else f"user {user.name}'s PC did not answer when it was to be enrolled")
        left = limit - user.declines
        warning = (f"{why}: {user.declines} of {limit} declines;"
                   + (f" after {left} more, their register_as_slave=1 requests count as 0" if left > 0 else
                      " their register_as_slave=1 requests now count as 0"))
        return {"changed": True, "id": inst.id, "user": user.name, "answer": reason, "declines": user.declines,
                "limit": limit, "warning": warning}

    return db.write(apply, url)


def enrol(*, user: Any, name: Any, address: Any, cores: Any, ram_mb: Any, disk_gb: Any, hours: Any,
          instance: Any = None, url: str | None = None) -> dict[str, Any]:
    """The PC ``name`` at ``address`` joins the pool with its real capacity (from facts), lent by ``user`` for
    ``hours`` from now. With ``instance``, the served request whose promise this keeps. A name of one of the
    lab's own slaves, or a PC whose VMs are still moving away, is refused."""
    user_name = check_name("user", user)
    name, address, capacity = slave_input(name, address, cores, ram_mb, disk_gb)
    hours_n = whole("hours", hours, 1, MAX_LEND_HOURS)
    iid = whole("instance", instance) if instance is not None else None
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        db.lock(session, "lending")
        check_host_address(session, address)  # the input first: inside lab_subnet, not a gateway's or a pool's
        actor = authz.fresh(session, acting.current())
        owner = session.scalar(select(User).where(User.name == user_name))
        if owner is None:
            raise NotFoundError(f"user: no user named {user_name!r}")
        if not actor.is_admin and actor.user_id != owner.id:
            raise ForbiddenError(f"user: {actor.name} lends their own PC, not {user_name}'s")
        inst = None
        if iid is not None:
            inst = _instance(session, iid, lock=False)
            if inst.user_id != owner.id:
                raise ConflictError(f"instance: instance {iid} is not {user_name}'s request")
            _owes(inst)
        slave = session.scalar(select(Slave).where(Slave.name == name))
        holder = session.scalar(select(Slave.name).where(Slave.address == address, Slave.name != name))
        if holder is not None:
            raise ConflictError(f"address: slave {holder!r} is already registered with address {address}")
        now = config.now()
        until = now + timedelta(hours=hours_n)
        before = None
        if slave is None:
            slave = Slave(name=name, address=address, status=SlaveStatus.UP, generation=0, joined_at=now,
                          updated_at=now, cores_used=0, ram_mb_used=0, disk_gb_used=0, **capacity)
            session.add(slave)
        else:
            if slave.lend_state is None:
                raise ConflictError(f"name: {name} is one of the lab's own slaves, not a lent PC")
            if slave.lent_by is not None and slave.lent_by != owner.id:
                raise ConflictError(f"name: {name} is lent by another user")
            if slave.lend_state == RECLAIMING:
                raise ConflictError(f"name: {name} is being taken back: lend it again once its VMs have moved")
            before = lend_row(slave, user_name)
            for field, used in (("cores", slave.cores_used), ("ram_mb", slave.ram_mb_used),
                                ("disk_gb", slave.disk_gb_used)):
                if capacity[f"{field}_total"] < used:
                    raise ValidationError(field, f"{name} reports {capacity[f'{field}_total']}, but its VMs use"
                                                 f" {used}")
            for key, value in {"address": address, **capacity}.items():
                setattr(slave, key, value)
            slave.status = SlaveStatus.UP
            slave.generation += 1
            slave.updated_at = now
        slave.lent_by, slave.lend_until, slave.lend_state = owner.id, until, LENT
        owner.registered_slave = 1
        if inst is not None:
            inst.lend_answer = "lent"
            inst.updated_at = now
        session.flush()
        row = lend_row(slave, user_name)
        audit(session, "slave", slave.id, "lend", before, {**row, "instance": iid})
        return {"changed": True, "slave": row, "instance": iid}

    return db.write(apply, url)


def _lent_slave(session: Session, name: Any) -> Slave:
    name = check_name("name", name)
    slave = session.scalar(select(Slave).where(Slave.name == name))
    if slave is None:
        raise NotFoundError(f"name: no slave named {name!r}")
    if slave.lend_state is None:
        raise ConflictError(f"name: {name} is one of the lab's own slaves, not a lent PC")
    return slave


def _check_lender(session: Session, slave: Slave) -> None:
    actor = authz.fresh(session, acting.current())
    if not actor.is_admin and actor.user_id != slave.lent_by:
        raise ForbiddenError(f"name: only its owner or an admin takes {slave.name} back")


def _vms_on(session: Session, slave_id: int) -> list[Instance]:
    return list(session.scalars(select(Instance).where(Instance.slave_id == slave_id,
                                                       Instance.state.in_(ON_SLAVE)).order_by(Instance.id)))


def reclaim(name: Any, url: str | None = None) -> dict[str, Any]:
    """The owner (or an admin, or the end of the lending window) takes the PC back: it gets no new VM (draining)
    and ``vms`` are the instances that must move away before :func:`finish`."""
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        db.lock(session, "lending")
        slave = _lent_slave(session, name)
        _check_lender(session, slave)
        changed = slave.lend_state == LENT
        if changed:
            before = {"status": str(slave.status), "lend_state": slave.lend_state}
            slave.status, slave.lend_state = SlaveStatus.DRAINING, RECLAIMING
            slave.generation += 1
            slave.updated_at = config.now()
            audit(session, "slave", slave.id, "reclaim", before, {"status": "draining", "lend_state": RECLAIMING})
        vms = _vms_on(session, slave.id)
        return {"changed": changed, "slave": slave.name, "address": slave.address, "lend_state": slave.lend_state,
                "vms": [v.id for v in vms if v.state != InstanceState.PENDING],
                "pending": [v.id for v in vms if v.state == InstanceState.PENDING]}

    return db.write(apply, url)


def due(url: str | None = None) -> list[str]:
    """Lent PCs whose lending window has ended: to be reclaimed."""
    db.require_schema(url)
    with db.read(url) as session:
        return list(session.scalars(select(Slave.name).where(Slave.lend_state == LENT,
                                                             Slave.lend_until <= config.now()).order_by(Slave.name)))


def list_lent(url: str | None = None) -> list[dict[str, Any]]:
    """Every lent PC (lent, reclaiming or gone) with its owner, window and VMs."""
    db.require_schema(url)
    with db.read(url) as session:
        rows = session.execute(select(Slave, User.name).outerjoin(User, User.id == Slave.lent_by)
                               .where(Slave.lend_state.is_not(None)).order_by(Slave.name)).all()
        counts = dict(session.execute(select(Instance.slave_id, func.count()).where(Instance.state.in_(ON_SLAVE))
                                      .group_by(Instance.slave_id)).all())
        return [{**lend_row(s, owner), "vms": counts.get(s.id, 0)} for s, owner in rows]


# --- moving VMs off a reclaimed PC ------------------------------------------------------------------------------

_CLAIM_DISK = (update(Slave).where(Slave.id == bindparam("sid"), Slave.generation == bindparam("gen"))
               .values(disk_gb_used=Slave.disk_gb_used + bindparam("disk"), generation=Slave.generation + 1,
                       updated_at=bindparam("now")))


def _target(session: Session, inst: Instance, source: Slave, policy: str) -> tuple[placement.SlaveState, str]:
    """Where a VM of the reclaimed PC goes: a slave where it runs on (room for its cores, RAM and disk), else one
    where it waits suspended (room for its disk), with the most free disk. Never a PC being taken back."""
    states = [s for s in slave_states(session) if s.status == "up" and s.id != source.id]
    demand = placement.Demand(inst.cores, inst.ram_mb, inst.disk_gb)
    if inst.state == InstanceState.RUNNING:
        chosen = placement.place(states, demand, policy)
        if chosen.slave is not None:
            return chosen.slave, "run"
    room = sorted((s for s in states if s.free_disk_gb >= inst.disk_gb), key=lambda s: (-s.free_disk_gb, s.id))
    if not room:
        raise ConflictError(f"id: no slave has {inst.disk_gb} GB of disk for instance {inst.id}: it stays on"
                            f" {source.name} (suspended) until a slave has room")
    return room[0], "disk"


def move_begin(instance_id: Any, url: str | None = None) -> dict[str, Any]:
    """Hold room for a VM of a PC being taken back on another slave (its cores, RAM and disk where it can run on;
    its disk only where it waits suspended, queued with its priority) and say where it goes. A move that was
    begun and not recorded is returned as it is (the playbook runs again)."""
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        inst = _instance(session, instance_id)
        source = session.get(Slave, inst.slave_id) if inst.slave_id is not None else None
        if source is None or source.lend_state != RECLAIMING:
            raise ConflictError(f"id: instance {inst.id} is not on a PC being taken back")
        if inst.state not in (InstanceState.RUNNING, InstanceState.SUSPENDED):
            raise ConflictError(f"id: instance {inst.id} is {inst.state}: only a running or suspended VM moves")
        if inst.moving_to is None:
            target, hold = _target(session, inst, source, db.load_settings(session).placement_policy)
            if hold == "run":
                claim_slave(session, target, placement.Demand(inst.cores, inst.ram_mb, inst.disk_gb))
            elif session.execute(_CLAIM_DISK, {"sid": target.id, "gen": target.generation, "disk": inst.disk_gb,
                                               "now": config.now()}).rowcount != 1:
                raise db.RetryTransaction
            inst.moving_to, inst.moving_hold = target.id, hold
            inst.updated_at = config.now()
            audit(session, "instance", inst.id, "move_begin", None,
                  {"from": source.name, "to": target.name, "hold": hold})
        target_row = session.get(Slave, inst.moving_to)
        assert target_row is not None
        return {"id": inst.id, "domain": domain_name(inst.id), "state": str(inst.state), "kind": str(inst.kind),
                "from": source.name, "from_address": source.address, "to": target_row.name,
                "to_address": target_row.address, "resume": inst.moving_hold == "run",
                "priority": round(inst.priority, 6)}

    return db.write(apply, url)


def move_commit(instance_id: Any, running: Any, console_port: Any = None, url: str | None = None) -> dict[str, Any]:
    """The VM now lives on the slave :func:`move_begin` chose, running (``running``) or suspended there: the PC's
    room goes back, and a VM that waits suspended gives back the cores and RAM held for it."""
    run = bool(running)
    port = whole("console_port", console_port, 1, 65535) if console_port is not None else None
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        inst = _instance(session, instance_id)
        if inst.moving_to is None:
            raise ConflictError(f"id: instance {inst.id} has no move begun")
        if run and inst.moving_hold != "run":
            raise ConflictError(f"id: instance {inst.id} was to wait suspended on the slave it moved to, not run")
        source = inst.slave_id
        held = inst.state in (InstanceState.PENDING, InstanceState.RUNNING)
        assert source is not None
        release_slave(session, source, inst.cores if held else 0, inst.ram_mb if held else 0, inst.disk_gb)
        if inst.moving_hold == "run" and not run:
            release_slave(session, inst.moving_to, inst.cores, inst.ram_mb, 0)
        before = {"slave_id": source, "state": str(inst.state)}
        inst.slave_id, inst.moving_to, inst.moving_hold = inst.moving_to, None, None
        inst.state = InstanceState.RUNNING if run else InstanceState.SUSPENDED
        inst.console_port = port if run else None
        inst.updated_at = config.now()
        target = session.get(Slave, inst.slave_id)
        assert target is not None
        audit(session, "instance", inst.id, "moved", before, {"slave": target.name, "state": str(inst.state)})
        return instance_row(inst, target.name)

    return db.write(apply, url)


def move_abort(instance_id: Any, url: str | None = None) -> dict[str, Any]:
    """The move failed: the room held on the other slave goes back; the VM stays on the PC as it was."""
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        inst = _instance(session, instance_id)
        changed = inst.moving_to is not None
        if changed:
            target = inst.moving_to
            release_move_hold(session, inst)
            inst.updated_at = config.now()
            audit(session, "instance", inst.id, "move_abort", {"to": target}, None)
        return {"changed": changed, "id": inst.id}

    return db.write(apply, url)


def finish(name: Any, url: str | None = None) -> dict[str, Any]:
    """Take a drained PC out of the pool: its row goes (ended instances keep their history). Refused while a VM
    still lives on it or is moving off it."""
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        db.lock(session, "lending")
        slave = _lent_slave(session, name)
        _check_lender(session, slave)
        if slave.lend_state == LENT:
            raise ConflictError(f"name: {slave.name} is lent: take it back first")
        left = _vms_on(session, slave.id)
        if left:
            raise ConflictError(f"name: {slave.name} still hosts VM(s) {', '.join('#' + str(v.id) for v in left)}:"
                                " they move first")
        owner = session.get(User, slave.lent_by) if slave.lent_by is not None else None
        before = lend_row(slave, owner.name if owner else None)
        for inst in session.scalars(select(Instance).where(Instance.slave_id == slave.id)):
            inst.slave_id = None
        session.execute(update(Instance).where(Instance.moving_to == slave.id).values(moving_to=None,
                                                                                      moving_hold=None))
        session.delete(slave)
        session.flush()
        audit(session, "slave", before["id"], "returned", before, None)
        return {"changed": True, "returned": before["name"], "owner": before["lent_by"]}

    return db.write(apply, url)


def seat_fits(lend_until: datetime | None, end: datetime) -> bool:
    """A reserved seat may run on a lent PC only when the lending covers the seat's whole window."""
    return lend_until is None or end <= lend_until


__all__ = ["ANSWERS", "GONE", "LEND_STATES", "LENT", "MAX_LEND_HOURS", "RECLAIMING", "decline", "due",
           "effective_ras", "enrol", "finish", "list_lent", "move_abort", "move_begin", "move_commit", "owed",
           "reclaim", "seat_fits"]

