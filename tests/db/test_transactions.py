"""db.py's transactions against a real database: prepared statements, and SQLite's WAL checkpoints."""

from __future__ import annotations

import fcntl

import pytest
from sqlalchemy import insert, select

from vcl_sched import bookings, catalogue, db
from vcl_sched.models import Instance, Slave

BE = {"owner": "cs", "platform_value": 5, "register_as_slave": 1, "member": 1}


def test_prepared_statements_refuse_what_they_cannot_bind(db_url):
    dialect = db.engine(db_url).dialect
    with pytest.raises(ValueError, match="register_as_slave"):  # a Python-side default only SQLAlchemy fills in
        db.Prepared(insert(Instance), ["cores"]).bind(dialect, {"cores": 1})
    with pytest.raises(ValueError, match="one bindparam"):
        db.Prepared(select(Slave.id).where(Slave.name.in_(["a", "b"]))).bind(dialect, {})


def test_sqlite_writers_checkpoint_the_wal_after_leaving_the_writer_queue(tmp_path, monkeypatch):
    monkeypatch.setattr(db, "WAL_CHECKPOINT_BYTES", 64 * 1024)
    monkeypatch.setenv("VCL_NOW", "2026-11-22 10:00")
    url = f"sqlite:///{tmp_path}/wal.sqlite"
    catalogue.init(url)
    catalogue.configure({"private_pool": "10.77.1.16-10.77.1.250", "public_pool": "10.77.0.16-10.77.0.250"}, url)
    catalogue.add_group("cs", url=url)
    catalogue.add_slave("s1", "10.77.0.1", 512, 1 << 20, 10000, url=url)
    checkpoints = []
    real = db._checkpoint_if_due

    def outside_the_queue(eng, path):
        with open(f"{path}.lock", "a+b") as handle:  # fails at once if this process still held the queue
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)
        checkpoints.append(path)
        real(eng, path)

    monkeypatch.setattr(db, "_checkpoint_if_due", outside_the_queue)
    for _ in range(150):
        bookings.request(cores=1, ram_mb=16, hours=1, **BE, explain=False, url=url)
    with db.engine(url).connect() as conn:  # SQLite would checkpoint inside COMMIT, in the queue
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    assert len(checkpoints) == 150  # every claim looked at the WAL once it had left the queue
    # Unchecked, 150 claims leave megabytes of WAL; checkpointed, it stays near the limit.
    assert (tmp_path / "wal.sqlite-wal").stat().st_size < 4 * 64 * 1024

