"""Fixtures for the service layer's database tests (the databases themselves: tests/conftest.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from vcl_sched import db
from vcl_sched.models import AddressPair, AuditLog, Instance, Reservation, Slave


def _db_state(url):
    with db.read(url) as s:
        return (tuple(s.execute(select(Slave.name, Slave.cores_used, Slave.generation, Slave.status)).all()),
                s.scalar(select(func.count()).select_from(Reservation)),
                s.scalar(select(func.count()).select_from(Instance)),
                s.scalar(select(func.count()).select_from(AuditLog)),
                s.scalar(select(func.count()).select_from(AddressPair).where(AddressPair.instance_id.is_not(None))))


@pytest.fixture
def db_state():
    """``db_state(url)``: everything a refused or invalid call must leave as it was (slaves' use and
    generations, how many reservations, instances, audit rows and held address pairs)."""
    return _db_state
