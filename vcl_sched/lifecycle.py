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
import json
import math
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import acting, authz, config, db, disks, imagepath, placement, promises
from .audit import audit
from .claims import (
    HOLDS_CAPACITY,
    allocate_addresses,
    claim_slave,
    instance_row,
    quarantine_addresses,
    release_addresses,
    release_move_hold,
    release_slave,
    set_suspended,
    slave_state,
    slave_states,
)
from .claims import net_gone as claims_net_gone
from .errors import CapacityError, ConflictError, NotFoundError, ValidationError
from .models import (
    AddressPair,
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
from .validate import host_name, iso, whole

DOMAIN_PREFIX = "vcl-"
_DOMAIN_RE = re.compile(r"^vcl-([0-9]{1,12})$")
ENDED = (InstanceState.STOPPED, InstanceState.FAILED, InstanceState.LOST)
HOUR = timedelta(hours=1)


def domain_name(instance_id: int) -> str:
    """The libvirt domain of an instance (``vcl-<id>``); DHCP host entries are ``vm-<id>``."""
    return f"{DOMAIN_PREFIX}{instance_id}"


def _names(field: str, values: Iterable[Any] | None) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    return tuple(host_name(field, v) for v in values)  # slave names: never an inventory keyword or group


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
        keep_disk=bool(inst.keep_disk),
    )
    return row


def _checked_image(image: Image | None, store: str) -> str:
    """The image store, once the image's files are checked again as the launch will use them (a row written
    before the checks existed, or by hand, is refused here rather than copied to a slave)."""
    if image is not None:
        imagepath.image_files(store, image.disk_file, image.kernel, image.ramdisk, check_disk=False)
    return store


def _from_disk(session: Session, inst: Instance, spec: dict[str, Any], settings: Any) -> dict[str, Any]:
    """A launch's spec with the user's kept disk (SPEC §10), when the VM keeps its disk and one is kept: the
    overlay is that disk (``kept_disk``: its file in the store, checksum and size) over the image version it was
    made from, which replaces the image's current files. Records on the instance the files it is launched from
    (what its overlay is backed by, for the keep at its stop)."""
    kept = disks.for_launch(session, inst, settings)
    if kept is not None:
        imagepath.image_files(settings.image_store, kept["disk_file"], kept["kernel"], kept["ramdisk"],
                              check_disk=False)
        spec.update(image_disk=kept["disk_file"], image_kernel=kept["kernel"], image_ramdisk=kept["ramdisk"],
                    image_cmdline=kept["cmdline"])
    spec["kept_disk"] = None if kept is None else {k: kept[k] for k in ("id", "path", "sha256", "size_bytes",
                                                                          "generation")}
    launched_from = json.dumps({"disk_file": spec["image_disk"], "kernel": spec["image_kernel"],
                                "ramdisk": spec["image_ramdisk"], "cmdline": spec["image_cmdline"]}, sort_keys=True)
    if spec["image_disk"] and inst.launched_from != launched_from:
        inst.launched_from = launched_from
    return spec


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




def _give_back(session: Session, inst: Instance, net_clean: bool = False) -> None:
    """Return an instance's claim on its slave and its addresses (the state is the caller's to set).

    With ``net_clean`` (the master's entries of this VM are known to be gone, or were never made) the
    address pair is free at once; otherwise it is quarantined until ``net_gone``."""
    if inst.slave_id is not None:
        holds = inst.state in HOLDS_CAPACITY
        release_slave(session, inst.slave_id, inst.cores if holds else 0, inst.ram_mb if holds else 0,
                      inst.disk_gb)
    if net_clean:
        release_addresses(session, inst.id)
    else:
        quarantine_addresses(session, inst.id)
    inst.slave_id = None
    inst.mac = inst.private_ip = inst.public_ip = None
    inst.console_port = None


# --- one launch per instance: leases -------------------------------------------------------------------

def _leased(inst: Instance, now: datetime) -> bool:
    return inst.lease_owner is not None and inst.lease_until is not None and inst.lease_until > now


def _check_lease(inst: Instance, token: str | None, now: datetime) -> None:
    """A step of a launch must hold the instance's lease (when it has one); raise naming ``lease``."""
    if inst.lease_owner is None:
        if token:
            raise ConflictError(f"lease: the launch's lease on instance {inst.id} ended (reconcile took the"
                                " instance back after it expired): this launch stops here")
        return
    if token != inst.lease_owner:
        until = f" until {inst.lease_until:%H:%M}" if inst.lease_until else ""
        raise ConflictError(f"lease: instance {inst.id} is being launched by another run{until}")


def _lease_minutes(session: Session) -> int:
    return int(getattr(db.load_settings(session), "launch_lease_minutes", 30))


