"""A simulated week of the lab: class bookings, best-effort arrivals and slave failures through the real scheduler.

The lab: ``--slaves`` slaves (default 50) of 8, 16, 8, 16, 32 cores in turn (800 cores for 50), 4 GB of RAM per
core, 500 GB of disk, on a fresh embedded SQLite database per scenario (or the PostgreSQL database ``--db-url``,
which is emptied before each scenario). The week runs Monday 00:00 to the end of day ``--days`` (default 5:
Monday to Friday) under the default booking policy (bookable from the next day, 09:00-17:00, at most 4 hours,
look-ahead 5 hours); nothing is configured but the address pools (and the baseline's coefficient, below).

The workload, drawn once from ``--seed`` and replayed identically in every scenario:
- a timetable of ``--classes`` class bookings a day (12 groups): a block of 10-30 seats of 1-2 cores (2 GB per
  core) for 1-4 hours starting on the hour between 09:00 and 17:00, booked 1-3 days before at a random time
  between 08:00 and 20:00 (``service.reserve``: accepted, maybe moved an hour or more later, or refused);
- best-effort requests arriving as a Poisson process: ``--rate`` an hour from 09:00 to 17:00 (default 90), a
  third of it 07:00-09:00 and 17:00-21:00, a twelfth at night; 1-4 cores, 1-8 GB, 1-5 hours, a platform value
  0-10, registering as a slave (30 %), a member (50 %); 30 % of the users stop their VM early (after 20-80 % of
  the time granted; at the next dispatch);
- with failures, ``--failures`` slave failures a day at random moments: the slave dies
  (``lifecycle.reconcile({name: {"reachable": False}})``, then ``lifecycle.net_gone`` for each id in ``unnet``,
  as reconcile.yml does) and comes back 2-8 hours later (reconcile with the domains it still had).

Time moves by ``VCL_NOW``. A request is answered by ``service.request`` at its arrival minute and, as
reserve.yml does, a request placed at once is launched at once (``lifecycle.lease``, ``place``,
``mark_running``: what launch.yml records when every host step succeeds), one that must suspend lower-priority
VMs first runs a dispatch at once, one that waits stays queued. Every ``--tick`` minutes (default 15) a dispatch
runs (``simulate.run_dispatch``: start due reservations, stop what expired, suspend, launch, resume).
The defaults (90 requests an hour at the peak, a dispatch every 15 minutes) fill the pool at the day's peak,
so that queues form under first come, first served, and keep a full run near 8 minutes of CPU on 2 cores: the
scheduler's calls cost ~15 ms a request, ~30 ms a launch and 0.1-0.4 s a dispatch at this size.

Scenarios: ``reserved`` (the week as above), ``failures`` (the same with slave failures) and ``baseline``: plain
first come, first served with no reservations. In the baseline nobody books: each class seat is a best-effort
request submitted at the class's requested start for the class's hours; every request has the same priority
(the setting priority_coefficient is 1e-12, so every Pi rounds to 10.000000000, and register_as_slave is 0 for
all), so the dispatcher serves the queue in submission order and never preempts (equal priorities wait). As the
service does, a request that fits when it arrives is placed at once even if earlier ones wait, and a dispatch
launches every queued request that fits, in order (greedy first come, first served, no reservation of room for
the head of the queue).

Measured per scenario (after each dispatch, weighted by the time to the next):
- class occurrences started on time: all seats running after the first dispatch at or after the occurrence's
  start (its start after any move; the requested start in the baseline); seats on time; seat core-hours
  delivered (seats running / seats booked over the windows);
- best-effort utilisation of the free cores: BE core-hours / (pool core-hours - reserved core-hours), over the
  week and over 09:00-17:00 (pool: slaves up; reserved: the blocks of the accepted occurrences over their
  windows, the timetable's class windows in the baseline);
- best-effort wait, submission to the first launch (0 when placed at once), mean and p95 over the requests
  served; requests never served (still queued at the end) and refused are counted apart;
- preemptions (suspensions) and resumes; decisions per second: calls of service.request, service.reserve and
  run_dispatch over the wall-clock time spent in them; runtime; checks after each dispatch (no slave over
  capacity, nothing running past its end, every domain a returning slave still had reported as an orphan).

Usage: .venv/bin/python bench/week.py [--seed 1] [--slaves 50] [--days 5] [--tick 15] [--classes 24] [--rate 90]
                                      [--failures 2] [--scenarios reserved,failures,baseline] [--db-url URL]
                                      [--out bench/results]
Prints a table, writes week.json and week.png (pool use per dispatch: reserved seats running / best effort /
idle / down) to --out.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import random
import statistics
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy.exc import SQLAlchemyError

from vcl_sched import db, lifecycle, service, simulate
from vcl_sched.errors import CapacityError, ConflictError

RESULTS = Path(__file__).resolve().parent / "results"
MONDAY = datetime(2026, 11, 23)  # a Monday
SIZES = (8, 16, 8, 16, 32)
RAM_PER_CORE_MB = 4096
SEAT_RAM_PER_CORE_MB = 2048
GROUPS = 12
SCENARIOS = ("reserved", "failures", "baseline")
BASELINE_COEFFICIENT = "1e-12"
MINUTE = timedelta(minutes=1)


# --- the workload, drawn once from the seed ------------------------------------------------------------

@dataclass(frozen=True)
class Lesson:
    """A class booking: a block of seats over a window, booked at ``booked_at``."""

    id: int
    group: str
    start: datetime
    hours: int
    seats: int
    cores: int
    platform_value: float
    booked_at: datetime

    @property
    def end(self) -> datetime:
        return self.start + timedelta(hours=self.hours)


@dataclass(frozen=True)
class Arrival:
    """A best-effort request; ``stop_after`` is the share of its granted time after which its user stops it."""

    id: int
    at: datetime
    cores: int
    ram_mb: int
    hours: int
    platform_value: float
    register_as_slave: int
    member: int
    stop_after: float | None


@dataclass(frozen=True)
class Failure:
    at: datetime
    slave: str
    down: timedelta


@dataclass(frozen=True)
class Workload:
    slaves: list[tuple[str, str, int, int]]  # name, address, cores, ram_mb
    lessons: list[Lesson]
    arrivals: list[Arrival]
    failures: list[Failure]
    start: datetime
    end: datetime


def _rate(hour: int, peak: float) -> float:
    if 9 <= hour < 17:
        return peak
    if 7 <= hour < 9 or 17 <= hour < 21:
        return peak / 3
    return peak / 12


def make_workload(seed: int, slaves: int, days: int, classes: int, rate: float, failures: float) -> Workload:
    rng = random.Random(seed)
    pool = [(f"s{i + 1:03d}", f"10.40.{(i + 1) // 250}.{(i + 1) % 250 + 1}", SIZES[i % len(SIZES)],
             SIZES[i % len(SIZES)] * RAM_PER_CORE_MB) for i in range(slaves)]
    start, end = MONDAY, MONDAY + timedelta(days=days)
    lessons = []
    for day in range(days):
        for _ in range(classes):
            hours = rng.choice((1, 2, 2, 3, 3, 4))
            begin = MONDAY + timedelta(days=day, hours=rng.randint(9, 17 - hours))
            booked = (MONDAY + timedelta(days=day - rng.randint(1, 3), hours=rng.randint(8, 19),
                                         minutes=rng.randint(0, 59)))
            lessons.append(Lesson(len(lessons) + 1, f"class{rng.randint(1, GROUPS):02d}", begin, hours,
                                  rng.randint(10, 30), rng.choice((1, 1, 2)), round(rng.uniform(0, 10), 1), booked))
    arrivals = []
    for h in range(days * 24):
        lam = _rate(h % 24, rate)
        t = rng.expovariate(lam) if lam > 0 else 60.0
        while t < 1.0:  # inter-arrival times in hours: a Poisson process of rate lam within this hour
            stop = rng.uniform(0.2, 0.8) if rng.random() < 0.3 else None
            arrivals.append(Arrival(len(arrivals) + 1, start + timedelta(hours=h, minutes=int(t * 60)),
                                    rng.randint(1, 4), rng.choice((1024, 2048, 4096, 8192)),
                                    rng.randint(1, 5), round(rng.uniform(0, 10), 1), int(rng.random() < 0.3),
                                    int(rng.random() < 0.5), stop))
            t += rng.expovariate(lam)
    outages = []
    for _ in range(round(failures * days)):
        at = start + timedelta(minutes=rng.randrange(days * 24 * 60))
        outages.append(Failure(at, rng.choice(pool)[0], timedelta(minutes=rng.randint(120, 480))))
    return Workload(pool, lessons, arrivals, sorted(outages, key=lambda f: f.at), start, end)


# --- one scenario through the service ------------------------------------------------------------------

@contextmanager
def clock() -> Iterator[Callable[[datetime], None]]:
    """Set ``VCL_NOW`` for the scheduler; the caller's value comes back afterwards."""
    saved = os.environ.get("VCL_NOW")

    def at(moment: datetime) -> None:
        os.environ["VCL_NOW"] = moment.strftime("%Y-%m-%d %H:%M")

    try:
        yield at
    finally:
        if saved is None:
            os.environ.pop("VCL_NOW", None)
        else:
            os.environ["VCL_NOW"] = saved


