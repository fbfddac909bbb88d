"""Scheduler decisions per second at lab scale, side by side with the floor, in one run.

Placement: 10,000 best-effort demands on 1,000 slaves of mixed sizes. Each decision that places a
VM claims it in memory, and the oldest VMs end so the pool stays busy (~85 % of cores), as in a
dispatcher serving its queue. Timed per decision:
- ``index``   : PlacementIndex, what the dispatcher loop uses (policy spread);
- ``pipeline``: the reference filters + normalised weighers, with the per-filter explanation;
- ``floor``   : a bare first-fit scan over the same in-memory slaves (no policy, no explanation).
Reservations: 10,000 advance reservations admitted one by one through calendar.admit (moves
applied) over the booking horizon on the same pool, next to a floor that only checks the peak.

Usage: .venv/bin/python bench/scheduler.py [--slaves 1000] [--requests 10000] [--seed 1]
Prints a table, writes bench/results/scheduler.json. Targets (issue 2): index <= 2x floor per
decision, and >= 1,000 decisions/s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vcl_sched import calendar
from vcl_sched.placement import Demand, PlacementIndex, SlaveState, first_fit, place

RESULTS = Path(__file__).resolve().parent / "results"


def make_slaves(n: int, rng: random.Random) -> list[SlaveState]:
    sizes = [(4, 8192), (8, 16384), (16, 32768), (32, 65536)]
    slaves = []
    for i in range(n):
        cores, ram = rng.choice(sizes)
        slaves.append(SlaveState(i + 1, f"s{i + 1:04d}", cores, ram, 500))
    return slaves


def make_demands(n: int, rng: random.Random) -> list[Demand]:
    return [Demand(rng.choice([1, 1, 2, 2, 4, 8]), rng.choice([512, 1024, 2048, 4096]), rng.choice([2, 5, 10]))
            for _ in range(n)]


def summarise(name: str, times_ns: list[int], placed: int) -> dict:
    times = sorted(times_ns)
    total = sum(times) / 1e9
    return {"name": name, "decisions": len(times), "placed": placed, "decisions_per_s": round(len(times) / total),
            "p50_us": round(times[len(times) // 2] / 1000, 1),
            "p99_us": round(times[int(len(times) * 0.99) - 1] / 1000, 1),
            "mean_us": round(statistics.fmean(times) / 1000, 1)}


def run_placement(name: str, slaves: list[SlaveState], demands: list[Demand],
                  decide: Callable[[dict[int, SlaveState], Demand], SlaveState | None],
                  on_change: Callable[[SlaveState], None], live_cores: int) -> dict:
    state = {s.id: s for s in slaves}
    live: deque[tuple[int, Demand]] = deque()
    used = 0
    times: list[int] = []
    placed = 0
    clock = time.perf_counter_ns
    for demand in demands:
        while used + demand.cores > live_cores and live:  # keep the pool ~85 % busy: oldest VMs end
            sid, old = live.popleft()
            state[sid] = state[sid].released(old)
            on_change(state[sid])
            used -= old.cores
        t0 = clock()
        chosen = decide(state, demand)
        times.append(clock() - t0)
        if chosen is not None:
            placed += 1
            state[chosen.id] = state[chosen.id].claimed(demand)
            on_change(state[chosen.id])
            live.append((chosen.id, demand))
            used += demand.cores
    return summarise(name, times, placed)


def bench_placement(slaves: list[SlaveState], demands: list[Demand]) -> list[dict]:
    live_cores = int(sum(s.cores_total for s in slaves) * 0.85)
    results = []

    index = PlacementIndex(slaves, "spread")
    results.append(run_placement("index (spread)", slaves, demands, lambda st, d: index.place(d).slave,
                                 index.update, live_cores))
    ordered: list[SlaveState] = list(slaves)

    def floor(state: dict[int, SlaveState], demand: Demand) -> SlaveState | None:
        return first_fit(ordered, demand)

    def floor_update(s: SlaveState) -> None:
        ordered[s.id - 1] = s

    results.append(run_placement("floor (first fit)", slaves, demands, floor, floor_update, live_cores))
    results.append(run_placement("pipeline (spread, explained)", slaves, demands,
                                 lambda st, d: place(st.values(), d, "spread").slave, lambda s: None, live_cores))
    return results


def bench_reservations(capacity: int, n: int, rng: random.Random) -> list[dict]:
    policy = calendar.BookingPolicy()
    now = datetime(2026, 11, 22, 8, 0)
    requests = []
    for seq in range(1, n + 1):
        day = now.date() + timedelta(days=rng.randint(1, policy.horizon_days))
        hours = rng.randint(1, 4)
        start = datetime.combine(day, datetime.min.time()) + timedelta(hours=rng.randint(9, 17 - hours))
        cores = rng.choice([8, 16, 32, 64, 128, 256])
        requests.append(calendar.Booking(seq, cores, start, start + timedelta(hours=hours),
                                         10 + rng.uniform(-1.5, 1.5), rng.randint(0, 1), seq=seq))

    results = []
    for name, admit in (("admit (moves, all-or-none)", True), ("floor (peak check only)", False)):
        by_day: dict = {}
        times: list[int] = []
        accepted = moved = 0
        for req in requests:
            day = by_day.setdefault(req.start.date(), {})
            t0 = time.perf_counter_ns()
            if admit:
                adm = calendar.admit(req, list(day.values()), capacity, now, policy)
            else:
                ok = calendar.peak_cores(day.values(), req.start, req.end) + req.cores <= capacity
                adm = calendar.Admission(ok, req.start if ok else None, req.end if ok else None, (), "")
            times.append(time.perf_counter_ns() - t0)
            if adm.accepted:
                accepted += 1
                assert adm.start is not None and adm.end is not None
                day[req.id] = calendar.Booking(req.id, req.cores, adm.start, adm.end, req.priority,
                                               req.register_as_slave, req.seq)
                for mv in adm.moves:
                    moved += 1
                    b = day[mv.id]
                    day[mv.id] = calendar.Booking(b.id, b.cores, mv.new_start, mv.new_end, b.priority,
                                                  b.register_as_slave, b.seq)
        row = summarise(name, times, accepted)
        row["moves"] = moved
        row["bookings_held"] = sum(len(d) for d in by_day.values())
        results.append(row)
    return results


def table(rows: list[dict], columns: list[str]) -> str:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slaves", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    slaves = make_slaves(args.slaves, rng)
    demands = make_demands(args.requests, rng)

    placement_rows = bench_placement(slaves, demands)
    capacity = sum(s.cores_total for s in slaves)
    reservation_rows = bench_reservations(capacity, args.requests, rng)

    index, floor = placement_rows[0], placement_rows[1]
    ratio = round(index["mean_us"] / floor["mean_us"], 2)
    cols = ["name", "decisions", "placed", "decisions_per_s", "mean_us", "p50_us", "p99_us"]
    print(f"Placement: {args.requests} demands on {args.slaves} slaves ({capacity} cores), pool kept ~85 % busy")
    print(table(placement_rows, cols))
    print(f"index / floor mean decision time: {ratio}x (target <= 2x)")
    print(f"\nReservations: {args.requests} admissions over a {calendar.BookingPolicy().horizon_days}-day horizon,"
          f" pool of {capacity} cores")
    print(table(reservation_rows, [*cols, "moves", "bookings_held"]))
    report = {"slaves": args.slaves, "requests": args.requests, "seed": args.seed, "pool_cores": capacity,
              "placement": placement_rows, "index_over_floor": ratio, "reservations": reservation_rows,
              "cpus": os.cpu_count(), "targets_met": {
                  "index_within_2x_floor": ratio <= 2.0,
                  "index_at_least_1000_per_s": index["decisions_per_s"] >= 1000,
                  "admit_at_least_1000_per_s": reservation_rows[0]["decisions_per_s"] >= 1000}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scheduler.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\ntargets: {report['targets_met']}  (bench/results/scheduler.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
