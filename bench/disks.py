"""Keeping and restoring a persistent disk (issue 16) against a plain copy of the same file.

On one lab (master + 2 slaves + client), for each disk size (``--sizes``, default 64M and 1G) and fill (``sparse``:
the overlay holds only what the test guest writes at boot, over a virtual size of SIZE; ``full``: every cluster of
SIZE written, with ``qemu-io``), ``--rounds`` rounds of:

1. untimed: a best-effort VM that keeps its disk (``reserve.yml -e start=now -e keep_disk=true``, launched). Its
   domain is then powered off on the slave, its overlay grown to SIZE (``qemu-img resize``) and filled (``qemu-io
   -c 'write -P 0x5a 0 SIZE'``) for ``full``, and the domain started again;
2. ``floor keep``: the master copies the overlay from the slave with plain ``rsync`` over ssh (the time is taken
   on the master around the copy alone: no ssh set-up from the controller is counted);
3. ``keep``: wall time of ``stop.yml -e id=N`` with the disk kept (``vm__stop_shutdown_timeout=0``: the test
   guest ignores ACPI, so no shutdown wait is counted). It powers the domain off, measures the overlay (sha256 on
   the slave), reserves the quota, copies it, measures the copy (sha256 on the master), reads it with qemu-img,
   renames and records it; then the usual stop (domain, the master's network entries, the claim);
4. ``stop``: for reference, wall time of ``stop.yml`` of a VM that keeps nothing (the same stop without steps 3's
   keep);
5. ``floor restore``: the master copies the kept file to the slave with plain ``rsync``;
6. ``restore``: wall time of ``reserve.yml -e start=now -e keep_disk=true`` launching a VM from the kept disk (the
   disk copied to the slave and its sha256 checked there), and ``launch`` the same for a VM that keeps nothing,
   for reference: their difference is what the restore adds to a launch.

Every VM is stopped and the disk deleted (``disk.yml``) after each round (untimed). The lab database is a file;
new VMs go to slave1 only (slave2 drains), so restores always copy to the same slave.

Usage: .venv/bin/python bench/disks.py [--lab vclbench] [--rounds 3] [--sizes 64M,1G] [--reuse] [--keep]
                                       [--db sqlite:////tmp/vclbench-disks.sqlite]
Without --reuse it takes the lab down, brings it up and runs site.yml (not timed); without --keep it takes the
lab down at the end. Prints a table and writes bench/results/disks-<timestamp>.json (and a plot, with matplotlib).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.labbench import LabBench, stats  # noqa: E402
from vcl_lab.testing import Lab, lab_down, lab_up  # noqa: E402
from vcl_sched import disks, people, service  # noqa: E402

RESULTS = ROOT / "bench" / "results"
OWNER, USER, IMAGE = "cs101", "bench", "vcl-guest"
INSTANCE_DIR = "/var/lib/vcl/instances"
FLOOR = "/var/tmp/vcl-bench-floor.qcow2"
SIZE_RE = re.compile(r"^([0-9]+)([MG])$")


def size_bytes(text: str) -> int:
    m = SIZE_RE.match(text)
    if not m:
        raise SystemExit(f"--sizes: {text!r} is not N M or N G (64M, 1G)")
    return int(m.group(1)) * (1024 ** 2 if m.group(2) == "M" else 1024 ** 3)


class Bench(LabBench):
    def __init__(self, lab: Lab, url: str) -> None:
        super().__init__(lab, url)
        self.slave = sorted(lab.of_role("slave"))[0]
        self.addresses = lab.addresses

    def request(self, keep: bool) -> tuple[dict, float]:
        before = {r["id"] for r in service.list_instances(self.url, include_all=True)}
        seconds = self.play("reserve", "-e", f"owner={OWNER}", "-e", "cores=1", "-e", "ram_mb=128", "-e", "hours=1",
                            "-e", f"image={IMAGE}", "-e", f"user={USER}", "-e", f"keep_disk={str(keep).lower()}")
        [vm] = [r for r in service.list_instances(self.url) if r["id"] not in before]
        assert vm["state"] == "running" and vm["slave"] == self.slave, vm
        return vm, seconds

    def prepare(self, vm: dict, size: int, fill: str) -> str:
        overlay = f"{INSTANCE_DIR}/vcl-{vm['id']}.qcow2"
        self.ssh(self.slave, "virsh", "destroy", f"vcl-{vm['id']}")
        info = json.loads(self.ssh(self.slave, "qemu-img", "info", "--output=json", overlay))
        if info["virtual-size"] < size:
            self.ssh(self.slave, "qemu-img", "resize", "-q", overlay, str(size))
        if fill == "full":
            self.ssh(self.slave, "qemu-io", "-f", "qcow2", "-c", f"write -q -P 0x5a 0 {size}", overlay)
        self.ssh(self.slave, "virsh", "start", f"vcl-{vm['id']}")
        return overlay

    def round(self, size_text: str, fill: str) -> dict:
        size = size_bytes(size_text)
        row: dict = {"size": size_text, "fill": fill}
        vm, _ = self.request(keep=True)
        overlay = self.prepare(vm, size, fill)
        row["file_mb"] = round(int(self.ssh(self.slave, "stat", "-c", "%s", overlay)) / 1024 ** 2, 1)
        slave_addr = self.addresses[self.slave]
        self.ssh("master", "rm", "-f", FLOOR)
        row["floor_keep_s"] = self.timed_on("master", "rsync", "-e", "ssh -o BatchMode=yes",
                                            f"root@{slave_addr}:{overlay}", FLOOR)
        row["keep_s"] = self.play("stop", "-e", f"id={vm['id']}", "-e", "vm__stop_shutdown_timeout=0")
        [disk] = disks.list_disks(url=self.url)
        assert disk["generation"] >= 1, disk
        self.ssh(self.slave, "rm", "-f", FLOOR)
        row["floor_restore_s"] = self.timed_on("master", "rsync", "-e", "ssh -o BatchMode=yes", disk["path"],
                                               f"root@{slave_addr}:{FLOOR}")
        self.ssh(self.slave, "rm", "-f", FLOOR)
        self.ssh("master", "rm", "-f", FLOOR)
        restored, row["restore_s"] = self.request(keep=True)
        plain, row["launch_s"] = self.request(keep=False)
        row["restore_extra_s"] = row["restore_s"] - row["launch_s"]
        disks.set_keep(restored["id"], False, self.url)
        self.play("stop", "-e", f"id={restored['id']}")
        row["stop_s"] = self.play("stop", "-e", f"id={plain['id']}")
        self.play("disk", "-e", "disk_action=delete", "-e", f"disk={disk['id']}")
        return row



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", default="vclbench")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="64M,1G")
    parser.add_argument("--db", default="sqlite:////tmp/vclbench-disks.sqlite")
    parser.add_argument("--reuse", action="store_true", help="use the lab as it is (up, site.yml run on --db)")
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    args = parser.parse_args()
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for s in sizes:
        size_bytes(s)
    os.environ["VCL_DB_URL"] = args.db
    setup: dict = {}
    started = time.monotonic()
    if not args.reuse:
        lab_down(args.lab)
        if args.db.startswith("sqlite:///"):
            Path(args.db.removeprefix("sqlite:///")).unlink(missing_ok=True)
    t0 = time.monotonic()
    lab = lab_up(args.lab, slaves=2)  # harmless when it runs already (--reuse)
    setup["lab_up_s"] = round(time.monotonic() - t0, 1)
    rows: list[dict] = []
    try:
        bench = Bench(lab, args.db)
        if not args.reuse:
            setup["site_yml_s"] = round(bench.play("site"), 1)
        if not any(g["name"] == OWNER for g in service.list_groups(args.db)):
            service.add_group(OWNER, url=args.db)
        if not any(u["name"] == USER for u in people.list_users(args.db)):
            people.add_user(USER, url=args.db)
            people.add_members(OWNER, [USER], url=args.db)
        service.configure({"decline_limit": "1000", "disk_quota_user_gb": "100", "disk_quota_group_gb": "1000"},
                          args.db)
        for name in sorted(lab.of_role("slave")):
            service.set_slave_status(name, "up" if name == bench.slave else "draining", args.db)
        bench.request(keep=False)  # warm-up: the image into the slave's cache, caches of the controller
        for vm in service.list_instances(args.db):
            bench.play("stop", "-e", f"id={vm['id']}")
        for size in sizes:
            for fill in ("sparse", "full"):
                for rnd in range(1, args.rounds + 1):
                    row = bench.round(size, fill)
                    row["round"] = rnd
                    rows.append(row)
                    print(f"{size:>4} {fill:6} round {rnd}: file {row['file_mb']} MB, keep {row['keep_s']:.2f} s"
                          f" (floor {row['floor_keep_s']:.2f}), restore {row['restore_s']:.2f} s (launch"
                          f" {row['launch_s']:.2f}, floor {row['floor_restore_s']:.2f})", file=sys.stderr)
    finally:
        for name in sorted(lab.of_role("slave")):
            service.set_slave_status(name, "up", args.db)
        if not args.keep:
            setup["lab_down_rc"] = lab_down(args.lab).get("rc")
    report(args, rows, setup, time.monotonic() - started)
    return 0


KEYS = ("file_mb", "keep_s", "floor_keep_s", "stop_s", "restore_s", "launch_s", "restore_extra_s", "floor_restore_s")


def report(args, rows: list[dict], setup: dict, elapsed: float) -> None:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["size"], r["fill"]), []).append(r)
    summary = []
    head = ("size", "fill", "file MB", "keep s", "floor keep s", "stop s (no keep)", "restore s", "launch s (no disk)",
            "restore adds s", "floor restore s")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for (size, fill), rs in groups.items():
        s = {k: stats([r[k] for r in rs]) for k in KEYS}
        summary.append({"size": size, "fill": fill, "rounds": len(rs), **s})
        print(f"| {size} | {fill} | " + " | ".join(f"{s[k]['median']:.2f}" for k in KEYS) + " |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"disks-{stamp}.json"
    out.write_text(json.dumps({"args": vars(args), "setup": setup, "elapsed_s": round(elapsed, 1),
                               "load_1min": os.getloadavg()[0], "summary": summary, "rows": rows}, indent=2))
    print(f"\nwrote {out}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    labels = [f"{g['size']} {g['fill']}" for g in summary]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.2
    for n, (key, name) in enumerate((("keep_s", "keep (stop.yml)"), ("floor_keep_s", "floor: rsync slave→master"),
                                     ("restore_extra_s", "restore (added to a launch)"),
                                     ("floor_restore_s", "floor: rsync master→slave"))):
        ax.bar([i + n * width for i in range(len(summary))], [g[key]["median"] for g in summary], width, label=name)
    ax.set_xticks([i + 1.5 * width for i in range(len(summary))], labels)
    ax.set_ylabel("seconds (median)")
    ax.set_title("Keeping and restoring a persistent disk")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.png')}")


if __name__ == "__main__":
    raise SystemExit(main())
