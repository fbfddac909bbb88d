"""How the `vcl` command (and `vcl demo`) prints results for people: tables, key/value lists, and one
summary of a reservation or a request. With ``--json`` the CLI prints the data itself instead."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .errors import VclError

SLAVE_COLUMNS = ("name", "address", "status", "cores_used", "cores_total", "ram_mb_used", "ram_mb_total",
                 "disk_gb_used", "disk_gb_total")
RES_COLUMNS = ("id", "owner", "state", "priority", "seats", "cores", "ram_mb", "start", "end", "series", "rescheduled",
               "reason")
INST_COLUMNS = ("id", "owner", "kind", "state", "priority", "slave", "cores", "ram_mb", "mac", "private_ip",
                "public_ip", "ends_at")


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def printable(text: str) -> str:
    """``text`` on one line that any terminal shows as it is: control characters (newlines, escape
    sequences), lone surrogates (undecodable bytes of argv) and other unprintable characters are written
    as Python escapes (``\\n``, ``\\x1b``, ``\\udcff``). Values are data, so they never break a table's
    rows, an error's single line, or the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list):
        return printable(",".join(str(v) for v in value)) or "-"
    return printable(str(value))


def fields(obj: dict[str, Any], keys: Sequence[str] | None = None) -> str:
    keys = keys or [k for k in obj if not isinstance(obj[k], dict | list) or obj[k]]
    width = max(len(k) for k in keys)
    return "\n".join(f"{k.ljust(width)}  {_cell(obj.get(k))}" for k in keys)


def _block(r: dict[str, Any]) -> str:
    seats = r.get("seats", 1)
    return f"{r['cores']} cores" if seats == 1 else f"{seats} seats × {r['cores']} cores"


def reservation_text(r: dict[str, Any]) -> str:
    head = "DRY RUN (nothing written): " if r.get("dry_run") else ""
    if r["state"] == "refused":
        return f"{head}reservation refused (priority {r['priority']:.3f}): {r['reason']}"
    lines = [f"{head}reservation {r['id'] if r['id'] is not None else '-'} accepted, priority {r['priority']:.3f}:"
             f" {_block(r)} {r['start']} → {r['end']}"]
    if r["reason"]:
        lines.append(f"  {r['reason']}")
    if r.get("warning"):
        lines.append(f"  warning: {r['warning']}")
    lines += [f"  moved reservation {m['id']}: {m['from']} → {m['to']} ({m['reason']})" for m in r["moved"]]
    return "\n".join(lines)


def request_text(r: dict[str, Any]) -> str:
    head = "DRY RUN (nothing written): " if r.get("dry_run") else ""
    lines = []
    if r["decision"] == "place":
        lines.append(f"{head}instance {r['id'] if r['id'] is not None else '-'} placed on {r['slave']}"
                     f" (priority {r['priority']:.3f}), {r['hours_granted']} h until {r['ends_at']}")
        if r.get("mac"):
            lines.append(f"  MAC {r['mac']}  private {r['private_ip']}  public {r['public_ip']}")
    elif r["decision"] == "suspend":
        lines.append(f"{head}request queued (priority {r['priority']:.3f}): suspend"
                     f" {', '.join('#' + str(v) for v in r['suspend'])} on {r['slave']} to place it")
    else:
        lines.append(f"{head}request {r['decision']} (priority {r['priority']:.3f})")
    if r.get("reason"):
        lines.append(f"  {r['reason']}")
    if r.get("warning"):
        lines.append(f"  warning: {r['warning']}")
    if r.get("explain"):
        lines.append(f"  placement: {r['explain']}")
    return "\n".join(lines)


# --- what every `vcl` command prints, and its exit codes (cli.py and cli_people.py) --------------------------

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_SERVED = 0, 1, 2, 3


def emit(args: argparse.Namespace, data: Any, text: Callable[[Any], str]) -> None:
    if args.json:
        try:
            document = json.dumps(data, indent=2, sort_keys=True, default=str, allow_nan=False)
        except ValueError as err:  # NaN or an infinity: every number is bounded, so this is a bug
            raise VclError(f"output: a result is not valid JSON ({err}); this is a bug in vcl") from None
        sys.stdout.write(document + "\n")
    else:
        print(text(data))
