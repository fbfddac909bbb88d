# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""Action plugin vcl.lab.vcl_disk: persistent disks, quotas and captures in the lab database, on the controller
(plugins/modules/vcl_disk.py documents it)."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleActionFail
from ansible_collections.vcl.lab.plugins.plugin_utils.vcl_controller import VclControllerAction, need

ACTIONS = ["list", "usage", "keep_begin", "keep_commit", "keep_abort", "delete", "capture_begin", "capture_commit"]

# The task's arguments: the same as plugins/modules/vcl_disk.py documents.
ARGUMENT_SPEC = {
    "db_url": {"type": "str"},
    "action": {"type": "str", "required": True, "choices": ACTIONS},
    "acting_user": {"type": "str"},
    "id": {"type": "raw"},
    "disk": {"type": "raw"},
    "user": {"type": "str"},
    "group": {"type": "str"},
    "size_bytes": {"type": "raw"},
    "sha256": {"type": "str"},
    "info": {"type": "raw"},
    "taken": {"type": "list", "elements": "str"},
    "image": {"type": "str"},
    "files": {"type": "dict", "default": {}},
    "cmdline": {"type": "str"},
    "groups": {"type": "raw"},
    "cores": {"type": "raw"},
    "ram_mb": {"type": "raw"},
    "platform_value": {"type": "raw"},
    "description": {"type": "str", "default": ""},
}


class ActionModule(VclControllerAction):
    ARGUMENT_SPEC = ARGUMENT_SPEC

    def work(self, args: dict[str, Any], check_mode: bool) -> dict[str, Any]:
        from vcl_sched import disks

        action, url = args["action"], args["db_url"] or None
        if action == "list":
            return {"changed": False, "disks": disks.list_disks(args["user"], url)}
        if action == "usage":
            return {"changed": False, "usage": disks.usage(args["user"], args["group"], url)}
        if action in ("keep_begin", "keep_commit", "keep_abort"):
            need(args, action, "id")
        if action in ("keep_commit", "keep_abort", "delete", "capture_begin", "capture_commit"):
            need(args, action, "disk")
        if action == "capture_begin":
            need(args, action, "image")
            return {"changed": False, "capture": disks.capture_begin(args["disk"], args["image"], args["taken"], url)}
        if check_mode:
            return {"changed": True}
        if action == "keep_begin":
            need(args, action, "size_bytes")
            return {"changed": True, "keep": disks.keep_begin(args["id"], args["size_bytes"], url)}
        if action == "keep_commit":
            need(args, action, "size_bytes", "sha256", "info")
            row = disks.keep_commit(args["id"], args["disk"], args["size_bytes"], args["sha256"], args["info"], url)
            return {"changed": True, "disk": row}
        if action == "keep_abort":
            row = disks.keep_abort(args["id"], args["disk"], url)
            return {"changed": row["changed"], "disk": row}
        if action == "delete":
            return {"changed": True, "disk": disks.delete_disk(args["disk"], url)}
        # capture_commit
        need(args, action, "image")
        files = args["files"] or {}
        if not files.get("disk_file"):
            raise AnsibleActionFail("files: action capture_commit needs files.disk_file")
        row = disks.capture_commit(args["disk"], args["image"], files["disk_file"], kernel=files.get("kernel"),
                                   ramdisk=files.get("ramdisk"), cmdline=args["cmdline"], groups=args["groups"],
                                   cores=args["cores"], ram_mb=args["ram_mb"], platform_value=args["platform_value"],
                                   description=args["description"], url=url)
        return {"changed": True, "image": row}
