"""The stateful model test of issue 11: random sequences of what admins, users and the dispatcher do to the
lab database, on SQLite and PostgreSQL, with the promises of SPEC §3–§4 and §6 checked after every step.

A hypothesis ``RuleBasedStateMachine`` drives the real service layer (``service.reserve``, ``service.request``,
``simulate.run_dispatch`` at a clock moved with ``VCL_NOW``, ``lifecycle.suspended/stop/reconcile/net_gone/
lease/place/unlease/mark_running``, ``claims.release``) over a small lab: three slaves of 4–8 cores (2 GB a core),
200 address pairs, ``booking.lead_days`` 0. The rules: reserve (1–4 seats of 1–4 cores, 512–4096 MB, starting
0–7 hours after the next whole hour or tomorrow, inside 09:00–17:00), request and a burst of 2–6 requests
(1–4 cores, now and then 9: never fits; 1–5 hours; random platform value, RAS and membership), dispatch after
0–90 minutes, dispatch with launch failures injected at random (``simulate.run_dispatch(fail=...)``), the
next morning, suspend, resume, stop, release, a slave that dies (and comes back after 1–3 dispatches or when
a rule says so: reconcile with the domains it had), a truthful reconcile of every slave, net_gone for what
reconcile lists in ``unnet``, and a duplicate launch (a second lease on an instance being launched; the first
launcher finishes, or dies before or after its claim). The model keeps what the database cannot tell: which
seats it disturbed (stopped, released, failed, suspended by hand, held by a dead launcher's lease), which
slave is down, which domains a dead slave still has, and which addresses the master still carries (DHCP host,
alias, DNAT) for which VM.

After every step, reading the database directly (tests/db/model_support.py, which calls no scheduler code):

1. no time slice over capacity: accepted and active reservations' seats × cores ≤ the up slaves' cores at
   every instant (a sweep), and their seats can be placed whole on the up slaves at every instant (exact
   search); while a slave is down a breach is recorded (``calendar_over_while_down``), not failed; accepted
   bookings keep their length inside 09:00–17:00;
2. no core, address pair or MAC held twice: each slave's used cores/RAM/disk equal the sum over the
   instances that hold them, within its totals; MACs and addresses unique among live instances; every
   pair consistent with its instance (a quarantined pair held by nobody); ended instances hold nothing;
   no live instance uses an address or MAC the master still carries for another instance;
3. right after a dispatch inside a reservation's window, while no slave is down: it is active and every seat
   runs, unless the model disturbed that seat;
4. right after a dispatch nothing runs, is suspended or waits past its end (a live launch lease aside);
5. running, suspended, claimed and reserved instances have an end; a best-effort end lies within the
   5-hour look-ahead; a seat never has two live instances;
6. right after a dispatch without injected failures, a waiting seat could not be placed on any up slave even
   by suspending every best-effort VM there (an AR never waits behind best effort);
7. a best-effort VM never holds cores that reservations accepted before it need: at every instant of its
   window, their seats' cores plus its own ≤ the pool (no slave down).

Rules also check their own answers: a refused request really can never fit and wrote nothing; an accepted
booking is inside policy; release of a live VM is refused and changes nothing; a second lease is refused and
a foreign token cannot place; a dispatch leaves an instance with a live lease alone; every reconcile recovers
exactly the expired leases; a dead slave's VMs are lost, its claims freed, and their places come back (a seat
while its reservation is active, a request while its time lasts, same priority); its leftover domains come
back as orphans when it returns; a truthful reconcile loses nothing, finds no orphan and lists in ``unnet``
every VM whose entries the master may still carry.

The number of steps: every rule execution adds one to ``STEPS[backend]["rules"]`` (per rule name too) and
every example one to ``STEPS[backend]["examples"]``; each backend's test prints the totals and writes them,
with counts of what happened (``dispatch.*``, ``request.*``, ``reserve.*``, ``checked.seats_running``: seats
verified running), to /tmp/vcl11/model_steps.json. ``rules`` is the number of steps run, each followed by
the invariants. A failure prints the whole failing sequence; VCL_MODEL_SHRINK=1 shrinks it first (minutes).
Run: ``VCL_TEST_PG_URL=... .venv/bin/python -m pytest tests/db/test_model.py -q -p no:cacheprovider``.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from model_support import (
    best_effort_in_reserved_cores,
    bookings_in_policy,
    calendar_over_capacity,
    calendar_unplaceable,
    claims_consistent,
    ended_hold_nothing,
    ends_set,
    expired_after_dispatch,
    master_reuse,
    one_instance_per_seat,
    one_seat_per_member,
    reset,
    seat_waits_behind_best_effort,
    seats_not_running,
    snapshot,
)

from vcl_sched import claims, lifecycle, people, service, sessions, simulate
from vcl_sched.errors import CapacityError, ConflictError

FIRST = datetime(2026, 11, 23, 8, 0)  # a Monday; reservations are booked today or tomorrow (lead_days 0)
RAM = st.sampled_from([512, 1024, 2048, 4096])
MINUTES = st.sampled_from([0, 10, 30, 45, 60, 75, 90])  # the clock's step before a dispatch
OFFSET = st.sampled_from([0, 1, 2, 3, 5, 7])  # hours from the next whole hour to a reservation's start
CORES = st.sampled_from([1, 2, 3, 4, 1, 2, 3, 4, 9])  # 9: more than any slave has (refused at submission)
STEPS: dict[str, Counter] = {"sqlite": Counter(), "postgresql": Counter()}
STEPS_FILE = Path("/tmp/vcl11/model_steps.json")
# Shrinking a failure to a minimal sequence can take Hypothesis minutes (it stops itself after five): it is
# asked for with VCL_MODEL_SHRINK=1; by default a failure prints the whole sequence that failed, at once.
PHASES = tuple(Phase) if os.environ.get("VCL_MODEL_SHRINK") == "1" else tuple(p for p in Phase if p != Phase.shrink)
COMMON = {"deadline": None, "print_blob": True, "phases": PHASES,
          "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much]}
SETTINGS = {
    "sqlite": settings(max_examples=60, stateful_step_count=40, **COMMON),
    "postgresql": settings(max_examples=20, stateful_step_count=30, **COMMON),
}


def clock(moment: datetime) -> None:
    os.environ["VCL_NOW"] = moment.strftime("%Y-%m-%d %H:%M")


MEMBERS = ("m1", "m2", "m3", "m4", "m5")


class LabModel(RuleBasedStateMachine):
    url = ""
    backend = ""

    def __init__(self) -> None:
        super().__init__()
        reset(self.url)
        STEPS[self.backend]["examples"] += 1
        self.now = FIRST
        clock(self.now)
        self.names: list[str] = []
        self.disturbed: set[tuple[int, int]] = set()  # seats the model stopped, released, or whose launch failed
        self.hand_suspended: set[int] = set()  # AR instances the model suspended
        self.user_resumed: set[int] = set()  # BE instances the model resumed (an admin's resume, not the dispatcher's)
        self.abandoned: dict[int, datetime] = {}  # instance → until when a dead launcher's lease holds it
        self.down_since: dict[str, datetime] = {}
        self.back_after: dict[str, int] = {}  # a dead slave returns before this many more dispatches
        self.frozen: dict[str, set[int]] = {}  # domains left on a dead slave
        self.master: dict[int, set[tuple[str, str, str]]] = {}  # entries the master carries, per instance
        self.unnet: set[int] = set()
        self.after_dispatch = False
        self.failures_injected = False
        self.seen = None  # the snapshot the last invariant check read (for preconditions)

    def _has(self, *states: str) -> bool:
        return self.seen is not None and any(i.state in states for i in self.seen.instances)

    def _stale_entries(self) -> bool:
        """The master carries entries of a VM that no longer has those addresses (reconcile lists it in unnet)."""
        if self.seen is None:
            return False
        by_id = self.seen.by_id()
        return any(entry != (by_id[i].addresses if i in by_id else None)
                   for i, entries in self.master.items() for entry in entries)

    def _reconciled(self, out: dict) -> None:
        """Every reconcile recovers the leases that expired (a launcher died), and only those; it lists in
        ``unnet`` the VMs whose master entries may remain."""
        expired = {iid for iid, until in self.abandoned.items() if until <= self.now}
        assert set(out["leases_expired"]) == expired, (out["leases_expired"], self.abandoned)
        for iid in expired:
            del self.abandoned[iid]
        self.unnet = set(out["unnet"])

    # --- helpers -----------------------------------------------------------------------------------

    def _step(self, name: str) -> None:
        STEPS[self.backend]["rules"] += 1
        STEPS[self.backend][f"rule.{name}"] += 1
        self.after_dispatch = False
        self.failures_injected = False

    def _snap(self):
        return snapshot(self.url, self.now)

    def _advance(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)
        clock(self.now)

    def _seat_of(self, snap, iid: int) -> tuple[int, int] | None:
        inst = snap.by_id().get(iid)
        if inst is None or inst.kind != "AR" or inst.reservation_id is None or inst.seat is None:
            return None
        return (inst.reservation_id, inst.seat)

    def _disturb(self, snap, iid: int) -> None:
        seat = self._seat_of(snap, iid)
        if seat is not None:
            self.disturbed.add(seat)

    def _dispatch(self, fail) -> None:
        for name in list(self.back_after):  # the reconcile timer finds a slave back before this dispatch
            self.back_after[name] -= 1
            if self.back_after[name] == 0:
                self._slave_returns(name)
        leased_before = {iid: until for iid, until in self.abandoned.items() if until > self.now}
        owners = {i.id: i.lease_owner for i in self._snap().instances if i.id in self.abandoned}
        done = simulate.run_dispatch(url=self.url, fail=fail)
        snap = self._snap()
        for iid in done["stopped"]:
            self.master.pop(iid, None)
        for iid in done["failed"]:
            self.master.pop(iid, None)
            self._disturb(snap, iid)
        for iid in done["suspended"] + done["resumed"]:
            self.user_resumed.discard(iid)
            self.hand_suspended.discard(iid)
        by_id = snap.by_id()
        for iid in leased_before:  # a launch in progress is nobody else's to launch
            inst = by_id[iid]
            if inst.state != "stopped":  # (a stop by hand ends it; expiry passes the end)
                assert inst.state == "pending" and inst.lease_owner == owners[iid], (
                    f"instance {iid}, leased by a launch until {leased_before[iid]}, is {inst.state} after a dispatch")
        # An expired lease is taken over when the dispatcher launches the instance; otherwise reconcile ends it.
        self.abandoned = {iid: until for iid, until in self.abandoned.items()
                          if by_id[iid].state == "pending" and by_id[iid].lease_owner == owners[iid]}
        self.after_dispatch = True
        self.failures_injected = bool(done["failed"])
        for key in ("started", "stopped", "suspended", "launched", "waiting", "failed", "resumed", "refused"):
            STEPS[self.backend][f"dispatch.{key}"] += len(done[key])
        STEPS[self.backend]["dispatch.planned_wait"] += len(done["plan"]["wait"])

    # --- rules -------------------------------------------------------------------------------------

    @initialize(cores=st.lists(st.integers(4, 8), min_size=3, max_size=3))
    def lab(self, cores: list[int]) -> None:
        STEPS[self.backend]["rules"] += 1
        service.configure({"private_pool": "10.77.1.16-10.77.1.215", "public_pool": "10.77.0.16-10.77.0.215",
                           "booking.lead_days": "0"}, self.url)
        service.add_group("cs", url=self.url)
        people.add_members("cs", MEMBERS, url=self.url, create=True)  # prelaunched seats are handed to them
        for n, c in enumerate(cores, 1):
            service.add_slave(f"s{n}", f"10.77.0.{n}", c, c * 2048, 100, url=self.url)
            self.names.append(f"s{n}")

    @rule(seats=st.integers(1, 4), cores=st.integers(1, 4), ram=RAM, day=st.integers(0, 1),
          offset=OFFSET, hours=st.integers(1, 4), pv=st.integers(0, 10),
          ras=st.integers(0, 1), mon=st.integers(0, 1))
    def reserve(self, **kw) -> None:
        self._step("reserve")
        self._reserve(**kw)

    @rule(seats=st.integers(1, 4), cores=st.integers(1, 4), ram=RAM, day=st.integers(0, 1),
          offset=OFFSET, hours=st.integers(1, 4), pv=st.integers(0, 10),
          ras=st.integers(0, 1), mon=st.integers(0, 1))
    def reserve_again(self, **kw) -> None:  # a second rule: rules are drawn alike, and bookings matter most
        self._step("reserve_again")
        self._reserve(**kw)

    @rule(seats=st.integers(1, 4), cores=st.integers(1, 4), ram=RAM, day=st.integers(0, 1),
          offset=OFFSET, hours=st.integers(1, 4), pv=st.integers(0, 10),
          ras=st.integers(0, 1), mon=st.integers(0, 1))
    def reserve_on_demand(self, **kw) -> None:  # a session whose seats start when members take them
        self._step("reserve_on_demand")
        self._reserve(**kw, prelaunch=False)

    @rule(data=st.data())
    def take_seat(self, data) -> None:
        """A member takes a seat of an active session (any member, whatever seats are left): a seat they hold
        already, a new one, or a refusal when every seat is taken; then a launch tries it as a seat's launch would."""
        active = [r for r in self._snap().reservations if r.state == "active"]
        if not active:
            return
        self._step("take_seat")
        r = data.draw(st.sampled_from(active))
        for member in data.draw(st.lists(st.sampled_from(MEMBERS), min_size=1, max_size=5)):  # a class arrives
            try:
                seat = sessions.take_seat(r.id, member, url=self.url)
            except ConflictError as err:
                STEPS[self.backend]["take_seat.refused"] += 1
                assert "seats of session" in str(err) or "is done" in str(err) or "opens at" in str(err), err
                continue
            STEPS[self.backend][f"take_seat.{seat['how'].replace(' ', '_')}"] += 1
            again = sessions.take_seat(r.id, member, url=self.url)
            assert again["id"] == seat["id"] and again["changed"] is False, (seat, again)

    def _reserve(self, seats, cores, ram, day, offset, hours, pv, ras, mon, prelaunch=True) -> None:
        """``day`` 0: ``offset`` whole hours after the next whole hour (from 09:00), so that it starts while the
        model runs; 1: tomorrow, ``offset`` hours after 09:00. Inside 09:00–17:00, at most 4 hours."""
        today = datetime.combine(self.now.date(), datetime.min.time())
        next_hour = self.now.replace(minute=0) + timedelta(hours=1 if self.now.minute else 0)
        start = max(next_hour, today + timedelta(hours=9)) + timedelta(hours=offset)
        if day or start.hour >= 17 or start.date() != today.date():
            start = today + timedelta(days=1, hours=9 + offset)
        hours = min(hours, 17 - start.hour)
        pool = sum(h.cores_total for h in self._snap().slaves)
        out = service.reserve(owner="cs", seats=seats, cores=cores, ram_mb=ram, start=start, hours=hours,
                              platform_value=pv, register_as_slave=ras, member=mon, prelaunch=prelaunch, url=self.url)
        assert out["state"] in ("accepted", "refused"), out
        STEPS[self.backend][f"reserve.{out['state']}"] += 1
        if out["state"] == "refused":
            assert out["reason"], out
        elif seats * cores > pool:
            raise AssertionError(f"accepted a block of {seats} x {cores} cores, more than the pool's {pool}: {out}")
        else:
            s, e = datetime.fromisoformat(out["start"]), datetime.fromisoformat(out["end"])
            assert s >= start and s.date() == e.date() and s.hour >= 9 and e <= s.replace(hour=17, minute=0), out

    @rule(cores=CORES, ram=RAM, hours=st.integers(1, 5), pv=st.integers(0, 10), ras=st.integers(0, 1),
          mon=st.integers(0, 1))
    def request(self, **kw) -> None:
        self._step("request")
        self._request(**kw)

    @rule(cores=CORES, ram=RAM, hours=st.integers(1, 5), pv=st.integers(0, 10), ras=st.integers(0, 1),
          mon=st.integers(0, 1))
    def request_again(self, **kw) -> None:
        self._step("request_again")
        self._request(**kw)

    @rule(burst=st.lists(st.tuples(CORES, RAM, st.integers(1, 5), st.integers(0, 10), st.integers(0, 1),
                                   st.integers(0, 1)), min_size=2, max_size=6))
    def request_burst(self, burst) -> None:  # a class arrives: several requests at one instant
        self._step("request_burst")
        for cores, ram, hours, pv, ras, mon in burst:
            self._request(cores, ram, hours, pv, ras, mon)

    def _request(self, cores, ram, hours, pv, ras, mon) -> None:
        before = self._snap()
        out = service.request(owner="cs", cores=cores, ram_mb=ram, hours=hours, platform_value=pv,
                              register_as_slave=ras, member=mon, url=self.url)
        STEPS[self.backend][f"request.{out['decision']}"] += 1
        never = cores > max(s.cores_total for s in before.slaves) or ram > max(s.ram_mb_total for s in before.slaves)
        if out["decision"] == "refused":
            assert never, f"refused a request that fits the largest slave: {out}"
            after = self._snap()
            assert len(after.instances) == len(before.instances), "a refused request wrote an instance"
            return
        assert not never, f"accepted a request that can never fit: {out}"
        if out["decision"] == "place":
            ends = datetime.fromisoformat(out["ends_at"])
            assert self.now < ends <= self.now + timedelta(hours=hours), out

    @rule(minutes=MINUTES)
    def dispatch(self, minutes) -> None:
        self._step("dispatch")
        self._advance(minutes)
        self._dispatch(None)

    @rule(minutes=MINUTES)
    def dispatch_again(self, minutes) -> None:
        self._step("dispatch_again")
        self._advance(minutes)
        self._dispatch(None)

    @rule(minutes=MINUTES, data=st.data())
    def dispatch_with_failures(self, minutes, data) -> None:
        self._step("dispatch_with_failures")
        self._advance(minutes)
        self._dispatch(lambda iid: data.draw(st.integers(0, 3), label=f"launch of {iid} fails if 3") == 3)

    @precondition(lambda self: self.now.hour >= 16)
    @rule(minutes=st.integers(0, 150))
    def next_morning(self, minutes) -> None:
        self._step("next_morning")
        self._advance(int((datetime.combine(self.now.date(), datetime.min.time()) + timedelta(days=1, hours=8)
                           - self.now).total_seconds() // 60) + minutes)
        self._dispatch(None)

    @precondition(lambda self: self._has("running"))
    @rule(data=st.data())
    def suspend(self, data) -> None:
        self._step("suspend")
        snap = self._snap()
        ids = [i.id for i in snap.instances if i.state == "running"]
        if not ids:
            return
        iid = data.draw(st.sampled_from(ids), label="suspend")
        out = lifecycle.suspended(iid, True, self.url)
        assert out["state"] == "suspended" and out["changed"], out
        self.user_resumed.discard(iid)
        if out["kind"] == "AR":
            self.hand_suspended.add(iid)

    @precondition(lambda self: self._has("suspended"))
    @rule(data=st.data())
    def resume(self, data) -> None:
        self._step("resume")
        snap = self._snap()
        ids = [i.id for i in snap.instances if i.state == "suspended"]
        if not ids:
            return
        iid = data.draw(st.sampled_from(ids), label="resume")
        try:
            out = lifecycle.suspended(iid, False, self.url)
        except CapacityError:
            return
        assert out["state"] == "running", out
        self.hand_suspended.discard(iid)
        if out["kind"] == "BE":
            self.user_resumed.add(iid)

    @precondition(lambda self: self._has("pending", "running", "suspended"))
    @rule(data=st.data())
    def stop(self, data) -> None:
        self._step("stop")
        snap = self._snap()
        ids = [i.id for i in snap.live()]
        if not ids:
            return
        iid = data.draw(st.sampled_from(ids), label="stop")
        out = lifecycle.stop(iid, url=self.url)
        assert out["state"] == "stopped", out
        self._disturb(snap, iid)
        self.master.pop(iid, None)
        self.abandoned.pop(iid, None)

    @precondition(lambda self: self._has("pending", "running", "suspended"))
    @rule(data=st.data())
    def release(self, data) -> None:
        self._step("release")
        snap = self._snap()
        live = snap.live()
        if not live:
            return
        inst = data.draw(st.sampled_from(live), label="release")
        if inst.state in ("running", "suspended") or inst.leased(self.now):
            with pytest.raises(ConflictError, match="vcl stop"):
                claims.release(inst.id, url=self.url)
            assert self._snap().by_id()[inst.id] == inst, "a refused release changed the instance"
            return
        out = claims.release(inst.id, url=self.url)
        assert out["state"] == "stopped", out
        self._disturb(snap, inst.id)
        self.abandoned.pop(inst.id, None)

    @precondition(lambda self: not self.down_since)  # one slave down at a time
    @rule(data=st.data(), back_after=st.integers(0, 3))
    def slave_dies(self, data, back_after) -> None:
        """A slave stops answering; it comes back before the ``back_after``-th dispatch from now (0: only
        when the rule slave_returns says so)."""
        self._step("slave_dies")
        name = data.draw(st.sampled_from(self.names), label="slave dies")
        snap = self._snap()
        sid = next(s.id for s in snap.slaves if s.name == name)
        on_it = {i.id for i in snap.instances if i.slave_id == sid and i.state in ("running", "suspended")}
        out = lifecycle.reconcile({name: {"reachable": False}}, self.url)
        assert out["down"] == [name], out
        assert on_it <= set(out["lost"]), f"VMs {on_it} on dead {name} not all lost: {out}"
        after = self._snap()
        by_id = after.by_id()
        left = [i.id for i in after.instances
                if i.slave_id == sid and not (i.state == "pending" and i.leased(self.now))]
        assert not left, f"instances {left} still placed on dead {name}"
        for lost in (snap.by_id()[i] for i in on_it):  # SPEC §4: a lost VM's place comes back
            again = [by_id[r["id"]] for r in out["requeued"] if r["lost"] == lost.id]
            if lost.kind == "AR":
                res = next(r for r in after.reservations if r.id == lost.reservation_id)
                expected = res.state == "active" and res.end > self.now
            else:
                expected = lost.ends_at is not None and lost.ends_at > self.now
            assert len(again) == int(expected), (
                f"lost {lost.kind} VM {lost.id} (ends {lost.ends_at}): requeued as {again}")
            for new in again:
                assert (new.state, new.kind, new.priority, new.reservation_id, new.seat, new.cores) == (
                    "pending", lost.kind, lost.priority, lost.reservation_id, lost.seat, lost.cores), (lost, new)
        self.frozen[name] = self.frozen.get(name, set()) | on_it
        self.down_since[name] = self.now
        if back_after:
            self.back_after[name] = back_after
        self._reconciled(out)

    @precondition(lambda self: bool(self.down_since))
    @rule(data=st.data())
    def slave_returns(self, data) -> None:
        self._step("slave_returns")
        self._slave_returns(data.draw(st.sampled_from(sorted(self.down_since)), label="slave returns"))

    def _slave_returns(self, name: str) -> None:
        """The slave answers again, with the domains it had when it died: they must come back as orphans."""
        left = self.frozen.pop(name, set())
        out = lifecycle.reconcile({name: {"reachable": True,
                                          "domains": {f"vcl-{i}": "shut off" for i in sorted(left)}}}, self.url)
        assert out["up"] == [name] and out["lost"] == [], out
        orphans = {(o["slave"], o["domain"]) for o in out["orphans"]}
        assert {(name, f"vcl-{i}") for i in left} <= orphans, f"leftover domains {left} not orphans: {out}"
        del self.down_since[name]
        self.back_after.pop(name, None)
        self._reconciled(out)

    @precondition(lambda self: self.abandoned or self._stale_entries())
    @rule()
    def reconcile_all(self) -> None:
        self._step("reconcile_all")
        snap = self._snap()
        observed = {}
        for s in snap.slaves:
            if s.name in self.down_since:
                observed[s.name] = {"reachable": False}
                continue
            domains = {f"vcl-{i.id}": "running" if i.state == "running" else "shut off"
                       for i in snap.instances if i.slave_id == s.id and i.state in ("running", "suspended")}
            observed[s.name] = {"reachable": True, "domains": domains}
        out = lifecycle.reconcile(observed, self.url)
        assert out["lost"] == [] and out["orphans"] == [] and out["down"] == [] and out["up"] == [], out
        self._reconciled(out)
        after = self._snap().by_id()
        for owner, entries in self.master.items():
            current = after[owner].addresses if owner in after else None
            if any(entry != current for entry in entries):
                assert owner in self.unnet, f"the master carries entries of {owner} that reconcile does not list: {out}"

    @precondition(lambda self: bool(self.unnet))
    @rule(data=st.data())
    def net_gone(self, data) -> None:
        self._step("net_gone")
        if not self.unnet:
            return
        iid = data.draw(st.sampled_from(sorted(self.unnet)), label="net_gone")
        lifecycle.net_gone(iid, self.url)
        self.unnet.discard(iid)
        inst = self._snap().by_id().get(iid)
        kept = {inst.addresses} if inst is not None and inst.state in ("running", "suspended") else set()
        self.master[iid] = kept

    @precondition(lambda self: self._has("pending"))
    @rule(data=st.data())
    def duplicate_launch(self, data) -> None:
        self._step("duplicate_launch")
        snap = self._snap()
        ids = [i.id for i in snap.instances if i.state == "pending" and not i.leased(self.now)]
        if not ids:
            return
        iid = data.draw(st.sampled_from(ids), label="launch")
        first = lifecycle.lease(iid, self.url)
        self.abandoned.pop(iid, None)  # an expired lease of a dead launcher is taken over (or the window ended)
        if first["lease"] is None:
            assert "window ended" in first["refused"], first
            return
        second = lifecycle.lease(iid, self.url)
        assert second["lease"] is None and "another run" in second["refused"], second
        with pytest.raises(ConflictError, match="lease"):
            lifecycle.place(iid, url=self.url, lease_token="0" * 32)
        token = first["lease"]
        how = data.draw(st.sampled_from(["finishes", "dies before its claim", "dies after its claim"]),
                        label="launcher")
        if how == "dies before its claim":
            self.abandoned[iid] = self._snap().by_id()[iid].lease_until
            return
        try:
            spec = lifecycle.place(iid, url=self.url, lease_token=token)
        except (CapacityError, ConflictError) as err:
            lifecycle.unlease(iid, token, str(err), self.url)
            return
        if how == "dies after its claim":
            self.master.setdefault(iid, set()).add((spec["private_ip"], spec["public_ip"], spec["mac"]))
            self.abandoned[iid] = self._snap().by_id()[iid].lease_until
            return
        out = lifecycle.mark_running(iid, url=self.url, lease_token=token)
        assert out["state"] == "running", out

    # --- invariants --------------------------------------------------------------------------------

    @invariant()
    def promises_hold(self) -> None:
        snap = self._snap()
        bad: list[str] = []
        over = calendar_over_capacity(snap) + calendar_unplaceable(snap)
        if over and snap.any_down():
            STEPS[self.backend]["calendar_over_while_down"] += 1
        else:
            bad += [f"[1 calendar] {m}" for m in over]
        checks = {"1 policy": bookings_in_policy(snap), "2 claims": claims_consistent(snap),
                  "2 ended": ended_hold_nothing(snap), "2 master": master_reuse(snap, self.master),
                  "5 ends": ends_set(snap), "5 seats": one_instance_per_seat(snap),
                  "5 members": one_seat_per_member(snap),
                  "7 look-ahead": best_effort_in_reserved_cores(snap, self.user_resumed)}
        if self.after_dispatch:
            checks["4 expired"] = expired_after_dispatch(snap)
            if snap.any_down():
                STEPS[self.backend]["checked.dispatch_while_down"] += 1
            else:
                skip = set(self.disturbed)
                # A launcher that died after its claim keeps the claim's cores until its lease expires (a launch in
                # progress is never taken back): a seat that needs them waits for that expiry. Seats not running
                # while such a claim is live count as disturbed, like a failed launch.
                held = any(i.id in self.abandoned and i.leased(self.now) and i.slave_id is not None
                           for i in snap.instances)
                if held:
                    skip |= {(r.id, n) for r in snap.reservations for n in range(r.seats)}
                for i in snap.instances:
                    if i.kind == "AR" and i.reservation_id is not None and i.seat is not None and (
                            (i.id in self.hand_suspended and i.state == "suspended")
                            or (i.id in self.abandoned and i.leased(self.now))):
                        skip.add((i.reservation_id, i.seat))
                checks["3 seats run"] = seats_not_running(snap, skip)
                for r in snap.reservations:
                    if r.state == "active" and r.start <= self.now < r.end:
                        checked = sum((r.id, n) not in skip for n in range(r.seats))
                        STEPS[self.backend]["checked.seats_running"] += checked
                        STEPS[self.backend]["checked.seats_disturbed"] += r.seats - checked
            if not self.failures_injected:
                checks["6 AR behind BE"] = seat_waits_behind_best_effort(snap)
        for name, found in checks.items():
            bad += [f"[{name}] {m}" for m in found]
        assert not bad, "\n".join(bad)
        self.seen = snap
        for i in snap.instances:  # launched VMs: the master carries their DHCP host, alias and DNAT chain
            if i.state in ("running", "suspended"):
                self.master.setdefault(i.id, set()).add(i.addresses)


def test_model(db_url, capsys):
    backend = "postgresql" if db_url.startswith("postgresql") else "sqlite"
    machine = type(f"LabModel_{backend}", (LabModel,), {"url": db_url, "backend": backend})
    started = time.monotonic()
    try:
        run_state_machine_as_test(machine, settings=SETTINGS[backend])
    finally:
        counts = STEPS[backend]
        counts["seconds"] = round(time.monotonic() - started, 1)
        summary = {b: dict(sorted(c.items())) for b, c in STEPS.items() if c}
        STEPS_FILE.parent.mkdir(parents=True, exist_ok=True)
        STEPS_FILE.write_text(json.dumps(summary, indent=2) + "\n")
        with capsys.disabled():
            print(f"\nmodel test on {backend}: {counts['rules']} steps in {counts['examples']} examples,"
                  f" {counts['seconds']} s ({STEPS_FILE})")


# --- sequences the model found, kept as plain tests (findings M1-M3 of issue 11) ----------------------------

BE = {"owner": "cs", "register_as_slave": 0, "member": 0}


def _one_slave_lab(url: str, cores: int) -> None:
    clock(FIRST)
    service.configure({"private_pool": "10.77.1.16-10.77.1.40", "public_pool": "10.77.0.16-10.77.0.40",
                       "booking.lead_days": "0"}, url)
    service.add_group("cs", url=url)
    service.add_slave("s1", "10.77.0.1", cores, cores * 2048, 100, url=url)


def test_released_request_keeps_no_address(db_url):
    """M1: a claimed request released before its launch keeps no MAC or address on its row."""
    _one_slave_lab(db_url, 4)
    r = service.request(cores=1, ram_mb=512, hours=1, platform_value=0, **BE, url=db_url)
    claims.release(r["id"], url=db_url)
    assert ended_hold_nothing(snapshot(db_url, FIRST)) == []


def test_a_launch_in_progress_is_nobodys_victim(db_url):
    """M2: a claimed request whose launch holds the lease is not suspended for a higher-priority request."""
    _one_slave_lab(db_url, 4)
    a = service.request(cores=4, ram_mb=512, hours=2, platform_value=0, **BE, url=db_url)
    token = lifecycle.lease(a["id"], db_url)["lease"]
    service.request(cores=4, ram_mb=512, hours=2, platform_value=10, owner="cs", register_as_slave=1, member=1,
                    url=db_url)
    done = simulate.run_dispatch(url=db_url)
    assert a["id"] not in done["suspended"]
    assert lifecycle.mark_running(a["id"], url=db_url, lease_token=token)["state"] == "running"


def test_a_seat_never_waits_behind_claimed_best_effort(db_url):
    """M3: requests claimed at submission but not launched yet hold a seat's cores at its start: the seat still
    starts (they give way), and no best-effort VM runs in its cores."""
    _one_slave_lab(db_url, 5)
    r = service.reserve(owner="cs", seats=1, cores=4, ram_mb=1024, start=FIRST + timedelta(hours=1), hours=1,
                        platform_value=5, register_as_slave=0, member=0, url=db_url)
    assert r["state"] == "accepted"
    for pv in (0, 10):  # the second one's look-ahead counts on suspending the first (lower priority)
        assert service.request(cores=1, ram_mb=512, hours=3, platform_value=pv, **BE, url=db_url)["decision"] == "place"
    clock(FIRST + timedelta(hours=1))
    simulate.run_dispatch(url=db_url)
    snap = snapshot(db_url, FIRST + timedelta(hours=1))
    assert seats_not_running(snap, set()) == []
    assert seat_waits_behind_best_effort(snap) == []


def test_a_prelaunched_seat_suspends_best_effort_on_its_own_slave_before_the_bell(db_url):
    """M4: at start - lead a prelaunched seat starts on its own slave, suspending a best-effort VM there, so it
    runs when its window opens. (The model found its invariant 6 too strict before the bell: a prelaunched seat
    whose assignment lost its slave waits until the window opens, then goes anywhere, suspending as needed.)"""
    _one_slave_lab(db_url, 4)
    start = FIRST + timedelta(hours=1)
    r = service.reserve(owner="cs", seats=1, cores=2, ram_mb=1024, start=start, hours=1, platform_value=5,
                        register_as_slave=0, member=0, prelaunch=True, url=db_url)
    assert r["state"] == "accepted"
    be = service.request(cores=2, ram_mb=512, hours=3, platform_value=0, **BE, url=db_url)
    lifecycle.mark_running(be["id"], url=db_url, lease_token=lifecycle.lease(be["id"], db_url)["lease"])
    service.request(cores=2, ram_mb=512, hours=3, platform_value=1, **BE, url=db_url)  # fills the slave
    early = start - timedelta(minutes=service.get_settings(db_url).prelaunch_lead_minutes)
    clock(early)
    done = simulate.run_dispatch(url=db_url)
    snap = snapshot(db_url, early)
    (seat,) = [i for i in snap.instances if i.kind == "AR"]
    assert done["suspended"] and seat.state == "running", (done, seat)
    assert seat_waits_behind_best_effort(snap) == []
    clock(start)
    simulate.run_dispatch(url=db_url)
    assert seats_not_running(snapshot(db_url, start), set()) == []
