"""The registered slaves as Ansible inventory: what the ``vcl_slaves`` inventory plugin reads.

``fetch_slaves`` is one read of the ``slaves`` table, ordered by name, and returns plain data
(strings, integers) that the plugin turns into hosts, groups and host variables, and that an
inventory cache can store as JSON. It writes nothing: a missing SQLite file is reported, not
created.

The normal path is a single query. Only when that query fails does it look at the schema
version, so that a database that was never initialised or needs an upgrade gets the same advice
as the `vcl` command gives (`vcl db init`, `vcl db upgrade`). A database whose schema is older or
newer but still has the columns read here keeps working, e.g. while a site upgrades.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from . import db
from .config import safe_url
from .errors import VclError
from .models import Slave, SlaveStatus
from .validate import host_name_problem, unicast_problem

REGISTERED_GROUP = "vcl_registered"  # every slave in the database, whatever its status
STATUS_GROUP_PREFIX = "vcl_status_"
STATUS_GROUPS = tuple(f"{STATUS_GROUP_PREFIX}{status.value}" for status in SlaveStatus)
LENT_GROUP = "vcl_lent"  # client PCs their owners lend to the pool (SPEC §9), whatever their lending's state
HOSTVARS = (
    "ansible_host",
    "vcl_slave_id",
    "vcl_status",
    "vcl_joined_at",
    "vcl_cores_total",
    "vcl_cores_used",
    "vcl_cores_free",
    "vcl_ram_mb_total",
    "vcl_ram_mb_used",
    "vcl_ram_mb_free",
    "vcl_disk_gb_total",
    "vcl_disk_gb_used",
    "vcl_disk_gb_free",
    "vcl_lend_state",
    "vcl_lend_until",
)

_QUERY = select(
    Slave.id,
    Slave.name,
    Slave.address,
    Slave.status,
    Slave.joined_at,
    Slave.cores_total,
    Slave.cores_used,
    Slave.ram_mb_total,
    Slave.ram_mb_used,
    Slave.disk_gb_total,
    Slave.disk_gb_used,
).order_by(Slave.name)
# Migration 0006 (SPEC §9): read on its own, so a database a site has not upgraded yet still lists its slaves.
_LENT = select(Slave.name, Slave.lend_state, Slave.lend_until).where(Slave.lend_state.is_not(None))


def status_group(status: str) -> str:
    """The group of the slaves with this status: ``vcl_status_up``, ``vcl_status_down``, ..."""
    return f"{STATUS_GROUP_PREFIX}{status}"


def plain(value: Any) -> Any:
    """``ansible-inventory --list`` output without its unsafe markers: strings that are data, never
    templates (the plugin's), show there as ``{"__ansible_unsafe": ...}``."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def fetch_slaves(url: str) -> list[dict[str, Any]]:
    """Every registered slave, by name: ``[{"name": "slave1", "vars": {"ansible_host": ..., ...}}]``
    with the variables of ``HOSTVARS``. Raises ``VclError`` naming the cause when the URL is
    wrong, the database cannot be opened or read, or it holds no lab schema."""
    _check_url(url)
    try:
        with db.read(url) as session:
            rows = session.execute(_QUERY).all()
            lent = _lent(session)
    except DBAPIError as err:
        _explain(url, err)
    except ImportError as err:  # the URL names a DBAPI driver that is not installed
        raise VclError(f"db_url: {safe_url(url)} needs a database driver that is not installed ({err})") from None
    except LookupError as err:  # a status outside up/down/draining, written behind the schema's back
        raise VclError(f"the lab database ({safe_url(url)}) holds a slave with an unknown status: {err}") from None
    return [_host(row, lent.get(row[1])) for row in rows]


def _lent(session: Any) -> dict[str, tuple[str, Any]]:
    """The lent PCs' lending (state, until) by name; none in a database from before migration 0006."""
    try:
        with session.begin_nested():
            return {name: (state, until) for name, state, until in session.execute(_LENT)}
    except DBAPIError:
        return {}


def _check_url(url: str) -> None:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise VclError(
            f"db_url: {url!r} is not a database URL like sqlite:////var/lib/vcl/vcl.sqlite"
            " or postgresql+psycopg://vcl@dbhost/vcl"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise VclError(f"db_url: unsupported database {backend!r} in {safe_url(url)} (use sqlite or postgresql)")
    if backend == "sqlite":
        # Opening a missing SQLite file would create an empty database (and its directory).
        if not parsed.database or parsed.database == ":memory:":
            raise VclError(f"db_url: {url!r} names no database file (an in-memory database holds no lab)")
        _check_sqlite_file(Path(parsed.database))


def _check_sqlite_file(path: Path) -> None:
    """Look at the file before SQLite opens it: vcl's connections switch a database to WAL mode,
    which would write to an empty or foreign file. Every database `vcl db init` made is in WAL
    mode (header bytes 18-19 are 2)."""
    try:
        with path.open("rb") as handle:
            header = handle.read(100)
    except FileNotFoundError:
        raise VclError(
            f"db_url: no lab database at {path} (run `vcl db init`, or set db_url or VCL_DB_URL to the lab's database)"
        ) from None
    except OSError as err:
        raise VclError(f"db_url: cannot read {path}: {err.strerror}") from None
    if not header:
        raise VclError(f"db_url: {path} is an empty file: the lab database is not initialised: run `vcl db init`")
    if not header.startswith(b"SQLite format 3\x00"):
        raise VclError(f"db_url: {path} is not a SQLite database")
    if header[18:20] != b"\x02\x02":
        raise VclError(
            f"db_url: {path} is a SQLite database that `vcl db init` did not make (it is not in WAL mode):"
            " the lab database is not initialised: run `vcl db init`"
        )


def _explain(url: str, err: DBAPIError) -> NoReturn:
    """Turn a failed read into the cause an admin can act on."""
    reason = str(err.orig).strip().splitlines()[0] if err.orig is not None else str(err)
    try:
        db.current_revision(url)
    except DBAPIError:
        pass  # the database cannot be opened at all: the original error says why
    else:
        db.require_schema(url)  # raises "not initialised" / "needs an upgrade" with the fix
    raise VclError(f"cannot read the lab database ({safe_url(url)}): {reason}") from None


def row_problem(slave: dict[str, Any]) -> str:
    """Why a slave row of the database must not become an inventory host (a reserved or invalid name, an
    address that is not one unicast IPv4 host), or "": the same checks as ``vcl slave add``."""
    problem = host_name_problem(slave["name"])
    if problem:
        return f"name: {problem}"
    try:
        address = ipaddress.ip_address(str(slave["vars"]["ansible_host"]))
    except ValueError:
        return f"address: {str(slave['vars']['ansible_host'])[:64]!r} is not an IP address"
    problem = unicast_problem(address)
    return f"address: {problem}" if problem else ""


def _host(row: Any, lending: tuple[str, Any] | None = None) -> dict[str, Any]:
    sid, name, address, status, joined, cores, cores_used, ram, ram_used, disk, disk_used = row
    lend_state, lend_until = lending or (None, None)
    return {
        "name": name,
        "vars": {
            "ansible_host": address,
            "vcl_slave_id": sid,
            "vcl_status": status.value,
            "vcl_joined_at": joined.isoformat(timespec="seconds"),
            "vcl_cores_total": cores,
            "vcl_cores_used": cores_used,
            "vcl_cores_free": cores - cores_used,
            "vcl_ram_mb_total": ram,
            "vcl_ram_mb_used": ram_used,
            "vcl_ram_mb_free": ram - ram_used,
            "vcl_disk_gb_total": disk,
            "vcl_disk_gb_used": disk_used,
            "vcl_disk_gb_free": disk - disk_used,
            "vcl_lend_state": lend_state,
            "vcl_lend_until": lend_until.isoformat(timespec="seconds") if lend_until is not None else None,
        },
    }
