"""What the lab benchmarks share (bench/disks.py, bench/lend.py): playbook runs timed from the controller, commands
timed on a lab host, and a series' median, min and max."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from vcl_lab.playbook import run_playbook
from vcl_lab.testing import Lab

ROOT = Path(__file__).resolve().parent.parent


class LabBench:
    """One lab and its database: ``play`` times a playbook (and stops the benchmark when it fails), ``ssh`` runs a
    command on a host, ``timed_on`` times a command on the host itself (no ssh set-up counted)."""

    def __init__(self, lab: Lab, url: str) -> None:
        self.lab, self.url = lab, url
        self.env = {"VCL_DB_URL": url, "HOME": os.environ.get("HOME", "/root")}
        self.last_recap = None  # the last play's recap (changed counts per host)

    def play(self, name: str, *extra: str) -> float:
        path = ROOT / "site.yml" if name == "site" else ROOT / "playbooks" / f"{name}.yml"
        t0 = time.monotonic()
        recap = run_playbook(self.lab.inventory, path, *extra, cwd=ROOT, env=self.env)
        seconds = time.monotonic() - t0
        self.last_recap = recap
        if not recap.ok:
            raise SystemExit(f"{name}.yml failed:\n{recap.stdout[-5000:]}\n{recap.stderr[-2000:]}")
        return seconds

    def ssh(self, host: str, *argv: str, timeout: float = 900) -> str:
        out = self.lab.ssh(host, *argv, timeout=timeout)
        if out.returncode != 0:
            raise SystemExit(f"{host}: {' '.join(argv)}: {out.stderr.strip()[-500:]}")
        return out.stdout

    def timed_on(self, host: str, *argv: str) -> float:
        """Seconds the command takes on ``host`` (timed there: the ssh set-up is not counted)."""
        script = 'import subprocess,sys,time\nt=time.monotonic()\nsubprocess.run(sys.argv[1:],check=True)\n' \
                 'print(time.monotonic()-t)'
        return float(self.ssh(host, "python3", "-c", script, *argv).strip().splitlines()[-1])


def stats(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2)}
