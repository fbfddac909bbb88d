"""The `vcl` command: what admins and playbooks call.

Every command takes ``--json`` (one JSON document on stdout) and otherwise prints a readable table.
Exit codes: 0 done; 1 error (one line on stderr naming the problem; nothing was written);
2 usage error (one line too; ``--help`` shows the usage); 3 a valid request that was refused or has to
wait (recorded, with the reason).

Every argument is data: text options are checked (valid UTF-8, no control characters, at most
``validate.MAX_TEXT`` characters) before any command runs, numbers are checked by the service layer
against ``vcl_sched.validate``'s bounds, and JSON output never holds NaN or an infinity.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any, NoReturn

from . import __version__, acting, bookings, cli_disks, cli_lend, cli_people, config, db, people, service, sessions
from .errors import ValidationError, VclError
from .tables import (
    EXIT_ERROR,
    EXIT_NOT_SERVED,
    EXIT_OK,
    EXIT_USAGE,
    INST_COLUMNS,
    RES_COLUMNS,
    SLAVE_COLUMNS,
    emit,
    fields,
    printable,
    request_text,
    reservation_text,
    table,
)
from .validate import MAX_TEXT, bounded, check_name, id_value, shown, text_problem, whole

AUDIT_LIMIT_MAX = 100_000
# Arguments that are KEY=VALUE lists (checked item by item, naming the key) or handed on untouched.
_NOT_TEXT_CHECKED = frozenset({"func", "assignments", "extra_vars", "rest"})


# --- output (the formats themselves: tables.py) ------------------------------------------------------

# --- commands -----------------------------------------------------------------------------------

def cmd_db_init(args: argparse.Namespace) -> int:
    result = service.init()
    emit(args, result, lambda r: f"lab database ready at {r['url']} (schema {r['schema']})")
    return EXIT_OK


def cmd_db_version(args: argparse.Namespace) -> int:
    data = {"url": config.safe_url(config.db_url()), "current": db.current_revision(), "head": db.head_revision()}
    emit(args, data, fields)
    return EXIT_OK


def cmd_config_show(args: argparse.Namespace) -> int:
    settings = service.get_settings().to_json()
    flat = {k: v for k, v in settings.items() if k != "booking"}
    flat.update({f"booking.{k}": v for k, v in settings["booking"].items()})
    emit(args, settings, lambda _: fields(flat))
    return EXIT_OK


def _assignments(items: Sequence[str], what: str) -> dict[str, str]:
    """KEY=VALUE items as a dict; a bad key or value is an error naming it."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValidationError(what, f"{shown(item)}: write {what} as KEY=VALUE")
        problem = text_problem(key, 128)
        if problem:
            raise ValidationError(what, f"key {problem}")
        problem = text_problem(value)
        if problem:
            raise ValidationError(key, problem)
        out[key] = value
    return out


def cmd_config_set(args: argparse.Namespace) -> int:
    updates = {key: value.strip() for key, value in _assignments(args.assignments, "settings").items()}
    result = service.configure(updates)
    emit(args, result, lambda _: "settings updated: " + ", ".join(sorted(updates)))
    return EXIT_OK


def cmd_slave_add(args: argparse.Namespace) -> int:
    row = service.add_slave(args.name, args.address, args.cores, args.ram_mb, args.disk_gb, args.status)
    emit(args, row, lambda s: f"slave {s['name']} added: {s['cores_total']} cores, {s['ram_mb_total']} MB RAM,"
                              f" {s['disk_gb_total']} GB disk, {s['status']}")
    return EXIT_OK


def cmd_slave_list(args: argparse.Namespace) -> int:
    emit(args, service.list_slaves(), lambda rows: table(rows, SLAVE_COLUMNS))
    return EXIT_OK


def cmd_slave_remove(args: argparse.Namespace) -> int:
    from vcl_sched import registry

    row = registry.remove_slave(args.name)
    emit(args, row, lambda r: f"slave {r['removed']} removed")
    return 0


def cmd_slave_status(args: argparse.Namespace) -> int:
    row = service.set_slave_status(args.name, args.status)
    emit(args, row, lambda s: f"slave {s['name']} is {s['status']}")
    return EXIT_OK


