"""The filter vcl.lab.vcl_lanes (dispatch.yml): a plan's launches dealt to at most WIDTH lanes per slave."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.vcl.lab.plugins.filter.vcl_dispatch import vcl_lanes
from hypothesis import given
from hypothesis import strategies as st


def test_launches_are_dealt_round_robin_and_unlisted_slaves_are_left_out():
    lanes = {"slave1": [4, 5, 6, 9], "slave2": [7], "gone": [8]}
    assert vcl_lanes(lanes, ["slave1", "slave2"], 2) == {
        "lane-slave1-1": [4, 6], "lane-slave1-2": [5, 9], "lane-slave2-1": [7]}  # fmt: skip
    assert vcl_lanes(lanes, ["slave1"], "1") == {"lane-slave1-1": [4, 5, 6, 9]}
    assert vcl_lanes({}, ["slave1"], 2) == {} and vcl_lanes({"slave1": []}, ["slave1"], 2) == {}


@pytest.mark.parametrize("width", [0, 17, -1, "two", None, True, 1.5, "{{ 2 }}"])
def test_a_width_out_of_bounds_is_refused_naming_the_variable(width):
    with pytest.raises(AnsibleFilterError, match=r"^dispatch_launches_per_slave: "):
        vcl_lanes({"slave1": [1]}, ["slave1"], width)


@pytest.mark.parametrize(("lanes", "needle"), [
    ([1, 2], "mapping"), ({"bad name": [1]}, "slave's name"), ({"slave1": "1,2"}, "list of instance ids"),
    ({"slave1": [True]}, "list of instance ids")])  # fmt: skip
def test_a_malformed_plan_is_refused(lanes, needle):
    with pytest.raises(AnsibleFilterError, match=needle):
        vcl_lanes(lanes, ["slave1", "bad name"], 2)


slave_names = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)


@given(st.dictionaries(slave_names, st.lists(st.integers(1, 10**6), unique=True, max_size=30), max_size=5),
       st.integers(1, 16), st.data())
def test_every_planned_launch_of_a_listed_slave_is_in_exactly_one_lane_in_plan_order(plan, width, data):
    listed = data.draw(st.lists(st.sampled_from(sorted(plan)), unique=True) if plan else st.just([]))
    out = vcl_lanes(plan, listed, width)
    for slave in plan:
        mine = {name: ids for name, ids in out.items() if name.rsplit("-", 1)[0] == f"lane-{slave}"}
        if slave not in listed:
            assert mine == {}
            continue
        assert len(mine) == min(width, len(plan[slave])) and all(mine.values())
        assert sorted(i for ids in mine.values() for i in ids) == sorted(plan[slave])
        order = {iid: n for n, iid in enumerate(plan[slave])}
        assert all(ids == sorted(ids, key=order.get) for ids in mine.values())
        # Round-robin: no lane holds more than one launch above another of the same slave.
        sizes = [len(ids) for ids in mine.values()] or [0]
        assert max(sizes) - min(sizes) <= 1
