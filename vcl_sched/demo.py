"""`vcl demo`: the scheduler on a fresh embedded database, step by step, as an admin would drive it.

It uses its own SQLite file (``VCL_DEMO_DB``, default vcl-demo.sqlite in the temp directory, recreated each run) and a
fixed clock, so it never touches the lab's real database and prints the same decisions every time.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from . import service
from .priority import parse_priority_inputs, platform_factor, priority
from .tables import INST_COLUMNS, RES_COLUMNS, SLAVE_COLUMNS, request_text, reservation_text, table

NOW = "2026-11-23 08:00"
TOMORROW = "2026-11-24"


def _say(title: str) -> None:
    print(f"\n== {title}")


def run_demo(json_output: bool = False) -> int:
    path = Path(os.environ.get("VCL_DEMO_DB") or Path(tempfile.gettempdir()) / "vcl-demo.sqlite")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    url = f"sqlite:///{path}"
    os.environ["VCL_DB_URL"] = url
    os.environ["VCL_NOW"] = NOW
    log: dict[str, Any] = {}

    service.init(url)
    service.configure({"private_pool": "192.0.2.16-192.0.2.31", "public_pool": "198.51.100.16-198.51.100.31"}, url)
    service.add_group("cs-lab", "Computer science lab", url)
    for name, address, cores, ram in (("slave1", "10.213.0.21", 8, 16384), ("slave2", "10.213.0.22", 8, 16384),
                                      ("slave3", "10.213.0.23", 4, 8192)):
        service.add_slave(name, address, cores, ram, 200, url=url)

    if not json_output:
        print(f"VCL scheduler demonstration (database {url}, clock fixed at {NOW})")
        _say("The pool")
        print(table(service.list_slaves(url), SLAVE_COLUMNS))
        _say("Para-scheduler priorities (SPEC §3 worked values, PfV=5)")
    worked = []
    for ram, minutes, ras, mon in ((600, 45, 1, 1), (200, 120, 0, 0)):
        p = parse_priority_inputs(5, ras, ram, minutes, mon)
        worked.append({"ram_mb": ram, "minutes": minutes, "ras": ras, "mon": mon,
                       "pf": round(platform_factor(p), 3), "pi": round(priority(p), 3)})
    log["priorities"] = worked
    if not json_output:
        print(table(worked, ("ram_mb", "minutes", "ras", "mon", "pf", "pi")))

    base = {"owner": "cs-lab", "ram_mb": 2048, "platform_value": 5, "url": url}
    steps = [
        ("A course books 8 seats of 2 cores tomorrow 10:00-12:00",
         {"seats": 8, "cores": 2, "start": f"{TOMORROW} 10:00", "hours": 2, "register_as_slave": 0, "member": 0}),
        ("A higher-priority member booking needs 6 seats of 2 cores (12 of the 20) at 10:00: the course moves later",
         {"seats": 6, "cores": 2, "start": f"{TOMORROW} 10:00", "hours": 2, "register_as_slave": 1, "member": 1}),
        ("A third booking that cannot fit the day is refused with the reason",
         {"seats": 10, "cores": 2, "start": f"{TOMORROW} 09:00", "hours": 4, "register_as_slave": 0, "member": 0}),
        ("A seat larger than any slave can never fit: refused at once",
         {"cores": 12, "start": f"{TOMORROW} 14:00", "hours": 1, "register_as_slave": 0, "member": 0}),
    ]
    log["reservations"] = []
    for title, args in steps:
        result = service.reserve(**base, **args)
        log["reservations"].append(result)
        if not json_output:
            _say(title)
            print(reservation_text(result))
    if not json_output:
        _say("The calendar")
        data = service.list_reservations(url)
        print(table(data["reservations"], RES_COLUMNS))

    os.environ["VCL_NOW"] = f"{TOMORROW} 08:00"
    log["best_effort"] = []
    low = {"platform_value": 2, "register_as_slave": 0, "member": 0}
    be_steps = [
        ("Best effort at 08:00 for 5 h: placed where it fits beside the seats, capped before they need its cores",
         {"cores": 8, "hours": 5, **low}),
        ("More best effort fills the pool", {"cores": 8, "hours": 2, **low}),
        ("", {"cores": 4, "hours": 2, **low}),
        ("A higher-priority request finds no room: suspend the lowest-priority best-effort VM",
         {"cores": 4, "hours": 2, "platform_value": 6, "register_as_slave": 1, "member": 1}),
        ("A request equal in priority to the lowest running VM waits (equal priorities never preempt)",
         {"cores": 4, "hours": 5, **low}),
    ]
    for title, args in be_steps:
        result = service.request(owner="cs-lab", ram_mb=2048, disk_gb=10, url=url, **args)
        log["best_effort"].append(result)
        if not json_output and title:
            _say(title)
        if not json_output:
            print(request_text(result))
    if not json_output:
        _say("Instances")
        print(table(service.list_instances(url), INST_COLUMNS))
        _say("Slaves after the claims")
        print(table(service.list_slaves(url), SLAVE_COLUMNS))
    else:
        print(json.dumps(log, indent=2, sort_keys=True, default=str))
    return 0  # the exit status of `vcl demo`
