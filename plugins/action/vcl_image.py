# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""Action plugin vcl.lab.vcl_image: declare an image of the master's store in the lab database, on the
controller (plugins/modules/vcl_image.py documents it)."""

from __future__ import annotations

from typing import Any

from ansible_collections.vcl.lab.plugins.plugin_utils.vcl_controller import VclControllerAction

# The task's arguments: the same as plugins/modules/vcl_image.py documents.
ARGUMENT_SPEC = {
    "db_url": {"type": "str"},
    "name": {"type": "str", "required": True},
    "description": {"type": "str", "default": ""},
    # str, not path: a path option would expand ~ and $VARS on the controller before vcl_sched checks it.
    "disk": {"type": "str", "required": True},
    "kernel": {"type": "str"},
    "ramdisk": {"type": "str"},
    "cmdline": {"type": "str"},
    "cores": {"type": "int", "default": 1},
    "ram_mb": {"type": "int", "default": 512},
    "disk_gb": {"type": "int", "default": 2},
    "platform_value": {"type": "raw", "default": 5},
}


class ActionModule(VclControllerAction):
    _supports_check_mode = False
    ARGUMENT_SPEC = ARGUMENT_SPEC

    def work(self, args: dict[str, Any], check_mode: bool) -> dict[str, Any]:
        from vcl_sched import service
        from vcl_sched.errors import ValidationError

        try:
            row, changed = service.ensure_image(
                args["name"], args["disk"], description=args["description"], kernel=args["kernel"],
                ramdisk=args["ramdisk"], cmdline=args["cmdline"], cores=args["cores"], ram_mb=args["ram_mb"],
                disk_gb=args["disk_gb"], platform_value=args["platform_value"], url=args["db_url"] or None,
            )  # fmt: skip
        except ValidationError as err:
            if err.field != "disk_file":
                raise
            raise ValidationError("disk", err.message) from None  # the task's option is `disk`
        return {"changed": changed, "image": row}