def cmd_image_add(args: argparse.Namespace) -> int:
    row = service.add_image(args.name, args.disk_file, description=args.description, kernel=args.kernel,
                            ramdisk=args.ramdisk, cmdline=args.cmdline, cores=args.cores, ram_mb=args.ram_mb,
                            disk_gb=args.disk_gb, platform_value=args.platform_value)
    emit(args, row, lambda i: f"image {i['name']} added (id {i['id']})")
    return EXIT_OK


def cmd_image_list(args: argparse.Namespace) -> int:
    emit(args, service.list_images(),
         lambda rows: table(rows, ("id", "name", "disk_file", "kernel", "cores", "ram_mb", "disk_gb")))
    return EXIT_OK


def _request_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"owner": args.owner, "cores": args.cores, "ram_mb": args.ram_mb, "hours": args.hours,
            "platform_value": args.platform_value, "register_as_slave": args.register_as_slave,
            "member": args.member, "image": args.image, "user": args.user, "dry_run": args.dry_run}


def cmd_reserve(args: argparse.Namespace) -> int:
    if args.run:
        if args.dry_run:
            print("vcl: --dry-run and --run do not go together (the reserve playbook has no dry run)",
                  file=sys.stderr)
            return EXIT_USAGE
        # Every field is checked here first: a bad one is refused naming it before any playbook starts.
        fields = {k: v for k, v in _request_kwargs(args).items() if k != "dry_run"}
        bookings.check_fields(start=args.start, seats=args.seats, disk_gb=getattr(args, "disk_gb", None),
                              prelaunch=args.prelaunch, **fields)
        series = sessions.series_fields(args.weekdays, args.weeks)
        extravars = {k: v for k, v in _request_kwargs(args).items() if k != "dry_run" and v is not None}
        keep = {"keep_disk": True} if args.keep_disks else {}
        return _submit(args, "reserve", {**extravars, **series, "start": args.start, "seats": args.seats,
                                         "prelaunch": bool(args.prelaunch), **keep})
    series = sessions.series_fields(args.weekdays, args.weeks)
    if series:
        result = sessions.reserve_series(start=args.start, seats=args.seats, prelaunch=args.prelaunch, **series,
                                         keep_disks=args.keep_disks, **_request_kwargs(args))
        emit(args, result, _series_text)
        return EXIT_OK if result["accepted"] else EXIT_NOT_SERVED
    result = service.reserve(start=args.start, seats=args.seats, prelaunch=args.prelaunch, keep_disks=args.keep_disks,
                             **_request_kwargs(args))
    emit(args, result, reservation_text)
    return EXIT_OK if result["state"] == "accepted" else EXIT_NOT_SERVED


def _series_text(r: dict[str, Any]) -> str:
    lines = [f"weekly series {r['series']}: {r['weekdays']} for {r['weeks']} week(s): {r['accepted']} accepted"
             f" ({r['moved']} moved), {r['refused']} refused"]
    for o in r["occurrences"]:
        lines.append("  " + reservation_text(o))
    return "\n".join(lines)


def cmd_cancel(args: argparse.Namespace) -> int:
    result = sessions.cancel(reservation=args.reservation, series=args.series)
    emit(args, result, lambda r: f"cancelled {', '.join(map(str, r['cancelled'])) or 'nothing'}"
                                 + (f"; ending VMs {', '.join(map(str, r['ending']))} at the next dispatch"
                                    if r["ending"] else ""))
    return EXIT_OK


def cmd_seat_take(args: argparse.Namespace) -> int:
    if args.run:
        extravars = {"reservation": str(id_value("reservation", args.reservation))}
        if args.user is not None:
            extravars["user"] = check_name("user", args.user)
        return _submit(args, "seat", extravars)
    result = sessions.take_seat(args.reservation, args.user)
    emit(args, result, lambda r: f"seat {r['seat']} of session {r['reservation']} for {r['user']}: instance"
                                 f" {r['id']} {r['state']} ({r['how']})"
                                 + ("; launch it: vcl launch " + str(r["id"]) if r["state"] == "pending" else ""))
    return EXIT_OK


