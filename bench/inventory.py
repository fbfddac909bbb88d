"""`ansible-inventory --list` over 10,000 slaves: the vcl_slaves plugin on SQLite next to an INI file.

One run builds a lab database with N slaves (90 % up, 5 % down, 5 % draining) and an INI file with
the same hosts, the same groups (vcl_registered and vcl_status_*) and the same host variables, then
times the real `.venv/bin/ansible-inventory -i SOURCE --list` (a whole process, as an admin runs it,
from the project directory so ansible.cfg applies), interleaved, several repetitions, median:
- ``ini``             : the static INI file (the floor);
- ``plugin``          : vcl_slaves reading the database (the target: <= 2x the INI time);
- ``plugin_cached``   : vcl_slaves served from its jsonfile cache (cache: true, a warm cache);
- ``plugin_constructed``: vcl_slaves with one compose, one groups and one keyed_groups entry;
- ``ini_constructed``  : the INI file followed by ansible.builtin.constructed with the same three
  entries (what the constructed features cost in ansible itself: ansible-core 2.19 compiles each
  expression again for every host).
It also checks that the plugin and the INI file produce the same inventory (groups and hostvars).

Usage: .venv/bin/python bench/inventory.py [--slaves 10000] [--repeat 5] [--constructed-repeat 3]
Prints a table, writes bench/results/inventory.json. Target (issue 4): plugin <= 2x ini (median).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vcl_sched import db, service
from vcl_sched.inventory import HOSTVARS, REGISTERED_GROUP, STATUS_GROUPS, fetch_slaves, plain, status_group
from vcl_sched.models import Slave

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
ANSIBLE_INVENTORY = ROOT / ".venv" / "bin" / "ansible-inventory"


def make_database(url: str, n: int) -> None:
    service.init(url)
    joined = datetime(2026, 11, 22, 10)

    def bulk(session):
        rows = []
        for i in range(n):
            status = "down" if i % 20 == 7 else "draining" if i % 20 == 13 else "up"
            cores = (4, 8, 16, 32)[i % 4]
            rows.append(
                {
                    "name": f"s{i:05d}",
                    "address": f"10.{50 + i // 65536}.{i // 256 % 256}.{i % 256}",
                    "cores_total": cores,
                    "cores_used": i % cores,
                    "ram_mb_total": cores * 2048,
                    "ram_mb_used": (i % cores) * 512,
                    "disk_gb_total": 500,
                    "disk_gb_used": i % 100,
                    "status": status,
                    "generation": 0,
                    "joined_at": joined,
                    "updated_at": joined,
                }
            )
        session.execute(Slave.__table__.insert(), rows)

    db.write(bulk, url)


def ini_value(value: object) -> str:
    # Quoted strings stay strings in the INI plugin (it literal_evals values); numbers stay numbers.
    return json.dumps(value) if isinstance(value, str) else str(value)


def write_ini(path: Path, slaves: list[dict]) -> None:
    lines = [f"[{REGISTERED_GROUP}]"]
    lines += [" ".join([s["name"], *(f"{k}={ini_value(s['vars'][k])}" for k in HOSTVARS)]) for s in slaves]
    for group in STATUS_GROUPS:
        lines.append(f"\n[{group}]")
        lines += [s["name"] for s in slaves if status_group(s["vars"]["vcl_status"]) == group]
    path.write_text("\n".join(lines) + "\n")


def run_inventory(sources: list[Path], env: dict[str, str]) -> tuple[float, str]:
    argv = [str(ANSIBLE_INVENTORY), *(arg for source in sources for arg in ("-i", str(source))), "--list"]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"ansible-inventory {argv[1:]} failed ({proc.returncode}):\n{proc.stderr}")
    return elapsed, proc.stdout


def comparable(listing: str) -> dict:
    data = plain(json.loads(listing))
    groups = {name: sorted(body.get("hosts", [])) for name, body in data.items() if name != "_meta"}
    return {"groups": {k: v for k, v in groups.items() if v}, "hostvars": data["_meta"]["hostvars"]}


CONSTRUCTED = (
    "compose:\n  vcl_ram_gb_free: vcl_ram_mb_free // 1024\n"
    "groups:\n  vcl_has_room: vcl_cores_free >= 4\n"
    "keyed_groups:\n  - key: vcl_cores_total | string\n    prefix: cores\n"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slaves", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--constructed-repeat", type=int, default=3, help="runs of the (slow) constructed rows")
    args = parser.parse_args()

    env = {**os.environ, "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "true", "ANSIBLE_NOCOLOR": "1"}
    env.pop("VCL_DB_URL", None)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="vcl-bench-inv-") as tmp_s:
        tmp = Path(tmp_s)
        url = f"sqlite:///{tmp}/vcl.sqlite"
        t0 = time.perf_counter()
        make_database(url, args.slaves)
        slaves = fetch_slaves(url)
        setup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        fetch_slaves(url)
        fetch_s = time.perf_counter() - t0

        ini = tmp / "ini" / "hosts.ini"
        ini.parent.mkdir()
        write_ini(ini, slaves)
        constructed = tmp / "constructed" / "constructed.yml"
        constructed.parent.mkdir()
        constructed.write_text(f"plugin: ansible.builtin.constructed\n{CONSTRUCTED}")
        configs = {
            "plugin": f"db_url: {url}\n",
            "plugin_cached": f"db_url: {url}\ncache: true\ncache_plugin: ansible.builtin.jsonfile\n"
            f"cache_connection: {tmp}/cache\n",
            "plugin_constructed": f"db_url: {url}\n{CONSTRUCTED}",
        }
        sources = {"ini": [ini]}
        for name, body in configs.items():
            path = tmp / name / "vcl_slaves.yml"
            path.parent.mkdir()
            path.write_text(f"plugin: vcl.lab.vcl_slaves\n{body}")
            sources[name] = [path]
        sources["ini_constructed"] = [ini, constructed]
        repeats = {name: args.constructed_repeat if "constructed" in name else args.repeat for name in sources}

        # Warm-up: page cache, .pyc files, and the jsonfile cache for plugin_cached.
        outputs = {name: run_inventory(paths, env)[1] for name, paths in sources.items()}
        same = comparable(outputs["plugin"]) == comparable(outputs["ini"])
        same_constructed = comparable(outputs["plugin_constructed"]) == comparable(outputs["ini_constructed"])
        times: dict[str, list[float]] = {name: [] for name in sources}
        for i in range(max(repeats.values())):
            for name, paths in sources.items():  # interleaved: a busy moment hits every source alike
                if i < repeats[name]:
                    times[name].append(run_inventory(paths, env)[0])

    floor = statistics.median(times["ini"])
    rows = [
        {
            "source": name,
            "runs": len(ts),
            "median_s": round(statistics.median(ts), 3),
            "min_s": round(min(ts), 3),
            "max_s": round(max(ts), 3),
            "over_ini": round(statistics.median(ts) / floor, 2),
        }
        for name, ts in times.items()
    ]
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    load_after = os.getloadavg()[0]
    print(
        f"ansible-inventory --list, {args.slaves} slaves x {len(HOSTVARS)} host variables, median of the runs;"
        f" cpus: {os.cpu_count()}, load average {load_before:.1f} before, {load_after:.1f} after"
    )
    print("  ".join(c.rjust(width[c]) if c != "source" else c.ljust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).rjust(width[c]) if c != "source" else r[c].ljust(width[c]) for c in cols))
    ratio = rows[1]["over_ini"]
    constructed_ratio = round(
        statistics.median(times["plugin_constructed"]) / statistics.median(times["ini_constructed"]), 2
    )
    print(f"plugin / ini: {ratio}x (target <= 2x); same groups and hostvars as the INI file: {same}")
    print(f"plugin_constructed / ini_constructed: {constructed_ratio}x; same inventory: {same_constructed}")
    print(f"fetch_slaves alone: {fetch_s * 1000:.0f} ms; setup (database + INI): {setup_s:.1f} s")
    report = {
        "slaves": args.slaves,
        "hostvars_per_host": len(HOSTVARS),
        "cpus": os.cpu_count(),
        "load_average": [round(load_before, 2), round(load_after, 2)],
        "runs": rows,
        "plugin_over_ini": ratio,
        "plugin_constructed_over_ini_constructed": constructed_ratio,
        "same_inventory_as_ini": same,
        "same_constructed_inventory_as_ini_constructed": same_constructed,
        "fetch_slaves_ms": round(fetch_s * 1000, 1),
        "times_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "targets_met": {"plugin_within_2x_ini": ratio <= 2.0, "same_inventory_as_ini": same},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "inventory.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"targets: {report['targets_met']}  (bench/results/inventory.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
