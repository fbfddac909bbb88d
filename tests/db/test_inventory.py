"""vcl_sched.inventory.fetch_slaves against real databases (SQLite and PostgreSQL): what the
vcl_slaves inventory plugin reads, and the errors it reports."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from vcl_sched import db, service
from vcl_sched.errors import VclError
from vcl_sched.inventory import HOSTVARS, REGISTERED_GROUP, STATUS_GROUPS, fetch_slaves, status_group
from vcl_sched.models import AuditLog, Slave

BE = {"owner": "cs", "platform_value": 5, "register_as_slave": 1, "member": 1, "explain": False}


def table_snapshot(url):
    with db.read(url) as s:
        return (
            s.execute(select(Slave.__table__).order_by(Slave.id)).all(),
            s.scalar(select(func.count()).select_from(AuditLog)),
        )


def files_snapshot(directory: Path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def test_empty_database_has_no_slaves(db_url):
    assert fetch_slaves(db_url) == []


def test_every_slave_with_its_status_capacity_and_join_time(lab_db):
    service.add_slave("a-first", "10.77.0.20", 16, 32768, 500, status="down", url=lab_db)
    service.set_slave_status("s2", "draining", lab_db)
    placed = service.request(cores=3, ram_mb=1024, disk_gb=7, hours=1, **BE, url=lab_db)
    assert placed["decision"] == "place"
    used_on = placed["slave"]

    slaves = fetch_slaves(lab_db)
    assert [s["name"] for s in slaves] == ["a-first", "s1", "s2"]  # by name
    assert all(tuple(s["vars"]) == HOSTVARS for s in slaves)
    by_name = {s["name"]: s["vars"] for s in slaves}
    assert by_name["a-first"] == {
        "ansible_host": "10.77.0.20",
        "vcl_slave_id": by_name["a-first"]["vcl_slave_id"],
        "vcl_status": "down",
        "vcl_joined_at": "2026-11-22T10:00:00",
        "vcl_cores_total": 16,
        "vcl_cores_used": 0,
        "vcl_cores_free": 16,
        "vcl_ram_mb_total": 32768,
        "vcl_ram_mb_used": 0,
        "vcl_ram_mb_free": 32768,
        "vcl_disk_gb_total": 500,
        "vcl_disk_gb_used": 0,
        "vcl_disk_gb_free": 500,
        "vcl_lend_state": None,
        "vcl_lend_until": None,
    }
    assert by_name["s2"]["vcl_status"] == "draining" and by_name["s1"]["vcl_status"] == "up"
    assert used_on == "s1"  # the only slave that is up
    s1 = by_name["s1"]
    assert (s1["vcl_cores_used"], s1["vcl_cores_free"]) == (3, 5)
    assert (s1["vcl_ram_mb_used"], s1["vcl_ram_mb_free"]) == (1024, 16384 - 1024)
    assert (s1["vcl_disk_gb_used"], s1["vcl_disk_gb_free"]) == (7, 93)
    # The ids are the database's, as `vcl slave list` shows them.
    assert {s["name"]: s["id"] for s in service.list_slaves(lab_db)} == {
        n: v["vcl_slave_id"] for n, v in by_name.items()
    }


def test_result_is_plain_data_that_an_inventory_cache_stores_as_json(lab_db):
    slaves = fetch_slaves(lab_db)
    assert json.loads(json.dumps(slaves)) == slaves
    assert all(type(v) in (str, int, type(None)) for s in slaves for v in s["vars"].values())  # no enums, datetimes


def test_groups():
    assert REGISTERED_GROUP == "vcl_registered"
    assert STATUS_GROUPS == ("vcl_status_up", "vcl_status_down", "vcl_status_draining")
    assert status_group("draining") == "vcl_status_draining"


def test_reading_writes_nothing(lab_db):
    before = table_snapshot(lab_db)
    path = make_url(lab_db).database
    files = files_snapshot(Path(path).parent) if path else None
    fetch_slaves(lab_db)
    assert table_snapshot(lab_db) == before
    if path:  # SQLite: not a byte of the database changes, no file appears
        assert files_snapshot(Path(path).parent) == files


def test_an_older_schema_with_the_same_columns_is_still_read(lab_db):
    expected = fetch_slaves(lab_db)
    db.downgrade(lab_db, "0001")
    assert fetch_slaves(lab_db) == expected


def test_a_database_without_the_schema_says_run_vcl_db_init(db_url):
    db.downgrade(db_url, "base")
    with pytest.raises(VclError, match=r"not initialised: run `vcl db init`"):
        fetch_slaves(db_url)


def test_an_empty_database_says_run_vcl_db_init(db_url, tmp_path):
    if db_url.startswith("sqlite"):
        path = tmp_path / "empty.sqlite"
        with sqlite3.connect(path) as conn:  # an empty SQLite database, as vcl would open it (WAL)
            conn.execute("PRAGMA journal_mode=WAL")
        db_url = f"sqlite:///{path}"
    else:
        with db.engine(db_url).begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    with pytest.raises(VclError, match=r"not initialised: run `vcl db init`"):
        fetch_slaves(db_url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", r"db_url: 'not a url' is not a database URL like sqlite:"),
        ("", r"db_url: '' is not a database URL"),
        ("mysql://vcl:pw@localhost/vcl", r"db_url: unsupported database 'mysql' in mysql://vcl:\*\*\*@localhost/vcl"),
        ("sqlite://", r"db_url: 'sqlite://' names no database file"),
        ("sqlite:///:memory:", r"names no database file"),
    ],
)
def test_bad_urls_name_db_url(url, message):
    with pytest.raises(VclError, match=message):
        fetch_slaves(url)


def test_a_missing_sqlite_file_is_reported_not_created(tmp_path):
    missing = tmp_path / "no" / "such" / "vcl.sqlite"
    with pytest.raises(VclError, match=rf"db_url: no lab database at {missing} \(run `vcl db init`"):
        fetch_slaves(f"sqlite:///{missing}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"is an empty file: the lab database is not initialised: run `vcl db init`"),
        (b"hosts:\n  slave1:\n", r"is not a SQLite database"),
    ],
)
def test_a_file_that_is_not_a_lab_database_is_left_alone(tmp_path, content, message):
    path = tmp_path / "vcl.sqlite"
    path.write_bytes(content)
    with pytest.raises(VclError, match=message):
        fetch_slaves(f"sqlite:///{path}")
    assert path.read_bytes() == content


def test_a_foreign_sqlite_database_is_not_switched_to_wal(tmp_path):
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE slaves (name TEXT)")
    before = path.read_bytes()
    with pytest.raises(VclError, match=r"a SQLite database that `vcl db init` did not make"):
        fetch_slaves(f"sqlite:///{path}")
    assert path.read_bytes() == before


def test_an_unreadable_file_names_the_cause(tmp_path):
    path = tmp_path / "dir.sqlite"
    path.mkdir()  # opening a directory fails whatever the user's rights (the tests may run as root)
    with pytest.raises(VclError, match=rf"db_url: cannot read {path}: Is a directory"):
        fetch_slaves(f"sqlite:///{path}")


def test_an_unreachable_postgresql_hides_the_password():
    pytest.importorskip("psycopg")
    url = "postgresql+psycopg://vcl:s3cret@127.0.0.1:1/vcl"  # loopback, a port nothing listens on
    with pytest.raises(
        VclError,
        match=r"cannot read the lab database \(postgresql\+psycopg://vcl:\*\*\*@127.0.0.1:1/vcl\)"
        r": connection failed",
    ) as err:
        fetch_slaves(url)
    assert "s3cret" not in str(err.value)


def test_a_url_whose_driver_is_not_installed_names_db_url():
    try:
        import pg8000  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("pg8000 is installed here: this test needs a driver that is not")
    with pytest.raises(
        VclError,
        match=r"db_url: postgresql\+pg8000://vcl@localhost/vcl needs a database driver"
        r" that is not installed",
    ):
        fetch_slaves("postgresql+pg8000://vcl@localhost/vcl")
