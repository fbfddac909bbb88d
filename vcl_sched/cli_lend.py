"""`vcl lend ...` (SPEC §9): lend your PC to the pool, decline, take it back.

``list`` and ``owed`` read the database and ``decline`` writes it; ``enrol`` and ``reclaim`` change hosts, so they
run the playbooks ``vcl.lab.lend`` and ``vcl.lab.reclaim`` (ansible-runner, as ``vcl stop`` runs ``vcl.lab.stop``),
after every argument is checked here. ``cli.build_parser`` calls :func:`add_commands`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from . import lending
from .errors import ValidationError
from .tables import EXIT_OK, emit, table
from .validate import check_name, host_name, id_value, whole

_Add = Callable[..., argparse.ArgumentParser]
LENT_COLUMNS = ("name", "address", "lent_by", "lend_state", "lend_until", "status", "cores_used", "cores_total",
                "ram_mb_total", "vms")
OWED_COLUMNS = ("id", "user", "served_at", "declines")


def cmd_lend_list(args: argparse.Namespace) -> int:
    emit(args, lending.list_lent(), lambda rows: table(rows, LENT_COLUMNS))
    return EXIT_OK


def cmd_lend_owed(args: argparse.Namespace) -> int:
    emit(args, lending.owed(), lambda rows: table(rows, OWED_COLUMNS))
    return EXIT_OK


def cmd_lend_decline(args: argparse.Namespace) -> int:
    row = lending.decline(args.id, "declined")
    emit(args, row, lambda r: f"vcl: warning: {r['warning']}")
    return EXIT_OK


def enrol_vars(args: argparse.Namespace) -> dict[str, Any]:
    extravars: dict[str, Any] = {"lend_host": host_name("host", args.host), "lend_user": check_name("user", args.user),
                                 "lend_hours": str(whole("hours", args.hours, 1, lending.MAX_LEND_HOURS))}
    if args.request is not None:
        extravars["lend_instance"] = str(id_value("request", args.request))
    return extravars


def reclaim_vars(args: argparse.Namespace) -> dict[str, Any]:
    if args.due:
        return {"reclaim_due": "true"}
    if args.host is None:
        raise ValidationError("host", "name the PC to take back, or give --due")
    return {"lend_host": host_name("host", args.host)}


def add_commands(sub: argparse._SubParsersAction, add: _Add, run_options: Callable[..., None],  # type: ignore[type-arg]
                 submit: Callable[[argparse.Namespace, str, dict[str, Any]], int]) -> None:
    """Add `vcl lend ...`; ``submit(args, playbook, extravars)`` runs a playbook (``cli._submit``)."""

    def cmd_lend_enrol(args: argparse.Namespace) -> int:
        return submit(args, "lend", enrol_vars(args))

    def cmd_lend_reclaim(args: argparse.Namespace) -> int:
        return submit(args, "reclaim", reclaim_vars(args))

    lnd = sub.add_parser("lend", help="lend your PC to the pool (SPEC §9): enrol, decline, take it back"
                         ).add_subparsers(dest="sub", required=True)
    add("list", cmd_lend_list, "the lent PCs: owner, window, state and VMs", lnd)
    add("owed", cmd_lend_owed, "served requests whose user promised a PC (register_as_slave=1), not asked yet", lnd)
    p = add("decline", cmd_lend_decline, "decline to lend for a served request (counted: the user is warned)", lnd)
    p.add_argument("id", help="the served request's instance id (`vcl lend owed`)")
    p = add("enrol", cmd_lend_enrol, "bootstrap a client PC as a lent slave: run vcl.lab.lend", lnd)
    p.add_argument("host", help="the PC: a host of the inventory's group vcl_clients")
    p.add_argument("--user", required=True, help="its owner, who lends it")
    p.add_argument("--hours", default="8", help="how long it is lent, 1..672 (default 8)")
    p.add_argument("--request", help="the served request (instance id) whose promise this keeps")
    run_options(p)
    p = add("reclaim", cmd_lend_reclaim, "take a lent PC back; its VMs move to other slaves: run vcl.lab.reclaim",
            lnd)
    p.add_argument("host", nargs="?", help="the lent PC")
    p.add_argument("--due", action="store_true", help="every PC whose lending window has ended")
    run_options(p)
