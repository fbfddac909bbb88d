#!/usr/bin/env python3
"""Run the hostile-input matrix of issue 12 (tests/hostile_cases.py) for real and print it as a markdown table;
every case's outcome goes to bench/results/hostile_matrix.json.

    .venv/bin/python scripts/hostile_matrix.py [--quick]   # --quick: leave out the ansible-playbook runs
Exit 1 when a case failed (the failures are listed under the table)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import hostile_cases as hc  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the in-process `vcl` cases")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "hostile_matrix.json"))
    args = parser.parse_args()
    started = time.monotonic()
    outcomes: list[hc.Outcome] = []
    with tempfile.TemporaryDirectory(prefix="vcl-hostile-") as tmp:
        lab = hc.make_lab(Path(tmp) / "cli")
        outcomes += hc.run_cli(lab, hc.cli_cases(lab, process=False))
        if not args.quick:
            run_lab = hc.make_lab(Path(tmp) / "run")
            outcomes += hc.run_cli(run_lab, hc.cli_cases(run_lab, process=True), workers=3)
            mod_lab = hc.make_lab(Path(tmp) / "mod", instances=14)
            outcomes += hc.run_modules(mod_lab, hc.module_cases())
            outcomes += hc.run_inventory(hc.make_lab(Path(tmp) / "inv"))
    print(hc.table(outcomes))
    bad = hc.failures(outcomes)
    print(f"\n{len(outcomes)} cases, {len(bad)} failed, {time.monotonic() - started:.0f} s")
    for line in bad:
        print("- " + line)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cases": [o.to_json() for o in outcomes], "table": hc.table(outcomes),
                               "failed": len(bad)}, indent=1, ensure_ascii=True) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