def lease(instance_id: Any, url: str | None = None) -> dict[str, Any]:
    """Take the launch lease of a pending instance (SPEC §4: one launch per instance).

    Returns ``{"lease": token, "refused": ""}``, or ``{"lease": None, "refused": why}`` when another run holds
    a live lease, the instance is not pending, or its window has passed (it is then ended: never launched)."""
    iid = whole("id", instance_id)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        inst, slave, image, owner = _load(session, iid)
        now = config.now()
        spec = _launch_spec(inst, slave, image, owner)
        if inst.state != InstanceState.PENDING:
            return {"lease": None, "refused": f"instance {iid} is {inst.state}: nothing to launch", "instance": spec,
                    "changed": False}
        if inst.ends_at is not None and inst.ends_at <= now:
            _give_back(session, inst)
            inst.state = InstanceState.STOPPED
            inst.lease_owner = inst.lease_until = None
            inst.updated_at = now
            audit(session, "instance", inst.id, "expired", {"state": "pending"},
                  {"state": "stopped", "ends_at": iso(inst.ends_at)})
            return {"lease": None, "instance": _launch_spec(inst, None, image, owner), "changed": True,
                    "refused": f"instance {iid}: its window ended at {iso(inst.ends_at)}: never launched"}
        if _leased(inst, now):
            assert inst.lease_until is not None
            return {"lease": None, "instance": spec, "changed": False,
                    "refused": f"instance {iid} is being launched by another run until {inst.lease_until:%H:%M}"}
        token = secrets.token_hex(16)
        inst.lease_owner = token
        inst.lease_until = now + timedelta(minutes=_lease_minutes(session))
        inst.updated_at = now
        audit(session, "instance", inst.id, "lease", None, {"until": iso(inst.lease_until)})
        return {"lease": token, "refused": "", "instance": spec, "changed": True}

    return db.write(apply, url)


def unlease(instance_id: Any, lease_token: str | None, reason: str = "", url: str | None = None) -> dict[str, Any]:
    """A launch that ends without running the VM (no slave has room yet) hands its lease back: the instance
    waits, pending, for the next dispatch. Any claim it still holds goes back (quarantined addresses)."""
    iid = whole("id", instance_id)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        inst, slave, image, owner = _load(session, iid)
        if inst.lease_owner is None or inst.state != InstanceState.PENDING:
            return {**_launch_spec(inst, slave, image, owner), "changed": False}
        _check_lease(inst, lease_token, config.now())
        if inst.slave_id is not None or inst.mac:
            _give_back(session, inst)
        inst.lease_owner = inst.lease_until = None
        inst.updated_at = config.now()
        audit(session, "instance", inst.id, "unlease", None, {"reason": reason[:500]})
        return {**_launch_spec(inst, None, image, owner), "changed": True}

    return db.write(apply, url)


# --- a launch's steps ------------------------------------------------------------------------------------

def place(instance_id: Any, exclude: Iterable[Any] | None = None, url: str | None = None,
          lease_token: str | None = None) -> dict[str, Any]:
    """Choose a slave for a pending instance and claim cores, RAM, disk, a MAC and an address pair,
    all in one transaction. An instance that already holds a claim on a slave not in ``exclude`` keeps
    it (a best-effort request claims when it is accepted). A reserved seat goes to the slave its block's
    placement assigns it (promises.choose_seat_slave); a queued best-effort VM to a slave where it fits
    beside every commitment for at least an hour, and its end is fixed now. Raises CapacityError, with
    the reason, when no slave fits; ConflictError when the instance's window has passed."""
    iid = whole("id", instance_id)
    excluded = set(_names("exclude", exclude))
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        inst, slave, image, owner = _load(session, iid)
        now = config.now()
        if inst.state != InstanceState.PENDING:
            raise ConflictError(f"id: instance {iid} is {inst.state}, not pending: nothing to launch")
        _check_lease(inst, lease_token, now)
        if inst.ends_at is not None and inst.ends_at <= now:
            raise ConflictError(f"id: instance {iid}'s window ended at {iso(inst.ends_at)}: it is never launched")
        if inst.lease_owner is not None:
            inst.lease_until = now + timedelta(minutes=_lease_minutes(session))
        settings = db.load_settings(session)
        store = _checked_image(image, settings.image_store)
        if slave is not None and slave.name not in excluded and slave.status == SlaveStatus.UP and inst.mac:
            return {**_from_disk(session, inst, _launch_spec(inst, slave, image, owner), settings), "placed": "kept",
                    "image_store": store}
        if slave is not None or inst.mac:
            _give_back(session, inst)
        demand = placement.Demand(inst.cores, inst.ram_mb, inst.disk_gb)
        states = [s for s in slave_states(session) if s.name not in excluded]
        lookahead = settings.booking.lookahead_max_hours
        view = promises.view(session, now, lookahead)
        running = view.running()
        if inst.kind == InstanceKind.AR and _reclaim_for_seat(session, view, inst, demand, now):
            states = [s for s in slave_states(session) if s.name not in excluded]
            view = promises.view(session, now, lookahead)
            running = view.running()
        if inst.kind == InstanceKind.AR:
            early = inst.reservation_id in _opening(session, now)
            decision = promises.choose_seat_slave(view, states, demand, inst.reservation_id, inst.seat, running,
                                                  settings.placement_policy, only_assigned=early)
        else:
            if inst.ends_at is not None:
                max_hours = max(1, min(lookahead, math.ceil((inst.ends_at - now) / HOUR)))
            else:
                max_hours = min(lookahead, inst.hours or lookahead)
            decision = promises.choose_best_effort(view, states, demand, inst.priority, max_hours,
                                                   settings.placement_policy, running, allow_preempt=False)
        if decision.action != "place" or decision.slave is None:
            tried = f" (tried and excluded: {', '.join(sorted(excluded))})" if excluded else ""
            why = decision.reason or ("its slave has no room until best-effort VMs there are suspended"
                                      " (dispatch does it)")
            raise CapacityError(f"instance {iid}: {why}{tried}")
        chosen = decision.slave
        claim_slave(session, chosen, demand)
        inst.slave_id = chosen.id
        if inst.kind == InstanceKind.BE and inst.ends_at is None:
            inst.ends_at = now + decision.hours * HOUR  # a queued request's end is fixed when it launches
        session.flush()
        allocate_addresses(session, inst.id, settings.mac_prefix)
        session.refresh(inst)
        inst.updated_at = now
        slave_row = session.get(Slave, chosen.id)
        spec = _from_disk(session, inst, _launch_spec(inst, slave_row, image, owner), settings)
        audit(session, "instance", inst.id, "claim", None,
              {k: spec[k] for k in ("slave", "cores", "ram_mb", "disk_gb", "mac", "private_ip", "public_ip",
                                    "ends_at")})
        return {**spec, "placed": "claimed", "hours": decision.hours if inst.kind == InstanceKind.BE else None,
                "image_store": store}

    return db.write(apply, url)


