"""The schema comes from Alembic migrations, matches the models, and upgrades keep data."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from vcl_sched import db, service
from vcl_sched.errors import VclError
from vcl_sched.models import Base


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
