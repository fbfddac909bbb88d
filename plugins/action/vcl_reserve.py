# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""Action plugin vcl.lab.vcl_reserve: a reservation or a best-effort request through the scheduler, on the
controller (plugins/modules/vcl_reserve.py documents it)."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleActionFail
from ansible_collections.vcl.lab.plugins.plugin_utils.vcl_controller import VclControllerAction

# The task's arguments: the same as plugins/modules/vcl_reserve.py documents.
ARGUMENT_SPEC = {
    "db_url": {"type": "str"},
    "owner": {"type": "str", "required": True},
    "user": {"type": "str"},
    "acting_user": {"type": "str"},
    "cores": {"type": "raw", "required": True},
    "ram_mb": {"type": "raw", "required": True},
    "hours": {"type": "raw", "required": True},
    "start": {"type": "str", "default": "now"},
    "platform_value": {"type": "raw"},
    "register_as_slave": {"type": "raw", "default": 0},
    "member": {"type": "raw"},
    "prelaunch": {"type": "bool", "default": True},
    "keep_disk": {"type": "bool", "default": False},
    "weekdays": {"type": "str"},
    "weeks": {"type": "raw"},
    "image": {"type": "str"},
    "disk_gb": {"type": "raw"},
    "seats": {"type": "raw", "default": 1},
}


class ActionModule(VclControllerAction):
    ARGUMENT_SPEC = ARGUMENT_SPEC

    def work(self, args: dict[str, Any], check_mode: bool) -> dict[str, Any]:
        from vcl_sched import service

        common = {
            "owner": args["owner"], "cores": args["cores"], "ram_mb": args["ram_mb"], "hours": args["hours"],
            "platform_value": args["platform_value"], "register_as_slave": args["register_as_slave"],
            "member": args["member"], "image": args["image"] or None, "user": args["user"] or None,
            "dry_run": check_mode, "url": args["db_url"] or None,
        }  # fmt: skip
        start = (args["start"] or "now").strip()
        if start.lower() == "now":
            if str(args["seats"]).strip() not in ("1", ""):
                raise AnsibleActionFail("seats: a best-effort request (start=now) is one VM; book seats with a start")
            if args["weekdays"] is not None or args["weeks"] is not None:
                raise AnsibleActionFail("weekdays: a best-effort request (start=now) does not recur; give a start")
            result = service.request(disk_gb=args["disk_gb"], keep_disk=args["keep_disk"], **common)
            kind = "BE"
        else:
            if args["disk_gb"] is not None:
                raise AnsibleActionFail("disk_gb: only a best-effort request (start=now) takes a disk size;"
                                        " a reservation uses the image's")
            from vcl_sched import sessions

            weekly = sessions.series_fields(args["weekdays"], args["weeks"])
            if weekly:
                series = sessions.reserve_series(start=start, seats=args["seats"], prelaunch=args["prelaunch"],
                                                 keep_disks=args["keep_disk"], **weekly, **common)
                return {"changed": series["series"] is not None, "result": series, "kind": "series"}
            result = service.reserve(start=start, seats=args["seats"], prelaunch=args["prelaunch"],
                                     keep_disks=args["keep_disk"], **common)
            kind = "AR"
        return {"changed": result.get("id") is not None, "result": result, "kind": kind}