def _reclaim_for_seat(session: Session, view: promises.View, seat: Instance, demand: placement.Demand,
                      now: datetime) -> bool:
    """A seat's slave lacks room while best-effort requests hold claims there that no launch holds: give those
    claims back (lowest priority first, then the youngest) until the seat fits; they wait, pending, and their end
    is fixed again when they launch. Returns whether any claim was given back."""
    target = view.seat_slave(seat.reservation_id, seat.seat)
    if target is None:
        return False
    state = slave_state(session, target)
    cores, ram = state.free_cores, state.free_ram_mb
    if cores >= demand.cores and ram >= demand.ram_mb:
        return False
    claims_there = session.scalars(select(Instance).where(
        Instance.slave_id == target, Instance.state == InstanceState.PENDING, Instance.kind == InstanceKind.BE)).all()
    reclaimed = False
    for other in sorted((i for i in claims_there if i.mac and not _leased(i, now)),
                        key=lambda i: (round(i.priority, 9), i.register_as_slave, -(i.requeued_from or i.id))):
        if cores >= demand.cores and ram >= demand.ram_mb:
            break
        _give_back(session, other)
        cores, ram = cores + other.cores, ram + other.ram_mb
        other.ends_at = None
        other.lease_owner = other.lease_until = None
        other.updated_at = now
        audit(session, "instance", other.id, "unclaim", None, {"reason": f"seat of reservation {seat.reservation_id}"})
        reclaimed = True
    session.flush()
    return reclaimed


def unplace(instance_id: Any, reason: str = "", url: str | None = None, lease_token: str | None = None,
            net_clean: bool = False) -> dict[str, Any]:
    """Undo a launch's claim (a step on the hosts failed): the slave's cores, RAM and disk go back, and the
    address pair too once the master's entries are gone (``net_clean``; otherwise it is quarantined until
    ``net_gone``). The instance is pending again, with no slave, ready for the next candidate; the launch
    keeps its lease."""
    iid = whole("id", instance_id)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        inst, slave, image, owner = _load(session, iid)
        if inst.state != InstanceState.PENDING:
            raise ConflictError(f"id: instance {iid} is {inst.state}: only a pending launch can be undone")
        _check_lease(inst, lease_token, config.now())
        before = {"slave": slave.name if slave else None, "private_ip": inst.private_ip,
                  "public_ip": inst.public_ip, "mac": inst.mac}
        _give_back(session, inst, net_clean=net_clean)
        inst.updated_at = config.now()
        audit(session, "instance", inst.id, "unclaim", before, {"reason": reason[:500], "net_clean": net_clean})
        return _launch_spec(inst, None, image, owner)

    return db.write(apply, url)


def mark_running(instance_id: Any, console_port: Any = None, url: str | None = None,
                 lease_token: str | None = None) -> dict[str, Any]:
    """The domain runs on its slave with its DHCP entry and DNAT in place: record it (the lease ends)."""
    iid = whole("id", instance_id)
    port = whole("console_port", console_port, 1, 65535) if console_port not in (None, "", -1) else None
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        inst, slave, image, owner = _load(session, iid)
        if inst.state == InstanceState.RUNNING and inst.console_port == port:
            return {**_launch_spec(inst, slave, image, owner), "changed": False}
        now = config.now()
        if inst.state == InstanceState.PENDING:
            _check_lease(inst, lease_token, now)
        if inst.state != InstanceState.PENDING or slave is None or not inst.mac:
            raise ConflictError(f"id: instance {iid} is {inst.state} without a claim: it cannot be running")
        inst.state = InstanceState.RUNNING
        inst.console_port = port
        inst.started_at = inst.started_at or now
        inst.lease_owner = inst.lease_until = None
        inst.updated_at = now
        audit(session, "instance", inst.id, "running", {"state": "pending"},
              {"state": "running", "slave": slave.name, "console_port": port})
        return {**_launch_spec(inst, slave, image, owner), "changed": True}

    return db.write(apply, url)


def mark_failed(instance_id: Any, reason: str, url: str | None = None, lease_token: str | None = None,
                net_clean: bool = False) -> dict[str, Any]:
    """No slave could take the instance: it ends as failed, with the reason in the audit log."""
    iid = whole("id", instance_id)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        inst, slave, image, owner = _load(session, iid)
        if inst.state in ENDED:
            return {**_launch_spec(inst, slave, image, owner), "changed": False}
        _check_lease(inst, lease_token, config.now())
        before = str(inst.state)
        _give_back(session, inst, net_clean=net_clean)
        inst.state = InstanceState.FAILED
        inst.lease_owner = inst.lease_until = None
        inst.updated_at = config.now()
        audit(session, "instance", inst.id, "failed", {"state": before}, {"reason": reason[:500]})
        return {**_launch_spec(inst, None, image, owner), "changed": True}

    return db.write(apply, url)