def cmd_session_show(args: argparse.Namespace) -> int:
    result = sessions.session_view(args.reservation)

    def text(v: dict[str, Any]) -> str:
        r = v["reservation"]
        head = (f"session {r['id']} of {v['group']}: {r['state']}, {r['start'] or r['requested_start']} → {r['end']},"
                f" {r['seats']} seat(s) of {r['cores']} core(s) / {r['ram_mb']} MB, {v['running']} running")
        waiting = f"\nmembers without a seat: {', '.join(v['members_without_seat'])}" if v["members_without_seat"] \
            else ""
        return head + "\n" + table(v["seats"], ("seat", "user", "id", "state", "slave", "public_ip", "ends_at")) \
            + waiting

    emit(args, result, text)
    return EXIT_OK


def cmd_request(args: argparse.Namespace) -> int:
    result = service.request(disk_gb=args.disk_gb, keep_disk=args.keep_disk, **_request_kwargs(args))
    emit(args, result, request_text)
    return EXIT_OK if result["decision"] == "place" else EXIT_NOT_SERVED


def cmd_reservations(args: argparse.Namespace) -> int:
    data = service.list_reservations(include_all=args.all)
    if args.json:
        # The contract: a list of reservation objects, plus the pool's cores.
        emit(args, {"cores": data["cores"], "reservations": data["reservations"]}, str)
    else:
        print(f"pool: {data['cores']} cores up")
        print(table(data["reservations"], RES_COLUMNS))
    return EXIT_OK


def cmd_instances(args: argparse.Namespace) -> int:
    emit(args, service.list_instances(include_all=args.all), lambda rows: table(rows, INST_COLUMNS))
    return EXIT_OK


def cmd_release(args: argparse.Namespace) -> int:
    row = service.release(args.id)
    emit(args, row, lambda i: f"instance {i['id']} {i['state']}: cores, RAM, disk and addresses released")
    return EXIT_OK


def cmd_extend(args: argparse.Namespace) -> int:
    from . import lifecycle

    result = lifecycle.extend(args.id, args.hours)
    emit(args, result, lambda r: f"instance {r['id']} now ends at {r['ends_at']} ({r['hours_added']} more hour(s))")
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    emit(args, service.audit_log(limit=whole("limit", args.limit, 1, AUDIT_LIMIT_MAX)),
         lambda rows: table(rows, ("id", "at", "actor", "object", "action", "after")))
    return EXIT_OK


def cmd_priority(args: argparse.Namespace) -> int:
    from .priority import COEFFICIENT_MAX, PLATFORM_VALUE_CEILING, parse_priority_inputs, platform_factor, priority

    coefficient = bounded("coefficient", args.coefficient, 0.0, COEFFICIENT_MAX, low_open=True)
    pfv_max = bounded("platform_value_max", args.platform_value_max, 0.0, PLATFORM_VALUE_CEILING, low_open=True)
    inputs = parse_priority_inputs(args.platform_value, args.register_as_slave, args.ram_mb, args.minutes, args.member,
                                   platform_value_max=pfv_max)
    data = {"pf": round(platform_factor(inputs), 6), "priority": round(priority(inputs, coefficient), 6),
            "coefficient": coefficient}
    emit(args, data, lambda d: f"PF = {d['pf']:.3f}   Pi = {d['priority']:.3f}")
    return EXIT_OK


# --- playbook runs (vcl_sched.runner): the playbooks do the work, `vcl` submits them -------------

def _not_served(result: dict[str, Any] | None) -> bool:
    """A vcl_result that is a refusal or a wait (exit 3), as the scheduler's own answers are."""
    if not isinstance(result, dict):
        return False
    return (result.get("state") in ("refused", "waiting") or result.get("decision") in ("refused", "wait")
            or bool(result.get("refused")))


