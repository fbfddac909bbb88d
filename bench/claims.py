"""Committed claims per second: 8 writer processes on one embedded SQLite database.

A claim is one write transaction: compare-and-swap the slave's generation for its cores, RAM and
disk, take an address pair and a MAC, insert the instance and its audit row, commit. Two modes, in
one run, on fresh databases:
- ``claim``  : the dispatcher's path: each writer decides in memory (PlacementIndex, spread, ties
  broken at random among all equally good slaves) and commits with ``service.commit_claim``; a
  lost race rebuilds the writer's view from the database and decides again.
- ``request``: the `vcl request` path: ``service.request`` reads a snapshot, decides in SQL,
  claims; a lost race decides again.
Afterwards each database is checked: every claim committed exactly once (zero lost), no slave
over capacity, no MAC or address given twice.

Usage: .venv/bin/python bench/claims.py [--writers 8] [--claims 400] [--slaves 1000] [--url URL]
Prints a table and writes bench/results/claims.json. Target (issue 2): >= 1,000 claims/s, 0 lost.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select

from vcl_sched import db, service
from vcl_sched.models import AddressPair, Group, Instance, Slave
from vcl_sched.placement import Demand, PlacementIndex

RESULTS = Path(__file__).resolve().parent / "results"


def setup(url: str, slaves: int, pairs: int) -> None:
    service.init(url)
    last = 16 + pairs
    service.configure({"private_pool": f"10.100.0.16-10.100.{last // 256}.{last % 256}",
                       "public_pool": f"10.200.0.16-10.200.{last // 256}.{last % 256}"}, url)
    service.add_group("bench", url=url)

    def bulk(session):
        from datetime import datetime

        now = datetime(2026, 11, 22, 10)
        session.execute(Slave.__table__.insert(), [
            {"name": f"s{i:04d}", "address": f"10.{50 + i // 65536}.{i // 256 % 256}.{i % 256}", "cores_total": 64,
             "cores_used": 0, "ram_mb_total": 262144, "ram_mb_used": 0, "disk_gb_total": 4000, "disk_gb_used": 0,
             "status": "up", "generation": 0, "joined_at": now, "updated_at": now} for i in range(slaves)])

    db.write(bulk, url)


def writer(url: str, n: int, barrier, mode: str) -> tuple[list[float], Counter]:
    os.environ.update(VCL_DB_URL=url, VCL_NOW="2026-11-22 10:00", VCL_ACTOR="bench")
    settings = service.get_settings(url)  # warm the process: imports, schema check, connection
    latencies, decisions = [], Counter()
    demand = Demand(1, 512, 1)
    with db.read(url) as s:
        index = PlacementIndex(service.slave_states(s), settings.placement_policy)
        group_id = s.scalar(select(Group.id).where(Group.name == "bench"))
    rng = random.Random()
    ends = datetime(2026, 11, 22, 11)
    barrier.wait()
    for _ in range(n):
        t0 = time.perf_counter()
        if mode == "request":
            result = service.request(owner="bench", cores=1, ram_mb=512, disk_gb=1, hours=1, platform_value=5,
                                     register_as_slave=1, member=1, explain=False, url=url)
        else:
            while True:
                slave = index.place(demand, rng, ties=len(index)).slave
                assert slave is not None
                try:
                    result = service.commit_claim(service.new_claim_plan(
                        slave, demand, group_id=group_id, priority=8.5, ends=ends), url)
                    index.update(slave.claimed(demand))
                    break
                except service.StaleClaim:
                    decisions["lost races (retried)"] += 1
                    with db.read(url) as s:  # this view is stale: rebuild it in one read
                        index = PlacementIndex(service.slave_states(s), settings.placement_policy)
        latencies.append(time.perf_counter() - t0)
        decisions[result["decision"]] += 1
    return latencies, decisions


def run(mode: str, args: argparse.Namespace, url: str) -> dict:
    total = args.writers * args.claims
    setup(url, args.slaves, total + 100)
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(args.writers + 1)
        with ctx.Pool(args.writers) as pool:
            pending = pool.starmap_async(writer, [(url, args.claims, barrier, mode)] * args.writers)
            barrier.wait()
            t0 = time.perf_counter()
            results = pending.get()
            elapsed = time.perf_counter() - t0

    latencies = sorted(x for lat, _ in results for x in lat)
    decisions = sum((c for _, c in results), Counter())
    with db.read(url) as s:
        committed = s.scalar(select(func.count()).select_from(Instance).where(Instance.slave_id.is_not(None)))
        used = s.scalar(select(func.sum(Slave.cores_used)))
        over = s.scalar(select(func.count()).select_from(Slave).where(Slave.cores_used > Slave.cores_total))
        macs = s.scalar(select(func.count(func.distinct(AddressPair.mac))).where(AddressPair.mac.is_not(None)))
        ips = s.scalar(select(func.count(func.distinct(Instance.private_ip))).where(Instance.private_ip.is_not(None)))
    report = {
        "mode": mode, "backend": db.engine(url).dialect.name, "writers": args.writers, "claims": total,
        "slaves": args.slaves, "seconds": round(elapsed, 3), "claims_per_s": round(total / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "lost_races_retried": decisions.pop("lost races (retried)", 0), "committed": committed,
        "lost": total - committed, "cores_used": used, "slaves_over_capacity": over, "distinct_macs": macs,
        "distinct_private_ips": ips,
    }
    report["invariants_ok"] = (report["lost"] == 0 and used == total and over == 0 and macs == ips == total)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--claims", type=int, default=400, help="claims per writer")
    parser.add_argument("--slaves", type=int, default=1000)
    parser.add_argument("--modes", default="claim,request")
    parser.add_argument("--url", help="database URL (default: a fresh SQLite file per mode)")
    args = parser.parse_args()

    reports = []
    with tempfile.TemporaryDirectory(prefix="vcl-bench-") as tmp:
        for mode in args.modes.split(","):
            reports.append(run(mode, args, args.url or f"sqlite:///{tmp}/{mode}.sqlite"))
    keys = list(reports[0])
    width = max(len(k) for k in keys)
    print("  ".join([" " * width, *(f"{r['mode']:>14}" for r in reports)]))
    for key in keys[1:]:
        print("  ".join([key.ljust(width), *(f"{r[key]!s:>14}" for r in reports)]))
    print(f"cpus: {os.cpu_count()}   target: >= 1000 claims/s with 0 lost")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "claims.json").write_text(json.dumps({"cpus": os.cpu_count(), "runs": reports}, indent=2) + "\n")
    return 0 if all(r["invariants_ok"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
