"""Lending a PC (issue 15): how long a client takes to join the pool, and to drain one VM when its owner takes it back.

On one lab (master + 2 slaves + client):

1. untimed: site.yml, and LENDER's request with register_as_slave=1, served on slave1 (``reserve.yml``);
2. ``enrol (first)``: wall time of ``lend.yml -e lend_host=client`` on a client that was never a slave: the
   roles bridge its uplink, configure libvirtd, define the VMs' traffic filter, give it the master's key and
   NTP, and the PC is registered with its facts. Test hosts cannot download, so the packages come from the lab's
   image in every run: the time a real PC spends downloading libvirt and QEMU is not in these figures;
3. then ``--rounds`` rounds for each guest RAM of ``--ram`` (MB, default 128,256,512,1024):
   - ``enrol (again)``: wall time of ``lend.yml`` on the client that was lent before (the roles find it done);
   - untimed: a best-effort VM of that RAM lands on the client (the lab's slaves take none meanwhile). It runs
     the test guest with ``vcl.fill=--fill`` (default 40): before it answers it writes that share of its RAM with
     non-zero data, so its saved memory grows with its RAM as a busy guest's would (an idle guest's saved memory
     is only the pages it touched). Its marker and disk note are read through the master's DNAT;
   - ``drain``: wall time of ``reclaim.yml -e lend_host=client``: the VM's memory saved on the PC, the saved
     memory, overlay and serial log copied through the master to slave1 (sizes and sha256 checked), restored
     there, recorded; the PC checked clean and taken out of the pool. The marker and disk note are read again:
     the same MAC and the same boot count (asserted);
   - ``floor``: the same steps as direct commands on the hosts, timed there (no ssh set-up counted): ``virsh
     save`` of the VM on slave1, ``rsync`` of the saved file slave1 → master and master → slave1 (standing for
     PC → master → slave), ``virsh restore`` on slave1; ``saved MB`` is the size of that file;
   - untimed: the VM is stopped.

Usage: .venv/bin/python bench/lend.py [--lab vclbench] [--rounds 2] [--ram 128,256,512,1024] [--fill 40] [--reuse]
                                      [--keep]
                                      [--db sqlite:////tmp/vclbench-lend.sqlite]
Without --reuse it takes the lab down, brings it up and runs site.yml (not timed); without --keep it takes the
lab down at the end. Prints a table and writes bench/results/lend-<timestamp>.json (and a plot, with matplotlib).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.labbench import LabBench, stats  # noqa: E402
from vcl_lab.testing import Lab, lab_down, lab_up  # noqa: E402
from vcl_sched import lending, people, service  # noqa: E402

RESULTS = ROOT / "bench" / "results"
OWNER, LENDER, USER, IMAGE, PC = "cs101", "lena", "bench", "vcl-guest", "client"
FILLED = "vcl-guest-filled"  # the test guest writing --fill % of its RAM before it answers (vcl.fill=)
FLOOR = "/var/tmp/vcl-bench-lend.save"


class Bench(LabBench):
    def __init__(self, lab: Lab, url: str) -> None:
        super().__init__(lab, url)
        self.slaves = sorted(lab.of_role("slave"))
        self.target = self.slaves[0]

    def only_up(self, names: list[str]) -> None:
        for name in self.slaves:
            service.set_slave_status(name, "up" if name in names else "draining", self.url)

    def request(self, ram_mb: int, *extra: str, user: str = USER, image: str = IMAGE) -> dict:
        before = {r["id"] for r in service.list_instances(self.url, include_all=True)}
        self.play("reserve", "-e", f"owner={OWNER}", "-e", "cores=1", "-e", f"ram_mb={ram_mb}", "-e", "hours=2",
                  "-e", f"image={image}", "-e", f"user={user}", *extra)
        [vm] = [r for r in service.list_instances(self.url) if r["id"] not in before]
        assert vm["state"] == "running", vm
        return vm

    def enrol(self, *extra: str) -> float:
        return self.play("lend", "-e", f"lend_host={PC}", "-e", f"lend_user={LENDER}", *extra)

    def round(self, ram_mb: int) -> dict:
        row: dict = {"ram_mb": ram_mb, "enrol_again_s": self.enrol()}
        # A second enrolment changes nothing on the PC: its one change is the lending's record (a new window).
        row["enrol_again_changed"] = self.last_recap.hosts[PC].changed
        self.only_up([])
        vm = self.request(ram_mb, image=FILLED)
        assert vm["slave"] == PC, vm
        marker = self.lab.marker(vm["public_ip"], timeout=900)  # after the guest filled its RAM
        note = self.lab.disk_note(vm["public_ip"])
        self.only_up([self.target])
        row["drain_s"] = self.play("reclaim", "-e", f"lend_host={PC}")
        moved = next(r for r in service.list_instances(self.url) if r["id"] == vm["id"])
        assert moved["slave"] == self.target and moved["state"] == "running", moved
        assert self.lab.marker(vm["public_ip"]) == marker and self.lab.disk_note(vm["public_ip"]) == note
        domain = f"vcl-{vm['id']}"
        row["floor_save_s"] = self.timed_on(self.target, "virsh", "-q", "save", domain, FLOOR)
        row["saved_mb"] = round(int(self.ssh(self.target, "stat", "-c", "%s", FLOOR)) / 1024 ** 2, 1)
        address = self.lab.addresses[self.target]
        row["floor_copy_s"] = self.timed_on("master", "rsync", "--sparse", "-e", "ssh -o BatchMode=yes",
                                            f"root@{address}:{FLOOR}", FLOOR)
        row["floor_copy_s"] += self.timed_on("master", "rsync", "--sparse", "-e", "ssh -o BatchMode=yes", FLOOR,
                                             f"root@{address}:{FLOOR}.2")
        row["floor_restore_s"] = self.timed_on(self.target, "virsh", "-q", "restore", FLOOR)
        row["floor_s"] = row["floor_save_s"] + row["floor_copy_s"] + row["floor_restore_s"]
        row["drain_over_floor"] = row["drain_s"] / row["floor_s"]
        self.ssh(self.target, "rm", "-f", FLOOR, f"{FLOOR}.2")
        self.ssh("master", "rm", "-f", FLOOR)
        self.play("stop", "-e", f"id={vm['id']}")
        return row



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", default="vclbench")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ram", default="128,256,512,1024")
    parser.add_argument("--fill", type=int, default=40, help="percent of its RAM the guest fills (0..45)")
    parser.add_argument("--db", default="sqlite:////tmp/vclbench-lend.sqlite")
    parser.add_argument("--reuse", action="store_true", help="use the lab as it is (up, site.yml run on --db)")
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    args = parser.parse_args()
    rams = [int(r) for r in args.ram.split(",") if r.strip()]
    os.environ["VCL_DB_URL"] = args.db
    setup: dict = {}
    started = time.monotonic()
    if not args.reuse:
        lab_down(args.lab)
        if args.db.startswith("sqlite:///"):
            Path(args.db.removeprefix("sqlite:///")).unlink(missing_ok=True)
    lab = lab_up(args.lab, slaves=2)
    rows: list[dict] = []
    try:
        bench = Bench(lab, args.db)
        if not args.reuse:
            setup["site_yml_s"] = round(bench.play("site"), 1)
        if not any(g["name"] == OWNER for g in service.list_groups(args.db)):
            service.add_group(OWNER, url=args.db)
        known = {u["name"] for u in people.list_users(args.db)}
        for name in (LENDER, USER):
            if name not in known:
                people.add_user(name, url=args.db)
                people.add_members(OWNER, [name], url=args.db)
        [guest] = [i for i in service.list_images(args.db) if i["name"] == IMAGE]
        if not any(i["name"] == FILLED for i in service.list_images(args.db)):
            service.add_image(FILLED, guest["disk_file"], kernel=guest["kernel"], ramdisk=guest["ramdisk"],
                              cmdline=f"{guest['cmdline']} vcl.fill={args.fill}", ram_mb=128, disk_gb=1, url=args.db)
        bench.only_up([bench.target])
        served = bench.request(128, "-e", "register_as_slave=1", user=LENDER)
        [owed] = [o for o in lending.owed(args.db) if o["id"] == served["id"]]
        first = bench.enrol("-e", f"lend_instance={owed['id']}")
        setup["enrol_first_s"] = round(first, 2)
        print(f"enrol (first): {first:.2f} s", file=sys.stderr)
        bench.only_up([bench.target])
        bench.play("reclaim", "-e", f"lend_host={PC}")  # untimed: empty; the rounds start from a returned PC
        for ram in rams:
            for rnd in range(1, args.rounds + 1):
                row = bench.round(ram)
                row["round"] = rnd
                rows.append(row)
                print(f"{ram:>5} MB round {rnd}: enrol again {row['enrol_again_s']:.2f} s (changed on the PC:"
                      f" {row['enrol_again_changed']}), drain {row['drain_s']:.2f}"
                      f" s (floor {row['floor_s']:.2f} s, saved {row['saved_mb']} MB)", file=sys.stderr)
        bench.play("stop", "-e", f"id={served['id']}")
    finally:
        for name in sorted(lab.of_role("slave")):
            service.set_slave_status(name, "up", args.db)
        if not args.keep:
            setup["lab_down_rc"] = lab_down(args.lab).get("rc")
    report(args, rows, setup, time.monotonic() - started)
    return 0


KEYS = ("saved_mb", "enrol_again_s", "drain_s", "floor_save_s", "floor_copy_s", "floor_restore_s", "floor_s",
        "drain_over_floor")


def report(args, rows: list[dict], setup: dict, elapsed: float) -> None:
    groups: dict[int, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["ram_mb"], []).append(r)
    summary = []
    head = ("guest RAM MB", "saved MB", "enrol again s", "drain s", "floor save s", "floor copies s",
            "floor restore s", "floor s", "drain / floor")
    print(f"enrol (first, never a slave before): {setup.get('enrol_first_s', float('nan')):.2f} s")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for ram, rs in groups.items():
        s = {k: stats([r[k] for r in rs]) for k in KEYS}
        summary.append({"ram_mb": ram, "rounds": len(rs), **s})
        print(f"| {ram} | " + " | ".join(f"{s[k]['median']:.2f}" for k in KEYS) + " |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"lend-{stamp}.json"
    out.write_text(json.dumps({"args": vars(args), "setup": setup, "elapsed_s": round(elapsed, 1),
                               "load_1min": os.getloadavg()[0], "summary": summary, "rows": rows}, indent=2))
    print(f"\nwrote {out}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    rams = [g["ram_mb"] for g in summary]
    ax.plot(rams, [g["drain_s"]["median"] for g in summary], marker="o", label="drain (reclaim.yml, 1 VM)")
    ax.plot(rams, [g["floor_s"]["median"] for g in summary], marker="o", label="floor: save + copies + restore")
    ax.set_xlabel("guest RAM (MB)")
    ax.set_ylabel("seconds (median)")
    ax.set_title("Draining a lent PC: one VM moved")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.png')}")


if __name__ == "__main__":
    raise SystemExit(main())