def stop(instance_id: Any, state: str = "stopped", url: str | None = None, net_clean: bool = True) -> dict[str, Any]:
    """The domain is gone from its slave and the master forgets the VM (the stop playbook removed its entries
    first, hence ``net_clean``): release everything. Stopping an instance that already ended is not an error
    (a stop run may be repeated)."""
    iid = whole("id", instance_id)
    final = InstanceState(state)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        inst, slave, image, owner = _load(session, iid)
        if inst.state in ENDED:
            if net_clean:
                net_gone_in(session, inst.id)
            return {**_launch_spec(inst, slave, image, owner), "changed": False}
        before = str(inst.state)
        _give_back(session, inst, net_clean=net_clean)
        inst.state = final
        inst.lease_owner = inst.lease_until = None
        inst.updated_at = config.now()
        audit(session, "instance", inst.id, "release", {"state": before}, {"state": str(final)})
        return {**_launch_spec(inst, None, image, owner), "changed": True}

    return db.write(apply, url)


def net_gone_in(session: Session, iid: int) -> int:
    freed = claims_net_gone(session, iid)
    inst = session.get(Instance, iid)
    if inst is not None and inst.state in ENDED:
        held = session.scalar(select(AddressPair.id).where(AddressPair.instance_id == iid))
        if held is not None:
            release_addresses(session, iid)
            freed += 1
    return freed


def net_gone(instance_id: Any, url: str | None = None) -> dict[str, Any]:
    """The master's entries of an instance (DHCP host, alias, DNAT chain) are confirmed gone: its
    quarantined address pair is free again."""
    iid = whole("id", instance_id)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        freed = net_gone_in(session, iid)
        if freed:
            audit(session, "instance", iid, "net_gone", None, {"pairs_freed": freed})
        return {"id": iid, "changed": bool(freed), "pairs_freed": freed}

    return db.write(apply, url)


# --- dispatch -------------------------------------------------------------------------------------

def _order(priority: float, ras: int, seq: int) -> tuple:
    return service_order_key(priority, ras, seq)


def _queue_key(inst: Instance) -> tuple:
    """Order of service for waiting instances: reserved seats first (SPEC §4: an AR never waits behind a
    best-effort VM), by their reservation's order and seat; then best-effort requests by SPEC §3's order,
    a requeued request keeping its first place in the queue."""
    if inst.kind == InstanceKind.AR:
        return (0, *_order(inst.priority, inst.register_as_slave, inst.reservation_id or 0), inst.seat or 0)
    return (1, *_order(inst.priority, inst.register_as_slave, inst.requeued_from or inst.id), 0)


def _new_seat(session: Session, res: Reservation, seat: int, at: datetime,
              requeued_from: int | None = None, user_id: int | None = None) -> Instance:
    """A pending instance for seat ``seat`` of ``res``, held by ``user_id`` (None: nobody has taken it yet)."""
    image = session.get(Image, res.image_id) if res.image_id is not None else None
    inst = Instance(image_id=res.image_id, slave_id=None, reservation_id=res.id, group_id=res.group_id,
                    user_id=user_id, cores=res.cores, ram_mb=res.ram_mb,
                    disk_gb=image.default_disk_gb if image else 0, state=InstanceState.PENDING,
                    kind=InstanceKind.AR, priority=res.priority, register_as_slave=res.register_as_slave,
                    seat=seat, ends_at=res.end, requeued_from=requeued_from, created_at=at, updated_at=at,
                    keep_disk=_seat_keeps(session, res, user_id))
    session.add(inst)
    session.flush()
    return inst


def _seat_keeps(session: Session, res: Reservation, user_id: int | None) -> int:
    """A seat of a session that keeps disks keeps its holder's, unless the holder's disk of that image is used
    by another live VM already (one VM per disk)."""
    if not res.keep_disks:
        return 0
    return 0 if disks.live_keeper(session, user_id, res.image_id) is not None else 1


def _seat_holders(session: Session, res: Reservation) -> list[int | None]:
    """Who each prelaunched seat is handed to: the group's members in name order; a group without members gives
    its one seat to whoever booked it (a reservation as it was before people had seats); the rest stay free
    for whoever takes them."""
    holders: list[int | None] = [uid for uid, _ in authz.members(session, res.group_id)]
    if not holders and res.user_id is not None:
        holders = [res.user_id]
    return (holders + [None] * res.seats)[: res.seats]


