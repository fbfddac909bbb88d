"""site.yml on a fresh simulated lab (master + 2 slaves): the first run, then the second (changed=0).

Brings up its own lab (`vclbench` unless --lab), wipes nothing of anyone else's, runs
`ansible-playbook site.yml` twice against a fresh lab database, and takes the lab down again.

Usage: .venv/bin/python bench/site.py [--lab vclbench] [--runs 2] [--keep]
Prints a table and writes bench/results/site.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vcl_lab.playbook import run_playbook
from vcl_lab.testing import REPO, lab_down, lab_up

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", default="vclbench")
    parser.add_argument("--runs", type=int, default=2, help="site.yml runs (the first converges, the rest re-check)")
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    args = parser.parse_args()

    lab_down(args.lab)
    started = time.monotonic()
    lab = lab_up(args.lab, slaves=2)
    up_seconds = time.monotonic() - started
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="vcl-bench-site-") as tmp:
            env = {"VCL_DB_URL": f"sqlite:///{tmp}/vcl.sqlite"}
            for run in range(1, args.runs + 1):
                t0 = time.monotonic()
                recap = run_playbook(lab.inventory, REPO / "site.yml", cwd=REPO, env=env)
                seconds = time.monotonic() - t0
                rows.append(
                    {
                        "run": run,
                        "seconds": round(seconds, 1),
                        "ok": recap.ok,
                        "changed": recap.changed,
                        "per_host": {h: {"ok": c.ok, "changed": c.changed} for h, c in recap.hosts.items()},
                    }
                )
                if not recap.ok:
                    print(recap.stdout[-4000:], file=sys.stderr)
                    break
    finally:
        if not args.keep:
            lab_down(args.lab)

    print(f"lab {args.lab}: master + 2 slaves up in {up_seconds:.1f} s (not counted)")
    print(f"{'run':>3}  {'seconds':>8}  {'ok':>3}  {'changed':>7}  per host (changed)")
    for r in rows:
        hosts = ", ".join(f"{h}={c['changed']}" for h, c in r["per_host"].items())
        print(f"{r['run']:>3}  {r['seconds']:>8.1f}  {'yes' if r['ok'] else 'NO':>3}  {r['changed']:>7}  {hosts}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "site.json").write_text(json.dumps({"lab_up_seconds": round(up_seconds, 1), "runs": rows}, indent=2))
    return 0 if rows and all(r["ok"] for r in rows) and rows[-1]["changed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
