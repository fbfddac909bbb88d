"""`vcl disk ...` (SPEC §10): persistent disks, their usage and quotas, and captured images.

``list``, ``usage``, ``quota`` and ``keep`` read or write the database; ``delete`` and ``capture`` change files on
the master, so they run the playbook ``vcl.lab.disk`` (ansible-runner, as ``vcl stop`` runs ``vcl.lab.stop``),
after every argument is checked here. ``cli.build_parser`` calls :func:`add_commands`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from . import disks
from .tables import EXIT_OK, emit, table
from .validate import check_name, id_value

_Add = Callable[..., argparse.ArgumentParser]
DISK_COLUMNS = ("id", "user", "image", "group", "generation", "size_gb", "in_use_by", "updated_at")
USAGE_COLUMNS = ("used_gb", "quota_gb", "disks")


def cmd_disk_list(args: argparse.Namespace) -> int:
    emit(args, disks.list_disks(user=args.user), lambda rows: table(rows, DISK_COLUMNS))
    return EXIT_OK


def cmd_disk_usage(args: argparse.Namespace) -> int:
    def text(u: dict[str, Any]) -> str:
        return (table(u["users"], ("user", *USAGE_COLUMNS)) + "\n"
                + table(u["groups"], ("group", *USAGE_COLUMNS)))

    emit(args, disks.usage(user=args.user, group=args.group), text)
    return EXIT_OK


def cmd_disk_quota(args: argparse.Namespace) -> int:
    row = disks.set_quota(args.gb, user=args.user, group=args.group)
    who = f"user {row['user']}" if "user" in row else f"group {row['group']}"
    emit(args, row, lambda r: f"{who}: disk quota {r['quota_gb'] if r['quota_gb'] is not None else 'the default'}"
                              + (" GB" if r["quota_gb"] is not None else "") + ("" if r["changed"] else " (unchanged)"))
    return EXIT_OK


def cmd_disk_keep(args: argparse.Namespace) -> int:
    row = disks.set_keep(args.id, not args.off)
    emit(args, row, lambda r: f"instance {r['id']} {'keeps' if r['keep_disk'] else 'does not keep'} its disk"
                              " when it stops" + ("" if r["changed"] else " (unchanged)"))
    return EXIT_OK


def delete_vars(args: argparse.Namespace) -> dict[str, Any]:
    return {"disk_action": "delete", "disk": str(id_value("disk", args.id))}


def capture_vars(args: argparse.Namespace) -> dict[str, Any]:
    extravars: dict[str, Any] = {"disk_action": "capture", "disk": str(id_value("disk", args.id)),
                                 "image": check_name("image", args.image)}
    if args.groups:
        extravars["image_groups"] = [check_name("groups", g.strip()) for g in args.groups.split(",") if g.strip()]
    for key in ("cores", "ram_mb", "platform_value", "description"):
        if getattr(args, key) is not None:
            extravars[key] = str(getattr(args, key))
    return extravars


def add_commands(sub: argparse._SubParsersAction, add: _Add, run_options: Callable[..., None],  # type: ignore[type-arg]
                 submit: Callable[[argparse.Namespace, str, dict[str, Any]], int]) -> None:
    """Add `vcl disk ...`; ``submit(args, playbook, extravars)`` runs a playbook (``cli._submit``)."""

    def cmd_disk_delete(args: argparse.Namespace) -> int:
        return submit(args, "disk", delete_vars(args))

    def cmd_disk_capture(args: argparse.Namespace) -> int:
        return submit(args, "disk", capture_vars(args))

    dsk = sub.add_parser("disk", help="persistent disks: list, usage and quotas, keep, delete, capture as an image"
                         ).add_subparsers(dest="sub", required=True)
    p = add("list", cmd_disk_list, "kept disks (yours; a teacher's groups'; admins: every one, or --user's)", dsk)
    p.add_argument("--user")
    p = add("usage", cmd_disk_usage, "what users and groups keep, against their quotas", dsk)
    p.add_argument("--user")
    p.add_argument("--group")
    p = add("quota", cmd_disk_quota, "set a user's or a group's disk quota in GB (admins; 'default' resets it)", dsk)
    p.add_argument("gb", help="GB, or 'default' for the lab's disk_quota_user_gb / disk_quota_group_gb")
    p.add_argument("--user")
    p.add_argument("--group")
    p = add("keep", cmd_disk_keep, "make a live VM keep its disk when it stops (--off: not)", dsk)
    p.add_argument("id", help="instance id")
    p.add_argument("--off", action="store_true")
    p = add("delete", cmd_disk_delete, "delete a kept disk and free its quota: run vcl.lab.disk", dsk)
    p.add_argument("id", help="disk id (`vcl disk list`)")
    run_options(p)
    p = add("capture", cmd_disk_capture, "turn a kept disk into a new image version: run vcl.lab.disk", dsk)
    p.add_argument("id", help="disk id (`vcl disk list`)")
    p.add_argument("--image", required=True, help="the image's name: a new image, or a new version of one you own")
    p.add_argument("--groups", help="the groups it is for, comma-separated (default: a teacher's capture is for"
                                    " the disk's group; an admin's for every group)")
    p.add_argument("--cores", help="default cores (default: the disk's image's)")
    p.add_argument("--ram-mb", dest="ram_mb", help="default RAM in MB (default: the disk's image's)")
    p.add_argument("--platform-value", dest="platform_value", help="its PfV (default: the disk's image's)")
    p.add_argument("--description")
    run_options(p)