def start_due_reservations(now: datetime | None = None, url: str | None = None) -> list[dict[str, Any]]:
    """Accepted reservations that are due become active: with ``prelaunch``, ``prelaunch_lead_minutes`` before
    their window opens, each seat becomes a pending instance (kind AR, ending with the window) handed to a
    member (:func:`_seat_holders`), so the class finds them running at the bell; without it, at the window's
    start, with no instance: members take seats (``sessions.take_seat``). Ones whose window passed unserved,
    and active ones whose window ended, are done. One transaction."""
    db.require_schema(url)

    def apply(session: Session) -> list[dict[str, Any]]:
        db.lock(session, "calendar")
        at = now or config.now()
        lead = timedelta(minutes=db.load_settings(session).prelaunch_lead_minutes)
        started = []
        due = session.scalars(select(Reservation).where(Reservation.state == ReservationState.ACCEPTED,
                                                        Reservation.start <= at + lead).order_by(Reservation.id))
        for res in list(due):
            assert res.end is not None and res.start is not None
            if not res.prelaunch and res.start > at:
                continue
            if res.end <= at:
                res.state = ReservationState.DONE
                res.reason = (res.reason + "; " if res.reason else "") + "its window passed before a dispatch ran"
                audit(session, "reservation", res.id, "expired", {"state": "accepted"}, {"state": "done"})
                continue
            seats = [_new_seat(session, res, n, at, user_id=holder)
                     for n, holder in enumerate(_seat_holders(session, res))] if res.prelaunch else []
            ids = [inst.id for inst in seats]
            res.state = ReservationState.ACTIVE
            audit(session, "reservation", res.id, "active", {"state": "accepted"},
                  {"state": "active", "instances": ids, "prelaunch": bool(res.prelaunch)})
            for inst in seats:
                audit(session, "instance", inst.id, "queued", None,
                      {"reservation": res.id, "kind": "AR", "seat": (inst.seat or 0) + 1, "user_id": inst.user_id})
            started.append({"reservation": res.id, "id": ids[0] if ids else None, "ids": ids, "seats": res.seats,
                            "cores": res.cores, "opens": iso(res.start), "ends_at": iso(res.end),
                            "prelaunch": bool(res.prelaunch)})
        ended = session.scalars(select(Reservation).where(Reservation.state == ReservationState.ACTIVE,
                                                          Reservation.end <= at))
        for res in list(ended):
            res.state = ReservationState.DONE
            audit(session, "reservation", res.id, "done", {"state": "active"}, {"state": "done"})
        return started

    return db.write(apply, url)


def _opening(session: Session, at: datetime) -> dict[int, datetime]:
    """Reservations whose seats were prelaunched and whose window has not opened yet: id → opening time. Until
    then a seat runs only on the slave its block's placement assigns it (the rest of the pool may be promised to
    other blocks until their windows end)."""
    rows = session.execute(select(Reservation.id, Reservation.start).where(
        Reservation.state == ReservationState.ACTIVE, Reservation.start > at))
    return {rid: start for rid, start in rows}


