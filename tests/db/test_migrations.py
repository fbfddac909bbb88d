"""The schema comes from Alembic migrations, matches the models, and upgrades keep data."""

from __future__ import annotations

from datetime import datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from vcl_sched import db, service
from vcl_sched.errors import VclError
from vcl_sched.models import Base


# Expression indexes cannot be reflected by every dialect; their presence is checked by name below.
@pytest.mark.filterwarnings("ignore:.*expression-based index:UserWarning",
                            "ignore:.*expression-based index:sqlalchemy.exc.SAWarning")
def test_migrated_schema_matches_the_models(db_url):
    with db.engine(db_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    assert db.current_revision(db_url) == db.head_revision()


def test_init_is_idempotent_and_keeps_data(db_url):
    service.add_group("keep-me", url=db_url)
    service.init(db_url)
    service.init(db_url)
    assert [g["name"] for g in service.list_groups(db_url)] == ["keep-me"]


def test_downgrade_then_upgrade(db_url):
    db.downgrade(db_url, "base")
    assert "slaves" not in inspect(db.engine(db_url)).get_table_names()
    with pytest.raises(VclError, match="not initialised: run `vcl db init`"):
        service.list_slaves(db_url)
    db.upgrade(db_url)
    assert service.list_slaves(db_url) == []


def _index_names(url: str, table: str = "slaves") -> set[str]:
    with db.engine(url).connect() as conn:
        if conn.dialect.name == "sqlite":
            rows = conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = :t"),
                                {"t": table})
        else:
            rows = conn.execute(text("SELECT indexname FROM pg_indexes WHERE tablename = :t"), {"t": table})
        return {r[0] for r in rows}


def test_upgrading_a_0001_database_keeps_its_data_and_adds_the_placement_indexes(db_url):
    db.downgrade(db_url, "0001")
    assert db.current_revision(db_url) == "0001"
    assert "ix_slaves_spread" not in _index_names(db_url)
    with db.engine(db_url).begin() as conn:  # a lab's data from last year, written by the old schema
        conn.execute(text("INSERT INTO slaves (name, address, cores_total, cores_used, ram_mb_total, ram_mb_used,"
                          " disk_gb_total, disk_gb_used, status, generation, joined_at, updated_at) VALUES"
                          " ('old', '10.1.0.5', 8, 2, 4096, 512, 50, 5, 'up', 7, :t, :t)"),
                     {"t": datetime(2025, 11, 1, 9, 0)})
    service.init(db_url)
    assert db.current_revision(db_url) == db.head_revision() == "0006"
    assert {"ix_slaves_spread", "ix_slaves_pack"} <= _index_names(db_url)
    [old] = service.list_slaves(db_url)
    assert (old["name"], old["cores_used"], old["generation"], old["joined_at"]) == ("old", 2, 7, "2025-11-01 09:00")


def test_the_head_revision_constant_is_alembics_newest_migration():
    assert db.head_revision() == db.alembic_head_revision()


def test_upgrading_a_0002_database_gives_every_reservation_one_seat(db_url):
    db.downgrade(db_url, "0002")
    with db.engine(db_url).begin() as conn:
        conn.execute(text("INSERT INTO groups (name, description, created_at) VALUES ('cs', '', :t)"),
                     {"t": datetime(2025, 11, 1, 9, 0)})
        conn.execute(text("INSERT INTO reservations (group_id, cores, ram_mb, requested_start, start, \"end\", hours,"
                          " platform_value, register_as_slave, member, priority, rescheduled, state, reason,"
                          " created_at) SELECT id, 2, 512, :t, :t, :e, 1, 5, 0, 0, 8.5, 0, 'accepted', '', :t"
                          " FROM groups"), {"t": datetime(2025, 11, 1, 9, 0), "e": datetime(2025, 11, 1, 10, 0)})
    service.init(db_url)
    assert db.current_revision(db_url) == db.head_revision()
    with db.engine(db_url).begin() as conn:
        assert conn.execute(text("SELECT seats FROM reservations")).scalar_one() == 1
    assert "ix_address_pairs_stale_instance" in _index_names(db_url, "address_pairs")


def test_upgrading_a_0003_database_keeps_its_people_and_bookings(db_url):
    """Users named in requests before 0004 become students without a password; reservations keep launching
    their seats at the window's start (prelaunch 1); the live-seat indexes exist."""
    db.downgrade(db_url, "0003")
    at = datetime(2025, 11, 1, 9, 0)
    with db.engine(db_url).begin() as conn:
        conn.execute(text("INSERT INTO groups (name, description, created_at) VALUES ('cs101', '', :t)"), {"t": at})
        conn.execute(text("INSERT INTO users (name, declines, registered_slave, created_at) VALUES ('ann', 0, 0, :t)"),
                     {"t": at})
        conn.execute(text("INSERT INTO reservations (group_id, seats, cores, ram_mb, requested_start, start, \"end\","
                          " hours, platform_value, register_as_slave, member, priority, rescheduled, state, reason,"
                          " created_at) VALUES (1, 2, 1, 256, :t, :t, :t, 1, 5, 0, 0, 8.5, 0, 'accepted', '', :t)"),
                     {"t": at})
    service.init(db_url)
    assert db.current_revision(db_url) == db.head_revision()
    with db.engine(db_url).connect() as conn:
        assert conn.execute(text("SELECT role, auth, password_hash FROM users")).one() == ("student", "local", None)
        assert conn.execute(text("SELECT prelaunch, series_id FROM reservations")).one() == (1, None)
        assert conn.execute(text("SELECT owner_id FROM groups")).one() == (None,)
    assert {"uq_instances_live_seat", "uq_instances_seat_holder"} <= _index_names(db_url, "instances")
