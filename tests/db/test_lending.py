"""Lend your PC (issue 15, SPEC §3 step 4, §9) on SQLite and PostgreSQL: a served register_as_slave=1 request owes
its user's PC; the PC joins the pool lent (best-effort VMs, seats only where the lending covers their window, never
in the calendar's pool); declining (or a PC that does not answer) is counted and warned, and after decline_limit
declines the user's register_as_slave=1 counts as 0 for requests and reservations alike; taking the PC back drains
it, each VM's move holds room elsewhere in one transaction and gives it back on failure; a lent PC switched off is
gone until its owner lends it again."""

from __future__ import annotations

import contextlib
import threading
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from sqlalchemy import select

from vcl_sched import acting, config, db, lending, lifecycle, people, promises, registry, service
from vcl_sched.commitments import Host, assign_seats, seats_of
from vcl_sched.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError, VclError
from vcl_sched.inventory import fetch_slaves
from vcl_sched.models import Instance, InstanceState, Slave, User

PC = {"name": "ann-pc", "address": "10.78.0.40", "cores": 4, "ram_mb": 4096, "disk_gb": 50}


def _school(url, lab_cores=(4, 2)):
    service.configure({"private_pool": "10.78.1.16-10.78.1.75", "public_pool": "10.78.0.160-10.78.0.230"}, url)
    for n, cores in enumerate(lab_cores, 1):
        service.add_slave(f"s{n}", f"10.78.0.{20 + n}", cores, 1024 * cores, 20, url=url)
    for name, role in (("tina", "teacher"), ("ann", "student"), ("bob", "student")):
        people.add_user(name, role=role, url=url)
    people.add_group("cs101", owner="tina", url=url)
    people.add_members("cs101", ["ann", "bob"], url=url)
    return url


@pytest.fixture
def school(db_url):
    """Slaves s1 (4 cores) and s2 (2 cores); teacher tina owns cs101 with students ann and bob."""
    return _school(db_url)


def as_(name, url):
    return acting.acting(people.actor_for(name, url))


def served(url, user="ann", ras=1, cores=1):
    """A best-effort request of ``user`` (register_as_slave ``ras``), placed and running: its promise is due."""
    with as_(user, url):
        answer = service.request(owner="cs101", cores=cores, ram_mb=256, hours=2, register_as_slave=ras, disk_gb=1,
                                 url=url)
    assert answer["decision"] == "place", answer
    lifecycle.place(answer["id"], url=url)
    lifecycle.mark_running(answer["id"], url=url)
    return answer["id"]


def enrol(url, instance=None, hours=8, **over):
    return lending.enrol(user=over.pop("user", "ann"), instance=instance, hours=hours, url=url, **{**PC, **over})


def slave(url, name):
    with db.read(url) as s:
        row = s.scalar(select(Slave).where(Slave.name == name))
        return None if row is None else (str(row.status), row.lend_state, row.cores_used, row.ram_mb_used,
                                         row.disk_gb_used)


def instance(url, iid):
    with db.read(url) as s:
        i = s.get(Instance, iid)
        name = s.scalar(select(Slave.name).where(Slave.id == i.slave_id)) if i.slave_id else None
        return str(i.state), name, i.moving_to, i.moving_hold


def declines(url, user):
    with db.read(url) as s:
        return s.scalar(select(User.declines).where(User.name == user))


# --- declines: counted by the user's identity, for every kind of request --------------------------------------

def test_a_served_promise_is_owed_until_the_user_answers(school):
    ras0 = served(school, ras=0)
    owed = served(school)
    assert [o["id"] for o in lending.owed(school)] == [owed]  # a request without the promise owes nothing
    with as_("bob", school):
        assert lending.owed(school) == []  # a student sees only their own
    with as_("ann", school):
        assert [o["id"] for o in lending.owed(school)] == [owed]
    with pytest.raises(ConflictError, match=r"^id: instance \d+ did not promise a PC"):
        lending.decline(ras0, url=school)
    assert declines(school, "ann") == 0  # register_as_slave=0 is never a decline