def dispatch_plan(now: datetime | None = None, url: str | None = None) -> dict[str, Any]:
    """What a dispatch run does now, decided on one snapshot (the playbook then acts, and every action
    is its own transaction on the hosts' outcome):

    1. ``stop``: VMs whose time is up, and pending instances whose window passed (never launched).
    2. ``suspend`` then ``launch``: waiting instances: reserved seats first, each on the slave its block's
       placement assigns it, suspending best-effort VMs there whatever their priority (SPEC §4); then
       best-effort requests, highest priority first (then clients that register as slaves, then first
       come), each only where it fits beside every commitment for at least an hour (promises), and only
       suspending VMs of strictly lower priority; equal priority waits. Instances a launch holds (a live
       lease) are left to it.
    3. ``resume``: suspended VMs whose slave has room again until their end, most important first, unless
       a more important instance still waits.

    ``lanes`` groups ``launch`` by the slave each is planned on (slave name → ids in order).
    """
    db.require_schema(url)
    at = now or config.now()
    with db.read(url) as session:
        settings = db.load_settings(session)
        lookahead = settings.booking.lookahead_max_hours
        states = {s.id: s for s in slave_states(session)}
        rows = session.scalars(select(Instance).where(
            Instance.state.in_((InstanceState.PENDING, InstanceState.RUNNING, InstanceState.SUSPENDED)))
            .order_by(Instance.id)).all()
        plan: dict[str, Any] = {"at": iso(at), "stop": [], "suspend": [], "launch": [], "resume": [],
                                "wait": [], "notes": [], "lanes": {}}

        def lane(iid: int, slave: str) -> None:
            # Launches grouped by the slave they are planned on, in order: dispatch.yml runs the lanes side by
            # side (one per slave) and each lane's launches one after another. A launch still claims its slave
            # itself (place), so a lane is where it is expected to go, not a claim.
            plan["lanes"].setdefault(slave, []).append(iid)

        def freed(slave_id: int | None, cores: int, ram: int, disk: int) -> None:
            if slave_id in states:
                st = states[slave_id]
                states[slave_id] = dataclasses.replace(st, cores_used=st.cores_used - cores,
                                                       ram_mb_used=st.ram_mb_used - ram,
                                                       disk_gb_used=st.disk_gb_used - disk)

        # 1. what expired ends first: its resources serve this very run.
        alive = []
        for inst in rows:
            if inst.ends_at is not None and inst.ends_at <= at:
                if inst.state == InstanceState.PENDING and _leased(inst, at):
                    plan["notes"].append(f"#{inst.id} expired while a launch holds it; that launch ends it")
                    alive.append(inst)
                    continue
                plan["stop"].append(inst.id)
                if inst.state == InstanceState.PENDING:
                    plan["notes"].append(f"#{inst.id}: its window ended at {iso(inst.ends_at)}: never launched")
                holds = inst.state in HOLDS_CAPACITY
                freed(inst.slave_id, inst.cores if holds else 0, inst.ram_mb if holds else 0, inst.disk_gb)
            else:
                alive.append(inst)

        view = promises.view(session, at, lookahead, skip=frozenset(plan["stop"]))
        running = view.running()
        # A best-effort claim nobody launches yet (no live lease) is a decision, not a VM: it is taken again below,
        # after the seats, so a seat's start is never blocked by a request that has not started (a seat's place()
        # gives such claims back on its slave).
        reclaim = {i.id for i in alive if i.state == InstanceState.PENDING and i.kind == InstanceKind.BE
                   and i.slave_id is not None and i.mac and not _leased(i, at)}
        for inst in alive:
            if inst.id in reclaim:
                freed(inst.slave_id, inst.cores, inst.ram_mb, inst.disk_gb)
                view.ledger.remove(("vm", inst.id, str(inst.kind), inst.priority))
        victims: set[int] = set()
        first_waiting: tuple | None = None
        opening = _opening(session, at)
        for inst in sorted((i for i in alive if i.state == InstanceState.PENDING), key=_queue_key):
            if _leased(inst, at):
                assert inst.lease_until is not None
                plan["notes"].append(f"#{inst.id} is being launched by another run until {inst.lease_until:%H:%M}")
                continue
            claimed = states.get(inst.slave_id) if inst.slave_id is not None and inst.mac else None
            if claimed is not None and claimed.status == "up" and inst.id not in reclaim:
                plan["launch"].append(inst.id)  # claimed when it was accepted: launched as it is
                lane(inst.id, claimed.name)
                continue
            demand = placement.Demand(inst.cores, inst.ram_mb, inst.disk_gb)
            candidates = [vm for vm in running if vm.id not in victims]
            slaves = list(states.values())
            if inst.kind == InstanceKind.AR:
                decision = promises.choose_seat_slave(view, slaves, demand, inst.reservation_id, inst.seat,
                                                      candidates, settings.placement_policy,
                                                      only_assigned=inst.reservation_id in opening)
            else:
                max_hours = min(lookahead, inst.hours or lookahead)
                decision = promises.choose_best_effort(view, slaves, demand, inst.priority, max_hours,
                                                       settings.placement_policy, candidates)
            if decision.action in ("place", "suspend") and decision.slave is not None:
                for vm in decision.victims:
                    victims.add(vm.id)
                    plan["suspend"].append(vm.id)
                    freed(vm.slave_id, vm.cores, vm.ram_mb, 0)
                    view.ledger.remove(("vm", vm.id, vm.kind, vm.priority))
                states[decision.slave.id] = states[decision.slave.id].claimed(demand)
                if inst.kind == InstanceKind.BE:
                    view.ledger.add(decision.slave.id, at, at + decision.hours * HOUR, inst.cores, inst.ram_mb,
                                    ("vm", inst.id, InstanceKind.BE, inst.priority))
                elif view.seat_slave(inst.reservation_id, inst.seat) != decision.slave.id:
                    view.ledger.add(decision.slave.id, at, inst.ends_at, inst.cores, inst.ram_mb,
                                    ("vm", inst.id, InstanceKind.AR, inst.priority))
                plan["launch"].append(inst.id)
                lane(inst.id, decision.slave.name)
                if decision.victims:
                    plan["notes"].append(f"#{inst.id}: {decision.reason}")
            else:
                plan["wait"].append(inst.id)
                plan["notes"].append(f"#{inst.id} waits: {decision.reason}")
                if first_waiting is None:
                    first_waiting = _queue_key(inst)

        # 3. resume, most important first, while nothing more important waits.
        suspended = sorted((i for i in alive if i.state == InstanceState.SUSPENDED and i.id not in victims),
                           key=_queue_key)
        for inst in suspended:
            if first_waiting is not None and first_waiting < _queue_key(inst):
                plan["notes"].append(f"#{inst.id} stays suspended: a more important request waits")
                continue
            slave = states.get(inst.slave_id) if inst.slave_id is not None else None
            if slave is None or slave.status != "up":
                continue
            if slave.free_cores < inst.cores or slave.free_ram_mb < inst.ram_mb:
                continue
            until = view.ledger.free_until(slave.id, inst.cores, inst.ram_mb)
            if until is not None and (inst.ends_at is None or until < inst.ends_at):
                plan["notes"].append(f"#{inst.id} stays suspended: {slave.name}'s cores are committed from"
                                     f" {until:%H:%M}, before it ends")
                continue
            states[slave.id] = slave.claimed(placement.Demand(inst.cores, inst.ram_mb, 0))
            view.ledger.add(slave.id, at, inst.ends_at, inst.cores, inst.ram_mb,
                            ("vm", inst.id, str(inst.kind), inst.priority))
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

