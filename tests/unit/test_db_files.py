"""The SQLite lab database is private (SPEC §11): created readable by its owner only, in a directory only its
owner enters, and a command that only reads never creates it (or its directory)."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from vcl_sched import service

VCL = [sys.executable, "-m", "vcl_sched.cli"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_a_private_database_in_a_private_directory(tmp_path):
    db = tmp_path / "new" / "deeper" / "vcl.sqlite"
    url = f"sqlite:///{db}"
    service.init(url)
    service.add_group("cs", url=url)  # a write: the WAL exists now
    assert mode(db) == 0o600 and mode(db.parent) == 0o700 and mode(db.parent.parent) == 0o700
    wal = Path(f"{db}-wal")
    assert not wal.exists() or mode(wal) == 0o600


def test_init_makes_an_existing_world_readable_database_private(tmp_path):
    db = tmp_path / "vcl.sqlite"
    url = f"sqlite:///{db}"
    service.init(url)
    db.chmod(0o644)
    service.init(url)
    assert mode(db) == 0o600


def test_reading_a_database_that_does_not_exist_creates_nothing(tmp_path):
    db = tmp_path / "absent" / "vcl.sqlite"
    env = {"VCL_DB_URL": f"sqlite:///{db}", "PATH": "/usr/bin:/bin"}
    for argv in (["instances"], ["reservations"], ["slave", "list"], ["audit"]):
        proc = subprocess.run([*VCL, *argv], env=env, capture_output=True, text=True, check=False, timeout=60)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert "does not exist: run `vcl db init`" in proc.stderr
    assert not db.parent.exists()
