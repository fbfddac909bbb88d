"""A VM's life in the lab database, as the lifecycle playbooks drive it (SPEC §3–§6).

The playbooks do the work on the hosts (libvirt on a slave, dhcpd and NAT on the master); this module
records each step and takes the decisions:

- ``place``: the scheduler chooses a slave for a pending instance and claims its cores, RAM, disk, a
  MAC and an address pair in one transaction (or hands back the claim a best-effort request already
  made). ``unplace`` gives the claim back when a launch step failed, so the next slave can be tried.
- ``mark_running`` / ``mark_failed``: the launch's outcome.
- ``dispatch_plan``: what a dispatch run must do now, in order: end expired VMs, start reservations
  that are due and serve waiting requests in priority order (suspending lower-priority best-effort VMs
  where that makes room, SPEC §3 step 2), and resume suspended VMs when room returns.
- ``reconcile``: the database against what libvirt reports on each slave.

Every function validates its input before it opens a write transaction; results are plain dicts.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import config, db, placement, preempt
from .audit import audit
from .claims import (
    HOLDS_CAPACITY,
    allocate_addresses,
    claim_slave,
    instance_row,
    release_addresses,
    release_slave,
    set_suspended,
    slave_states,
)
from .errors import CapacityError, ConflictError, NotFoundError, ValidationError
from .models import (
    Group,
    Image,
    Instance,
    InstanceKind,
    InstanceState,
    Reservation,
    ReservationState,
    Slave,
    SlaveStatus,
)
from .priority import service_order_key
from .validate import check_name, iso, whole

DOMAIN_PREFIX = "vcl-"
_DOMAIN_RE = re.compile(r"^vcl-([0-9]{1,12})$")
ENDED = (InstanceState.STOPPED, InstanceState.FAILED, InstanceState.LOST)


def domain_name(instance_id: int) -> str:
    """The libvirt domain of an instance (``vcl-<id>``); DHCP host entries are ``vm-<id>``."""
    return f"{DOMAIN_PREFIX}{instance_id}"


def _names(field: str, values: Iterable[Any] | None) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    return tuple(check_name(field, v) for v in values)


def _launch_spec(inst: Instance, slave: Slave | None, image: Image | None, owner: str | None) -> dict[str, Any]:
    row = instance_row(inst, slave.name if slave else None, owner)
    row.update(
        domain=domain_name(inst.id),
        dhcp_name=f"vm-{inst.id}",
        slave_address=slave.address if slave else None,
        image=image.name if image else None,
        image_disk=image.disk_file if image else None,
        image_kernel=image.kernel if image else None,
        image_ramdisk=image.ramdisk if image else None,
        image_cmdline=image.cmdline if image else None,
    )
    return row


def _load(session: Session, iid: int) -> tuple[Instance, Slave | None, Image | None, str]:
    inst = session.get(Instance, iid)
    if inst is None:
        raise NotFoundError(f"id: no instance {iid}")
    slave = session.get(Slave, inst.slave_id) if inst.slave_id is not None else None
    image = session.get(Image, inst.image_id) if inst.image_id is not None else None
    owner = session.scalar(select(Group.name).where(Group.id == inst.group_id))
    return inst, slave, image, owner or ""


def describe(instance_id: Any, url: str | None = None) -> dict[str, Any]:
    """Everything the playbooks need to act on an instance (slave, addresses, image files)."""
    iid = whole("id", instance_id)
    db.require_schema(url)
    with db.read(url) as session:
        return _launch_spec(*_load(session, iid))


def _give_back(session: Session, inst: Instance) -> None:
    """Return an instance's claim on its slave and its addresses (the state is the caller's to set)."""
    if inst.slave_id is not None:
        holds = inst.state in HOLDS_CAPACITY
        release_slave(session, inst.slave_id, inst.cores if holds else 0, inst.ram_mb if holds else 0,
                      inst.disk_gb)
    release_addresses(session, inst.id)
    inst.slave_id = None
    inst.mac = inst.private_ip = inst.public_ip = None
    inst.console_port = None


def place(instance_id: Any, exclude: Iterable[Any] | None = None, url: str | None = None) -> dict[str, Any]:
    """Choose a slave for a pending instance and claim cores, RAM, disk, a MAC and an address pair,
    all in one transaction. An instance that already holds a claim on a slave not in ``exclude`` keeps
    it (a best-effort request claims when it is accepted). Raises CapacityError, with the filter
    cascade's reason, when no slave fits."""
    iid = whole("id", instance_id)
    excluded = set(_names("exclude", exclude))
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        inst, slave, image, owner = _load(session, iid)
        if inst.state != InstanceState.PENDING:
            raise ConflictError(f"id: instance {iid} is {inst.state}, not pending: nothing to launch")
        if slave is not None and slave.name not in excluded and slave.status == SlaveStatus.UP and inst.mac:
            return {**_launch_spec(inst, slave, image, owner), "placed": "kept"}
        if slave is not None or inst.mac:
            _give_back(session, inst)
        settings = db.load_settings(session)
        demand = placement.Demand(inst.cores, inst.ram_mb, inst.disk_gb)
        states = [s for s in slave_states(session) if s.name not in excluded]
        chosen = placement.place(states, demand, settings.placement_policy)
        if chosen.slave is None:
            tried = f" (tried and excluded: {', '.join(sorted(excluded))})" if excluded else ""
            raise CapacityError(f"instance {iid}: {chosen.reason}{tried}")
        claim_slave(session, chosen.slave, demand)
        inst.slave_id = chosen.slave.id
        session.flush()
        allocate_addresses(session, inst.id, settings.mac_prefix)
        session.refresh(inst)
        inst.updated_at = config.now()
        slave_row = session.get(Slave, chosen.slave.id)
        spec = _launch_spec(inst, slave_row, image, owner)
        audit(session, "instance", inst.id, "claim", None,
              {k: spec[k] for k in ("slave", "cores", "ram_mb", "disk_gb", "mac", "private_ip", "public_ip")})
        return {**spec, "placed": "claimed", "explain": chosen.explain()}

    return db.write(apply, url)


