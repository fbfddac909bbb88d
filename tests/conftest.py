"""Shared fixtures: a fresh lab database on SQLite and on PostgreSQL (scripts/test.sh starts one)."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import text

from vcl_sched import db, service

PG_URL = os.environ.get("VCL_TEST_PG_URL")


def _fresh_pg(url: str) -> str:
    with db.engine(url).begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path, monkeypatch):
    """An initialised, empty lab database; the test runs once per backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/vcl.sqlite"
    else:
        if not PG_URL:
            if os.environ.get("VCL_TEST_NO_PG") == "1":
                pytest.skip("VCL_TEST_NO_PG=1: PostgreSQL tests skipped on purpose")
            pytest.fail("VCL_TEST_PG_URL is not set: run the tests through scripts/test.sh, which starts"
                        " PostgreSQL (or set VCL_TEST_NO_PG=1 to skip them knowingly)")
        url = _fresh_pg(PG_URL)
    monkeypatch.setenv("VCL_DB_URL", url)
    monkeypatch.setenv("VCL_NOW", "2026-11-22 10:00")
    monkeypatch.setenv("VCL_ACTOR", "pytest")
    service.init(url)
    return url


@pytest.fixture
def lab_db(db_url):
    """A small pool: group `cs`, two slaves, address pools of 15 pairs."""
    service.configure({"private_pool": "10.77.1.16-10.77.1.30", "public_pool": "10.77.0.160-10.77.0.200"}, db_url)
    service.add_group("cs", url=db_url)
    service.add_slave("s1", "10.77.0.21", 8, 16384, 100, url=db_url)
    service.add_slave("s2", "10.77.0.22", 4, 8192, 100, url=db_url)
    return db_url
