"""`vcl lab up|down|status|guest` (also runnable alone: ``python3 -m vcl_lab.cli up``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from vcl_lab.state import DEFAULT_NAME
from vcl_sched.errors import VclError


def _json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def _progress(args: argparse.Namespace):
    # With --json, stdout carries only the JSON document: progress goes to stderr.
    stream = sys.stderr if _json(args) else sys.stdout
    return lambda msg: print(msg, file=stream, flush=True)


def _fail(args: argparse.Namespace, err: Exception) -> int:
    if _json(args):
        print(json.dumps({"ok": False, "error": str(err)}))
    print(f"vcl lab: {err}", file=sys.stderr)
    return 1


def cmd_up(args: argparse.Namespace) -> int:
    from vcl_lab import ops
    from vcl_lab.status import format_status, status

    try:
        ops.up(
            args.name,
            slaves=args.slaves,
            subnet=args.subnet,
            inventory_dir=Path(args.inventory) if args.inventory else None,
            wait=not args.no_wait,
            progress=_progress(args),
        )
        data = status(args.name, probe=not args.no_wait)
    except VclError as err:
        return _fail(args, err)
    if _json(args):
        print(json.dumps({"ok": True, **data}, indent=2))
    else:
        print(format_status(data))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from vcl_lab import ops

    try:
        summary = ops.down(args.name, progress=_progress(args))
        leftovers = ops.is_clean(args.name)
    except VclError as err:
        return _fail(args, err)
    if _json(args):
        print(json.dumps({"ok": not leftovers, **summary, "leftovers": leftovers}, indent=2))
    elif leftovers:
        print("left behind:\n  " + "\n  ".join(leftovers), file=sys.stderr)
    return 1 if leftovers else 0


def cmd_status(args: argparse.Namespace) -> int:
    from vcl_lab.status import format_status, status

    try:
        data = status(args.name, probe=not args.no_probe)
    except VclError as err:
        return _fail(args, err)
    if _json(args):
        print(json.dumps(data, indent=2))
    else:
        print(format_status(data))
    return 0 if data["healthy"] or (args.no_probe and data["exists"]) else 3


def cmd_guest(args: argparse.Namespace) -> int:
    from vcl_lab.guest import ensure_guest

    try:
        guest = ensure_guest(rebuild=args.rebuild, progress=_progress(args))
    except VclError as err:
        return _fail(args, err)
    if _json(args):
        print(json.dumps({"ok": True, **guest.to_dict()}, indent=2))
    else:
        how = f"built in {guest.build_seconds:.1f} s" if guest.built else "cached"
        print(f"test guest {guest.key} ({how}): {guest.kernel_package} {guest.kernel_version}")
        for label, path in (("vmlinux", guest.vmlinux), ("initrd", guest.initrd), ("disk", guest.disk)):
            print(f"  {label:<8} {path}")
        print(f"  cmdline  {guest.cmdline}  (static address: add vcl.ip=ADDR/PREFIX [vcl.gw=ADDR])")
        print(f"  marker   tcp port {guest.marker_port}: one line `vcl-guest ready <ip> <mac>` per connection")
    return 0


def register(subparsers) -> None:
    """Add `lab` with its `up`, `down`, `status` and `guest` sub-commands to the `vcl` command
    (the vcl.commands entry point of lab/pyproject.toml names this function)."""
    lab = subparsers.add_parser(
        "lab",
        help="the simulated lab: systemd-nspawn machines on this host",
        description="A lab of systemd-nspawn machines (master, slaves, a client) on a guarded host bridge.",
    )
    sub = lab.add_subparsers(dest="lab_command", metavar="{up,down,status,guest}")
    sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--name", default=DEFAULT_NAME, help=f"lab name (default {DEFAULT_NAME})")
        # SUPPRESS: do not overwrite the main command's global --json with a default.
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")

    p_up = sub.add_parser("up", help="build (once) and boot the lab; harmless when it runs already")
    common(p_up)
    p_up.add_argument("--slaves", type=int, default=2, help="number of slaves (default 2)")
    p_up.add_argument("--subnet", help="the lab LAN as a /24 (default: a free pair in 10.213.0.0/16)")
    p_up.add_argument("--inventory", help="directory for hosts.yml (default inventory/lab for vcl0)")
    p_up.add_argument("--no-wait", action="store_true", help="do not wait for ssh and libvirtd")
    p_up.set_defaults(func=cmd_up)

    p_down = sub.add_parser("down", help="remove every machine, mount, link, rule and state of the lab")
    common(p_down)
    p_down.set_defaults(func=cmd_down)

    p_status = sub.add_parser("status", help="machines, ssh, libvirtd, bridge and guard")
    common(p_status)
    p_status.add_argument("--no-probe", action="store_true", help="skip the ssh and libvirtd checks")
    p_status.set_defaults(func=cmd_status)

    p_guest = sub.add_parser("guest", help="build (once) the tiny bootable test VM: vmlinux, initrd, qcow2 base")
    p_guest.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    p_guest.add_argument("--rebuild", action="store_true", help="build again even when cached")
    p_guest.set_defaults(func=cmd_guest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vcl")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every command run")
    subparsers = parser.add_subparsers(dest="command")
    subparsers.required = True
    register(subparsers)
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if first is not None and argv[first] != "lab":
        argv.insert(first, "lab")  # python3 -m vcl_lab.cli up
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