def unplace(instance_id: Any, reason: str = "", url: str | None = None) -> dict[str, Any]:
    """Undo a launch's claim (a step on the hosts failed): the slave's cores, RAM and disk and the
    addresses go back; the instance is pending again, with no slave, ready for the next candidate."""
    iid = whole("id", instance_id)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        inst, slave, image, owner = _load(session, iid)
        if inst.state != InstanceState.PENDING:
            raise ConflictError(f"id: instance {iid} is {inst.state}: only a pending launch can be undone")
        before = {"slave": slave.name if slave else None, "private_ip": inst.private_ip,
                  "public_ip": inst.public_ip, "mac": inst.mac}
        _give_back(session, inst)
        inst.updated_at = config.now()
        audit(session, "instance", inst.id, "unclaim", before, {"reason": reason[:500]})
        return _launch_spec(inst, None, image, owner)

    return db.write(apply, url)


def mark_running(instance_id: Any, console_port: Any = None, url: str | None = None) -> dict[str, Any]:
    """The domain runs on its slave with its DHCP entry and DNAT in place: record it."""
    iid = whole("id", instance_id)
    port = whole("console_port", console_port, 1, 65535) if console_port not in (None, "", -1) else None
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        inst, slave, image, owner = _load(session, iid)
        if inst.state == InstanceState.RUNNING and inst.console_port == port:
            return {**_launch_spec(inst, slave, image, owner), "changed": False}
        if inst.state != InstanceState.PENDING or slave is None or not inst.mac:
            raise ConflictError(f"id: instance {iid} is {inst.state} without a claim: it cannot be running")
        now = config.now()
        inst.state = InstanceState.RUNNING
        inst.console_port = port
        inst.started_at = inst.started_at or now
        inst.updated_at = now
        audit(session, "instance", inst.id, "running", {"state": "pending"},
              {"state": "running", "slave": slave.name, "console_port": port})
        return {**_launch_spec(inst, slave, image, owner), "changed": True}

    return db.write(apply, url)


def mark_failed(instance_id: Any, reason: str, url: str | None = None) -> dict[str, Any]:
    """No slave could take the instance: it ends as failed, with the reason in the audit log."""
    iid = whole("id", instance_id)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        inst, slave, image, owner = _load(session, iid)
        if inst.state in ENDED:
            return {**_launch_spec(inst, slave, image, owner), "changed": False}
        before = str(inst.state)
        _give_back(session, inst)
        inst.state = InstanceState.FAILED
        inst.updated_at = config.now()
        _end_reservation(session, inst)
        audit(session, "instance", inst.id, "failed", {"state": before}, {"reason": reason[:500]})
        return {**_launch_spec(inst, None, image, owner), "changed": True}

    return db.write(apply, url)


