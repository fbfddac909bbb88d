"""The portal's response times (issue 14): p50/p95 of the VM list and the status page on a lab-sized database.

A fresh lab database (SQLite in a temporary directory, or ``--db-url``, which must be empty) is built with
``service.init`` and the lab's networks and address pools, then filled:

- ``--slaves`` slaves (16, 32 or 64 cores), 20 teachers owning 60 groups (3 each), 3,000 students each in 2 groups,
  an admin, 5 images;
- ``--reservations`` class sessions of those groups (10 to 40 seats of 1 to 4 cores, 1 to 3 hours, weekdays 9:00
  to 17:00) over the coming ``--weeks`` weeks; ``--active`` of them are running now (today, window around now),
  3 % of the future ones were refused;
- ``--vms`` live VMs, all running with a slave, an address pair, a MAC and a console port: every seat of the
  running sessions (held by the group's members in name order, as dispatch hands them out), the rest best-effort
  VMs of random students; the slaves' ``cores_used``, ``ram_mb_used`` and ``disk_gb_used`` are the sums of their
  VMs'. ``--history N`` adds N stopped best-effort VMs of the past six weeks (what a lab's table holds after a while).

``service.reserve`` admits one session in a transaction (the calendar and the seats' placement on every slave):
``--reserve-sample`` sessions go through it (timed, at most 60 s, against the full calendar and the slaves) and
the rest are inserted with bulk SQLAlchemy Core inserts into the real tables, as are the slaves, people,
memberships and VMs. At 1,000 slaves and 10,000 sessions one ``service.reserve`` takes 2 to 3 s (the best-fit
placement of every seat of that day on every slave, ``commitments.assign_seats``): all of them that way would take
hours, so the sample's time per call and its extrapolation are in the output instead.
Only the three people who log in get a password (``people.add_user``: Argon2 is slow): the student ``s0001``
(a seat and two best-effort VMs), the teacher ``t01`` and the admin ``admin1``. The clock is ``VCL_NOW`` = today
10:30, so "running now" does not depend on when the benchmark runs.

The portal is served for real: uvicorn in a child process on 127.0.0.1 (a free port), HTTPS with a throwaway
self-signed certificate (``--http``: plain HTTP), ``run_playbooks`` false, as ``vcl-portal`` runs it (access
log on, to a file). One httpx client per user logs in through ``/login`` (CSRF token from the page) and keeps
its cookies and its connection (keep-alive: TLS is in every request, the handshake once). After a warm-up each
page is fetched ``--requests`` times in a row, one request at a time:

- ``/vms`` as the student, the teacher and the admin (the first page: 100 of all live VMs);
- ``/status`` (the slaves' first page and the totals) and ``/status/timeline.svg`` (72 hours) as the student.

``server CPU ms`` is the child's CPU time per request (/proc, steadier than wall time on a shared machine);
``query p50 ms`` is the page's query function of ``vcl_sched.portal.queries`` called directly in this process,
without HTTP, the session check, the template or TLS.

Usage: .venv/bin/python bench/portal.py [--slaves 1000] [--reservations 10000] [--requests 200] [--db-url URL]
                                        [--http] [--vms 2000] [--active 40] [--weeks 6] [--reserve-sample 20]
                                        [--history 0] [--seed 1]
Prints a table and writes bench/results/portal-<UTC stamp>.json and a box plot portal-<UTC stamp>.svg.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import bindparam, func, select, update  # noqa: E402

from vcl_sched import db, people, service  # noqa: E402
from vcl_sched.models import (  # noqa: E402
    AddressPair,
    Base,
    Group,
    Image,
    Instance,
    Membership,
    Reservation,
    Slave,
    User,
)

RESULTS = ROOT / "bench" / "results"
PASSWORD = "Bench portal 42"
STUDENT, TEACHER, ADMIN = "s0001", "t01", "admin1"
TEACHERS, GROUPS, STUDENTS, GROUPS_PER_STUDENT = 20, 60, 3000, 2
IMAGES = ("ubuntu-desktop", "windows-lab", "matlab", "rstudio", "kali")
NOW = datetime.combine(date.today(), dtime(10, 30))
SIZES = ((16, 65536, 1000), (32, 131072, 2000), (64, 262144, 4000))  # cores, RAM MB, disk GB of a slave
NETWORK = {"lab_subnet": "10.10.0.0/16", "vm_subnet": "10.20.0.0/16", "master_address": "10.10.0.1",
           "lab_gateway": "10.10.0.254", "vm_gateway": "10.20.0.1",
           "private_pool": "10.20.0.16-10.20.31.255", "public_pool": "10.10.64.0-10.10.95.255"}
POOL_PAIRS = 16 * 256 - 16  # the shorter pool's size
RESERVE_SAMPLE_CAP_S = 60.0


# --- the lab database ------------------------------------------------------------------------------

def slave_address(i: int) -> str:
    return f"10.10.{1 + i // 250}.{1 + i % 250}"  # below the public pool (10.10.64.0)


def weekdays(first: date, weeks: int) -> list[date]:
    days = [first + timedelta(days=d) for d in range(weeks * 7)]
    return [d for d in days if d.weekday() < 5]


def seed(url: str, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    """Fill the empty database at ``url``; returns how long each part took and how the data was made."""
    took: dict[str, float] = {}
    t0 = time.perf_counter()
    service.init(url)
    with db.read(url) as s:
        if s.scalar(select(func.count()).select_from(Slave)):
                raise SystemExit(f"{url}: the database has slaves already: give an empty one")
    service.configure({**NETWORK, "booking.horizon_days": str(args.weeks * 7 + 1)}, url)
    for name in IMAGES:
        service.add_image(name, f"/var/lib/vcl/images/{name}/disk.qcow2", ram_mb=2048, disk_gb=rng.choice([10, 20]),
                          url=url)
    took["init_configure_images_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()  # the only passwords: Argon2 takes ~0.1 s each
    people.add_user(STUDENT, role="student", password=PASSWORD, url=url)
    people.add_user(TEACHER, role="teacher", password=PASSWORD, url=url)
    people.add_user(ADMIN, role="admin", password=PASSWORD, url=url)
    took["users_with_passwords_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    stamp = NOW - timedelta(days=90)
    teachers = [f"t{i:02d}" for i in range(1, TEACHERS + 1)]
    students = [f"s{i:04d}" for i in range(1, STUDENTS + 1)]
    groups = [f"g{i:02d}" for i in range(1, GROUPS + 1)]

    def bulk_people(s) -> None:
        s.execute(User.__table__.insert(), [
            {"name": n, "role": role, "auth": "local", "declines": 0, "registered_slave": 0, "created_at": stamp}
            for role, names in (("teacher", teachers), ("student", students)) for n in names
            if n not in (STUDENT, TEACHER)])
        uid = dict(s.execute(select(User.name, User.id)).all())
        s.execute(Group.__table__.insert(), [
            {"name": g, "description": f"class {g}", "owner_id": uid[teachers[k % TEACHERS]], "created_at": stamp}
            for k, g in enumerate(groups)])
        gid = dict(s.execute(select(Group.name, Group.id)).all())
        s.execute(Membership.__table__.insert(), [
            {"user_id": uid[n], "group_id": gid[g]} for n in students for g in rng.sample(groups, GROUPS_PER_STUDENT)])

    db.write(bulk_people, url)
    took["people_bulk_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()  # the slaves, empty: the sessions booked below are admitted against them
    slaves = []
    for i in range(args.slaves):
        cores, ram, disk = rng.choice(SIZES)
        slaves.append({"name": f"slave{i + 1:04d}", "address": slave_address(i), "cores_total": cores,
                       "cores_used": 0, "ram_mb_total": ram, "ram_mb_used": 0, "disk_gb_total": disk,
                       "disk_gb_used": 0, "status": "up", "generation": 0, "joined_at": stamp, "updated_at": NOW})
    db.write(lambda s: s.execute(Slave.__table__.insert(), slaves), url)
    took["slaves_bulk_s"] = time.perf_counter() - t0

    with db.read(url) as s:
        gid = dict(s.execute(select(Group.name, Group.id).order_by(Group.id)).all())
        uid = dict(s.execute(select(User.name, User.id).order_by(User.id)).all())
        members: dict[int, list[int]] = {}
        for g, u in s.execute(select(Membership.group_id, Membership.user_id).join(User, User.id == Membership.user_id)
                              .order_by(Membership.group_id, User.name)):
            members.setdefault(g, []).append(u)
        images = {n: (i, d) for n, i, d in s.execute(select(Image.name, Image.id, Image.default_disk_gb))}
        owner = dict(s.execute(select(Group.id, Group.owner_id)).all())
    groups_of: dict[int, list[int]] = {}
    for g, us in members.items():
        for u in us:
            groups_of.setdefault(u, []).append(g)
    student_groups = groups_of[uid[STUDENT]]

    # Sessions: --active of them running now (distinct groups, the student's first), the rest over the coming weeks.
    t0 = time.perf_counter()
    days = weekdays(NOW.date() + timedelta(days=1), args.weeks)
    active_groups = [student_groups[0], *rng.sample([g for g in gid.values() if g != student_groups[0]],
                                                    args.active - 1)]
    sessions: list[dict[str, Any]] = []

    def session_row(group_id: int, start: datetime, hours: float, state: str) -> dict[str, Any]:
        image = rng.choice(IMAGES)
        seats = min(rng.randint(10, 40), len(members[group_id]))
        cores, ram = rng.choice(((1, 1024), (1, 2048), (2, 2048), (2, 4096), (4, 4096)))
        booked = state != "refused"
        return {"group_id": group_id, "user_id": owner[group_id], "image_id": images[image][0],
                "seats": seats, "cores": cores, "ram_mb": ram, "requested_start": start,
                "start": start if booked else None, "end": start + timedelta(hours=hours) if booked else None,
                "hours": hours, "platform_value": 5.0, "register_as_slave": 0, "member": 1,
                "priority": round(10 + rng.uniform(0, 2), 6), "rescheduled": 0, "state": state,
                "reason": "" if booked else "the pool is full at that time", "created_at": stamp,
                "prelaunch": 1, "keep_disks": 0}

    for g in active_groups:
        start = NOW.replace(hour=rng.choice((9, 10)), minute=0)
        sessions.append(session_row(g, start, rng.choice((2.0, 3.0)), "active"))
    bulk_n = args.reservations - args.active - args.reserve_sample
    for _ in range(bulk_n):
        hours = rng.choice((1.0, 1.5, 2.0, 2.0, 3.0))
        half_hours = rng.randint(0, int(16 - 2 * hours))
        start = datetime.combine(rng.choice(days), dtime(9)) + timedelta(minutes=30 * half_hours)
        sessions.append(session_row(rng.choice(list(gid.values())), start, hours,
                                    "refused" if rng.random() < 0.03 else "accepted"))
    db.write(lambda s: s.execute(Reservation.__table__.insert(), sessions), url)
    took["reservations_bulk_s"] = time.perf_counter() - t0

    # A sample through the service layer, against the full calendar: what seeding them all that way would cost.
    t0 = time.perf_counter()
    reserve_ms: list[float] = []
    outcomes: dict[str, int] = {}
    names = {v: k for k, v in gid.items()}
    while len(reserve_ms) < args.reserve_sample and time.perf_counter() - t0 < RESERVE_SAMPLE_CAP_S:
        hours = rng.choice((1.0, 2.0, 3.0))
        start = datetime.combine(rng.choice(days), dtime(9)) + timedelta(hours=rng.randint(0, int(8 - hours)))
        t1 = time.perf_counter()
        booked = service.reserve(owner=names[rng.choice(list(gid.values()))], cores=rng.choice((1, 2)), ram_mb=2048,
                                 start=start, hours=hours, seats=rng.randint(10, 40), image=rng.choice(IMAGES), url=url)
        reserve_ms.append((time.perf_counter() - t1) * 1000)
        outcome = booked["state"] + (f" ({booked['reason']})" if booked["state"] == "refused" else "")
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    short = args.reserve_sample - len(reserve_ms)
    if short:  # the time cap: the rest in bulk
        extra = [session_row(rng.choice(list(gid.values())), datetime.combine(rng.choice(days), dtime(10)), 2.0,
                             "accepted") for _ in range(short)]
        db.write(lambda s: s.execute(Reservation.__table__.insert(), extra), url)
    took["reservations_sample_s"] = time.perf_counter() - t0

    # Live VMs: every seat of the running sessions, then best-effort VMs (the student's two first).
    t0 = time.perf_counter()
    with db.read(url) as s:
        running = s.execute(select(Reservation.id, Reservation.group_id, Reservation.seats, Reservation.cores,
                                   Reservation.ram_mb, Reservation.image_id, Reservation.priority, Reservation.end)
                            .where(Reservation.state == "active").order_by(Reservation.id)).all()
        pairs = s.execute(select(AddressPair.id, AddressPair.private_ip, AddressPair.public_ip)
                          .order_by(AddressPair.id).limit(args.vms)).all()
    disk_of = {i: d for i, d in images.values()}
    vms: list[dict[str, Any]] = []
    for rid, group_id, seats, cores, ram, image_id, prio, end in running:
        for seat, holder in enumerate(members[group_id][:seats]):
            if len(vms) < args.vms:
                vms.append({"kind": "AR", "reservation_id": rid, "group_id": group_id, "user_id": holder,
                            "cores": cores, "ram_mb": ram, "image_id": image_id, "disk_gb": disk_of[image_id],
                            "priority": prio, "seat": seat, "hours": None, "started_at": NOW.replace(minute=0)
                            - timedelta(minutes=10), "ends_at": end})
    seats_n = len(vms)
    be_users = [uid[STUDENT], uid[STUDENT], *(rng.choice(list(uid.values())) for _ in range(args.vms))]
    for user_id in be_users[:args.vms - seats_n]:
        group_id = rng.choice(groups_of.get(user_id) or list(gid.values()))
        image = rng.choice(IMAGES)
        hours = rng.randint(1, 4)
        started = NOW - timedelta(minutes=rng.randint(1, hours * 60 - 1))
        cores, ram = rng.choice(((1, 1024), (1, 2048), (2, 2048), (2, 4096)))
        vms.append({"kind": "BE", "reservation_id": None, "group_id": group_id, "user_id": user_id, "cores": cores,
                    "ram_mb": ram, "image_id": images[image][0], "disk_gb": images[image][1],
                    "priority": round(10 + rng.uniform(0, 2), 6), "seat": None, "hours": hours,
                    "started_at": started, "ends_at": started + timedelta(hours=hours)})
    if len(vms) > len(pairs):
        raise SystemExit(f"--vms {len(vms)}: the pools hold {len(pairs)} address pairs")

    # Each VM on a random slave that has room (the slaves' used columns are the sums).
    ports: dict[int, int] = {}
    for vm, (pair_id, private_ip, public_ip) in zip(vms, pairs, strict=False):
        for _ in range(10 * args.slaves):
            k = rng.randrange(args.slaves)
            sl = slaves[k]
            if (sl["cores_used"] + vm["cores"] <= sl["cores_total"] and sl["ram_mb_used"] + vm["ram_mb"]
                    <= sl["ram_mb_total"] and sl["disk_gb_used"] + vm["disk_gb"] <= sl["disk_gb_total"]):
                break
        else:
            raise SystemExit("the slaves are full: give fewer --vms or more --slaves")
        sl["cores_used"] += vm["cores"]
        sl["ram_mb_used"] += vm["ram_mb"]
        sl["disk_gb_used"] += vm["disk_gb"]
        sl["generation"] += 1
        ports[k] = ports.get(k, 5899) + 1
        n = pair_id
        vm.update(slave=k, pair_id=pair_id, private_ip=private_ip, public_ip=public_ip, console_port=ports[k],
                  mac=f"52:54:00:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}", state="running",
                  register_as_slave=0, keep_disk=0, created_at=vm["started_at"], updated_at=vm["started_at"])

    history = []  # stopped VMs: no address pair any more (their MAC is in the row only), no capacity held
    for n in range(args.history):
        user_id = rng.choice(list(uid.values()))
        image = rng.choice(IMAGES)
        started = NOW - timedelta(days=rng.randint(1, 42), hours=rng.randint(0, 8))
        cores, ram = rng.choice(((1, 1024), (1, 2048), (2, 2048), (2, 4096)))
        history.append({"kind": "BE", "reservation_id": None,
                        "group_id": rng.choice(groups_of.get(user_id) or list(gid.values())),
                        "user_id": user_id, "cores": cores, "ram_mb": ram, "image_id": images[image][0],
                        "disk_gb": images[image][1], "priority": 10.0, "seat": None, "hours": 2,
                        "started_at": started, "ends_at": started + timedelta(hours=2), "state": "stopped",
                        "slave_id": rng.randrange(args.slaves),
                        "mac": f"52:54:01:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}",
                        "private_ip": None, "public_ip": None, "console_port": None,
                        "register_as_slave": 0, "keep_disk": 0, "created_at": started,
                        "updated_at": started + timedelta(hours=2)})

    def bulk_vms(s) -> None:
        sid = dict(s.execute(select(Slave.name, Slave.id)).all())
        s.execute(update(Slave.__table__).where(Slave.__table__.c.id == bindparam("sid"))
                  .values(cores_used=bindparam("c"), ram_mb_used=bindparam("r"), disk_gb_used=bindparam("d"),
                          generation=bindparam("g")),
                  [{"sid": sid[sl["name"]], "c": sl["cores_used"], "r": sl["ram_mb_used"], "d": sl["disk_gb_used"],
                    "g": sl["generation"]} for sl in slaves if sl["generation"]])
        rows = [{k: v for k, v in vm.items() if k not in ("slave", "pair_id")} | {"slave_id": sid[slaves[vm["slave"]]
                ["name"]]} for vm in vms]
        if history:  # older than the live VMs: lower ids
            s.execute(Instance.__table__.insert(), [h | {"slave_id": sid[slaves[h["slave_id"]]["name"]]}
                                                    for h in sorted(history, key=lambda h: h["started_at"])])
        s.execute(Instance.__table__.insert(), rows)
        iid = dict(s.execute(select(Instance.mac, Instance.id).where(Instance.state == "running")).all())
        s.execute(update(AddressPair.__table__).where(AddressPair.__table__.c.id == bindparam("pid"))
                  .values(instance_id=bindparam("iid"), mac=bindparam("m")),
                  [{"pid": vm["pair_id"], "iid": iid[vm["mac"]], "m": vm["mac"]} for vm in vms])

    db.write(bulk_vms, url)
    took["vms_bulk_s"] = time.perf_counter() - t0
    return {"took_s": {k: round(v, 2) for k, v in took.items()},
            "reserve_ms": {"calls": len(reserve_ms), "p50": round(statistics.median(reserve_ms), 1) if reserve_ms
                           else None, "max": round(max(reserve_ms), 1) if reserve_ms else None,
                           "all_would_take_s": round(statistics.fmean(reserve_ms) * args.reservations / 1000)
                           if reserve_ms else None, "outcomes": outcomes},
            "seats": seats_n, "best_effort": len(vms) - seats_n, "stopped": len(history),
            "active_sessions": len(running),
            "reservations_bulk": len(sessions) + short, "reservations_through_service": len(reserve_ms)}


def counts(url: str) -> dict[str, int]:
    with db.read(url) as s:
        out = {t.name: s.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}
        out["instances_live"] = s.scalar(select(func.count()).select_from(Instance)
                                         .where(Instance.state.in_(("pending", "running", "suspended"))))
        for state, n in s.execute(select(Reservation.state, func.count()).group_by(Reservation.state)):
            out[f"reservations_{state}"] = n
        out["slaves_cores_used"] = s.scalar(select(func.sum(Slave.cores_used)))
        out["slaves_cores_total"] = s.scalar(select(func.sum(Slave.cores_total)))
        out["instances_cores_running"] = s.scalar(select(func.sum(Instance.cores)).where(Instance.state == "running"))
    return out


# --- the server --------------------------------------------------------------------------------------

def serve() -> int:
    """The child: the portal under uvicorn, as ``vcl-portal`` runs it (its settings from VCL_BENCH_PORTAL)."""
    import uvicorn

    from vcl_sched.portal.app import create_app
    from vcl_sched.portal.config import PortalConfig

    spec = json.loads(os.environ["VCL_BENCH_PORTAL"])
    cfg = PortalConfig(db_url=spec["db_url"], secret=bytes.fromhex(spec["secret"]), listen="127.0.0.1",
                       port=spec["port"], certfile=spec["certfile"], keyfile=spec["keyfile"], https=spec["https"],
                       console_tokens=spec["tokens"], console_passwords=spec["consoles"], run_playbooks=False)
    uvicorn.run(create_app(cfg), host=cfg.listen, port=cfg.port, ssl_certfile=cfg.certfile, ssl_keyfile=cfg.keyfile,
                proxy_headers=False, server_header=False, log_level="info", timeout_graceful_shutdown=5)
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(url: str, tmp: Path, https: bool) -> tuple[subprocess.Popen[bytes], str, Any]:
    port = free_port()
    cert = key = None
    verify: Any = False
    if https:
        cert, key = str(tmp / "cert.pem"), str(tmp / "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True)
        os.chmod(key, 0o600)
        verify = ssl.create_default_context(cafile=cert)
    spec = {"db_url": url, "secret": secrets.token_hex(32), "port": port, "certfile": cert, "keyfile": key,
            "https": https, "tokens": str(tmp / "tokens"), "consoles": str(tmp / "consoles")}
    log = open(tmp / "portal.log", "wb")  # noqa: SIM115 - the child's for its whole life
    proc = subprocess.Popen([sys.executable, __file__, "--serve"], env={**os.environ, "VCL_BENCH_PORTAL":
                            json.dumps(spec)}, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the portal did not start:\n{(tmp / 'portal.log').read_text()[-3000:]}") from None
            time.sleep(0.1)
    return proc, f"{'https' if https else 'http'}://127.0.0.1:{port}", verify


def busy_cpu_seconds() -> float:
    """CPU time the whole machine spent busy since boot (/proc/stat, as bench/claims.py reads it)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


