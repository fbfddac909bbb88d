"""Placement: filters, weighers, policies, explanations, and the indexed fast path."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vcl_sched.errors import ValidationError
from vcl_sched.placement import (
    Demand,
    PlacementIndex,
    Policy,
    SlaveState,
    Weigher,
    first_fit,
    get_policy,
    place,
    rank,
    weigh,
)


def fake(i: int, cores: int = 8, used: int = 0, ram: int = 16384, ram_used: int = 0, disk: int = 100,
         disk_used: int = 0, status: str = "up") -> SlaveState:
    """nova's FakeHostState: a plain slave from numbers."""
    return SlaveState(i, f"s{i}", cores, ram, disk, used, ram_used, disk_used, status)


def test_spread_takes_the_slave_with_fewest_used_cores():
    slaves = [fake(1, used=6), fake(2, used=2), fake(3, used=4)]
    assert place(slaves, Demand(1, 512), "spread").slave.name == "s2"


def test_pack_takes_the_fullest_slave_that_fits():
    slaves = [fake(1, used=6), fake(2, used=2), fake(3, used=7)]
    assert place(slaves, Demand(2, 512), "pack").slave.name == "s1"  # s3 has only 1 free
    assert place(slaves, Demand(1, 512), "pack").slave.name == "s3"


def test_ties_go_to_the_lowest_id():
    slaves = [fake(3), fake(1), fake(2)]
    assert place(slaves, Demand(1, 512), "spread").slave.id == 1
    assert place(slaves, Demand(1, 512), "pack").slave.id == 1


@pytest.mark.parametrize(("slave", "failed"), [
    (fake(1, status="down"), "status_up"),
    (fake(1, status="draining"), "status_up"),
    (fake(1, used=7), "cores"),
    (fake(1, ram_used=16000), "ram"),
    (fake(1, disk_used=99), "disk"),
])
def test_each_filter_refuses_and_the_explanation_names_it(slave, failed):
    result = place([slave, fake(2, status="down")], Demand(2, 1024, 5))
    assert not result.placed
    assert result.survivors[-1] == (failed, 0)
    assert result.survivors[0] == ("all", 2)
    assert "not placed" in result.explain()


def test_reason_names_the_most_free_slave():
    result = place([fake(1, used=6), fake(2, cores=4, used=1)], Demand(4, 512))
    assert result.reason.startswith("no slave has 4 free cores (most free: 3 on s2")


def test_explain_counts_each_filter():
    slaves = [fake(1, status="down"), fake(2, used=8), fake(3, ram_used=16384), fake(4)]
    result = place(slaves, Demand(1, 512))
    assert result.survivors == (("all", 4), ("status_up", 3), ("cores", 2), ("ram", 1), ("disk", 1))
    assert result.explain().endswith("chose s4 (fewest used cores (least loaded))")


def test_no_slaves_at_all():
    result = place([], Demand(1, 1))
    assert not result.placed and result.reason == "there are no slaves"


def test_weights_are_normalised_then_multiplied():
    slaves = [fake(1, used=0), fake(2, used=4), fake(3, used=8)]
    assert weigh(slaves, get_policy("spread")) == [0.0, -0.5, -1.0]
    assert weigh([fake(1), fake(2)], get_policy("spread")) == [0.0, 0.0]  # equal raw values: no preference


@pytest.mark.parametrize(("field", "kwargs"), [
    ("cores", {"cores": 0, "ram_mb": 1}), ("ram_mb", {"cores": 1, "ram_mb": 0}),
    ("disk_gb", {"cores": 1, "ram_mb": 1, "disk_gb": -1}), ("cores", {"cores": 1.5, "ram_mb": 1}),
    ("cores", {"cores": True, "ram_mb": 1}),
])
def test_demand_validation_names_the_field(field, kwargs):
    with pytest.raises(ValidationError) as err:
        Demand(**kwargs)
    assert err.value.field == field


def test_unknown_policy_is_refused_with_the_choices():
    with pytest.raises(ValidationError, match="choose one of spread, pack"):
        place([fake(1)], Demand(1, 1), "random")


def test_first_fit_is_the_first_that_fits():
    slaves = [fake(1, used=8), fake(2, status="down"), fake(3, used=1), fake(4)]
    assert first_fit(slaves, Demand(2, 1)).id == 3
    assert first_fit(slaves, Demand(9, 1)) is None


def test_index_tracks_claims_and_status_changes():
    index = PlacementIndex([fake(1), fake(2), fake(3, cores=4)], "spread")
    first = index.place(Demand(2, 512)).slave
    assert first.id == 1
    index.update(first.claimed(Demand(2, 512)))
    assert index.place(Demand(2, 512)).slave.id == 2
    index.update(fake(2, status="down"))
    assert index.place(Demand(2, 512)).slave.id == 3
    miss = index.place(Demand(16, 512))
    assert not miss.placed and miss.survivors[-1] == ("cores", 0)


slave_st = st.builds(
    lambda i, cores, used, ram, ram_used, disk, disk_used, status: fake(
        i, cores, min(used, cores), ram, min(ram_used, ram), disk, min(disk_used, disk), status),
    st.integers(0, 0), st.integers(1, 32), st.integers(0, 32), st.integers(512, 65536), st.integers(0, 65536),
    st.integers(10, 500), st.integers(0, 500), st.sampled_from(["up", "up", "up", "down", "draining"]))