def _end_reservation(session: Session, inst: Instance) -> None:
    if inst.reservation_id is not None:
        res = session.get(Reservation, inst.reservation_id)
        if res is not None and res.state == ReservationState.ACTIVE:
            res.state = ReservationState.DONE


def stop(instance_id: Any, state: str = "stopped", url: str | None = None) -> dict[str, Any]:
    """The domain is gone from its slave and the master forgets the VM: release everything.
    Stopping an instance that already ended is not an error (a stop run may be repeated)."""
    iid = whole("id", instance_id)
    final = InstanceState(state)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        inst, slave, image, owner = _load(session, iid)
        if inst.state in ENDED:
            return {**_launch_spec(inst, slave, image, owner), "changed": False}
        before = str(inst.state)
        _give_back(session, inst)
        inst.state = final
        inst.updated_at = config.now()
        _end_reservation(session, inst)
        audit(session, "instance", inst.id, "release", {"state": before}, {"state": str(final)})
        return {**_launch_spec(inst, None, image, owner), "changed": True}

    return db.write(apply, url)


# --- dispatch -------------------------------------------------------------------------------------

def _order(priority: float, ras: int, seq: int) -> tuple:
    return service_order_key(priority, ras, seq)


def start_due_reservations(now: datetime | None = None, url: str | None = None) -> list[dict[str, Any]]:
    """Accepted reservations whose window has begun get their instance (pending, kind AR, ending with
    the window) and become active; ones whose window passed unserved are done. One transaction."""
    db.require_schema(url)

    def apply(session: Session) -> list[dict[str, Any]]:
        db.lock(session, "calendar")
        at = now or config.now()
        started = []
        due = session.scalars(select(Reservation).where(Reservation.state == ReservationState.ACCEPTED,
                                                        Reservation.start <= at).order_by(Reservation.id))
        for res in list(due):
            assert res.end is not None
            if res.end <= at:
                res.state = ReservationState.DONE
                res.reason = (res.reason + "; " if res.reason else "") + "its window passed before a dispatch ran"
                audit(session, "reservation", res.id, "expired", {"state": "accepted"}, {"state": "done"})
                continue
            image = session.get(Image, res.image_id) if res.image_id is not None else None
            inst = Instance(image_id=res.image_id, slave_id=None, reservation_id=res.id, group_id=res.group_id,
                            user_id=res.user_id, cores=res.cores, ram_mb=res.ram_mb,
                            disk_gb=image.default_disk_gb if image else 0, state=InstanceState.PENDING,
                            kind=InstanceKind.AR, priority=res.priority, register_as_slave=res.register_as_slave,
                            ends_at=res.end, created_at=at, updated_at=at)
            session.add(inst)
            session.flush()
            res.state = ReservationState.ACTIVE
            audit(session, "reservation", res.id, "active", {"state": "accepted"},
                  {"state": "active", "instance": inst.id})
            audit(session, "instance", inst.id, "queued", None, {"reservation": res.id, "kind": "AR"})
            started.append({"reservation": res.id, "id": inst.id, "cores": res.cores, "ends_at": iso(res.end)})
        return started

    return db.write(apply, url)


