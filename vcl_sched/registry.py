"""Slaves join and leave the pool through the inventory ("adding a slave = adding one line to the inventory").

site.yml registers every slave it bootstraps with its real capacity (from facts), and marks slaves that are
in the database but no longer in the inventory as draining. A slave is never deleted while it hosts VMs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from vcl_sched import authz, config, db
from vcl_sched.audit import audit
from vcl_sched.catalogue import ADDRESS_SETTINGS, check_host_address, slave_row
from vcl_sched.errors import ConflictError, NotFoundError, ValidationError, VclError
from vcl_sched.models import Instance, InstanceState, Slave, SlaveStatus
from vcl_sched.validate import check_name, host_name, slave_input

#: Instances in these states live on their slave (a suspended VM keeps its disk and saved memory there).
ON_SLAVE = (InstanceState.PENDING, InstanceState.RUNNING, InstanceState.SUSPENDED)


def register_slave(name: Any, address: Any, cores: Any, ram_mb: Any, disk_gb: Any, url: str | None = None) -> dict:
    """Add the slave, or refresh its address and capacity; used counts are never touched.

    A registered slave is `up`: it answered the run that gathered its facts. Its address must fit the lab's
    networks and pools as the database knows them (``catalogue.check_host_address``). Returns
    ``{"changed": bool, "action": "create" | "update" | "none", "slave": row, "before": row | None}``."""
    name, address, capacity = slave_input(name, address, cores, ram_mb, disk_gb)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        authz.require_admin(session, "slave")
        check_host_address(session, address)  # inside lab_subnet, not a gateway's, the master's or a pool's
        slave = session.scalar(select(Slave).where(Slave.name == name))
        holder = session.scalar(select(Slave.name).where(Slave.address == address, Slave.name != name))
        if holder is not None:
            raise ConflictError(f"address: slave {holder!r} is already registered with address {address}")
        now = config.now()
        if slave is None:
            slave = Slave(name=name, address=address, status=SlaveStatus.UP, generation=0, joined_at=now,
                          updated_at=now, cores_used=0, ram_mb_used=0, disk_gb_used=0, **capacity)  # fmt: skip
            session.add(slave)
            session.flush()
            row = slave_row(slave)
            audit(session, "slave", slave.id, "register", None, row)
            return {"changed": True, "action": "create", "slave": row, "before": None}
        before = slave_row(slave)
        for field, used in (
            ("cores", slave.cores_used),
            ("ram_mb", slave.ram_mb_used),
            ("disk_gb", slave.disk_gb_used),
        ):
            if capacity[f"{field}_total"] < used:
                raise ValidationError(
                    field, f"slave {name} reports {capacity[f'{field}_total']}, but its VMs use {used}; "
                    "stop or move them first",
                )  # fmt: skip
        wanted = {"address": address, "status": SlaveStatus.UP, **capacity}
        if all(getattr(slave, key) == value for key, value in wanted.items()):
            return {"changed": False, "action": "none", "slave": before, "before": before}
        for key, value in wanted.items():
            setattr(slave, key, value)
        slave.generation += 1  # capacity or status changed: claims decided on the old row must retry
        slave.updated_at = now
        session.flush()
        row = slave_row(slave)
        audit(session, "slave", slave.id, "update", before, row)
        return {"changed": True, "action": "update", "slave": row, "before": before}

    return db.write(apply, url)


def drain_absent(inventory: Iterable[Any], url: str | None = None) -> dict:
    """Mark every registered slave that is not in ``inventory`` as draining: it gets no new VMs, and the
    ones it hosts keep running. Lent PCs are left alone. Returns ``{"changed": bool, "drained": [names]}``."""
    keep = {host_name("inventory", name) for name in inventory}
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        authz.require_admin(session, "slave")
        drained = []
        # A lent PC is not in the inventory's slaves: lend.yml and reclaim.yml bring it in and out (SPEC §9).
        query = (select(Slave).where(Slave.status != SlaveStatus.DRAINING, Slave.lend_state.is_(None))
                 .order_by(Slave.name))
        for slave in session.scalars(query):
            if slave.name in keep:
                continue
            before = slave_row(slave)
            slave.status = SlaveStatus.DRAINING
            slave.generation += 1
            slave.updated_at = config.now()
            session.flush()
            audit(session, "slave", slave.id, "drain", before, slave_row(slave))
            drained.append(slave.name)
        return {"changed": bool(drained), "drained": drained}

    return db.write(apply, url)


def remove_slave(name: Any, url: str | None = None) -> dict:
    """Delete a slave's row; refused while any VM lives on it (running, pending or suspended)."""
    name = check_name("name", name)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        authz.require_admin(session, "slave")
        slave = session.scalar(select(Slave).where(Slave.name == name))
        if slave is None:
            raise NotFoundError(f"name: no slave named {name!r}")
        hosted = session.scalar(
            select(func.count())
            .select_from(Instance)
            .where(Instance.slave_id == slave.id, Instance.state.in_(ON_SLAVE))
        )
        if hosted:
            raise ConflictError(f"name: slave {name} hosts {hosted} VM(s); it stays (draining) until they end")
        before = slave_row(slave)
        # Ended instances keep their history; they no longer point at the slave.
        for inst in session.scalars(select(Instance).where(Instance.slave_id == slave.id)):
            inst.slave_id = None
        session.delete(slave)
        session.flush()
        audit(session, "slave", before["id"], "remove", before, None)
        return {"changed": True, "removed": name}

    return db.write(apply, url)


def lab_network(url: str) -> dict[str, str]:
    """The settings a slave's address is checked against (the lab's networks and pools), as plain text: what the
    vcl_slaves inventory plugin (and its cache) keeps beside the slaves. Raises ``VclError`` naming the cause."""
    try:
        with db.read(url) as session:
            settings = db.load_settings(session)
    except DBAPIError as err:
        reason = str(err.orig).strip().splitlines()[0] if err.orig is not None else str(err)
        raise VclError(f"cannot read the lab database's settings ({config.safe_url(url)}): {reason}") from None
    return {key: getattr(settings, key) for key in ADDRESS_SETTINGS}
