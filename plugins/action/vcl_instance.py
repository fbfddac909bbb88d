# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""Action plugin vcl.lab.vcl_instance: one step of a VM's life in the lab database, on the controller
(plugins/modules/vcl_instance.py documents it)."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleActionFail
from ansible_collections.vcl.lab.plugins.plugin_utils.vcl_controller import VclControllerAction

ACTIONS = ["describe", "lease", "unlease", "place", "unplace", "running", "failed", "suspended", "resumed", "stopped",
           "net_gone", "start_due", "dispatch_plan", "reconcile"]  # fmt: skip
NEEDS_ID = set(ACTIONS) - {"start_due", "dispatch_plan", "reconcile"}
READ_ONLY = {"describe", "dispatch_plan"}


# The task's arguments: the same as plugins/modules/vcl_instance.py documents.
ARGUMENT_SPEC = {
    "db_url": {"type": "str"},
    "action": {"type": "str", "required": True, "choices": ACTIONS},
    "id": {"type": "raw"},
    "acting_user": {"type": "str"},
    "exclude": {"type": "list", "elements": "str", "default": []},
    "console_port": {"type": "raw"},
    "reason": {"type": "str", "default": ""},
    "observed": {"type": "dict", "default": {}},
    "lease": {"type": "str", "no_log": False},
    "net_clean": {"type": "bool", "default": False},
}


class ActionModule(VclControllerAction):
    ARGUMENT_SPEC = ARGUMENT_SPEC

    def work(self, args: dict[str, Any], check_mode: bool) -> dict[str, Any]:
        from vcl_sched import lifecycle

        action, iid, url = args["action"], args["id"], args["db_url"] or None
        if action in NEEDS_ID and iid in (None, ""):
            raise AnsibleActionFail(f"id: action {action} needs the instance id")
        if check_mode and action not in READ_ONLY:
            if action in NEEDS_ID:
                return {"changed": True, "instance": lifecycle.describe(iid, url)}
            return {"changed": True}
        if action == "describe":
            if args["acting_user"]:  # on someone's behalf: their VM, their group's seat, or an admin
                from vcl_sched import sessions

                return {"changed": False, "instance": sessions.check_vm(iid, url)}
            return {"changed": False, "instance": lifecycle.describe(iid, url)}
        token = args["lease"] or None
        if action == "lease":
            taken = lifecycle.lease(iid, url)
            return {**taken, "changed": taken.pop("changed")}
        if action == "place":
            row = lifecycle.place(iid, args["exclude"], url, lease_token=token)
            return {"changed": row["placed"] == "claimed", "instance": row}
        if action == "unplace":
            row = lifecycle.unplace(iid, args["reason"], url, lease_token=token, net_clean=args["net_clean"])
            return {"changed": True, "instance": row}
        if action == "unlease":
            row = lifecycle.unlease(iid, token, args["reason"], url)
            return {"changed": row.pop("changed"), "instance": row}
        if action == "net_gone":
            gone = lifecycle.net_gone(iid, url)
            return {"changed": gone["changed"], "pairs_freed": gone["pairs_freed"]}
        if action == "running":
            row = lifecycle.mark_running(iid, args["console_port"], url, lease_token=token)
        elif action == "failed":
            row = lifecycle.mark_failed(iid, args["reason"], url, lease_token=token, net_clean=args["net_clean"])
        elif action in ("suspended", "resumed"):
            row = lifecycle.suspended(iid, action == "suspended", url)
        elif action == "stopped":
            row = lifecycle.stop(iid, url=url)
        elif action == "start_due":
            started = lifecycle.start_due_reservations(url=url)
            return {"changed": bool(started), "started": started}
        elif action == "dispatch_plan":
            return {"changed": False, "plan": lifecycle.dispatch_plan(url=url)}
        else:  # reconcile
            reconciled = lifecycle.reconcile(args["observed"], url)
            keys = ("lost", "down", "up", "capacity", "requeued", "leases_expired", "unclaimed")
            changed = any(reconciled[k] for k in keys)
            return {"changed": changed, "reconciled": reconciled}
        return {"changed": row.pop("changed"), "instance": row}