def dispatch_plan(now: datetime | None = None, url: str | None = None) -> dict[str, Any]:
    """What a dispatch run does now, decided on one snapshot (the playbook then acts, and every action
    is its own transaction on the hosts' outcome):

    1. ``stop``: running or suspended VMs whose time is up.
    2. ``suspend`` then ``launch``: waiting instances (due reservations and queued requests), highest
       priority first (SPEC §3: then clients that register as slaves, then first come). One that fits
       is launched; one that does not may suspend lower-priority best-effort VMs on one slave; equal
       priority waits.
    3. ``resume``: suspended VMs whose slave has room again, most important first, unless a more
       important instance still waits.
    """
    db.require_schema(url)
    at = now or config.now()
    with db.read(url) as session:
        settings = db.load_settings(session)
        states = {s.id: s for s in slave_states(session)}
        rows = session.scalars(select(Instance).where(
            Instance.state.in_((InstanceState.PENDING, InstanceState.RUNNING, InstanceState.SUSPENDED)))
            .order_by(Instance.id)).all()
        plan: dict[str, Any] = {"at": iso(at), "stop": [], "suspend": [], "launch": [], "resume": [],
                                "wait": [], "notes": []}

        def freed(slave_id: int | None, cores: int, ram: int, disk: int) -> None:
            if slave_id in states:
                st = states[slave_id]
                states[slave_id] = dataclasses.replace(st, cores_used=st.cores_used - cores,
                                                       ram_mb_used=st.ram_mb_used - ram,
                                                       disk_gb_used=st.disk_gb_used - disk)

        # 1. expired VMs end first: their resources serve this very run.
        alive = []
        for inst in rows:
            if inst.state != InstanceState.PENDING and inst.ends_at is not None and inst.ends_at <= at:
                plan["stop"].append(inst.id)
                holds = inst.state in HOLDS_CAPACITY
                freed(inst.slave_id, inst.cores if holds else 0, inst.ram_mb if holds else 0, inst.disk_gb)
            else:
                alive.append(inst)

        running = [preempt.RunningVM(i.id, i.slave_id, i.cores, i.ram_mb, i.priority, i.register_as_slave,
                                     seq=i.id, kind=str(i.kind))
                   for i in alive if i.state in HOLDS_CAPACITY and i.slave_id is not None]
        # Pending instances that hold a claim (accepted best-effort requests) are launched as they are.
        waiting = sorted((i for i in alive if i.state == InstanceState.PENDING),
                         key=lambda i: _order(i.priority, i.register_as_slave, i.id))
        victims: set[int] = set()
        first_waiting: tuple | None = None
        for inst in waiting:
            if inst.slave_id is not None and inst.mac:
                plan["launch"].append(inst.id)
                continue
            demand = placement.Demand(inst.cores, inst.ram_mb, inst.disk_gb)
            candidates = [vm for vm in running if vm.id not in victims]
            decision = preempt.plan(list(states.values()), demand, inst.priority, candidates,
                                    settings.placement_policy)
            if decision.action == "place" and decision.slave is not None:
                states[decision.slave.id] = states[decision.slave.id].claimed(demand)
                plan["launch"].append(inst.id)
            elif decision.action == "suspend" and decision.slave is not None:
                for vm in decision.victims:
                    victims.add(vm.id)
                    plan["suspend"].append(vm.id)
                    freed(vm.slave_id, vm.cores, vm.ram_mb, 0)
                states[decision.slave.id] = states[decision.slave.id].claimed(demand)
                plan["launch"].append(inst.id)
                plan["notes"].append(f"#{inst.id}: {decision.reason}")
            else:
                plan["wait"].append(inst.id)
                plan["notes"].append(f"#{inst.id} waits: {decision.reason}")
                if first_waiting is None:
                    first_waiting = _order(inst.priority, inst.register_as_slave, inst.id)

        # 3. resume, most important first, while nothing more important waits.
        suspended = sorted((i for i in alive if i.state == InstanceState.SUSPENDED and i.id not in victims),
                           key=lambda i: _order(i.priority, i.register_as_slave, i.id))
        for inst in suspended:
            if first_waiting is not None and first_waiting < _order(inst.priority, inst.register_as_slave, inst.id):
                plan["notes"].append(f"#{inst.id} stays suspended: a more important request waits")
                continue
            slave = states.get(inst.slave_id) if inst.slave_id is not None else None
            if slave is None or slave.status != "up":
                continue
            demand = placement.Demand(inst.cores, inst.ram_mb, 0)
            if slave.free_cores >= inst.cores and slave.free_ram_mb >= inst.ram_mb:
                states[slave.id] = slave.claimed(demand)
                plan["resume"].append(inst.id)
        return plan


def suspended(instance_id: Any, is_suspended: bool, url: str | None = None) -> dict[str, Any]:
    """Record a suspension (libvirt managedsave done: cores and RAM back, disk kept) or a resume; one
    already recorded changes nothing (``changed`` False)."""
    before = describe(instance_id, url)
    if before["state"] == ("suspended" if is_suspended else "running"):
        return {**before, "changed": False}
    set_suspended(before["id"], is_suspended, url)
    return {**describe(before["id"], url), "changed": True}


# --- reconcile ------------------------------------------------------------------------------------

