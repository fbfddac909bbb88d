"""Connections and transactions for the lab database, on SQLite and PostgreSQL alike.

SQLite (the embedded default) runs in WAL mode with a busy timeout, and every transaction that
reads and then writes starts with ``BEGIN IMMEDIATE``: it takes the write lock before it reads, so
two controllers can never decide on the same stale state. Read-only transactions use a plain
``BEGIN`` and see a consistent snapshot without blocking writers.

PostgreSQL runs at READ COMMITTED; writers use compare-and-swap updates (``slaves.generation``),
``UPDATE ... WHERE instance_id IS NULL`` for addresses, and ``SELECT ... FOR UPDATE`` on a row of
``locks`` where a whole decision must be serialised (calendar admission).
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from . import config
from .errors import VclError
from .models import LOCK_NAMES, Lock, Setting

T = TypeVar("T")
MIGRATIONS = Path(__file__).with_name("migrations")


class RetryTransaction(Exception):
    """Raised inside a write transaction when a compare-and-swap lost a race: run it again."""


class DryRun(Exception):
    """Raised inside a write transaction to roll it back and return ``result`` (``--dry-run``)."""

    def __init__(self, result: object) -> None:
        super().__init__("dry run")
        self.result = result


@cache
def _engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite would defer it).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")  # safe in WAL: a crash loses no committed state's integrity
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # type: ignore[no-untyped-def]
            mode = "IMMEDIATE" if conn.get_execution_options().get("vcl_write") else "DEFERRED"
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(url, pool_pre_ping=True, isolation_level="READ COMMITTED")
    raise VclError(f"VCL_DB_URL: unsupported database {parsed.get_backend_name()!r} (use sqlite or postgresql)")


def engine(url: str | None = None) -> Engine:
    return _engine(url or config.db_url())


@contextmanager
def read(url: str | None = None) -> Iterator[Session]:
    """A read-only, consistent snapshot: every statement sees the same state (SQLite: one deferred
    transaction; PostgreSQL: REPEATABLE READ, since READ COMMITTED re-snapshots each statement)."""
    eng = engine(url)
    if eng.dialect.name == "postgresql":
        eng = eng.execution_options(isolation_level="REPEATABLE READ")
    with Session(eng, expire_on_commit=False) as session, session.begin():
        yield session


@contextmanager
def _writer_queue(eng: Engine) -> Iterator[None]:
    """SQLite: writers queue on an flock beside the database file before BEGIN IMMEDIATE. SQLite's
    own busy handler polls with sleeps of up to 100 ms, which starves concurrent writers; a kernel
    lock wakes the next writer the moment the previous one commits."""
    path = eng.url.database if eng.dialect.name == "sqlite" else None
    if not path or path == ":memory:":
        yield
        return
    with open(f"{path}.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _write_once(url: str | None) -> Iterator[Session]:
    eng = engine(url)
    with _writer_queue(eng), Session(eng.execution_options(vcl_write=True), expire_on_commit=False) as session, \
            session.begin():
        yield session


def write(fn: Callable[[Session], T], url: str | None = None, attempts: int = 50, retry_races: bool = True) -> T:
    """Run ``fn`` in one write transaction; retry it whole when a compare-and-swap lost a race
    (``RetryTransaction``), a unique constraint was hit by a concurrent writer, or the database
    reported a serialisation failure / deadlock. ``fn`` must not have side effects outside the DB."""
    delay = 0.001
    for attempt in range(attempts):
        try:
            with _write_once(url) as session:
                return fn(session)
        except DryRun as dry:
            return dry.result  # type: ignore[return-value]
        except RetryTransaction:
            if not retry_races:
                raise
        except IntegrityError:
            if attempt == attempts - 1:
                raise
        except OperationalError as err:
            if not _transient(err) or attempt == attempts - 1:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    raise VclError(f"the database stayed busy: gave up after {attempts} attempts")


def _transient(err: DBAPIError) -> bool:
    msg = str(err.orig).lower()
    return any(s in msg for s in ("database is locked", "deadlock", "could not serialize", "busy"))


def lock(session: Session, name: str) -> None:
    """Serialise a decision on PostgreSQL (row lock until commit). SQLite: already serialised."""
    assert name in LOCK_NAMES
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(Lock.name).where(Lock.name == name).with_for_update())


def load_settings(session: Session) -> config.Settings:
    rows = session.execute(select(Setting.key, Setting.value)).all()
    data = {key: json.loads(value) for key, value in rows}
    return config.settings_from_json(data)


def save_settings(session: Session, settings: config.Settings) -> None:
    for key, value in settings.to_json().items():
        row = session.get(Setting, key)
        encoded = json.dumps(value, sort_keys=True)
        if row is None:
            session.add(Setting(key=key, value=encoded))
        elif row.value != encoded:
            row.value = encoded


# --- schema -----------------------------------------------------------------------------------

def _alembic_config(url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["vcl_url"] = url
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Create or migrate the schema to ``revision`` (idempotent); keeps existing data."""
    from alembic import command

    url = url or config.db_url()
    command.upgrade(_alembic_config(url), revision)
    with Session(engine(url)) as session, session.begin():
        for name in LOCK_NAMES:
            if session.get(Lock, name) is None:
                session.add(Lock(name=name))


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(_alembic_config(url), revision)
    _schema_ok.discard(url)


def current_revision(url: str | None = None) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@cache
def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config("")).get_current_head()
    assert head is not None
    return head


_schema_ok: set[str] = set()


def require_schema(url: str | None = None) -> None:
    """Fail clearly when the database was never initialised or needs an upgrade (checked once per
    process and database: a schema does not change under a running command)."""
    url = url or config.db_url()
    if url in _schema_ok:
        return
    try:
        current = current_revision(url)
    except OperationalError as err:
        raise VclError(f"cannot open the lab database ({url}): {err.orig}") from None
    if current is None:
        raise VclError("the lab database is not initialised: run `vcl db init`")
    if current != head_revision():
        raise VclError(f"the lab database is at schema {current}, this vcl needs {head_revision()}:"
                       " run `vcl db upgrade`")
    _schema_ok.add(url)