demand_st = st.builds(Demand, st.integers(1, 16), st.integers(1, 32768), st.integers(0, 200))


@settings(max_examples=200, deadline=None)
@given(st.lists(slave_st, max_size=30), st.lists(demand_st, min_size=1, max_size=20),
       st.sampled_from(["spread", "pack"]))
def test_index_decides_exactly_like_the_reference_pipeline(raw_slaves, demands, policy):
    slaves = [SlaveState(i + 1, f"s{i + 1}", *tuple(vars_of(s))[2:]) for i, s in enumerate(raw_slaves)]
    index = PlacementIndex(slaves, policy)
    current = {s.id: s for s in slaves}
    for demand in demands:
        expected = place(current.values(), demand, policy)
        got = index.place(demand)
        assert (got.slave.id if got.slave else None) == (expected.slave.id if expected.slave else None)
        if expected.slave is not None:  # claim it in both views, as the scheduler loop does
            claimed = current[expected.slave.id].claimed(demand)
            current[claimed.id] = claimed
            index.update(claimed)


def vars_of(s: SlaveState):
    return (s.id, s.name, s.cores_total, s.ram_mb_total, s.disk_gb_total, s.cores_used, s.ram_mb_used,
            s.disk_gb_used, s.status, s.generation)


def test_random_tie_break_only_picks_among_the_equally_good():
    import random

    slaves = [fake(1, used=2), fake(2, used=1), fake(3, used=1), fake(4, used=1, ram_used=16384), fake(5, used=0,
                                                                                                      cores=1)]
    index = PlacementIndex(slaves, "spread")
    rng = random.Random(3)
    picks = {index.place(Demand(2, 512), rng).slave.id for _ in range(200)}
    assert picks == {2, 3}  # s5 has too few cores, s4 no RAM, s1 is more loaded
    assert index.place(Demand(2, 512)).slave.id == 2  # without rng: the lowest id


# --- one declaration per policy --------------------------------------------------------------------

ROOMY = Policy("roomy", (Weigher("free_ram_mb", 1.0),), "most free RAM (a descending order)")
FRESH = Policy("fresh", (Weigher("used_cores", -1.0),), "fewest used cores, then fewest changes",
               tie_break=("generation", "id"))


def test_the_declared_policies_derive_the_orders_that_were_written_by_hand():
    s, demand = fake(7, cores=16, used=5), Demand(3, 512)
    spread, pack = get_policy("spread"), get_policy("pack")
    assert spread.sort_key(s) == (5, 7) and spread.start_key(demand) is None
    assert pack.sort_key(s) == (11, 7) and pack.start_key(demand) == (3,)  # walk from 3 free cores up
    assert ROOMY.sort_key(s) == (-16384, 7) and ROOMY.start_key(demand) is None  # descending: no start
    assert FRESH.sort_key(s) == (5, 0, 7)
    assert [a.name for a, _ in pack.order] == ["free_cores"] and pack.order[0][1] is False


@pytest.mark.parametrize(("args", "message"), [
    (("x", (Weigher("speed", -1.0),), "?"), "no attribute 'speed'"),
    (("x", (Weigher("used_cores", 0.0),), "?"), "multiplier of used_cores is 0"),
    (("x", (), "?"), "at least one weigher"),
    (("x", (Weigher("used_cores", -1.0),), "?", ("generation",)), "ending with 'id'"),
    (("x", (Weigher("used_cores", -1.0),), "?", ("name", "id")), "whole-number fields"),
])
def test_a_bad_declaration_is_refused(args, message):
    with pytest.raises(ValueError, match=message):
        Policy(*args)


def test_a_blend_of_weighers_is_placed_by_the_pipeline_only():
    blend = Policy("blend", (("used_cores", -1.0), ("free_ram_mb", 1.0)), "a blend")
    slaves = [fake(1, used=4, ram_used=0), fake(2, used=0, ram_used=16000), fake(3, used=2, ram_used=8192)]
    # weights: s1 -1 + 1 = 0; s2 0 + 0 = 0; s3 -0.5 + 0.49 < 0. s1 and s2 tie: the lowest id first
    assert place(slaves, Demand(1, 128), blend).slave.id == 1
    assert [s.id for s in rank(slaves, Demand(1, 128), blend)] == [1, 2, 3]
    with pytest.raises(ValidationError, match="no indexed form"):
        PlacementIndex(slaves, blend)


@settings(max_examples=200, deadline=None)
@given(st.lists(slave_st, max_size=30), demand_st, st.sampled_from([get_policy("spread"), get_policy("pack"), ROOMY,
                                                                    FRESH]))
def test_the_ranking_and_the_index_order_agree(raw_slaves, demand, policy):
    slaves = [SlaveState(i + 1, f"s{i + 1}", *tuple(vars_of(s))[2:-1], generation=i % 3)
              for i, s in enumerate(raw_slaves)]
    ranked = rank(slaves, demand, policy)
    assert ranked == sorted(ranked, key=policy.sort_key)  # nova's normalised weights order as the key does
    first = place(slaves, demand, policy).slave
    assert first == (ranked[0] if ranked else None)
    assert PlacementIndex(slaves, policy).place(demand).slave == first
