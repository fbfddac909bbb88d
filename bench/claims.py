"""Committed claims per second: 8 writer processes on one embedded SQLite database.

Each claim is a whole `service.request()`: validate, place (SQL filter + weigh over all slaves),
compare-and-swap the slave's generation, take an address pair and a MAC, insert the instance and
its audit row, commit. Afterwards the database is checked: every claim committed exactly once
(zero lost), no slave over capacity, no MAC or address given twice.

Usage: .venv/bin/python bench/claims.py [--writers 8] [--claims 400] [--slaves 1000] [--url URL]
Prints a table and writes bench/results/claims.json. Target (issue 2): >= 1,000 claims/s, 0 lost.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select

from vcl_sched import db, service
from vcl_sched.models import AddressPair, Instance, Slave

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


def writer(url: str, n: int, barrier) -> tuple[list[float], Counter]:
    os.environ.update(VCL_DB_URL=url, VCL_NOW="2026-11-22 10:00", VCL_ACTOR="bench")
    service.get_settings(url)  # warm the process: imports, schema check, connection
    latencies, decisions = [], Counter()
    barrier.wait()
    for _ in range(n):
        t0 = time.perf_counter()
        result = service.request(owner="bench", cores=1, ram_mb=512, disk_gb=1, hours=1, platform_value=5,
                                 register_as_slave=1, member=1, explain=False, url=url)
        latencies.append(time.perf_counter() - t0)
        decisions[result["decision"]] += 1
    return latencies, decisions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--claims", type=int, default=400, help="claims per writer")
    parser.add_argument("--slaves", type=int, default=1000)
    parser.add_argument("--url", help="database URL (default: a fresh SQLite file)")
    args = parser.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="vcl-bench-")
    url = args.url or f"sqlite:///{tmp.name}/claims.sqlite"
    total = args.writers * args.claims
    setup(url, args.slaves, total + 100)

    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(args.writers + 1)
        with ctx.Pool(args.writers) as pool:
            pending = pool.starmap_async(writer, [(url, args.claims, barrier)] * args.writers)
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
    lost = total - committed
    report = {
        "backend": db.engine(url).dialect.name, "writers": args.writers, "claims": total, "slaves": args.slaves,
        "seconds": round(elapsed, 3), "claims_per_s": round(total / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "decisions": dict(decisions), "committed": committed, "lost": lost, "cores_used": used,
        "slaves_over_capacity": over, "distinct_macs": macs, "distinct_private_ips": ips,
        "cpus": os.cpu_count(),
    }
    ok = lost == 0 and used == total and over == 0 and macs == ips == total
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key.ljust(width)}  {value}")
    print(f"{'invariants'.ljust(width)}  {'OK' if ok else 'VIOLATED'}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "claims.json").write_text(json.dumps({**report, "invariants_ok": ok}, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
