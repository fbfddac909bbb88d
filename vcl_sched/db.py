"""Connections and transactions for the lab database, on SQLite and PostgreSQL alike.

SQLite (the embedded default) runs in WAL mode with a busy timeout, and every transaction that
reads and then writes starts with ``BEGIN IMMEDIATE``: it takes the write lock before it reads, so
two controllers can never decide on the same stale state. Read-only transactions use a plain
``BEGIN`` and see a consistent snapshot without blocking writers.

PostgreSQL runs at READ COMMITTED; writers use compare-and-swap updates (``slaves.generation``),
``UPDATE ... WHERE instance_id IS NULL`` for addresses, and ``SELECT ... FOR UPDATE`` on a row of
``locks`` where a whole decision must be serialised (calendar admission).

Two ways to write: ``write`` runs a function on an ORM ``Session``; ``write_direct`` runs one on the
DBAPI cursor with ``Prepared`` statements, for the claim path where SQLAlchemy's per-statement cost
would be most of the transaction. Both share the writer queue, the retry rules and checkpointing.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Dialect, Engine, create_engine, event, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable

from . import config
from .errors import ValidationError, VclError
from .models import LOCK_NAMES, Lock, Setting

T = TypeVar("T")
MIGRATIONS = Path(__file__).with_name("migrations")
# SQLite: checkpoint the WAL once it holds this much (SQLite's own default is 1000 pages of 4 KiB).
WAL_CHECKPOINT_BYTES = 4 * 1024 * 1024


class RetryTransaction(Exception):
    """Raised inside a write transaction when a compare-and-swap lost a race: run it again."""


class DryRun(Exception):
    """Raised inside a write transaction to roll it back and return ``result`` (``--dry-run``)."""

    def __init__(self, result: object) -> None:
        super().__init__("dry run")
        self.result = result


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for PostgreSQL or an in-memory database)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def create_sqlite_file(url: str) -> None:
    """``vcl db init``: the database file readable by its owner only (SQLite gives its -wal and -shm files the
    same mode), in a directory that only its owner may enter when VCL creates it. An existing file is made
    private too. Nothing else creates the file: a read of a database that does not exist changes nothing."""
    path = sqlite_file(url)
    if path is None:
        return
    missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    for directory in reversed(missing):  # every directory VCL creates is its owner's only
        directory.mkdir(mode=0o700)
        directory.chmod(0o700)  # whatever the umask
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.close(fd)
    except FileExistsError:
        pass
    for suffix in ("", "-wal", "-shm"):
        part = Path(f"{path}{suffix}")
        if part.exists() and not part.is_symlink() and part.stat().st_mode & 0o077:
            part.chmod(0o600)


def _new_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
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
            # No automatic checkpoints: SQLite would run them inside COMMIT, while this writer still
            # holds the writer queue, and a checkpoint's fsyncs take ~10 ms. Writers checkpoint after
            # leaving the queue (_checkpoint_if_due); the size limit makes the WAL's size tell when.
            cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.execute(f"PRAGMA journal_size_limit={WAL_CHECKPOINT_BYTES:d}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # type: ignore[no-untyped-def]
            mode = "IMMEDIATE" if conn.get_execution_options().get("vcl_write") else "DEFERRED"
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(url, pool_pre_ping=True, isolation_level="READ COMMITTED")
    raise VclError(f"VCL_DB_URL: unsupported database {parsed.get_backend_name()!r} (use sqlite or postgresql)")


# The engines of this process (one per URL), so that a forked child can leave their connections alone.
_ENGINES: list[Engine] = []
# The pools a forked child set aside: kept referenced, so the child never closes (or even collects) a connection
# that belongs to its parent.
_INHERITED_POOLS: list[Any] = []


@cache
def _engine(url: str) -> Engine:
    eng = _new_engine(url)
    _ENGINES.append(eng)
    return eng


def _leave_inherited_connections() -> None:
    """In a forked child (an Ansible worker running a vcl.lab action, a benchmark's writer): connections pooled
    by the parent must never be used by two processes. Each engine gets a new, empty pool and the inherited one
    is set aside untouched (SQLAlchemy's ``Engine.dispose(close=False)``)."""
    for eng in _ENGINES:
        _INHERITED_POOLS.append(eng.pool)
        eng.dispose(close=False)


os.register_at_fork(after_in_child=_leave_inherited_connections)


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
    _checkpoint_if_due(eng, path)


def _checkpoint_if_due(eng: Engine, path: str) -> None:
    """Copy the WAL back into the database once it is big, outside the writer queue. A passive
    checkpoint never blocks writers or readers; two at once: the second returns at once (busy)."""
    try:
        size = os.stat(f"{path}-wal").st_size
    except FileNotFoundError:
        return
    if size <= WAL_CHECKPOINT_BYTES:  # journal_size_limit cuts the file back to this at each WAL reset
        return
    conn = eng.raw_connection()
    try:
        cursor = conn.cursor()
        cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
        cursor.fetchall()
        cursor.close()
    finally:
        conn.close()


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
    return _retrying(lambda: _in_session(fn, url), attempts, retry_races)


def _in_session(fn: Callable[[Session], T], url: str | None) -> T:
    with _write_once(url) as session:
        return fn(session)


@dataclass(frozen=True, slots=True)
class _Form:
    """A statement compiled for one dialect: its SQL, and where each parameter comes from."""

    sql: str
    slots: tuple[tuple[str, str | None, Any, Any], ...]  # (name, key in the values or None, fixed value, processor)
    positional: bool


class Prepared:
    """A Core statement compiled once per dialect, for ``Direct`` transactions (``write_direct``,
    ``read_direct``), that also runs as itself in a ``Session``.

    The SQL comes from SQLAlchemy's compiler and every value is a bound parameter, converted by
    its column type's own bind processor (SQLite datetimes as SQLAlchemy stores them, enums as
    their values) and read back through its result processor: what ``Direct`` writes and reads is
    exactly what SQLAlchemy would. ``columns`` names the columns an INSERT sets."""

    def __init__(self, stmt: Executable, columns: Sequence[str] | None = None) -> None:
        self.stmt = stmt
        self.columns = list(columns) if columns is not None else None
        self._forms: dict[str, _Form] = {}
        self._results: dict[str, tuple[tuple[int, Any], ...]] = {}

    def form(self, dialect: Dialect) -> _Form:
        form = self._forms.get(dialect.name)
        if form is None:
            form = self._forms[dialect.name] = self._compile(dialect)
        return form

    def _compile(self, dialect: Dialect) -> _Form:
        compiled = self.stmt.compile(dialect=dialect, column_keys=self.columns)
        defaulted = [c.name for c in (*compiled.insert_prefetch, *compiled.update_prefetch)]
        if defaulted:  # SQLAlchemy's execution context fills these in, and Direct skips it
            raise ValueError(f"Prepared: give the columns with Python-side defaults values: {defaulted}")
        by_name = {name: bind for bind, name in compiled.bind_names.items()}
        if any(bind.expanding for bind in by_name.values()):
            raise ValueError("Prepared: IN (...) over a list needs one bindparam() per value")
        slots = []
        for name in compiled.positiontup if dialect.positional else by_name:
            bind = by_name[name]
            proc = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if bind.required:
                slots.append((name, bind.key, None, proc))
            else:  # a value given with the statement (LIMIT 1, generation + 1): converted once, here
                value = bind.effective_value
                slots.append((name, None, value if proc is None else proc(value), None))
        return _Form(compiled.string, tuple(slots), dialect.positional)

    def bind(self, dialect: Dialect, values: Mapping[str, Any]) -> tuple[str, tuple[Any, ...] | dict[str, Any]]:
        """The SQL text and the DBAPI parameters for ``values`` (keyed by bind parameter name)."""
        form = self.form(dialect)
        params = [(values[key] if proc is None else proc(values[key])) if key is not None else fixed
                  for _, key, fixed, proc in form.slots]
        if form.positional:
            return form.sql, tuple(params)
        return form.sql, {name: v for (name, *_), v in zip(form.slots, params, strict=True)}

    def result_processors(self, dialect: Dialect, description: Sequence[Any]) -> tuple[tuple[int, Any], ...]:
        """(column index, processor) for the result columns that need one; some processors depend
        on the type the driver reports (``cursor.description``), the same at every execution."""
        try:
            return self._results[dialect.name]
        except KeyError:
            pass
        columns = list(self.stmt.exported_columns)  # type: ignore[attr-defined]
        procs = [c.type.dialect_impl(dialect).result_processor(dialect, d[1])
                 for c, d in zip(columns, description, strict=True)]
        result = self._results[dialect.name] = tuple((i, p) for i, p in enumerate(procs) if p is not None)
        return result

    def run(self, q: Session | Direct, values: Mapping[str, Any] | None = None) -> Any:
        """Run the statement for its effect, in a ``Direct`` transaction or a ``Session``; the
        result tells the ``rowcount``."""
        if isinstance(q, Session):
            return q.connection().execute(self.stmt, dict(values or {}))
        return q.execute(self, values or {})

    def all(self, q: Session | Direct, values: Mapping[str, Any] | None = None) -> list[Any]:
        """Every row, in a ``Direct`` transaction or a ``Session``."""
        if isinstance(q, Session):
            return list(q.connection().execute(self.stmt, dict(values or {})).all())
        return q.rows(self, q.execute(self, values or {}).fetchall())

    def first(self, q: Session | Direct, values: Mapping[str, Any] | None = None) -> Any:
        """The first row, or None."""
        if isinstance(q, Session):
            return q.connection().execute(self.stmt, dict(values or {})).first()
        row = q.execute(self, values or {}).fetchone()
        return None if row is None else q.rows(self, [row])[0]

    def scalar(self, q: Session | Direct, values: Mapping[str, Any] | None = None) -> Any:
        """The first column of the first row, or None."""
        row = self.first(q, values)
        return None if row is None else row[0]


class Direct:
    """A transaction on the DBAPI connection (``write_direct``, ``read_direct``) that runs
    ``Prepared`` statements: none of SQLAlchemy's per-statement work (execution context, result
    objects, events), which costs several times what SQLite takes for a short statement."""

    def __init__(self, cursor: Any, dialect: Dialect) -> None:
        self.cursor = cursor
        self.dialect = dialect

    def execute(self, stmt: Prepared, values: Mapping[str, Any]) -> Any:
        """Run ``stmt``; the cursor is returned for ``rowcount`` and raw rows."""
        sql, params = stmt.bind(self.dialect, values)
        try:
            self.cursor.execute(sql, params)
        except self.dialect.loaded_dbapi.Error as err:
            raise _wrapped(err, self.dialect, sql, params) from err
        return self.cursor

    def rows(self, stmt: Prepared, rows: Sequence[Any]) -> list[Any]:
        """Raw rows of ``stmt`` as SQLAlchemy returns them (datetimes, enums)."""
        procs = stmt.result_processors(self.dialect, self.cursor.description)
        if not procs:
            return list(rows)
        out = []
        for raw in rows:
            row = list(raw)
            for i, proc in procs:
                row[i] = proc(row[i])
            out.append(tuple(row))
        return out


def _wrapped(err: Exception, dialect: Dialect, sql: str | None = None, params: Any = None) -> BaseException:
    """A DBAPI error as SQLAlchemy raises it (IntegrityError, OperationalError ...)."""
    return DBAPIError.instance(sql, params, err, dialect.loaded_dbapi.Error, dialect=dialect)


def write_direct(fn: Callable[[Direct], T], url: str | None = None, attempts: int = 50,
                 retry_races: bool = True) -> T:
    """``write`` without the ORM: ``fn`` runs ``Prepared`` statements on the DBAPI cursor, in one
    transaction (SQLite: ``BEGIN IMMEDIATE`` in the writer queue), with the same retries; DBAPI
    errors are raised as SQLAlchemy's (``IntegrityError``, ``OperationalError``)."""
    return _retrying(lambda: _in_direct(fn, url), attempts, retry_races)


def _in_direct(fn: Callable[[Direct], T], url: str | None) -> T:
    eng = engine(url)
    dialect = eng.dialect
    conn = eng.raw_connection()
    cursor = conn.cursor()
    try:
        with _writer_queue(eng):
            try:
                if dialect.name == "sqlite":
                    cursor.execute("BEGIN IMMEDIATE")  # the connection is in autocommit mode (_sqlite_connect)
                result = fn(Direct(cursor, dialect))
                conn.commit()
            except BaseException as err:
                _rollback(conn)
                if isinstance(err, dialect.loaded_dbapi.Error):
                    raise _wrapped(err, dialect) from err
                raise
        return result
    finally:
        cursor.close()
        conn.close()


@contextmanager
def read_direct(url: str | None = None) -> Iterator[Direct]:
    """``read`` without the ORM: one consistent, read-only snapshot on the DBAPI connection."""
    eng = engine(url)
    dialect = eng.dialect
    conn = eng.raw_connection()
    cursor = conn.cursor()
    try:
        # SQLite: a deferred transaction (autocommit mode otherwise); psycopg opens one itself.
        start = "BEGIN" if dialect.name == "sqlite" else "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
        try:
            cursor.execute(start)
        except dialect.loaded_dbapi.Error as err:
            raise _wrapped(err, dialect, start) from err
        yield Direct(cursor, dialect)
    finally:
        _rollback(conn)
        cursor.close()
        conn.close()


def _rollback(conn: Any) -> None:
    try:
        conn.rollback()
    except Exception:  # the connection is broken: drop it, and keep the error that broke it
        conn.invalidate()


def _retrying(run: Callable[[], T], attempts: int, retry_races: bool) -> T:
    delay = 0.001
    for attempt in range(attempts):
        try:
            return run()
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


_SETTINGS = Prepared(select(Setting.key, Setting.value).order_by(Setting.key))


def load_settings(q: Session | Direct) -> config.Settings:
    """The settings as this transaction sees them (parsed once per distinct content: every
    request reads them, and they seldom change)."""
    return _parse_settings(tuple((key, value) for key, value in _SETTINGS.all(q)))


@lru_cache(maxsize=8)
def _parse_settings(rows: tuple[tuple[str, str], ...]) -> config.Settings:
    data = {}
    for key, value in rows:
        try:
            data[key] = json.loads(value)
        except ValueError:
            raise ValidationError(key, "the stored setting is not valid JSON: set it again with"
                                       f" `vcl config set {key}=...`") from None
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
    create_sqlite_file(url)
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
    """The schema revision the database is at (Alembic's ``alembic_version`` row), None before `vcl db init`.
    Read with one query, without importing Alembic: every `vcl` command and module checks it."""
    with engine(url).connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


HEAD_REVISION = "0006"
"""The newest migration in migrations/versions (tests/db/test_migrations.py checks it against Alembic's own
reading of the scripts, which costs a tenth of a second that every command would otherwise pay)."""


def head_revision() -> str:
    return HEAD_REVISION


def alembic_head_revision() -> str:
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
    path = sqlite_file(url)
    if path is not None and not path.exists():
        raise VclError(f"the lab database {path} does not exist: run `vcl db init`")
    try:
        current = current_revision(url)
    except OperationalError as err:
        raise VclError(f"cannot open the lab database ({config.safe_url(url)}): {err.orig}") from None
    if current is None:
        raise VclError("the lab database is not initialised: run `vcl db init`")
    if current != head_revision():
        raise VclError(f"the lab database is at schema {current}, this vcl needs {head_revision()}:"
                       " run `vcl db upgrade`")
    _schema_ok.add(url)