def test_declining_warns_and_after_the_limit_ras_1_counts_as_0_for_requests_and_reservations(school):
    limit = 2
    first = served(school)
    with as_("ann", school):
        warned = lending.decline(first, url=school)
    assert (warned["declines"], warned["limit"]) == (1, limit)
    assert "1 of 2 declines; after 1 more, their register_as_slave=1 requests count as 0" in warned["warning"]
    with pytest.raises(ConflictError, match=r"already answered \(declined\)"):
        lending.decline(first, url=school)
    with as_("bob", school), pytest.raises(ForbiddenError):
        lending.decline(served(school), url=school)  # ann's request: bob cannot answer for her
    second = served(school)
    assert lending.decline(second, "unreachable", school)["warning"].endswith("now count as 0")
    assert declines(school, "ann") == 2
    with as_("ann", school):
        req = service.request(owner="cs101", cores=1, ram_mb=256, hours=1, register_as_slave=1, url=school)
    assert req["register_as_slave"] == 0 and "counted as 0: 2 declined lending(s)" in req["warning"]
    with as_("bob", school):  # bob never declined: his promise still counts
        bobs = service.request(owner="cs101", cores=1, ram_mb=256, hours=1, register_as_slave=1, url=school)
    assert bobs["register_as_slave"] == 1 and "warning" not in bobs
    assert bobs["priority"] > req["priority"]  # the same request otherwise: RAS adds 0.2 to Pi
    start = config.now().replace(minute=0, second=0, microsecond=0) + timedelta(days=1, hours=2)
    res = service.reserve(owner="cs101", cores=1, ram_mb=256, start=start, hours=1, register_as_slave=1,
                          user="ann", url=school)
    assert res["register_as_slave"] == 0 and "counted as 0" in res["warning"]
    anonymous = service.request(owner="cs101", cores=1, ram_mb=256, hours=1, register_as_slave=1, url=school)
    assert anonymous["register_as_slave"] == 0 and "without a user cannot promise a PC" in anonymous["warning"]


def test_the_decline_limit_is_a_setting(school):
    service.configure({"decline_limit": "1"}, school)
    lending.decline(served(school), url=school)
    with as_("ann", school):
        req = service.request(owner="cs101", cores=1, ram_mb=256, hours=1, register_as_slave=1, url=school)
    assert req["register_as_slave"] == 0
    service.configure({"decline_limit": "5"}, school)
    with as_("ann", school):
        req = service.request(owner="cs101", cores=1, ram_mb=256, hours=1, register_as_slave=1, url=school)
    assert req["register_as_slave"] == 1


# --- enrolment ------------------------------------------------------------------------------------------

def test_enrolment_keeps_the_promise_and_lists_the_pc_lent(school):
    iid = served(school)
    with as_("ann", school):
        out = enrol(school, instance=iid)
    row = out["slave"]
    assert (row["name"], row["lent_by"], row["lend_state"], row["status"], row["cores_total"]) == (
        "ann-pc", "ann", "lent", "up", 4)
    assert lending.owed(school) == []
    with db.read(school) as s:
        assert s.get(Instance, iid).lend_answer == "lent"
        assert s.scalar(select(User.registered_slave).where(User.name == "ann")) == 1
    [listed] = lending.list_lent(school)
    assert (listed["name"], listed["vms"]) == ("ann-pc", 0)
    hosts = {h["name"]: h["vars"] for h in fetch_slaves(school)}
    assert hosts["ann-pc"]["vcl_lend_state"] == "lent" and hosts["s1"]["vcl_lend_state"] is None
    with pytest.raises(ConflictError, match="already answered"):
        enrol(school, instance=iid)


@pytest.mark.parametrize(("over", "field"), [
    ({"name": "s1"}, "name"),  # one of the lab's own slaves
    ({"address": "10.78.0.21"}, "address"),  # s1's address
    ({"hours": 0}, "hours"), ({"hours": lending.MAX_LEND_HOURS + 1}, "hours"), ({"hours": "8; rm"}, "hours"),
    ({"cores": 0}, "cores"), ({"name": "all"}, "name"), ({"address": "10.78.1.20"}, "address"),  # a VM's pool
    ({"user": "nobody"}, "user"), ({"instance": "x"}, "instance"),
])
def test_bad_enrolments_name_the_field_and_change_nothing(school, db_state, over, field):
    before = db_state(school)
    with pytest.raises(VclError, match=rf"^{field}: "):
        enrol(school, **over)
    assert db_state(school) == before


def test_a_student_lends_only_their_own_pc(school, db_state):
    before = db_state(school)
    with as_("bob", school), pytest.raises(ForbiddenError, match=r"^user: bob lends their own PC"):
        enrol(school)
    assert db_state(school) == before


# --- scheduling with a lent PC ---------------------------------------------------------------------------