def reconcile(observed: Mapping[str, Any], url: str | None = None) -> dict[str, Any]:
    """Compare the database with what the slaves report (SPEC §6).

    ``observed`` maps each slave name to ``{"reachable": bool, "domains": {name: state}, "facts": {cores,
    ram_mb, disk_gb} (optional)}``. A running or suspended VM whose domain vanished from a reachable
    slave becomes lost and frees its resources; an unreachable slave becomes down (no new VMs); a down
    slave that answers again is up; capacity is refreshed from the facts. Domains libvirt has that the
    database does not know are reported as orphans (left alone: an admin decides)."""
    reports: dict[str, dict[str, Any]] = {}
    for name, report in observed.items():
        name = check_name("slave", name)
        if not isinstance(report, Mapping):
            raise ValidationError(f"observed.{name}", "expected a mapping with reachable and domains")
        domains = report.get("domains") or {}
        if not isinstance(domains, Mapping):
            raise ValidationError(f"observed.{name}.domains", "expected a mapping of domain name to state")
        facts = report.get("facts") or {}
        checked = {}
        if facts:
            checked = {"cores": whole(f"observed.{name}.facts.cores", facts.get("cores")),
                       "ram_mb": whole(f"observed.{name}.facts.ram_mb", facts.get("ram_mb")),
                       "disk_gb": whole(f"observed.{name}.facts.disk_gb", facts.get("disk_gb"), 0)}
        reports[name] = {"reachable": bool(report.get("reachable")), "domains": {str(k): str(v) for k, v in
                                                                                  domains.items()},
                         "facts": checked}
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        result: dict[str, Any] = {"lost": [], "down": [], "up": [], "orphans": [], "capacity": [], "ok": []}
        now = config.now()
        for slave in session.scalars(select(Slave).where(Slave.name.in_(list(reports))).order_by(Slave.id)).all():
            report = reports[slave.name]
            wanted, was = ((SlaveStatus.DOWN, SlaveStatus.UP) if not report["reachable"]
                           else (SlaveStatus.UP, SlaveStatus.DOWN))
            if slave.status == was:  # a draining slave stays draining either way
                audit(session, "slave", slave.id, str(wanted), {"status": str(was)}, {"status": str(wanted)})
                slave.status = wanted
                slave.generation += 1
                slave.updated_at = now
                result[str(wanted)].append(slave.name)
            if not report["reachable"]:
                continue
            domains = report["domains"]
            known = set()
            insts = session.scalars(select(Instance).where(
                Instance.slave_id == slave.id,
                Instance.state.in_((InstanceState.RUNNING, InstanceState.SUSPENDED)))).all()
            for inst in insts:
                name = domain_name(inst.id)
                known.add(name)
                if name in domains:
                    result["ok"].append(inst.id)
                    continue
                before = str(inst.state)
                _give_back(session, inst)
                inst.state = InstanceState.LOST
                inst.updated_at = now
                _end_reservation(session, inst)
                audit(session, "instance", inst.id, "lost", {"state": before, "slave": slave.name},
                      {"state": "lost", "reason": f"domain {name} is not on {slave.name}"})
                result["lost"].append(inst.id)
            pending = {domain_name(i) for i in session.scalars(select(Instance.id).where(
                Instance.slave_id == slave.id, Instance.state == InstanceState.PENDING))}
            for name in sorted(set(domains) - known - pending):
                if _DOMAIN_RE.match(name):
                    result["orphans"].append({"slave": slave.name, "domain": name})
            facts = report["facts"]
            if facts:
                session.flush()
                current = (slave.cores_total, slave.ram_mb_total, slave.disk_gb_total)
                wanted = (max(facts["cores"], slave.cores_used), max(facts["ram_mb"], slave.ram_mb_used),
                          max(facts["disk_gb"], slave.disk_gb_used))
                if current != wanted:
                    slave.cores_total, slave.ram_mb_total, slave.disk_gb_total = wanted
                    slave.generation += 1
                    slave.updated_at = now
                    audit(session, "slave", slave.id, "capacity",
                          dict(zip(("cores", "ram_mb", "disk_gb"), current, strict=True)),
                          dict(zip(("cores", "ram_mb", "disk_gb"), wanted, strict=True)))
                    result["capacity"].append(slave.name)
        return result

    return db.write(apply, url)


def instance_ids(values: Sequence[Any] | None, field: str = "ids") -> list[int]:
    return [whole(field, v) for v in values or ()]
