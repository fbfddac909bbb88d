# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""Action plugin vcl.lab.vcl_session: class sessions (take a seat, the teacher's view, cancel) on the controller
(plugins/modules/vcl_session.py documents it)."""

from __future__ import annotations

from typing import Any, ClassVar

from ansible_collections.vcl.lab.plugins.plugin_utils.vcl_controller import VclControllerAction

ARGUMENT_SPEC = {
    "db_url": {"type": "str"},
    "action": {"type": "str", "required": True, "choices": ["take", "show", "cancel"]},
    "reservation": {"type": "raw"},
    "series": {"type": "raw"},
    "user": {"type": "str"},
    "acting_user": {"type": "str"},
}


class ActionModule(VclControllerAction):
    ARGUMENT_SPEC = ARGUMENT_SPEC
    REQUIRED_IF: ClassVar[list[tuple[str, Any, tuple[str, ...]]]] = [
        ("action", "take", ("reservation",)),
        ("action", "show", ("reservation",)),
    ]

    def work(self, args: dict[str, Any], check_mode: bool) -> dict[str, Any]:
        from vcl_sched import sessions

        url = args["db_url"] or None
        if args["action"] == "show":
            return {"changed": False, "session": sessions.session_view(args["reservation"], url)}
        if check_mode:
            return {"changed": False, "skipped": True, "msg": "check mode: nothing taken or cancelled"}
        if args["action"] == "take":
            seat = sessions.take_seat(args["reservation"], args["user"] or None, url)
            return {"changed": seat["changed"], "seat": seat}
        result = sessions.cancel(args["reservation"], args["series"], url)
        return {"changed": result["changed"], "cancelled": result}
