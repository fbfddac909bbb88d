# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""Action plugin vcl.lab.vcl_lend: lent PCs in the lab database, on the controller (plugins/modules/vcl_lend.py
documents it)."""

from __future__ import annotations

from typing import Any

from ansible_collections.vcl.lab.plugins.plugin_utils.vcl_controller import VclControllerAction, need

ACTIONS = ["list", "owed", "due", "decline", "enrol", "reclaim", "move_begin", "move_commit", "move_abort", "finish"]
READS = ("list", "owed", "due")

# The task's arguments: the same as plugins/modules/vcl_lend.py documents.
ARGUMENT_SPEC = {
    "db_url": {"type": "str"},
    "action": {"type": "str", "required": True, "choices": ACTIONS},
    "acting_user": {"type": "str"},
    "id": {"type": "raw"},
    "user": {"type": "str"},
    "name": {"type": "str"},
    "address": {"type": "str"},
    "cores": {"type": "raw"},
    "ram_mb": {"type": "raw"},
    "disk_gb": {"type": "raw"},
    "hours": {"type": "raw"},
    "reason": {"type": "str", "default": "declined", "choices": ["declined", "unreachable"]},
    "running": {"type": "bool", "default": True},
    "console_port": {"type": "raw"},
}


class ActionModule(VclControllerAction):
    ARGUMENT_SPEC = ARGUMENT_SPEC

    def work(self, args: dict[str, Any], check_mode: bool) -> dict[str, Any]:
        from vcl_sched import lending

        action, url = args["action"], args["db_url"] or None
        if action == "list":
            return {"changed": False, "lent": lending.list_lent(url)}
        if action == "owed":
            return {"changed": False, "owed": lending.owed(url)}
        if action == "due":
            return {"changed": False, "due": lending.due(url)}
        if action in ("decline", "move_begin", "move_commit", "move_abort"):
            need(args, action, "id")
        if action in ("enrol", "reclaim", "finish"):
            need(args, action, "name")
        if check_mode:
            return {"changed": True}
        if action == "decline":
            return lending.decline(args["id"], args["reason"], url)
        if action == "enrol":
            need(args, action, "user", "address", "cores", "ram_mb", "disk_gb", "hours")
            return lending.enrol(user=args["user"], name=args["name"], address=args["address"], cores=args["cores"],
                                 ram_mb=args["ram_mb"], disk_gb=args["disk_gb"], hours=args["hours"],
                                 instance=args["id"] if args["id"] not in (None, "") else None, url=url)
        if action == "reclaim":
            return lending.reclaim(args["name"], url)
        if action == "move_begin":
            return {"changed": True, "move": lending.move_begin(args["id"], url)}
        if action == "move_commit":
            port = args["console_port"] if args["console_port"] not in (None, "") else None
            return {"changed": True, "instance": lending.move_commit(args["id"], args["running"], port, url)}
        if action == "move_abort":
            return lending.move_abort(args["id"], url)
        return lending.finish(args["name"], url)