def _iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _pct(part: float, whole: float) -> float | None:
    return round(100 * part / whole, 1) if whole else None


@dataclass
class Sample:
    at: datetime
    seats: int  # cores of reserved seats (class seats in the baseline) running
    best_effort: int  # cores of best-effort VMs running
    up: int  # cores of the slaves up
    down: int  # cores of the slaves down


@dataclass
class Week:
    name: str
    url: str
    work: Workload
    tick: timedelta
    baseline: bool = False
    failures: bool = False
    calls: dict[str, list[float]] = field(default_factory=lambda: {"request": [], "reserve": [], "dispatch": []})
    samples: list[Sample] = field(default_factory=list)
    root: dict[int, int] = field(default_factory=dict)  # instance id -> arrival id (best effort)
    first_instance: dict[int, int] = field(default_factory=dict)  # arrival id -> the instance its request made
    submitted: dict[int, datetime] = field(default_factory=dict)  # arrival id -> submission time
    first_run: dict[int, datetime] = field(default_factory=dict)  # arrival id -> first launch
    refused: int = 0
    seat_ids: dict[int, int] = field(default_factory=dict)  # baseline: instance id -> lesson id
    booked: dict[int, int] = field(default_factory=dict)  # reservation id -> lesson id
    booking_outcome: dict[str, int] = field(default_factory=lambda: {"accepted": 0, "moved": 0, "refused": 0})
    checked: dict[int, dict[str, Any]] = field(default_factory=dict)  # occurrence -> on-time result
    early_stop: dict[int, datetime] = field(default_factory=dict)  # instance id -> when its user stops it
    seen_running: set[int] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("suspended", "resumed", "stopped_early", "expired_stops", "launch_deferred", "failures", "failures_skipped",
         "returns", "lost", "requeued_seats", "requeued_be", "orphans_reported", "violations"), 0))
    violations: list[str] = field(default_factory=list)
    down: dict[str, tuple[Failure, dict[str, str]]] = field(default_factory=dict)  # slave -> its failure, domains
    seat_cores: list[float] = field(default_factory=lambda: [0.0, 0.0])  # core-hours delivered, booked

    # -- calls, timed -------------------------------------------------------------------------------------
    def timed(self, kind: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.calls[kind].append(time.perf_counter() - t0)

    def violation(self, text: str) -> None:
        self.counts["violations"] += 1
        if len(self.violations) < 20:
            self.violations.append(text)

    # -- the lab ------------------------------------------------------------------------------------------
    def setup(self) -> None:
        service.init(self.url)
        pairs = 4000
        last = 16 + pairs
        settings = {"private_pool": f"10.100.0.16-10.100.{last // 256}.{last % 256}",
                    "public_pool": f"10.200.0.16-10.200.{last // 256}.{last % 256}"}
        if self.baseline:
            settings["priority_coefficient"] = BASELINE_COEFFICIENT
        service.configure(settings, self.url)
        for g in range(1, GROUPS + 1):
            service.add_group(f"class{g:02d}", url=self.url)
        service.add_group("users", url=self.url)
        for name, address, cores, ram in self.work.slaves:
            service.add_slave(name, address, cores, ram, 500, url=self.url)

    def launch(self, iid: int) -> bool:
        """What launch.yml leaves in the database when every host step succeeds."""
        taken = lifecycle.lease(iid, self.url)
        token = taken["lease"]
        if token is None:
            return False
        try:
            lifecycle.place(iid, url=self.url, lease_token=token)
        except (CapacityError, ConflictError) as err:
            lifecycle.unlease(iid, token, str(err), self.url)
            return False
        lifecycle.mark_running(iid, url=self.url, lease_token=token)
        return True

    # -- events -------------------------------------------------------------------------------------------
    def book(self, lesson: Lesson) -> None:
        row = self.timed("reserve", service.reserve, owner=lesson.group, cores=lesson.cores,
                         ram_mb=lesson.cores * SEAT_RAM_PER_CORE_MB, start=lesson.start, hours=lesson.hours,
                         platform_value=lesson.platform_value, register_as_slave=0, member=1, seats=lesson.seats,
                         url=self.url)
        if row["state"] == "accepted":
            self.booked[row["id"]] = lesson.id
            self.booking_outcome["accepted"] += 1
            self.booking_outcome["moved"] += int(row["rescheduled"] > 0)
        else:
            self.booking_outcome["refused"] += 1

    def submit(self, now: datetime, owner: str, cores: int, ram_mb: int, hours: int, platform_value: float,
               register_as_slave: int, member: int, arrival: int | None = None) -> tuple[dict[str, Any], bool]:
        """The request, then what reserve.yml does with the answer; returns it and whether the VM runs now."""
        answer = self.timed("request", service.request, owner=owner, cores=cores, ram_mb=ram_mb, hours=hours,
                            platform_value=platform_value, register_as_slave=register_as_slave, member=member,
                            explain=False, url=self.url)
        if arrival is not None and answer.get("id") is not None:
            self.root[answer["id"]] = arrival
            self.first_instance[arrival] = answer["id"]
        if answer.get("decision") == "place":  # reserve.yml goes straight on to launch.yml
            if self.launch(answer["id"]):
                if arrival is not None:
                    self.first_run.setdefault(arrival, now)
                return answer, True
            self.counts["launch_deferred"] += 1
        elif answer.get("decision") == "suspend":  # reserve.yml runs dispatch.yml
            self.dispatch(now)
        return answer, False

    def arrive(self, now: datetime, a: Arrival) -> None:
        self.submitted[a.id] = now
        answer, _ = self.submit(now, "users", a.cores, a.ram_mb, a.hours, a.platform_value,
                                0 if self.baseline else a.register_as_slave, a.member, arrival=a.id)
        if answer.get("state") == "refused" or answer.get("id") is None:
            self.refused += 1

    def class_start(self, now: datetime, lesson: Lesson) -> None:
        """Baseline: each seat of a class is a best-effort request at the class's start."""
        for _ in range(lesson.seats):
            answer, _ = self.submit(now, lesson.group, lesson.cores, lesson.cores * SEAT_RAM_PER_CORE_MB,
                                    lesson.hours, lesson.platform_value, 0, 1)
            if answer.get("id") is not None:
                self.seat_ids[answer["id"]] = lesson.id

    def dispatch(self, now: datetime) -> None:
        done = self.timed("dispatch", simulate.run_dispatch, url=self.url)
        self.counts["suspended"] += len(done["suspended"])
        self.counts["resumed"] += len(done["resumed"])
        self.counts["expired_stops"] += len(done["stopped"])
        for iid in done["launched"]:
            if iid in self.root:
                self.first_run.setdefault(self.root[iid], now)

    def slave_dies(self, now: datetime, f: Failure) -> None:
        if f.slave in self.down:
            self.counts["failures_skipped"] += 1
            return
        self.counts["failures"] += 1
        had = {lifecycle.domain_name(r["id"]): "shutoff" for r in service.list_instances(self.url)
               if r["slave"] == f.slave and r["state"] in ("running", "suspended")}
        self.down[f.slave] = (f, had)
        result = lifecycle.reconcile({f.slave: {"reachable": False}}, self.url)
        self.after_reconcile(result)
        self.counts["lost"] += len(result["lost"])

    def slave_returns(self, f: Failure) -> None:
        if f.slave not in self.down or self.down[f.slave][0] is not f:  # that failure was skipped
            return
        had = self.down.pop(f.slave)[1]
        self.counts["returns"] += 1
        result = lifecycle.reconcile({f.slave: {"reachable": True, "domains": had}}, self.url)
        self.after_reconcile(result)
        orphans = {o["domain"] for o in result["orphans"] if o["slave"] == f.slave}
        self.counts["orphans_reported"] += len(orphans)
        if orphans != set(had):
            self.violation(f"{f.slave} came back with {sorted(had)}; reconcile reported orphans {sorted(orphans)}")

    def after_reconcile(self, result: dict[str, Any]) -> None:
        for iid in result["unnet"]:  # reconcile.yml removes the master's entries, then says so
            lifecycle.net_gone(iid, self.url)
        for moved in result["requeued"]:
            if moved["kind"] == "AR":
                self.counts["requeued_seats"] += 1
            else:
                self.counts["requeued_be"] += 1
                if moved["lost"] in self.root:
                    self.root[moved["id"]] = self.root[moved["lost"]]

    def stop_early(self, now: datetime, alive: set[int]) -> None:
        for iid, when in list(self.early_stop.items()):
            if when <= now:
                del self.early_stop[iid]
                if iid in alive:
                    simulate.stop_now(iid, self.url)
                    self.counts["stopped_early"] += 1

    # -- after each dispatch: the sample and the checks ---------------------------------------------------
    def observe(self, now: datetime, weight: float) -> set[int]:
        rows = service.list_instances(self.url)
        slaves = service.list_slaves(self.url)
        running = [r for r in rows if r["state"] == "running"]
        seat = [r for r in running if r["kind"] == "AR" or r["id"] in self.seat_ids]
        seat_ids = {r["id"] for r in seat}
        be = [r for r in running if r["id"] not in seat_ids]
        up = sum(s["cores_total"] for s in slaves if s["status"] == "up")
        down = sum(s["cores_total"] for s in slaves if s["status"] != "up")
        self.samples.append(Sample(now, sum(r["cores"] for r in seat), sum(r["cores"] for r in be), up, down))
        for s in slaves:
            if s["cores_used"] > s["cores_total"] or s["ram_mb_used"] > s["ram_mb_total"]:
                self.violation(f"{now:%a %H:%M}: slave {s['name']} over capacity ({s['cores_used']} cores used)")
        for r in running:
            ends = _iso(r["ends_at"])
            if ends is None or ends <= now:
                self.violation(f"{now:%a %H:%M}: instance {r['id']} runs with end {r['ends_at']}")
        for r in be:  # a user stops early once, after a share of the time the VM was granted
            if r["id"] in self.seen_running or r["id"] not in self.root:
                continue
            self.seen_running.add(r["id"])
            share = self.arrival(self.root[r["id"]]).stop_after
            started, ends = _iso(r["started_at"]), _iso(r["ends_at"])
            first = self.first_instance.get(self.root[r["id"]])
            if share is not None and started is not None and ends is not None and r["id"] == first:
                self.early_stop[r["id"]] = started + (ends - started) * share
        self.check_occurrences(now, weight, seat)
        return {r["id"] for r in rows if r["state"] in ("running", "suspended")}

    def arrival(self, aid: int) -> Arrival:
        return self.work.arrivals[aid - 1]

    def occurrences(self) -> list[tuple[int, datetime, datetime, int, int]]:
        """(key, start, end, seats, cores) of the occurrences that hold room: the accepted reservations (start
        after any move), or the timetable's classes in the baseline."""
        if self.baseline:
            return [(x.id, x.start, x.end, x.seats, x.cores) for x in self.work.lessons]
        return [(r["id"], datetime.fromisoformat(r["start"]), datetime.fromisoformat(r["end"]), r["seats"], r["cores"])
                for r in service.list_reservations(self.url)["reservations"]]

    def check_occurrences(self, now: datetime, weight: float, seat_rows: list[dict[str, Any]]) -> None:
        by_occ: dict[int, int] = {}
        for r in seat_rows:
            key = self.seat_ids[r["id"]] if self.baseline else r["reservation_id"]
            by_occ[key] = by_occ.get(key, 0) + 1
        for key, start, end, seats, cores in self.occurrences():
            if not start <= now < end:
                continue
            running = by_occ.get(key, 0)
            self.seat_cores[0] += min(running, seats) * cores * weight
            self.seat_cores[1] += seats * cores * weight
            if key not in self.checked:
                self.checked[key] = {"start": start, "seats": seats, "running": running, "on_time": running >= seats}

    # -- the week -----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        t_start, cpu_start = time.perf_counter(), time.process_time()
        w = self.work
        events: list[tuple[datetime, int, int, Any]] = []
        seq = 0

        def push(at: datetime, order: int, payload: Any) -> None:
            nonlocal seq
            seq += 1
            heapq.heappush(events, (at, order, seq, payload))

        with clock() as at:
            at(w.start - timedelta(days=7))
            self.setup()
            if not self.baseline:
                for lesson in sorted(w.lessons, key=lambda x: x.booked_at):
                    if lesson.booked_at < w.start:  # booked before the week: nothing runs yet
                        at(lesson.booked_at)
                        self.book(lesson)
                    else:
                        push(lesson.booked_at, 3, ("book", lesson))
            else:
                for lesson in w.lessons:
                    push(lesson.start, 4, ("class", lesson))
            for a in w.arrivals:
                push(a.at, 5, ("arrive", a))
            if self.failures:
                for f in w.failures:
                    push(f.at, 1, ("die", f))
                    if f.at + f.down < w.end:
                        push(f.at + f.down, 0, ("return", f))
            t = w.start
            while t < w.end:
                push(t, 9, ("tick", None))
                t += self.tick
            alive: set[int] = set()
            while events:
                now, _, _, (kind, item) = heapq.heappop(events)
                at(now)
                if kind == "tick":
                    self.stop_early(now, alive)
                    self.dispatch(now)
                    alive = self.observe(now, self.tick / timedelta(hours=1))
                elif kind == "book":
                    self.book(item)
                elif kind == "class":
                    self.class_start(now, item)
                elif kind == "arrive":
                    self.arrive(now, item)
                elif kind == "die":
                    self.slave_dies(now, item)
                elif kind == "return":
                    self.slave_returns(item)
        return self.report(time.perf_counter() - t_start, time.process_time() - cpu_start)

    def report(self, runtime: float, cpu: float) -> dict[str, Any]:
        hour = self.tick / timedelta(hours=1)
        reserved_at: dict[datetime, int] = {}
        occ = [(s, e, n * c) for _, s, e, n, c in self._all_occurrences()]
        for smp in self.samples:
            reserved_at[smp.at] = sum(cores for s, e, cores in occ if s <= smp.at < e)

        def util(day_only: bool) -> float | None:
            chosen = [s for s in self.samples if not day_only or 9 <= s.at.hour < 17]
            free = sum(max(0, s.up - reserved_at[s.at]) for s in chosen) * hour
            return _pct(sum(s.best_effort for s in chosen) * hour, free)

        waits = sorted((self.first_run[a] - self.submitted[a]) / timedelta(minutes=1) for a in self.first_run)
        submitted = len(self.submitted)
        on_time = [c for c in self.checked.values() if c["on_time"]]
        seats = sum(c["seats"] for c in self.checked.values())
        seats_on_time = sum(min(c["running"], c["seats"]) for c in self.checked.values())
        pool_hours = sum(s.up + s.down for s in self.samples) * hour
        calls = sum(len(v) for v in self.calls.values())
        spent = sum(sum(v) for v in self.calls.values())
        return {
            "scenario": self.name,
            "occurrences": len(self.checked) if self.baseline else self.booking_outcome["accepted"],
            "bookings": None if self.baseline else dict(self.booking_outcome),
            "occurrences_checked": len(self.checked),
            "on_time_pct": _pct(len(on_time), len(self.checked)),
            "seats_on_time_pct": _pct(seats_on_time, seats),
            "seat_core_hours_delivered_pct": _pct(self.seat_cores[0], self.seat_cores[1]),
            "be_requests": submitted,
            "be_refused": self.refused,
            "be_served": len(waits),
            "be_never_served": submitted - self.refused - len(waits),
            "be_served_at_once_pct": _pct(sum(1 for x in waits if x == 0), len(waits)),
            "be_wait_mean_min": round(statistics.fmean(waits), 1) if waits else None,
            "be_wait_p95_min": round(waits[max(0, math.ceil(0.95 * len(waits)) - 1)], 1) if waits else None,
            "be_util_free_pct": util(False),
            "be_util_free_day_pct": util(True),
            "pool_use_pct": _pct(sum(s.seats + s.best_effort for s in self.samples) * hour, pool_hours),
            "preemptions": self.counts["suspended"],
            **{k: v for k, v in self.counts.items() if k != "suspended"},
            "violation_examples": self.violations,
            "late_examples": [{"occurrence": k, "start": c["start"].isoformat(sep=" "), "seats": c["seats"],
                               "running": c["running"]} for k, c in self.checked.items() if not c["on_time"]][:20],
            "calls": {k: len(v) for k, v in self.calls.items()},
            "ms_per_call": {k: round(1000 * statistics.fmean(v), 1) if v else None for k, v in self.calls.items()},
            "decisions_per_s": round(calls / spent, 1) if spent else None,
            "runtime_s": round(runtime, 1),
            "cpu_s": round(cpu, 1),
        }

    def _all_occurrences(self) -> list[tuple[int, datetime, datetime, int, int]]:
        if self.baseline:
            return self.occurrences()
        rows = service.list_reservations(self.url, include_all=True)["reservations"]
        return [(r["id"], datetime.fromisoformat(r["start"]), datetime.fromisoformat(r["end"]), r["seats"], r["cores"])
                for r in rows if r["start"] and r["state"] in ("accepted", "active", "done")]


# --- databases -----------------------------------------------------------------------------------------

def fresh_postgres(url: str) -> str:
    from sqlalchemy import text

    with db.engine(url).begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    db.engine(url).dispose()
    return url


def run_scenario(name: str, work: Workload, tick: timedelta, db_url: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vcl-week-") as tmp:
        url = fresh_postgres(db_url) if db_url else f"sqlite:///{tmp}/{name}.sqlite"
        week = Week(name, url, work, tick, baseline=name == "baseline", failures=name == "failures")
        result = week.run()
        db.engine(url).dispose()
    result["samples"] = week.samples
    return result


# --- the plot: a PNG written with zlib, no plotting library --------------------------------------------

FONT = {  # 5x7 glyphs, one hex number a row, the leftmost pixel the highest of 5 bits
    "A": "0E 11 11 1F 11 11 11", "B": "1E 11 11 1E 11 11 1E", "C": "0E 11 10 10 10 11 0E",
    "D": "1E 11 11 11 11 11 1E", "E": "1F 10 10 1E 10 10 1F", "F": "1F 10 10 1E 10 10 10",
    "G": "0E 11 10 17 11 11 0F", "H": "11 11 11 1F 11 11 11", "I": "0E 04 04 04 04 04 0E",
    "J": "07 02 02 02 02 12 0C", "K": "11 12 14 18 14 12 11", "L": "10 10 10 10 10 10 1F",
    "M": "11 1B 15 15 11 11 11", "N": "11 11 19 15 13 11 11", "O": "0E 11 11 11 11 11 0E",
    "P": "1E 11 11 1E 10 10 10", "Q": "0E 11 11 11 15 12 0D", "R": "1E 11 11 1E 14 12 11",
    "S": "0F 10 10 0E 01 01 1E", "T": "1F 04 04 04 04 04 04", "U": "11 11 11 11 11 11 0E",
    "V": "11 11 11 11 11 0A 04", "W": "11 11 11 15 15 15 0A", "X": "11 11 0A 04 0A 11 11",
    "Y": "11 11 11 0A 04 04 04", "Z": "1F 01 02 04 08 10 1F", "0": "0E 11 13 15 19 11 0E",
    "1": "04 0C 04 04 04 04 0E", "2": "0E 11 01 02 04 08 1F", "3": "1F 02 04 02 01 11 0E",
    "4": "02 06 0A 12 1F 02 02", "5": "1F 10 1E 01 01 11 0E", "6": "06 08 10 1E 11 11 0E",
    "7": "1F 01 02 04 08 08 08", "8": "0E 11 11 0E 11 11 0E", "9": "0E 11 11 0F 01 02 0C",
    " ": "00 00 00 00 00 00 00", "-": "00 00 00 1F 00 00 00", ".": "00 00 00 00 00 0C 0C",
    ",": "00 00 00 00 0C 04 08", ":": "00 0C 0C 00 0C 0C 00", "%": "18 19 02 04 08 13 03",
    "(": "02 04 08 08 08 04 02", ")": "08 04 02 02 02 04 08", "/": "00 01 02 04 08 10 00",
    "=": "00 00 1F 00 1F 00 00", "+": "00 04 04 1F 04 04 00",
}
SEATS, BEST_EFFORT, IDLE, DOWN = (0x2C, 0x6F, 0xB5), (0xF2, 0x8E, 0x2B), (0xE4, 0xE4, 0xE4), (0x55, 0x55, 0x55)
INK, GRID, WHITE = (0x20, 0x20, 0x20), (0x99, 0x99, 0x99), (0xFF, 0xFF, 0xFF)


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(WHITE * (width * height))

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: tuple[int, int, int]) -> None:
        """Fill [x0, x1) x [y0, y1), clipped to the canvas."""
        x0, x1 = max(0, x0), min(self.width, x1)
        if x1 <= x0:
            return
        row = bytes(color) * (x1 - x0)
        for y in range(max(0, y0), min(self.height, y1)):
            i = (y * self.width + x0) * 3
            self.pixels[i:i + len(row)] = row

    def text(self, x: int, y: int, words: str, color: tuple[int, int, int] = INK, scale: int = 2) -> int:
        """Draw ``words`` (upper case) with its top left at (x, y); return the x after it."""
        for ch in words.upper():
            for dy, bits in enumerate(int(b, 16) for b in FONT.get(ch, FONT[" "]).split()):
                for dx in range(5):
                    if bits & (0x10 >> dx):
                        self.rect(x + dx * scale, y + dy * scale, x + (dx + 1) * scale, y + (dy + 1) * scale, color)
            x += 6 * scale
        return x

    def png(self) -> bytes:
        w = self.width * 3
        raw = b"".join(b"\x00" + bytes(self.pixels[y * w:(y + 1) * w]) for y in range(self.height))

        def chunk(tag: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
                + chunk(b"IEND", b""))


def plot(results: list[dict[str, Any]], start: datetime, end: datetime, title: str) -> bytes:
    """Pool use per dispatch, one panel per scenario: reserved seats running, best effort, idle, down (stacked)."""
    left, right, plot_w, plot_h, panel_h, top = 80, 20, 960, 150, 215, 70
    canvas = Canvas(left + plot_w + right, top + panel_h * len(results) + 10)
    canvas.text(left, 10, title)
    x = left
    for label, color in (("reserved seats running", SEATS), ("best effort", BEST_EFFORT), ("idle", IDLE),
                         ("down", DOWN)):
        canvas.rect(x, 40, x + 14, 54, color)
        x = canvas.text(x + 20, 40, label) + 24
    span = end - start
    for n, result in enumerate(results):
        y0 = top + n * panel_h + 22
        samples = result["samples"]
        total = max((s.up + s.down for s in samples), default=1) or 1
        canvas.text(left, y0 - 20, f"{result['scenario']}: pool use {result['pool_use_pct']} %, BE"
                                   f" {result['be_util_free_pct']} % of free cores, on time {result['on_time_pct']} %")
        for i, s in enumerate(samples):
            nxt = samples[i + 1].at if i + 1 < len(samples) else end
            x0 = left + round(plot_w * ((s.at - start) / span))
            x1 = max(x0 + 1, left + round(plot_w * ((nxt - start) / span)))
            below, level = 0, 0
            for cores, color in ((s.seats, SEATS), (s.best_effort, BEST_EFFORT),
                                 (max(0, s.up - s.seats - s.best_effort), IDLE), (s.down, DOWN)):
                level += cores
                top_px = round(plot_h * min(level, total) / total)
                canvas.rect(x0, y0 + plot_h - top_px, x1, y0 + plot_h - below, color)
                below = top_px
        canvas.rect(left - 1, y0, left, y0 + plot_h + 1, INK)
        canvas.rect(left - 1, y0 + plot_h, left + plot_w, y0 + plot_h + 1, INK)
        canvas.text(10, y0, f"{total}", scale=1)
        canvas.text(10, y0 + 10, "cores", scale=1)
        canvas.text(left - 14, y0 + plot_h - 7, "0", scale=1)
        day = start
        while day < end:
            xd = left + round(plot_w * ((day - start) / span))
            canvas.rect(xd, y0, xd + 1, y0 + plot_h, GRID)
            width = plot_w * (timedelta(days=1) / span)
            canvas.text(xd + round(width / 2) - 18, y0 + plot_h + 6, f"{day:%a}")
            day += timedelta(days=1)
    return canvas.png()


# --- the table and main ----------------------------------------------------------------------------------

ROWS = (
    ("class occurrences (accepted)", lambda r: r["occurrences"]),
    ("  bookings moved / refused", lambda r: "-" if r["bookings"] is None
     else f"{r['bookings']['moved']} / {r['bookings']['refused']}"),
    ("started on time (all seats)", lambda r: f"{r['on_time_pct']} %"),
    ("seats on time", lambda r: f"{r['seats_on_time_pct']} %"),
    ("seat core-hours delivered", lambda r: f"{r['seat_core_hours_delivered_pct']} %"),
    ("BE requests (refused)", lambda r: f"{r['be_requests']} ({r['be_refused']})"),
    ("BE served at once", lambda r: f"{r['be_served_at_once_pct']} %"),
    ("BE wait mean / p95 (min)", lambda r: f"{r['be_wait_mean_min']} / {r['be_wait_p95_min']}"),
    ("BE never served", lambda r: r["be_never_served"]),
    ("BE use of free cores week/day", lambda r: f"{r['be_util_free_pct']} / {r['be_util_free_day_pct']} %"),
    ("pool use (seats + BE)", lambda r: f"{r['pool_use_pct']} %"),
    ("preemptions (suspensions)", lambda r: r["preemptions"]),
    ("resumes", lambda r: r["resumed"]),
    ("stopped early by users", lambda r: r["stopped_early"]),
    ("slave failures / back / VMs lost", lambda r: f"{r['failures']} / {r['returns']} / {r['lost']}"),
    ("requeued seats / BE", lambda r: f"{r['requeued_seats']} / {r['requeued_be']}"),
    ("orphan domains reported", lambda r: r["orphans_reported"]),
    ("check violations", lambda r: r["violations"]),
    ("calls request/reserve/dispatch", lambda r: "/".join(str(r["calls"][k]) for k in ("request", "reserve",
                                                                                         "dispatch"))),
    ("ms per call req/res/disp", lambda r: "/".join(str(r["ms_per_call"][k]) for k in ("request", "reserve",
                                                                                        "dispatch"))),
    ("decisions per second", lambda r: r["decisions_per_s"]),
    ("runtime / CPU (s)", lambda r: f"{r['runtime_s']} / {r['cpu_s']}"),
)


def table(results: list[dict[str, Any]]) -> str:
    cells = [["metric", *(r["scenario"] for r in results)]]
    cells += [[label, *(str(fn(r)) for r in results)] for label, fn in ROWS]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line naming the option, exit 1
        print(f"week.py: {message}", file=sys.stderr)
        sys.exit(1)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--slaves", type=int, default=50)
    parser.add_argument("--days", type=int, default=5, help="weekdays from Monday (1..5)")
    parser.add_argument("--tick", type=int, default=15, help="minutes between dispatch runs")
    parser.add_argument("--classes", type=int, default=24, help="class bookings a day")
    parser.add_argument("--rate", type=float, default=90.0, help="best-effort arrivals an hour, 09:00-17:00")
    parser.add_argument("--failures", type=float, default=2.0, help="slave failures a day (scenario failures)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--db-url", help="a PostgreSQL database this run may empty (default: SQLite in a temp dir)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where week.json and week.png go")
    args = parser.parse_args(argv)
    checks = (("--slaves", 1 <= args.slaves <= 1000, "1..1000"), ("--days", 1 <= args.days <= 5, "1..5"),
              ("--tick", 1 <= args.tick <= 60 and 60 % args.tick == 0, "a divisor of 60"),
              ("--classes", 0 <= args.classes <= 200, "0..200"),
              ("--rate", math.isfinite(args.rate) and 0 <= args.rate <= 1000, "0..1000"),
              ("--failures", math.isfinite(args.failures) and 0 <= args.failures <= 100, "0..100"))
    for name, ok, allowed in checks:
        if not ok:
            parser.error(f"argument {name}: must be {allowed}")
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not names or any(s not in SCENARIOS for s in names):
        parser.error(f"argument --scenarios: choose from {', '.join(SCENARIOS)}")
    args.scenarios = [s for s in SCENARIOS if s in names]
    if args.db_url is not None and not args.db_url.startswith(("postgresql://", "postgresql+psycopg://")):
        parser.error("argument --db-url: must be a postgresql:// URL (the run empties it)")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"argument --out: {args.out} is not a directory")
    if args.db_url is not None:
        try:
            with db.engine(args.db_url).connect():
                pass
        except (SQLAlchemyError, ImportError) as err:
            lines = str(err).strip().splitlines()
            parser.error(f"argument --db-url: cannot connect: {lines[0] if lines else type(err).__name__}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    os.environ.setdefault("VCL_ACTOR", "bench-week")
    t0, cpu0 = time.perf_counter(), time.process_time()
    work = make_workload(args.seed, args.slaves, args.days, args.classes, args.rate, args.failures)
    pool = sum(s[2] for s in work.slaves)
    print(f"Simulated week: {args.slaves} slaves ({pool} cores), {args.days} day(s) from {work.start:%a %Y-%m-%d},"
          f" dispatch every {args.tick} min, {len(work.lessons)} class bookings"
          f" ({sum(x.seats for x in work.lessons)} seats), {len(work.arrivals)} best-effort requests,"
          f" {len(work.failures)} slave failures (scenario failures), seed {args.seed}")
    tick = timedelta(minutes=args.tick)
    results = []
    for name in args.scenarios:
        results.append(run_scenario(name, work, tick, args.db_url))
        print(f"  {name}: {results[-1]['runtime_s']} s", flush=True)
    runtime, cpu = round(time.perf_counter() - t0, 1), round(time.process_time() - cpu0, 1)
    print()
    print(table(results))
    print(f"\nruntime {runtime} s ({cpu} s CPU), seed {args.seed}, {os.cpu_count()} CPUs,"
          f" database {'PostgreSQL' if args.db_url else 'SQLite'}")
    report = {
        "seed": args.seed, "slaves": args.slaves, "pool_cores": pool, "days": args.days, "tick_minutes": args.tick,
        "start": work.start.isoformat(sep=" "), "end": work.end.isoformat(sep=" "),
        "workload": {"class_bookings": len(work.lessons), "seats": sum(x.seats for x in work.lessons),
                     "seat_core_hours": sum(x.seats * x.cores * x.hours for x in work.lessons),
                     "classes_per_day": args.classes, "be_requests": len(work.arrivals), "be_peak_rate": args.rate,
                     "failures": len(work.failures), "failures_per_day": args.failures},
        "baseline": "class seats are best-effort requests at the class's start; every priority equal"
                    f" (priority_coefficient={BASELINE_COEFFICIENT}, register_as_slave=0): greedy first come,"
                    " first served with no reservations and no preemption",
        "database": "postgresql" if args.db_url else "sqlite",
        "cpus": os.cpu_count(), "runtime_s": runtime, "cpu_s": cpu,
        "scenarios": {r["scenario"]: {k: v for k, v in r.items() if k != "samples"} for r in results},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "week.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    (args.out / "week.png").write_bytes(plot(results, work.start, work.end,
                                             f"Pool use per dispatch, {args.slaves} slaves, {pool} cores,"
                                             f" seed {args.seed}"))
    print(f"wrote {args.out / 'week.json'} and {args.out / 'week.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