# --- the client --------------------------------------------------------------------------------------

def login(base: str, verify: Any, name: str) -> Any:
    import httpx

    client = httpx.Client(base_url=base, verify=verify, timeout=60)
    page = client.get("/login")
    token = re.search(r'name="csrftoken" value="([^"]+)"', page.text)
    if not token:
        raise SystemExit(f"no CSRF token on /login ({page.status_code})")
    answer = client.post("/login", data={"name": name, "password": PASSWORD, "next": "/",
                                         "csrftoken": token.group(1)})
    if answer.status_code != 303:
        raise SystemExit(f"{name}: login answered {answer.status_code}: {answer.text[:300]}")
    return client


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def run_pages(url: str, base: str, verify: Any, pid: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every page ``--requests`` times, interleaved (page 1, 2, ..., 5, page 1, ...) so that the other work on a
    shared machine weighs on all pages alike; then each page's query function, interleaved too."""
    from vcl_sched.portal import queries

    actors = {n: people.actor_for(n, url) for n in (STUDENT, TEACHER, ADMIN)}
    clients = {n: login(base, verify, n) for n in actors}
    plan: list[tuple[str, str, str, Callable[[], Any]]] = [
        ("/vms", "student", STUDENT, lambda: queries.vms_of(actors[STUDENT], url, 0)),
        ("/vms", "teacher", TEACHER, lambda: queries.vms_of(actors[TEACHER], url, 0)),
        ("/vms", "admin", ADMIN, lambda: queries.vms_of(actors[ADMIN], url, 0)),
        ("/status", "student", STUDENT, lambda: queries.slaves_page(url, 0)),
        ("/status/timeline.svg", "student", STUDENT, lambda: queries.profile(url, NOW, 72)),
    ]
    times: list[list[float]] = [[] for _ in plan]
    cpu = [0.0] * len(plan)
    sizes: list[int] = [0] * len(plan)
    last: list[str] = [""] * len(plan)
    for i in range(max(5, args.requests // 10) + args.requests):  # the warm-up first, not recorded
        for k, (path, _, name, _) in enumerate(plan):
            cpu0 = cpu_seconds(pid)
            t0 = time.perf_counter()
            response = clients[name].get(path)
            took = (time.perf_counter() - t0) * 1000
            if response.status_code != 200:
                raise SystemExit(f"{path} as {name}: {response.status_code}: {response.text[:300]}")
            if i >= max(5, args.requests // 10):
                times[k].append(took)
                cpu[k] += cpu_seconds(pid) - cpu0
                sizes[k] = max(sizes[k], len(response.content))
                last[k] = response.text
    direct: list[list[float]] = [[] for _ in plan]
    for _ in range(max(10, args.requests // 4)):
        for k, (*_, query) in enumerate(plan):
            t0 = time.perf_counter()
            query()
            direct[k].append((time.perf_counter() - t0) * 1000)
    for client in clients.values():
        client.close()
    rows = []
    for k, (path, role, name, _) in enumerate(plan):
        shown = re.search(r"(\d+) VM\(s\)", last[k])
        t = times[k]
        rows.append({"page": path, "user": f"{role} {name}", "requests": len(t),
                     "p50_ms": round(statistics.median(t), 2), "p95_ms": round(percentile(t, 95), 2),
                     "max_ms": round(max(t), 2), "mean_ms": round(statistics.fmean(t), 2),
                     "server_cpu_ms": round(cpu[k] / len(t) * 1000, 2),
                     "query_p50_ms": round(statistics.median(direct[k]), 2), "bytes": sizes[k],
                     "vms_listed": int(shown.group(1)) if shown else None, "times_ms": [round(x, 3) for x in t]})
    return rows


# --- the report --------------------------------------------------------------------------------------

COLUMNS = (("page", "page"), ("user", "user"), ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"), ("max_ms", "max ms"),
           ("server_cpu_ms", "server CPU ms"), ("query_p50_ms", "query p50 ms"), ("bytes", "bytes"),
           ("vms_listed", "VMs (total)"))


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join("-" if r.get(k) is None else str(r[k]) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def box_plot(rows: list[dict[str, Any]], title: str) -> str:
    """Per page: a box from p25 to p75, the median, whiskers from p5 to p95, the maximum as a dot (ms, linear)."""
    width, left, right, row_h, top = 860, 250, 30, 34, 40
    height = top + row_h * len(rows) + 40
    span = max(r["p95_ms"] for r in rows) * 1.15 or 1.0
    scale = (width - left - right) / span

    def x(ms: float) -> float:
        return round(left + min(ms, span) * scale, 1)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif"'
           ' font-size="12">', f'<text x="10" y="20" font-size="14">{title}</text>']
    for i, r in enumerate(rows):
        y = top + i * row_h + row_h / 2
        t = r["times_ms"]
        p5, p25, p50, p75, p95 = (percentile(t, p) for p in (5, 25, 50, 75, 95))
        out.append(f'<text x="10" y="{y + 4}">{r["page"]} ({r["user"].split()[0]})</text>')
        out.append(f'<line x1="{x(p5)}" x2="{x(p95)}" y1="{y}" y2="{y}" stroke="#555"/>')
        out.append(f'<rect x="{x(p25)}" y="{y - 9}" width="{max(x(p75) - x(p25), 1)}" height="18" fill="#aed6f1"'
                   ' stroke="#2e86c1"/>')
        out.append(f'<line x1="{x(p50)}" x2="{x(p50)}" y1="{y - 9}" y2="{y + 9}" stroke="#c0392b" stroke-width="2"/>')
        out.append(f'<circle cx="{x(r["max_ms"])}" cy="{y}" r="3" fill="#333"><title>max {r["max_ms"]} ms'
                   '</title></circle>')
    axis = top + row_h * len(rows) + 5
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{axis}" y2="{axis}" stroke="#333"/>')
    step = 10 ** max(0, len(str(int(span))) - 1)
    step = step / 2 if span / step < 4 else step
    tick = 0.0
    while tick <= span:
        out.append(f'<text x="{x(tick)}" y="{axis + 16}" text-anchor="middle">{tick:g}</text>')
        tick += step
    out.append(f'<text x="{width - right}" y="{axis + 32}" text-anchor="end">ms (box p25-p75, red p50,'
               ' whiskers p5-p95, dot max)</text>')
    out.append("</svg>")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slaves", type=int, default=1000)
    parser.add_argument("--reservations", type=int, default=10000)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per page")
    parser.add_argument("--db-url", help="an empty database (default: a SQLite file in a temporary directory)")
    parser.add_argument("--http", action="store_true", help="plain HTTP (default: HTTPS, self-signed)")
    parser.add_argument("--vms", type=int, default=2000, help="live VMs (seats of the running sessions + BE)")
    parser.add_argument("--active", type=int, default=40, help="sessions running now")
    parser.add_argument("--weeks", type=int, default=6, help="the sessions are spread over this many weeks")
    parser.add_argument("--reserve-sample", type=int, default=20, help="sessions booked through service.reserve")
    parser.add_argument("--history", type=int, default=0,
                        help="stopped best-effort VMs of the past weeks, besides the live ones")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve()
    warnings.filterwarnings("ignore", message="Skipped unsupported reflection")  # Alembic's look at the indexes
    os.environ["VCL_NOW"] = NOW.strftime("%Y-%m-%d %H:%M")
    os.environ.setdefault("VCL_ACTOR", "bench")
    rng = random.Random(args.seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vcl-bench-portal-") as tmpdir:
        tmp = Path(tmpdir)
        url = args.db_url or f"sqlite:///{tmp}/lab.sqlite"
        os.environ["VCL_DB_URL"] = url
        print(f"seeding {db.engine(url).dialect.name} ...", file=sys.stderr)
        made = seed(url, args, rng)
        rows_in_db = counts(url)
        print(f"seeded in {sum(made['took_s'].values()):.1f} s: {json.dumps(made)}", file=sys.stderr)
        proc, base, verify = start_server(url, tmp, https=not args.http)
        try:
            load0, busy0, t0 = os.getloadavg()[0], busy_cpu_seconds(), time.monotonic()
            own0 = cpu_seconds(proc.pid) + time.process_time()
            rows = run_pages(url, base, verify, proc.pid, args)
            wall, own = time.monotonic() - t0, cpu_seconds(proc.pid) + time.process_time() - own0
            machine = {"load_1min_before": round(load0, 2), "load_1min_after": round(os.getloadavg()[0], 2),
                       "pages_s": round(wall, 1),
                       "this_benchmark_cpu_pct": round(own / (wall * os.cpu_count()) * 100, 1),
                       # the machine's CPU that other work took meanwhile (other helpers' labs, tests; and the
                       # PostgreSQL server's share of these pages)
                       "others_cpu_pct": round(max(0.0, busy_cpu_seconds() - busy0 - own) / (wall * os.cpu_count())
                                               * 100, 1)}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        backend = db.engine(url).dialect.name
        db.engine(url).dispose()
    how = (f"{args.slaves} slaves, {STUDENTS} students + {TEACHERS} teachers + 1 admin in {GROUPS} groups, memberships,"
           f" {made['reservations_bulk']} reservations ({made['active_sessions']} running now) and {args.vms} running"
           f" VMs ({made['seats']} seats, {made['best_effort']} best effort), {made['stopped']} stopped VMs by bulk"
           f" Core inserts;"
           f" {made['reservations_through_service']} reservations through service.reserve"
           f" (p50 {made['reserve_ms']['p50']} ms each: all {args.reservations} that way would take"
           f" ~{made['reserve_ms']['all_would_take_s']} s); 3 passwords through people.add_user")
    scheme = "HTTP" if args.http else "HTTPS (keep-alive)"
    print(f"\nPortal pages on {backend}, {scheme}, {args.requests} requests each, one at a time"
          f" (clock {NOW:%Y-%m-%d %H:%M})")
    print(f"data: {how}")
    print(table(rows))
    print(f"machine: {os.cpu_count()} CPUs, load {machine['load_1min_before']} -> {machine['load_1min_after']};"
          f" this benchmark (server + client) used {machine['this_benchmark_cpu_pct']} % of the CPUs, other work"
          f" {machine['others_cpu_pct']} %")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"portal-{stamp}.json"
    out.write_text(json.dumps({
        "settings": {k: v for k, v in vars(args).items() if k != "serve"} | {
            "db_url": None if args.db_url is None else "given", "backend": backend, "scheme": scheme,
            "vcl_now": NOW.isoformat(), "cpus": os.cpu_count()} | machine,
        "data": {"how": how, **made}, "rows_in_db": rows_in_db, "elapsed_s": round(time.monotonic() - started, 1),
        "pages": rows}, indent=2) + "\n")
    plot = out.with_suffix(".svg")
    plot.write_text(box_plot(rows, f"Portal response times, {backend}, {scheme}, {args.requests} requests per page"))
    print(f"\nwrote {out} and {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