def _run_text(run: dict[str, Any]) -> str:
    result = run["vcl_result"]
    lines = [f"{run['playbook']}: {run['status']} (rc {run['rc']})"]
    if not isinstance(result, dict):
        lines.append("(no vcl_result)" if result is None else str(result))
        return "\n".join(lines)
    scalars = {k: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for k, v in result.items()
               if not (isinstance(v, list) and v and all(isinstance(i, dict) for i in v))}
    if scalars:
        lines.append(fields(scalars, list(scalars)))  # every key, empty lists too (shown as -)
    for key, rows in result.items():
        if key not in scalars:
            columns = list(dict.fromkeys(c for row in rows for c in row))
            lines += ["", f"{key}:", table(rows, columns)]
    return "\n".join(lines)


def _submit(args: argparse.Namespace, playbook: str, extravars: dict[str, Any]) -> int:
    from . import runner

    actor = acting.current()
    if not actor.is_controller:  # the playbook's database actions act as the logged-in user
        extravars = {**extravars, "acting_user": actor.name}
    run = runner.run(playbook, extravars, project=args.project, inventory=args.inventory)
    emit(args, run.to_json(), _run_text)
    for failure in run.failures:
        where = f"{failure.host}: {failure.task}: " if failure.host != "-" else ""
        print(f"vcl: {run.playbook} {'unreachable' if failure.unreachable else 'failed'}: {where}{failure.message}",
              file=sys.stderr)
    if _not_served(run.vcl_result):
        return EXIT_NOT_SERVED
    if not run.ok:
        if not run.failures:
            print(f"vcl: {run.playbook} ended {run.status} (rc {run.rc})", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    extravars: dict[str, Any] = dict(_assignments(args.extra_vars, "extra_vars"))
    return _submit(args, args.playbook, extravars)


def cmd_lifecycle(args: argparse.Namespace) -> int:
    """launch, suspend, resume, stop (ID) and dispatch, reconcile (no vars): their playbook, nothing else."""
    if getattr(args, "id", None) is None:
        return _submit(args, args.command, {})
    return _submit(args, args.command, {"id": str(id_value("id", args.id))})  # checked here, handed on as text


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(json_output=args.json)


# --- parser -------------------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``vcl reserve: error: the following arguments are required:
    --owner`` (exit 2). The usage itself is in ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, printable(f"{self.prog}: error: {message} (see `{self.prog} --help`)") + "\n")


def _common() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    common.add_argument("--now", default=argparse.SUPPRESS, metavar="'YYYY-MM-DD HH:MM'",
                        help="pretend the time is this (sets VCL_NOW)")
    common.add_argument("--db", default=argparse.SUPPRESS, metavar="URL", help="database URL (sets VCL_DB_URL)")
    common.add_argument("--as", default=argparse.SUPPRESS, dest="as_user", metavar="USER",
                        help="act as this lab user, with their role's rights (password from VCL_PASSWORD or a"
                             " prompt); without it you act as the controller's admin")
    return common


