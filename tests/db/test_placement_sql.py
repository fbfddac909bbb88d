"""Each placement policy is declared once (placement.POLICIES); the database's order comes from the same
declaration as the Python ranking. Checked here on real databases (SQLite, and PostgreSQL where
VCL_TEST_PG_URL is set): the SQL order is the reference pipeline's ranking, slave for slave."""

from __future__ import annotations

import random
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert

from vcl_sched import catalogue, claims, db, placement
from vcl_sched.models import Slave
from vcl_sched.placement import Demand, Policy, SlaveState, Weigher

# The declared policies, and declarations no policy uses yet, so the derivation itself is under test: a
# positive multiplier (descending order), another attribute, and a tie-break before the id.
DECLARED = list(placement.POLICIES.values())
DERIVED_ONLY = [
    Policy("roomy", (Weigher("free_ram_mb", 1.0),), "most free RAM"),
    Policy("fresh", (Weigher("used_cores", -1.0),), "fewest used cores, then the fewest changes",
           tie_break=("generation", "id")),
    Policy("emptiest", (Weigher("free_cores", 2.5),), "most free cores"),
]
WHEN = datetime(2026, 11, 22, 10)


@st.composite
def pools(draw):
    """Up to 25 slaves from small ranges (many exact ties), with ids in no particular order."""
    n = draw(st.integers(0, 25))
    ids = draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n, unique=True))
    slaves = []
    for sid in ids:
        cores = draw(st.integers(1, 8))
        ram = draw(st.sampled_from([1024, 2048, 4096]))
        disk = draw(st.sampled_from([20, 50]))
        slaves.append(SlaveState(sid, f"h{sid}", cores, ram, disk, draw(st.integers(0, cores)),
                                 draw(st.sampled_from([0, 512, 1024])), draw(st.integers(0, disk)),
                                 draw(st.sampled_from(["up", "up", "up", "down", "draining"])),
                                 draw(st.integers(0, 3))))
    return slaves


demands = st.builds(Demand, st.integers(1, 4), st.sampled_from([256, 512, 1024, 2048]), st.integers(0, 30))


def _row(s: SlaveState) -> dict:
    return {"id": s.id, "name": s.name, "address": f"10.{s.id // 256}.{s.id % 256}.1", "cores_total": s.cores_total,
            "ram_mb_total": s.ram_mb_total, "disk_gb_total": s.disk_gb_total, "cores_used": s.cores_used,
            "ram_mb_used": s.ram_mb_used, "disk_gb_used": s.disk_gb_used, "status": s.status,
            "generation": s.generation, "joined_at": WHEN, "updated_at": WHEN}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pool=pools(), demand=demands, policy=st.sampled_from(DECLARED + DERIVED_ONLY), seed=st.integers(0, 99))
def test_sql_order_is_the_reference_ranking(db_url, pool, demand, policy, seed):
    want = placement.rank(pool, demand, policy)
    params = {"d_cores": demand.cores, "d_ram": demand.ram_mb, "d_disk": demand.disk_gb}

    def in_sql(session):
        session.execute(delete(Slave))
        if pool:
            session.execute(insert(Slave), [_row(s) for s in pool])
        ranked = [SlaveState(*r) for r in session.execute(claims.choose_statement(policy), params)]
        chosen = tied = None
        if policy.name in placement.POLICIES:  # what requests run: LIMIT 1, and the sample after a lost race
            chosen = claims.choose_slave(session, demand, policy.name, explain=False)
            tied = claims.choose_slave(session, demand, policy.name, "random", random.Random(seed), explain=False)
        raise db.DryRun((ranked, chosen, tied))  # roll back: the next example starts from an empty pool

    ranked, chosen, tied = db.write(in_sql, db_url)
    assert ranked == want  # the whole order, ties broken alike (the tie-break ends with the unique id)
    assert want == sorted(want, key=policy.sort_key)  # the index's key gives the same order too
    if chosen is not None:
        assert chosen.slave == (want[0] if want else None)
        assert tied.slave == chosen.slave or (tied.slave in want and policy.rank_key(tied.slave)
                                              == policy.rank_key(want[0]))


def test_a_blend_of_weighers_has_no_sql_order():
    blend = Policy("blend", (Weigher("used_cores", -1.0), Weigher("free_ram_mb", 0.5)), "a blend")
    assert blend.order is None and blend.sort_key is None
    with pytest.raises(ValueError, match="no SQL order"):
        claims.order_by(blend)


@pytest.mark.parametrize("policy", sorted(placement.POLICIES))
def test_sqlite_walks_the_policy_index_in_order(tmp_path, monkeypatch, policy):
    # The ORDER BY derived from the declaration must be the expression migration 0002 indexed
    # (models.Slave: ix_slaves_<policy>), or SQLite sorts every slave that fits for each request.
    monkeypatch.setenv("VCL_NOW", "2026-11-22 10:00")
    url = f"sqlite:///{tmp_path}/plan.sqlite"
    catalogue.init(url)
    for i in range(50):
        catalogue.add_slave(f"s{i}", f"10.0.0.{i + 1}", 8, 8192, 100, url=url)
    eng = db.engine(url)
    sql, params = db.Prepared(claims.choose_statement(placement.POLICIES[policy]).limit(1)).bind(
        eng.dialect, {"d_cores": 2, "d_ram": 512, "d_disk": 1})
    conn = eng.raw_connection()
    try:
        plan = " | ".join(row[-1] for row in conn.cursor().execute(f"EXPLAIN QUERY PLAN {sql}", params))
    finally:
        conn.close()
    assert f"USING INDEX ix_slaves_{policy} " in plan and "TEMP B-TREE" not in plan, plan


@pytest.mark.parametrize("policy", ["spread", "pack"])
def test_database_placement_equals_the_reference_pipeline(db_url, policy):
    catalogue.configure({"placement_policy": policy}, db_url)
    rng = random.Random(7)
    for i in range(40):
        cores = rng.randint(1, 16)
        catalogue.add_slave(f"h{i}", f"10.78.0.{i + 1}", cores, rng.choice([4096, 8192, 16384]), rng.randint(10, 200),
                            status=rng.choice(["up", "up", "up", "down"]), url=db_url)
    for _ in range(60):
        demand = placement.Demand(rng.randint(1, 8), rng.randint(256, 8192), rng.randint(0, 50))

        def decide(session, demand=demand):
            got = claims.choose_slave(session, demand, policy)
            want = placement.place(claims.slave_states(session), demand, policy)
            assert (got.slave.id if got.slave else None) == (want.slave.id if want.slave else None)
            assert got.survivors == want.survivors[:len(got.survivors)]
            if got.slave is not None:
                claims.claim_slave(session, got.slave, demand)

        db.write(decide, db_url)