def test_a_lent_pc_takes_best_effort_vms_but_no_promise_rests_on_it(school):
    enrol(school)
    assert service.list_reservations(school)["cores"] == 6  # the calendar's pool: the lab's own slaves
    placed = [served(school, user="bob", ras=0, cores=2) for _ in range(4)]  # 8 cores: 6 of the lab's, 2 lent
    assert instance(school, placed[-1])[1] == "ann-pc" or any(instance(school, i)[1] == "ann-pc" for i in placed)
    start = config.now().replace(minute=0, second=0, microsecond=0) + timedelta(days=1, hours=2)
    refused = service.reserve(owner="cs101", cores=1, ram_mb=256, seats=7, start=start, hours=1, url=school)
    assert refused["state"] == "refused"  # 7 seats > the lab's 6 cores, though the lent PC has 4 more
    assert service.reserve(owner="cs101", cores=1, ram_mb=256, seats=6, start=start, hours=1,
                           url=school)["state"] == "accepted"
    with db.read(school) as s:
        _, every = promises.hosts_of(s)
    assert "ann-pc" not in {h.name for h in every}  # "can never fit" is judged on the lab's own slaves


def test_a_seat_runs_on_a_lent_pc_only_when_the_lending_covers_its_window():
    t0 = config.now().replace(minute=0, second=0, microsecond=0)
    lab, pc = Host(1, "s1", 1, 1024), Host(2, "pc", 4, 4096, until=t0 + timedelta(hours=2))
    inside = seats_of(7, 3, 1, 256, t0, t0 + timedelta(hours=2))
    placed = assign_seats([lab, pc], inside)
    assert placed.ok and sorted(placed.slots.values()) == [1, 2, 2]  # the lab's slave first, then the lent PC
    past = seats_of(8, 3, 1, 256, t0, t0 + timedelta(hours=3))
    refused = assign_seats([lab, pc], past)
    assert not refused.ok and refused.slots == {(8, 0): 1}  # the lending ends inside their window


# --- taking the PC back ------------------------------------------------------------------------------------

def fill_pc(url, n=2):
    """``n`` best-effort VMs of bob on the lent PC (the lab's slaves made full first)."""
    enrol(url)
    lab = [served(url, user="bob", ras=0, cores=c) for c in (4, 2)]
    on_pc = [served(url, user="bob", ras=0) for _ in range(n)]
    assert {instance(url, i)[1] for i in on_pc} == {"ann-pc"}
    return lab, on_pc


def test_reclaim_drains_and_each_move_holds_room_then_commits_or_gives_it_back(school):
    lab, (a, b) = fill_pc(school)
    with as_("bob", school), pytest.raises(ForbiddenError, match="only its owner or an admin"):
        lending.reclaim("ann-pc", school)
    with as_("ann", school):
        out = lending.reclaim("ann-pc", school)
    assert (out["changed"], out["vms"], out["lend_state"]) == (True, [a, b], "reclaiming")
    assert slave(school, "ann-pc")[:2] == ("draining", "reclaiming")
    assert lending.reclaim("ann-pc", school)["changed"] is False
    with as_("bob", school):  # nothing new goes on a PC being taken back
        waits = service.request(owner="cs101", cores=1, ram_mb=256, hours=1, url=school)
    assert waits["decision"] != "place" or waits["slave"] != "ann-pc"
    lifecycle.stop(lab[1], url=school)  # s2 has 2 cores free now
    move = lending.move_begin(a, school)
    assert (move["to"], move["resume"], move["from"]) == ("s2", True, "ann-pc")
    assert lending.move_begin(a, school) == move  # a rerun gets the same move
    assert slave(school, "s2")[2] == 1
    lending.move_abort(a, school)
    assert slave(school, "s2")[2] == 0 and instance(school, a) == ("running", "ann-pc", None, None)
    lending.move_begin(a, school)
    moved = lending.move_commit(a, True, 5901, school)
    assert (moved["slave"], moved["state"], moved["console_port"]) == ("s2", "running", 5901)
    assert slave(school, "ann-pc")[2:4] == (1, 256) and slave(school, "s2")[2:4] == (1, 256)
    with pytest.raises(ConflictError, match="still hosts VM"):
        lending.finish("ann-pc", school)
    lifecycle.stop(lab[0], url=school)
    lending.move_begin(b, school)
    lending.move_commit(b, True, url=school)
    done = lending.finish("ann-pc", school)
    assert done == {"changed": True, "returned": "ann-pc", "owner": "ann"}
    assert slave(school, "ann-pc") is None and lending.list_lent(school) == []