def _request_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--owner", required=True, help="the group that owns it (`vcl group add`)")
    p.add_argument("--cores", required=True)
    p.add_argument("--ram-mb", required=True, dest="ram_mb")
    p.add_argument("--platform-value", dest="platform_value",
                   help="PfV of the Para-scheduler (admins only; default: the image's platform value)")
    p.add_argument("--register-as-slave", default=0, dest="register_as_slave", help="RAS: 0 or 1 (default 0)")
    p.add_argument("--member", help="MON: 0 or 1 (admins only; default: whether the user belongs to the group)")
    p.add_argument("--image", help="image name (`vcl image add`)")
    p.add_argument("--user", help="the requesting user (their --register-as-slave 1 promises their PC)")
    p.add_argument("--dry-run", action="store_true", dest="dry_run", help="decide and show, write nothing")


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", metavar="DIR",
                   help="the VCL project to run the playbook from (default: the checkout vcl runs from)")
    p.add_argument("-i", "--inventory", metavar="PATH", help="inventory (default: the project's ansible.cfg)")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = Parser(prog="vcl", description="VCL: the lab database and the Para-scheduler", parents=[common])
    parser.add_argument("--version", action="version", version=f"vcl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str, parent=sub):  # type: ignore[no-untyped-def]
        p = parent.add_parser(name, help=help_, description=help_, parents=[common])
        p.set_defaults(func=func)
        return p

    dbp = sub.add_parser("db", help="create or upgrade the lab database").add_subparsers(dest="sub", required=True)
    add("init", cmd_db_init, "create the database or migrate it to this version (keeps data)", dbp)
    add("upgrade", cmd_db_init, "migrate the database to this version (keeps data)", dbp)
    add("version", cmd_db_version, "show the schema version", dbp)

    cfg = sub.add_parser("config", help="scheduling settings").add_subparsers(dest="sub", required=True)
    add("show", cmd_config_show, "show the settings", cfg)
    p = add("set", cmd_config_set, "change settings: KEY=VALUE ... (e.g. booking.max_hours=4)", cfg)
    p.add_argument("assignments", nargs="+", metavar="KEY=VALUE")

    cli_people.add_commands(sub, add)  # `vcl user ...` and `vcl group ...`
    cli_disks.add_commands(sub, add, _run_options, _submit)  # `vcl disk ...`
    cli_lend.add_commands(sub, add, _run_options, _submit)  # `vcl lend ...`

    slv = sub.add_parser("slave", help="the KVM hosts of the pool").add_subparsers(dest="sub", required=True)
    p = add("add", cmd_slave_add, "register a slave with its capacity", slv)
    p.add_argument("name")
    p.add_argument("--address", required=True)
    p.add_argument("--cores", required=True)
    p.add_argument("--ram-mb", required=True, dest="ram_mb")
    p.add_argument("--disk-gb", required=True, dest="disk_gb")
    p.add_argument("--status", default="up", help="up, down or draining")
    add("list", cmd_slave_list, "list slaves and their use", slv)
    p = add("set-status", cmd_slave_status, "mark a slave up, down or draining", slv)
    p.add_argument("name")
    p.add_argument("status", help="up, down or draining")
    p = add("remove", cmd_slave_remove, "delete a slave (refused while it hosts VMs)", slv)
    p.add_argument("name")

    img = sub.add_parser("image", help="VM images").add_subparsers(dest="sub", required=True)
    p = add("add", cmd_image_add, "add an image from the image store", img)
    p.add_argument("name")
    p.add_argument("--disk-file", required=True, dest="disk_file",
                   help="the base disk in the image's own directory of the image store (`vcl config show`"
                        " image_store): STORE/NAME/FILE or STORE/NAME/VERSION/FILE; letters, digits and ._+-/ only")
    p.add_argument("--kernel", help="a kernel to boot directly, in the disk's directory")
    p.add_argument("--ramdisk", help="its initramfs, in the disk's directory")
    p.add_argument("--cmdline")
    p.add_argument("--description", default="")
    p.add_argument("--cores", default=1)
    p.add_argument("--ram-mb", default=512, dest="ram_mb")
    p.add_argument("--disk-gb", default=2, dest="disk_gb")
    p.add_argument("--platform-value", default=5, dest="platform_value",
                   help="PfV of requests for this image by people who are not admins (0..10, default 5)")
    add("list", cmd_image_list, "list images", img)

    p = add("reserve", cmd_reserve, "book a block of seats for a time window (advance reservation)")
    _request_options(p)
    p.add_argument("--seats", default=1, help="seats in the block, each one VM of --cores and --ram-mb (default 1)")
    p.add_argument("--start", required=True, help="'YYYY-MM-DD HH:MM', lab local time; with --run also"
                                                  " 'now' (best effort)")
    p.add_argument("--hours", required=True)
    p.add_argument("--no-prelaunch", action="store_false", dest="prelaunch",
                   help="start each seat when a member takes it (default: every seat runs when the window opens,"
                        " started prelaunch_lead_minutes before)")
    p.add_argument("--keep-disks", action="store_true", dest="keep_disks",
                   help="every seat starts from its holder's kept disk of --image and keeps it at the end (SPEC §10)")
    p.add_argument("--weekdays", help="a weekly session: on these days (mon,wed), at --start's time of day")
    p.add_argument("--weeks", help="a weekly session: for this many weeks from --start's week (1..52)")
    p.add_argument("--run", action="store_true",
                   help="submit vcl.lab.reserve with these values (ansible-runner) instead of recording"
                        " the reservation directly")
    _run_options(p)

    p = add("cancel", cmd_cancel, "cancel a session (a reservation) or every occurrence of a weekly series")
    p.add_argument("reservation", nargs="?", help="the reservation's id")
    p.add_argument("--series", help="cancel every occurrence of this series still to come or running")

    seat = sub.add_parser("seat", help="seats of class sessions").add_subparsers(dest="sub", required=True)
    p = add("take", cmd_seat_take, "take a seat of a running session (for yourself, or --user for a member)", seat)
    p.add_argument("reservation", help="the session's reservation id")
    p.add_argument("--user", help="the member who takes it (teachers and admins; default: you)")
    p.add_argument("--run", action="store_true",
                   help="run vcl.lab.seat: take it and launch its VM, then print how to reach it")
    _run_options(p)
    sess = sub.add_parser("session", help="class sessions").add_subparsers(dest="sub", required=True)
    p = add("show", cmd_session_show, "a session's seats: who holds which VM, its state and address", sess)
    p.add_argument("reservation", help="the session's reservation id")

    p = add("request", cmd_request, "a best-effort VM now: placement, or the preemption/wait answer")
    _request_options(p)
    p.add_argument("--hours", required=True, help="1..look-ahead limit (booking.lookahead_max_hours)")
    p.add_argument("--disk-gb", dest="disk_gb", help="default: the image's")
    p.add_argument("--keep-disk", action="store_true", dest="keep_disk",
                   help="start from your kept disk of --image (if any) and keep the disk when the VM stops")

    p = add("reservations", cmd_reservations, "list reservations (accepted and active; --all for every one)")
    p.add_argument("--all", action="store_true")
    p = add("instances", cmd_instances, "list VMs (pending, running, suspended; --all for every one)")
    p.add_argument("--all", action="store_true")
    p = add("release", cmd_release, "end a VM and give back its cores, RAM, disk and addresses")
    p.add_argument("id")
    p = add("extend", cmd_extend, "give a running best-effort VM more hours (within the look-ahead and what is"
                                  " promised on its slave)")
    p.add_argument("id")
    p.add_argument("--hours", required=True, help="how many more hours (1..booking.lookahead_max_hours)")
    p = add("audit", cmd_audit, "the audit log, newest first")
    p.add_argument("--limit", default=50, help=f"at most this many entries (1..{AUDIT_LIMIT_MAX})")
    p = add("priority", cmd_priority, "compute PF and Pi for request values")
    p.add_argument("--platform-value", required=True, dest="platform_value")
    p.add_argument("--register-as-slave", required=True, dest="register_as_slave")
    p.add_argument("--ram-mb", required=True, dest="ram_mb")
    p.add_argument("--minutes", required=True)
    p.add_argument("--member", required=True)
    p.add_argument("--coefficient", default=0.20, help="c in Pi = 10 + c * PF (0 < c <= 10)")
    p.add_argument("--platform-value-max", default=10, dest="platform_value_max",
                   help="the setting priority.platform_value_max (PfV is in 0..this)")
    add("demo", cmd_demo, "a scheduler demonstration on a fresh embedded database")

    p = add("run", cmd_run, "run one of the collection's playbooks (vcl.lab.NAME) and print its vcl_result")
    p.add_argument("playbook", metavar="PLAYBOOK", help="a playbook of vcl.lab (reserve, dispatch...)"
                   " or a playbook file in the project")
    p.add_argument("-e", "--extra-vars", action="append", default=[], dest="extra_vars", metavar="KEY=VALUE")
    _run_options(p)
    for name, help_ in (("launch", "launch a VM: run vcl.lab.launch"),
                        ("suspend", "suspend a VM, keeping its memory: run vcl.lab.suspend"),
                        ("resume", "resume a suspended VM: run vcl.lab.resume"),
                        ("stop", "stop a VM and release what it holds: run vcl.lab.stop")):
        p = add(name, cmd_lifecycle, help_)
        p.add_argument("id", help="instance id")
        _run_options(p)
    for name, help_ in (("dispatch", "serve what is due now (ends, reservations, waiting requests, resumes):"
                                     " run vcl.lab.dispatch"),
                        ("reconcile", "compare the database with libvirt on every slave: run vcl.lab.reconcile")):
        _run_options(add(name, cmd_lifecycle, help_))

    add_plugin_commands(sub)
    return parser


# --- commands from other distributions ------------------------------------------------------------

# `vcl lab ...` comes from the vcl-lab distribution (lab/ in the checkout): an entry point in this group,
# "NAME = module:register", whose register(subparsers) adds the command NAME. vcl_sched imports none of them.
COMMANDS_GROUP = "vcl.commands"
# Commands another distribution provides, with what to install when one is typed but absent.
OPTIONAL_COMMANDS = {
    "lab": "the simulated lab is the vcl-lab distribution, lab/ in the VCL checkout:"
           " `.venv/bin/pip install -e ./lab` (scripts/setup.sh installs it)",
}


def add_plugin_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the commands of every entry point in COMMANDS_GROUP. A known command that is not installed
    (or fails to load) stays out of the help but answers, when typed, with what to do (exit 2)."""
    problems: dict[str, str] = {}
    for entry in sorted(metadata.entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        if entry.name in sub.choices:
            problems.setdefault(entry.name, f"two distributions provide it; {entry.value} is not loaded")
            continue
        try:
            entry.load()(sub)
        except Exception as err:  # a broken extension must not take the scheduler's commands with it
            problems[entry.name] = f"{entry.value} ({entry.dist.name if entry.dist else '?'}) failed to load: {err}"
            sub.choices.pop(entry.name, None)
        else:
            if entry.name not in sub.choices:
                problems[entry.name] = f"{entry.value} did not register a command named {entry.name}"
    for name, hint in OPTIONAL_COMMANDS.items():
        if name not in sub.choices:
            problems.setdefault(name, f"`vcl {name}` is not installed: {hint}")
    for name, problem in problems.items():
        if name in sub.choices:
            continue
        p = sub.add_parser(name, add_help=False)  # no help= : not listed in `vcl --help`
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_unavailable(problem))


def _unavailable(problem: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        print(f"vcl: {problem}", file=sys.stderr)
        return EXIT_USAGE

    return run


def check_arguments(args: argparse.Namespace) -> None:
    """Every text argument (and every item of a list of them) is valid UTF-8 without control characters
    and at most MAX_TEXT characters long; a ValidationError names the argument. Runs before anything
    else, so such a value never reaches the environment, the database or a playbook."""
    for dest, value in vars(args).items():
        if dest in _NOT_TEXT_CHECKED:
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                problem = text_problem(item, MAX_TEXT)
                if problem:
                    raise ValidationError(dest, problem)


def _login(name: str) -> acting.Actor:
    """``--as USER``: the user's password from VCL_PASSWORD, else asked on the terminal; never an argument."""
    import getpass

    password = os.environ.get("VCL_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            raise ValidationError("as", "set VCL_PASSWORD, or run on a terminal to be asked for the password")
        password = getpass.getpass(f"password for {printable(name)}: ")
    return people.authenticate(name, password)


def _check_db_url(url: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except (ArgumentError, ValueError) as err:
        raise ValidationError("db", f"not a database URL like sqlite:///path or postgresql://...: {err}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.json = getattr(args, "json", False)
    try:
        check_arguments(args)
        if getattr(args, "now", None):
            os.environ["VCL_NOW"] = args.now
        if getattr(args, "db", None):
            _check_db_url(args.db)
            os.environ["VCL_DB_URL"] = args.db
        if os.environ.get("VCL_NOW"):
            config.now()  # a bad VCL_NOW is an error before anything runs
        actor = _login(args.as_user) if getattr(args, "as_user", None) else None
        with acting.acting(actor):
            return int(args.func(args))
    except VclError as err:
        print(printable(f"vcl: {err}"), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as err:
        # Not a known error: a bug (or a failure outside vcl). One line all the same, with what it was;
        # VCL_DEBUG=1 shows the traceback.
        if os.environ.get("VCL_DEBUG") == "1":
            raise
        print(printable(f"vcl: unexpected {type(err).__name__}: {err} (VCL_DEBUG=1 shows where)"), file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