def _requeue(session: Session, inst: Instance, now: datetime, lookahead: int) -> Instance | None:
    """A lost VM's place comes back (SPEC §4): a reserved seat is launched again (elsewhere) while its window
    lasts; a best-effort request goes back to the queue with its priority, its first place in the queue and
    the hours it had left."""
    root = inst.requeued_from or inst.id
    if inst.kind == InstanceKind.AR:
        res = session.get(Reservation, inst.reservation_id) if inst.reservation_id is not None else None
        if res is None or res.state != ReservationState.ACTIVE or res.end is None or res.end <= now:
            return None
        return _new_seat(session, res, inst.seat or 0, now, root, user_id=inst.user_id)
    if inst.ends_at is not None and inst.ends_at <= now:
        return None
    left = math.ceil((inst.ends_at - now) / HOUR) if inst.ends_at is not None else (inst.hours or 1)
    new = Instance(image_id=inst.image_id, slave_id=None, reservation_id=None, group_id=inst.group_id,
                   user_id=inst.user_id, cores=inst.cores, ram_mb=inst.ram_mb, disk_gb=inst.disk_gb,
                   state=InstanceState.PENDING, kind=InstanceKind.BE, priority=inst.priority,
                   register_as_slave=inst.register_as_slave, hours=max(1, min(lookahead, left)), ends_at=None,
                   requeued_from=root, created_at=now, updated_at=now, keep_disk=inst.keep_disk)
    session.add(new)
    session.flush()
    return new


def _lose(session: Session, inst: Instance, why: str, now: datetime, lookahead: int,
          result: dict[str, Any]) -> None:
    before = str(inst.state)
    slave = inst.slave_id
    _give_back(session, inst)
    release_move_hold(session, inst)  # a move off a lent PC held room elsewhere (SPEC §9): it goes back too
    inst.state = InstanceState.LOST
    inst.lease_owner = inst.lease_until = None
    inst.updated_at = now
    audit(session, "instance", inst.id, "lost", {"state": before, "slave": slave}, {"state": "lost", "reason": why})
    result["lost"].append(inst.id)
    new = _requeue(session, inst, now, lookahead)
    if new is not None:
        audit(session, "instance", new.id, "queued", None, {"requeued_from": inst.id, "kind": str(new.kind)})
        result["requeued"].append({"lost": inst.id, "id": new.id, "kind": str(new.kind)})


def reconcile(observed: Mapping[str, Any], url: str | None = None) -> dict[str, Any]:
    """Compare the database with what the slaves report (SPEC §4, §6).

    ``observed`` maps each slave name to ``{"reachable": bool, "domains": {name: state}, "facts": {cores,
    ram_mb, disk_gb} (optional)}``; a name with state ``files`` is an overlay or log with no domain.

    - A slave that does not answer becomes down (no new VMs) and takes its VMs with it: they become lost,
      their claims are freed; a reserved seat gets a new pending instance (launched elsewhere by the next
      dispatch while the pool has room), a best-effort request goes back to the queue with its priority.
      A claimed launch on it that nobody holds any more is simply unclaimed (still pending).
    - On a slave that answers, a running or suspended VM whose domain vanished is lost the same way; a
      down slave that answers again is up; capacity is refreshed from the facts.
    - A launch whose lease expired (its launcher died) gives its claim back; the instance is pending again.
    - ``orphans``: every ``vcl-<id>`` domain or leftover file on a slave that answers which the database does
      not place on that slave (the playbook removes them); ``unnet``: instances whose entries the master may
      still carry (the playbook removes them and calls ``net_gone``); ``requeued``; ``leases_expired``."""
    reports: dict[str, dict[str, Any]] = {}
    for name, report in observed.items():
        name = host_name("observed", name)
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
        result: dict[str, Any] = {"lost": [], "down": [], "up": [], "orphans": [], "capacity": [], "ok": [],
                                  "unnet": [], "requeued": [], "leases_expired": [], "unclaimed": []}
        now = config.now()
        lookahead = db.load_settings(session).booking.lookahead_max_hours
        # Launches whose launcher died: the claim goes back (quarantined: the master may carry its entries).
        for inst in session.scalars(select(Instance).where(Instance.state == InstanceState.PENDING,
                                                           Instance.lease_until.is_not(None),
                                                           Instance.lease_until <= now).order_by(Instance.id)).all():
            _give_back(session, inst)
            inst.lease_owner = inst.lease_until = None
            inst.updated_at = now
            audit(session, "instance", inst.id, "lease_expired", None, {"state": "pending"})
            result["leases_expired"].append(inst.id)
        for slave in session.scalars(select(Slave).where(Slave.name.in_(list(reports))).order_by(Slave.id)).all():
            report = reports[slave.name]
            wanted, was = ((SlaveStatus.DOWN, SlaveStatus.UP) if not report["reachable"]
                           else (SlaveStatus.UP, SlaveStatus.DOWN))
            if not report["reachable"] and slave.lend_state in ("lent", "reclaiming"):
                # A lent PC switched off without notice (SPEC §9): its lending ends; its VMs are the dead-slave
                # case below, and when it answers again it gets no VM until its owner lends it again.
                before = {"status": str(slave.status), "lend_state": slave.lend_state}
                slave.status, slave.lend_state = SlaveStatus.DRAINING, "gone"
                slave.generation += 1
                slave.updated_at = now
                audit(session, "slave", slave.id, "gone", before, {"status": "draining", "lend_state": "gone"})
                result["down"].append(slave.name)
            elif slave.status == was:  # a draining slave stays draining either way
                audit(session, "slave", slave.id, str(wanted), {"status": str(was)}, {"status": str(wanted)})
                slave.status = wanted
                slave.generation += 1
                slave.updated_at = now
                result[str(wanted)].append(slave.name)
            on_slave = session.scalars(select(Instance).where(
                Instance.slave_id == slave.id,
                Instance.state.in_((InstanceState.RUNNING, InstanceState.SUSPENDED, InstanceState.PENDING)))
                .order_by(Instance.id)).all()
            if not report["reachable"]:
                for inst in on_slave:
                    if inst.state == InstanceState.PENDING:
                        if not _leased(inst, now):  # a claim nobody launches: give it back, keep it queued
                            _give_back(session, inst)
                            inst.updated_at = now
                            audit(session, "instance", inst.id, "unclaim", None,
                                  {"reason": f"slave {slave.name} does not answer"})
                            result["unclaimed"].append(inst.id)
                        continue
                    _lose(session, inst, f"slave {slave.name} does not answer", now, lookahead, result)
                continue
            domains = report["domains"]
            placed = set()
            for inst in on_slave:
                name = domain_name(inst.id)
                placed.add(name)
                if inst.state == InstanceState.PENDING:
                    continue
                if domains.get(name) not in (None, "files"):
                    result["ok"].append(inst.id)
                    continue
                _lose(session, inst, f"domain {name} is not on {slave.name}", now, lookahead, result)
                placed.discard(name)
            for name in sorted(set(domains) - placed):
                if _DOMAIN_RE.match(name):
                    result["orphans"].append({"slave": slave.name, "domain": name})
            facts = report["facts"]
            if facts:
                session.flush()
                current = (slave.cores_total, slave.ram_mb_total, slave.disk_gb_total)
                wanted_cap = (max(facts["cores"], slave.cores_used), max(facts["ram_mb"], slave.ram_mb_used),
                              max(facts["disk_gb"], slave.disk_gb_used))
                if current != wanted_cap:
                    slave.cores_total, slave.ram_mb_total, slave.disk_gb_total = wanted_cap
                    slave.generation += 1
                    slave.updated_at = now
                    audit(session, "slave", slave.id, "capacity",
                          dict(zip(("cores", "ram_mb", "disk_gb"), current, strict=True)),
                          dict(zip(("cores", "ram_mb", "disk_gb"), wanted_cap, strict=True)))
                    result["capacity"].append(slave.name)
        session.flush()
        stale = set(session.scalars(select(AddressPair.stale_instance).where(AddressPair.stale_instance.is_not(None))))
        ended = set(session.scalars(select(AddressPair.instance_id)
                                    .join(Instance, Instance.id == AddressPair.instance_id)
                                    .where(Instance.state.in_(ENDED))))
        result["unnet"] = sorted(stale | ended)
        return result

    return db.write(apply, url)


