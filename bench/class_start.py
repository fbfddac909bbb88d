"""A class ready at the bell (issue 13): the start of a class of N seats against N single launches.

On one lab (master + 2 slaves + client), a teacher's group of N students books a session of N seats of
1 core / 128 MB with prelaunch. Measured:

- ``single``: ``--singles`` times, one VM launched alone: ``playbooks/reserve.yml -e reserve_no_launch=true``
  (the claim, untimed), then from the start of ``ansible-playbook playbooks/launch.yml -e id=N`` to the moment the
  client machine reads the guest's marker (``vcl-guest ready PRIVATE MAC``) through the VM's public address on
  the master (DNAT); stopped afterwards (untimed). The median is "the time of one launch".
- ``class``: from the start of ``ansible-playbook playbooks/dispatch.yml`` at the window's start minus
  ``prelaunch_lead_minutes`` (VCL_NOW) to the moment the client has read the markers of all N seats. The
  dispatch run starts the reservation (N pending seats, handed to the members) and launches them in lanes (two
  per slave by default), side by side. ``--classes`` sessions (one a day, each stopped at its end before the
  next), the median is "the class start"; each one's ratio is printed too.

Where the CPU went, for each timed run: ``controller_cpu_s`` (ansible-playbook and its workers) and
``machine_busy`` (the share of the machine's CPUs anything used meanwhile: this lab's machines and guests,
other labs, the controller). On a small machine the class start is CPU-bound: its N launches and N guest boots
share the same CPUs that one launch had to itself.

A poller on the client (one python3 process per VM, started as soon as the database shows the VM's claim, every
0.2 s) prints the epoch time it read the marker; the machines are containers on this host, so one clock.
The ratio is the median class / (N x the median single); target <= 0.5. The lab's slaves register the host's
cores; the database gives each slave at least ceil(N / 2) cores so N one-core seats fit (QEMU guests are tiny).
The image is put in both slaves' caches before anything is timed. At the end a dispatch run at the window's end
stops the class (timed too, for the record) and the script checks that nothing is left.

Usage: .venv/bin/python bench/class_start.py [--lab vclsess] [--seats 8] [--singles 3] [--classes 3] [--db URL]
                                             [--reuse] [--keep]
Without --reuse it takes the lab down, brings it up and runs site.yml (not timed); without --keep it takes the lab
down at the end. Prints a table and writes bench/results/class_start.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from launch import MARKER_POLLER  # noqa: E402 - bench/launch.py's poller (this script's directory is on sys.path)
from sqlalchemy import select, update  # noqa: E402

from vcl_lab.machines import ssh_argv  # noqa: E402
from vcl_lab.playbook import ansible_tool, parse_recap  # noqa: E402
from vcl_lab.testing import Lab, lab_down, lab_up  # noqa: E402
from vcl_sched import acting, bookings, config, db, people, service  # noqa: E402
from vcl_sched.models import AddressPair, Instance, Slave  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TARGET_RATIO = 0.5
TEACHER, GROUP, SINGLES_GROUP, IMAGE = "tara", "bench13", "bench13be", "vcl-guest"
POLL = 0.2



class Pollers:
    """One marker poller on the client per VM (keyed by id and MAC: a relaunch elsewhere gets a new one)."""

    def __init__(self, lab: Lab, timeout: float):
        self.lab, self.timeout = lab, timeout
        self.procs: dict[tuple[int, str], subprocess.Popen[str]] = {}

    def watch(self, iid: int, mac: str, private_ip: str, public_ip: str) -> None:
        if (iid, mac) in self.procs:
            return
        state = self.lab.state()
        argv = ssh_argv(state, state.machines["client"], "python3", "-c", MARKER_POLLER, public_ip,
                        f"vcl-guest ready {private_ip} {mac}", str(self.timeout), str(POLL), timeout=10)
        self.procs[(iid, mac)] = subprocess.Popen(argv, text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                                  stdin=subprocess.DEVNULL)

    def seen(self, iid: int, mac: str) -> float | None:
        """The epoch time the client read the marker of (iid, mac), None if it never did."""
        proc = self.procs.get((iid, mac))
        if proc is None:
            return None
        out, _ = proc.communicate()
        try:
            return float(out.split()[-1]) if proc.returncode == 0 else None
        except (ValueError, IndexError):
            return None

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def claims(url: str, where) -> list[tuple[int, str, str, str]]:
    """(id, mac, private, public) of the instances matching ``where`` that hold a claim."""
    with db.read(url) as s:
        rows = s.execute(select(Instance.id, Instance.mac, Instance.private_ip, Instance.public_ip)
                         .where(where, Instance.mac.is_not(None), Instance.public_ip.is_not(None))).all()
    return [tuple(r) for r in rows]


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat (every process, every lab)."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    hz = os.sysconf("SC_CLK_TCK")
    total = sum(fields) / hz
    return total - (fields[3] + fields[4]) / hz, total  # idle and iowait are not busy


def playbook(lab: Lab, url: str, path: str, *extra: str, now: str | None = None) -> tuple[float, str, dict]:
    """Run a playbook; its seconds, its output and where the CPU went meanwhile: ``controller_cpu_s``, the
    CPU seconds of ansible-playbook and its workers (this process's children), and ``machine_busy``, the share
    of the machine's CPUs that anything (this lab, other labs, the guests) used during the run."""
    env = {**os.environ, "VCL_DB_URL": url, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
           "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default", "ANSIBLE_RETRY_FILES_ENABLED": "False"}
    if now:
        env["VCL_NOW"] = now
    argv = [ansible_tool("ansible-playbook"), "-i", str(lab.inventory), path, *extra]
    children0, (busy0, total0) = resource.getrusage(resource.RUSAGE_CHILDREN), machine_cpu()
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=env, text=True, capture_output=True, stdin=subprocess.DEVNULL,
                          timeout=1800)
    seconds = time.perf_counter() - t0
    children1, (busy1, total1) = resource.getrusage(resource.RUSAGE_CHILDREN), machine_cpu()
    cpu = {"controller_cpu_s": round(children1.ru_utime + children1.ru_stime
                                     - children0.ru_utime - children0.ru_stime, 2),
           "machine_busy": round((busy1 - busy0) / max(total1 - total0, 1e-9), 3)}
    hosts = parse_recap(proc.stdout)
    if proc.returncode != 0 or not hosts or sum(h.failed + h.unreachable for h in hosts.values()):
        raise RuntimeError(f"{path} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout, cpu


def watched_run(lab: Lab, url: str, pollers: Pollers, where, path: str, *extra: str, now: str | None = None
                ) -> tuple[float, float, str, dict]:
    """Run a playbook while a thread starts a marker poller for every claim ``where`` selects. Returns the
    run's start (epoch), its seconds, its output and its CPU use (``playbook``)."""
    done = threading.Event()

    def follow() -> None:
        while not done.is_set():
            for iid, mac, private, public in claims(url, where):
                pollers.watch(iid, mac, private, public)
            time.sleep(0.3)

    thread = threading.Thread(target=follow, daemon=True)
    start = time.time()
    thread.start()
    try:
        seconds, out, cpu = playbook(lab, url, path, *extra, now=now)
    finally:
        done.set()
        thread.join()
    for iid, mac, private, public in claims(url, where):  # any claim the thread did not see yet
        pollers.watch(iid, mac, private, public)
    return start, seconds, out, cpu


def leftovers(lab: Lab, url: str) -> list[str]:
    left = []
    for slave in lab.of_role("slave"):
        names = lab.ssh(slave, "virsh", "list", "--all", "--name").stdout.split()
        left += [f"{slave}: domain {n}" for n in names]
    hosts = lab.ssh("master", "grep", "-c", "^host ", "/etc/dhcp/dhcpd.vcl-vms.conf").stdout.strip()
    if hosts not in ("", "0"):
        left.append(f"master: {hosts} DHCP host entries")
    nat = lab.ssh("master", "iptables", "-t", "nat", "-S").stdout
    left += [f"master: {line}" for line in nat.splitlines() if "VCL-VM-" in line][:5]
    with db.read(url) as s:
        held = s.scalars(select(AddressPair.instance_id).where(AddressPair.instance_id.is_not(None))).all()
        used = s.execute(select(Slave.name, Slave.cores_used).where(Slave.cores_used != 0)).all()
    left += [f"db: address pair held by {i}" for i in held] + [f"db: {n} uses {c} cores" for n, c in used]
    return left


def prepare(lab: Lab, url: str, seats: int) -> dict:
    """People, capacity, the image in both slaves' caches (untimed)."""
    people.add_user(TEACHER, role="teacher", password="a teacher's long password", url=url)
    people.add_group(GROUP, owner=TEACHER, url=url)
    students = [f"s{n:02d}" for n in range(1, seats + 1)]
    for name in students:
        people.add_user(name, role="student", url=url)
    people.add_members(GROUP, students, url=url)
    service.add_group(SINGLES_GROUP, url=url)
    need = math.ceil(seats / len(lab.of_role("slave")))

    def grow(session) -> None:
        session.execute(update(Slave).where(Slave.cores_total < need).values(cores_total=need))

    db.write(grow, url)
    image = next(i for i in service.list_images(url=url) if i["name"] == IMAGE)
    image_dir = str(Path(image["disk_file"]).parent)
    for slave in lab.of_role("slave"):
        out = lab.ssh("master", "rsync", "-a", "--ignore-existing", "--mkpath", "-e", "ssh -o BatchMode=yes",
                      image_dir + "/", f"root@{lab.addresses[slave]}:{image_dir}/", timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"rsync of the image to {slave} failed: {out.stderr}")
    return {"slaves": {s["name"]: s["cores_total"] for s in service.list_slaves(url)}, "students": len(students)}


def single(lab: Lab, url: str, timeout: float) -> dict:
    """One VM launched alone by launch.yml: seconds from its start to the client reading its marker."""
    before = {r["id"] for r in service.list_instances(url=url)}
    playbook(lab, url, "playbooks/reserve.yml", "-e", f"owner={SINGLES_GROUP}", "-e", "cores=1", "-e", "ram_mb=128",
             "-e", "hours=2", "-e", f"image={IMAGE}", "-e", "reserve_no_launch=true")
    (iid,) = {r["id"] for r in service.list_instances(url=url)} - before
    pollers = Pollers(lab, timeout)
    try:
        start, seconds, _, cpu = watched_run(lab, url, pollers, Instance.id == iid, "playbooks/launch.yml",
                                        "-e", f"id={iid}")
        row = service.list_instances(url=url, include_all=True)
        vm = next(r for r in row if r["id"] == iid)
        seen = pollers.seen(iid, vm["mac"])
    finally:
        pollers.close()
    playbook(lab, url, "playbooks/stop.yml", "-e", f"id={iid}")
    return {"id": iid, "slave": vm["slave"], "playbook_s": round(seconds, 2),
            "reachable_s": None if seen is None else round(seen - start, 2), **cpu}


def class_start(lab: Lab, url: str, seats: int, timeout: float, days_ahead: int = 1) -> dict:
    day = (config.now() + timedelta(days=days_ahead)).date().isoformat()
    with acting.acting(people.actor_for(TEACHER, url)):
        booked = bookings.reserve(owner=GROUP, cores=1, ram_mb=128, start=f"{day} 10:00", hours=1, image=IMAGE,
                                  seats=seats, prelaunch=True, url=url)
    if booked["state"] != "accepted" or booked["start"] != f"{day} 10:00":
        raise RuntimeError(f"the session was not accepted as asked: {booked}")
    rid = booked["id"]
    lead = service.get_settings(url).prelaunch_lead_minutes
    early = (datetime.fromisoformat(f"{day} 10:00") - timedelta(minutes=lead)).strftime("%Y-%m-%d %H:%M")
    pollers = Pollers(lab, timeout)
    try:
        start, seconds, out, cpu = watched_run(lab, url, pollers, Instance.reservation_id == rid,
                                          "playbooks/dispatch.yml", now=early)
        with db.read(url) as s:
            vms = s.execute(select(Instance.id, Instance.mac, Instance.state, Instance.user_id, Slave.name)
                            .outerjoin(Slave, Slave.id == Instance.slave_id)
                            .where(Instance.reservation_id == rid)).all()
        seen = {iid: pollers.seen(iid, mac) for iid, mac, *_ in vms}
    finally:
        pollers.close()
    running = [v for v in vms if str(v[2]) == "running"]
    lanes: dict[str, int] = {}
    for v in running:
        lanes[v[4]] = lanes.get(v[4], 0) + 1
    reached = [t for t in seen.values() if t is not None]
    all_reached = len(reached) == seats and len(running) == seats
    end_s, _, _ = playbook(lab, url, "playbooks/dispatch.yml", now=f"{day} 11:00")
    return {"reservation": rid, "seats": seats, "running": len(running), "holders": len({v[3] for v in running}),
            "per_slave": lanes, "dispatch_s": round(seconds, 2), **cpu,
            "reachable_each_s": sorted(round(t - start, 2) for t in reached),
            "all_reachable_s": round(max(reached) - start, 2) if all_reached else None,
            "class_end_dispatch_s": round(end_s, 2), "plan_stdout_tail": out[-1500:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", default="vclsess")
    parser.add_argument("--seats", type=int, default=8)
    parser.add_argument("--singles", type=int, default=3, help="single launches timed (median)")
    parser.add_argument("--classes", type=int, default=3, help="class starts timed, one day after another (median)")
    parser.add_argument("--db", default="sqlite:////tmp/vclbench-class-start.sqlite")
    parser.add_argument("--reuse", action="store_true", help="use the lab as it is (up, site.yml run)")
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for a marker")
    args = parser.parse_args()
    if args.seats < 1 or args.singles < 1 or args.classes < 1:
        print("seats, singles, classes: give whole numbers >= 1", file=sys.stderr)
        return 1
    os.environ["VCL_DB_URL"] = args.db
    load_start = os.getloadavg()
    setup: dict = {}
    if not args.reuse:
        lab_down(args.lab)
        if args.db.startswith("sqlite:///"):
            Path(args.db.removeprefix("sqlite:///")).unlink(missing_ok=True)
    t0 = time.monotonic()
    lab = lab_up(args.lab, slaves=2)  # harmless when it runs already
    setup["lab_up_s"] = round(time.monotonic() - t0, 1)
    try:
        if not args.reuse:
            setup["site_yml_s"] = round(playbook(lab, args.db, str(ROOT / "site.yml"))[0], 1)
        setup.update(prepare(lab, args.db, args.seats))
        singles = []
        for n in range(args.singles):
            singles.append(single(lab, args.db, args.timeout))
            print(f"  single launch {n + 1}: {singles[-1]}", file=sys.stderr)
        classes = []
        for n in range(args.classes):
            classes.append(class_start(lab, args.db, args.seats, args.timeout, days_ahead=n + 1))
            print(f"  class start {n + 1}: { {k: v for k, v in classes[-1].items() if k != 'plan_stdout_tail'} }",
                  file=sys.stderr)
        left = leftovers(lab, args.db)
    finally:
        if not args.keep:
            setup["lab_down_rc"] = lab_down(args.lab).get("rc")
    reach = [s["reachable_s"] for s in singles if s["reachable_s"] is not None]
    one = statistics.median(reach) if len(reach) == len(singles) else None
    serial = None if one is None else round(args.seats * one, 2)
    # The median class start (by the time all seats were reachable; a class whose seats were not all reached
    # counts as the slowest), and every class start's ratio to the same serial estimate.
    ordered = sorted(classes, key=lambda c: (c["all_reachable_s"] is None, c["all_reachable_s"] or 0))
    klass = ordered[(len(ordered) - 1) // 2]
    ratios = [None if serial is None or c["all_reachable_s"] is None else round(c["all_reachable_s"] / serial, 3)
              for c in classes]
    ratio = None if serial is None or klass["all_reachable_s"] is None else round(klass["all_reachable_s"] / serial, 3)
    doc = {"bench": "class_start", "lab": args.lab, "at": datetime.now(UTC).isoformat(timespec="seconds"),
           "machine": {"cpus": os.cpu_count(), "load_at_start": [round(x, 2) for x in load_start],
                       "load_at_end": [round(x, 2) for x in os.getloadavg()]},
           "setup": setup, "singles": singles, "one_launch_s": None if one is None else round(one, 2),
           "serial_estimate_s": serial, "class": klass, "classes": classes, "ratios": ratios, "ratio": ratio,
           "target_ratio": TARGET_RATIO,
           "ok": ratio is not None and ratio <= TARGET_RATIO and not left, "leftovers": left}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "class_start.json").write_text(json.dumps(doc, indent=2) + "\n")
    width = 62
    print(f"class start: {args.seats} seats of 1 core / 128 MB on {len(setup.get('slaves', {}))} slaves "
          f"(lab {args.lab}, {os.cpu_count()} CPUs)")
    print(f"{'':{width}}seconds")
    print(f"{'one launch alone: launch.yml start -> marker on the client':{width}}"
          f"{one if one is not None else 'n/a'}  (median of {len(singles)}: {reach})")
    print(f"{'  launch.yml itself (start -> exit), median':{width}}"
          f"{round(statistics.median(s['playbook_s'] for s in singles), 2)}")
    print(f"{f'{args.seats} x one launch':{width}}{serial if serial is not None else 'n/a'}")
    print(f"{f'class: dispatch.yml start -> all {args.seats} markers on the client':{width}}"
          f"{klass['all_reachable_s'] if klass['all_reachable_s'] is not None else 'n/a'}"
          f"  (median of {len(classes)}: {[c['all_reachable_s'] for c in classes]})")
    print(f"{'  dispatch.yml itself (start -> exit)':{width}}{klass['dispatch_s']}")
    single_cpu = statistics.median(s["controller_cpu_s"] for s in singles)
    print(f"{'controller CPU: one launch.yml (median) / the class dispatch.yml':{width}}"
          f"{single_cpu} / {klass['controller_cpu_s']}  (x{round(klass['controller_cpu_s'] / single_cpu, 1)})")
    print(f"{'machine CPUs busy: single launches (median) / class start':{width}}"
          f"{statistics.median(s['machine_busy'] for s in singles):.0%} / {klass['machine_busy']:.0%}")
    print(f"{'  seats per slave (lanes)':{width}}{klass['per_slave']}")
    print(f"{'  each seat reachable after (s)':{width}}{klass['reachable_each_s']}")
    print(f"{'class end: dispatch.yml at the window end (stops all)':{width}}{klass['class_end_dispatch_s']}")
    print(f"{f'ratio class / ({args.seats} x one launch), target <= {TARGET_RATIO}':{width}}{ratio}"
          f"  (each class start: {ratios})")
    print(f"leftovers after the class end: {left or 'none'}")
    print(f"wrote {RESULTS / 'class_start.json'}")
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
