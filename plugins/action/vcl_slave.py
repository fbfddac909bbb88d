# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""Action plugin vcl.lab.vcl_slave: register, drain or remove slaves in the lab database, on the controller
(plugins/modules/vcl_slave.py documents it)."""

from __future__ import annotations

from typing import Any

from ansible_collections.vcl.lab.plugins.plugin_utils.vcl_controller import VclControllerAction

# The task's arguments: the same as plugins/modules/vcl_slave.py documents.
ARGUMENT_SPEC = {
    "db_url": {"type": "str"},
    "name": {"type": "str"},
    "address": {"type": "str"},
    "cores": {"type": "int"},
    "ram_mb": {"type": "int"},
    "disk_gb": {"type": "int"},
    "inventory": {"type": "list", "elements": "str"},
    "state": {"type": "str", "default": "present", "choices": ["present", "absent", "drained_unless_listed"]},
}
REQUIRED_IF = [
    ("state", "present", ("name", "address", "cores", "ram_mb", "disk_gb")),
    ("state", "absent", ("name",)),
    ("state", "drained_unless_listed", ("inventory",)),
]


class ActionModule(VclControllerAction):
    _supports_check_mode = False
    ARGUMENT_SPEC = ARGUMENT_SPEC
    REQUIRED_IF = REQUIRED_IF

    def work(self, args: dict[str, Any], check_mode: bool) -> dict[str, Any]:
        from vcl_sched import registry
        from vcl_sched.errors import NotFoundError

        url = args["db_url"] or None
        if args["state"] == "present":
            return registry.register_slave(args["name"], args["address"], args["cores"], args["ram_mb"],
                                           args["disk_gb"], url)  # fmt: skip
        if args["state"] == "absent":
            try:
                return registry.remove_slave(args["name"], url)
            except NotFoundError:
                return {"changed": False, "removed": None}
        return registry.drain_absent(args["inventory"], url)