def test_a_vm_no_slave_can_run_waits_suspended_where_its_disk_fits(school):
    _, (a, _b) = fill_pc(school)
    lending.reclaim("ann-pc", school)
    move = lending.move_begin(a, school)
    assert move["resume"] is False  # s1 and s2 are full: only the disk is held
    with pytest.raises(ConflictError, match="to wait suspended"):
        lending.move_commit(a, True, url=school)
    lending.move_commit(a, False, url=school)
    state, where, *_ = instance(school, a)
    assert (state, where) == ("suspended", move["to"])
    assert slave(school, "ann-pc")[2] == 1  # the other VM still runs there


def test_a_vm_with_no_disk_room_anywhere_stays_and_nothing_changes(school, db_state):
    _, (a, _b) = fill_pc(school)
    lending.reclaim("ann-pc", school)
    with db.engine(school).begin() as conn:  # the lab's slaves' disks are full
        conn.execute(Slave.__table__.update().where(Slave.name.in_(["s1", "s2"])).values(disk_gb_total=1,
                                                                                        disk_gb_used=1))
    before = db_state(school)
    with pytest.raises(ConflictError, match=r"^id: no slave has \d+ GB of disk"):
        lending.move_begin(a, school)
    assert db_state(school) == before


def test_moves_of_a_vm_not_on_a_reclaimed_pc_are_refused(school):
    lab, (a, _b) = fill_pc(school)
    with pytest.raises(ConflictError, match="not on a PC being taken back"):
        lending.move_begin(a, school)
    with pytest.raises(ConflictError, match="not on a PC being taken back"):
        lending.move_begin(lab[0], school)
    with pytest.raises(ConflictError, match="no move begun"):
        lending.move_commit(a, True, url=school)
    with pytest.raises(NotFoundError):
        lending.move_begin(99999, school)
    with pytest.raises(ValidationError, match=r"^id: "):
        lending.move_begin("1; drop", school)
    with pytest.raises(ConflictError, match="lab's own slaves"):
        lending.reclaim("s1", school)


def test_a_lent_pc_switched_off_is_gone_until_its_owner_lends_it_again(school):
    _, (a, b) = fill_pc(school)
    lending.reclaim("ann-pc", school)
    out = lifecycle.reconcile({"ann-pc": {"reachable": False}}, school)
    assert out["down"] == ["ann-pc"] and set(out["lost"]) == {a, b}
    assert slave(school, "ann-pc")[:3] == ("draining", "gone", 0)
    back = lifecycle.reconcile({"ann-pc": {"reachable": True, "domains": {}}}, school)
    assert back["up"] == [] and slave(school, "ann-pc")[:2] == ("draining", "gone")  # no VM until lent again
    enrol(school)
    assert slave(school, "ann-pc")[:2] == ("up", "lent")


def test_a_lost_vm_gives_back_the_room_its_move_held(school):
    _, (a, _b) = fill_pc(school)
    lending.reclaim("ann-pc", school)
    move = lending.move_begin(a, school)
    held = slave(school, move["to"])
    lifecycle.reconcile({"ann-pc": {"reachable": False}}, school)
    assert slave(school, move["to"])[4] == held[4] - 1  # its disk (1 GB) went back
    assert instance(school, a)[2:] == (None, None)


def test_site_yml_never_drains_a_lent_pc(school):
    enrol(school)
    assert registry.drain_absent(["s1", "s2"], school)["drained"] == []
    assert slave(school, "ann-pc")[:2] == ("up", "lent")


# --- every step is one transaction: the books always balance ------------------------------------------------

def balance(url):
    """Every slave's use is what its VMs hold plus what moves hold there."""
    with db.read(url) as s:
        slaves = {sl.id: sl for sl in s.scalars(select(Slave))}
        want = {sid: [0, 0, 0] for sid in slaves}
        for i in s.scalars(select(Instance).where(Instance.state.in_(lending.ON_SLAVE),
                                                  Instance.slave_id.is_not(None))):
            held = i.state in (InstanceState.PENDING, InstanceState.RUNNING)
            want[i.slave_id][0] += i.cores if held else 0
            want[i.slave_id][1] += i.ram_mb if held else 0
            want[i.slave_id][2] += i.disk_gb
            if i.moving_to is not None:
                run = i.moving_hold == "run"
                want[i.moving_to][0] += i.cores if run else 0
                want[i.moving_to][1] += i.ram_mb if run else 0
                want[i.moving_to][2] += i.disk_gb
        return {slaves[k].name: (tuple(v), (slaves[k].cores_used, slaves[k].ram_mb_used, slaves[k].disk_gb_used))
                for k, v in want.items()}


