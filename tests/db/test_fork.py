"""A forked child (an Ansible worker running a vcl.lab action) never uses the connections its parent pooled."""

from __future__ import annotations

import os

from sqlalchemy import text

from vcl_sched import db


def _backend_pid(eng) -> str:
    with eng.connect() as conn:
        if eng.dialect.name == "postgresql":
            return str(conn.execute(text("SELECT pg_backend_pid()")).scalar())
        return str(id(conn.connection.dbapi_connection))


def test_a_forked_child_gets_a_pool_of_its_own(db_url):
    eng = db.engine(db_url)
    parent_pool = eng.pool
    parent_conn = _backend_pid(eng)  # now pooled in the parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's cleanup
        try:
            fresh = eng.pool is not parent_pool and parent_pool in db._INHERITED_POOLS and eng.pool.checkedin() == 0
            child_conn = _backend_pid(eng)
            os.write(write, f"{fresh} {child_conn}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        fresh, child_conn = pipe.read().split()
    os.waitpid(pid, 0)
    assert fresh == "True"
    if eng.dialect.name == "postgresql":
        assert child_conn != parent_conn  # its own server session
    assert eng.pool is parent_pool and parent_pool.checkedin() >= 1  # the parent keeps its pool and connections
    assert _backend_pid(eng)