def instance_ids(values: Sequence[Any] | None, field: str = "ids") -> list[int]:
    return [whole(field, v) for v in values or ()]


# --- extend ---------------------------------------------------------------------------------------

def extend(instance_id: Any, hours: Any, url: str | None = None) -> dict[str, Any]:
    """More time for a running best-effort VM (SPEC §4, within policy): ``hours`` more, so long as its new end
    stays within the look-ahead from now (``booking.lookahead_max_hours``), within its lent PC's lending, and its
    cores and RAM on its slave are promised to nothing else before then (reserved seats and the other VMs as the
    calendar counts them). Its owner, the teacher of its group and admins may. One write transaction under the
    calendar lock, so a reservation admitted at the same moment sees either the old end or the new one."""
    iid = whole("id", instance_id)
    db.require_schema(url)
    with db.read(url) as session:
        settings = db.load_settings(session)
    more = whole("hours", hours, 1, settings.booking.lookahead_max_hours)

    def apply(session: Session) -> dict[str, Any]:
        db.lock(session, "calendar")
        inst = session.get(Instance, iid)
        if inst is None:
            raise NotFoundError(f"id: no instance {iid}")
        authz.check_instance(session, acting.current(), inst.user_id, inst.group_id)
        if inst.kind != InstanceKind.BE:
            raise ValidationError("id", f"VM {iid} is a seat of a class session: it ends with its session")
        if inst.state != InstanceState.RUNNING or inst.ends_at is None or inst.slave_id is None:
            raise ValidationError("id", f"VM {iid} is {inst.state}: only a running VM can be extended")
        now = config.now()
        before = inst.ends_at
        new_end = before + more * HOUR
        ceiling = now + settings.booking.lookahead_max_hours * HOUR
        if new_end > ceiling:
            room = max(0, int((ceiling - before) // HOUR))
            raise ValidationError("hours", f"at most {room} more hour(s): a VM runs at most"
                                           f" {settings.booking.lookahead_max_hours} hours ahead of now")
        slave = session.get(Slave, inst.slave_id)
        if slave is not None and slave.lend_until is not None and new_end > slave.lend_until:
            room = max(0, int((slave.lend_until - before) // HOUR))
            raise ValidationError("hours", f"at most {room} more hour(s): the PC it runs on is lent until"
                                           f" {iso(slave.lend_until)}")
        view = promises.view(session, now, settings.booking.lookahead_max_hours, skip=frozenset({iid}))
        free_until = view.ledger.free_until(inst.slave_id, inst.cores, inst.ram_mb)
        if free_until is not None and free_until < new_end:
            room = max(0, int((free_until - before) // HOUR))
            raise ValidationError("hours", f"at most {room} more hour(s): its cores on {slave.name if slave else '?'}"
                                           f" are promised from {iso(free_until)}")
        inst.ends_at = new_end
        audit(session, "instance", iid, "extend", {"ends_at": iso(before)}, {"ends_at": iso(new_end)})
        return {"id": iid, "ends_at": iso(new_end), "hours_added": more, "changed": True}

    return db.write(apply, url)