def assert_balanced(url):
    for name, (want, have) in balance(url).items():
        assert want == have, f"{name}: VMs and moves hold {want}, the slave says {have}"


class LendingMachine(RuleBasedStateMachine):
    """Random lending, VMs, takings back, moves (begun, committed, aborted, lost) and returns: the books balance."""

    directory = None
    runs = 0

    def __init__(self):
        super().__init__()
        LendingMachine.runs += 1
        url = f"sqlite:///{self.directory}/lending-{self.runs}.sqlite"
        service.init(url)
        self.url = _school(url, lab_cores=(2, 1))
        enrol(self.url)
        self.vms: list[int] = []

    @rule(cores=st.integers(1, 2), user=st.sampled_from(["ann", "bob"]))
    def request(self, cores, user):
        with as_(user, self.url):
            answer = service.request(owner="cs101", cores=cores, ram_mb=128, hours=2, url=self.url)
        if answer["decision"] == "place":
            lifecycle.place(answer["id"], url=self.url)
            lifecycle.mark_running(answer["id"], url=self.url)
            self.vms.append(answer["id"])

    @rule(data=st.data())
    def stop(self, data):
        live = [v for v in self.vms if instance(self.url, v)[0] in ("running", "suspended")
                and instance(self.url, v)[2] is None]
        if live:
            lifecycle.stop(data.draw(st.sampled_from(live)), url=self.url)

    @rule()
    def reclaim(self):
        with contextlib.suppress(ConflictError, NotFoundError):
            lending.reclaim("ann-pc", self.url)

    @rule()
    def lend_again(self):
        with contextlib.suppress(ConflictError):
            enrol(self.url)

    @rule(data=st.data(), outcome=st.sampled_from(["commit", "abort", "suspended"]))
    def move(self, data, outcome):
        on_pc = [v for v in self.vms if instance(self.url, v)[1] == "ann-pc" and instance(self.url, v)[0] in
                 ("running", "suspended")]
        if not on_pc:
            return
        iid = data.draw(st.sampled_from(on_pc))
        try:
            move = lending.move_begin(iid, self.url)
        except ConflictError:
            return
        if outcome == "abort":
            lending.move_abort(iid, self.url)
        else:
            lending.move_commit(iid, move["resume"] and outcome == "commit", url=self.url)

    @rule()
    def switched_off(self):
        if slave(self.url, "ann-pc") is not None:
            lifecycle.reconcile({"ann-pc": {"reachable": False}}, self.url)

    @rule()
    def finish(self):
        with contextlib.suppress(ConflictError, NotFoundError):
            lending.finish("ann-pc", self.url)

    @invariant()
    def books_balance(self):
        assert_balanced(self.url)

    @invariant()
    def a_pc_being_taken_back_gets_nothing_new(self):
        row = slave(self.url, "ann-pc")
        if row is not None and row[1] != "lent":
            assert row[0] == "draining"


def test_the_books_balance_whatever_the_order_of_lending_moves_and_losses(tmp_path, monkeypatch):
    """On SQLite, a fresh database for every example (the concurrent case is the racing test's, on both)."""
    monkeypatch.setenv("VCL_NOW", "2026-11-22 10:00")
    LendingMachine.directory = tmp_path
    run = LendingMachine.TestCase
    run.settings = settings(max_examples=25, stateful_step_count=25, deadline=None,
                            suppress_health_check=list(HealthCheck))
    run().runTest()


def test_two_moves_racing_for_one_slot_both_balance(school):
    _, (a, b) = fill_pc(school)
    lending.reclaim("ann-pc", school)
    lifecycle.stop(_first_on(school, "s2"), url=school)
    assert instance(school, served(school, user="bob", ras=0))[1] == "s2"  # one core left: room for one to run
    results, errors = {}, []

    def go(iid):
        try:
            results[iid] = lending.move_begin(iid, school)["resume"]
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=go, args=(i,)) for i in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results.values()) == [False, True]  # one runs on s2, the other waits suspended
    assert_balanced(school)


def _first_on(url, name):
    with db.read(url) as s:
        return s.scalar(select(Instance.id).join(Slave, Slave.id == Instance.slave_id)
                        .where(Slave.name == name, Instance.state == InstanceState.RUNNING).order_by(Instance.id))
