# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""Action plugin vcl.lab.vcl_db: create or upgrade the lab database and apply settings, on the controller
(plugins/modules/vcl_db.py documents it). On the master, `vcl db init --json` and `vcl config set --json` of the
master's own installation do the same."""

from __future__ import annotations

from typing import Any

from ansible_collections.vcl.lab.plugins.plugin_utils.vcl_controller import VclControllerAction

# The task's arguments: the same as plugins/modules/vcl_db.py documents.
ARGUMENT_SPEC = {
    "db_url": {"type": "str"},
    "settings": {"type": "dict", "default": {}},
}


class ActionModule(VclControllerAction):
    ARGUMENT_SPEC = ARGUMENT_SPEC

    def work(self, args: dict[str, Any], check_mode: bool) -> dict[str, Any]:
        from vcl_sched import config, db, service

        url = args["db_url"] or None
        before = db.current_revision(url)
        head = db.head_revision()
        changed = before != head
        if changed and not check_mode:
            service.init(url)
        current: dict[str, Any] = {}
        if not changed or not check_mode:
            with db.read(url) as session:
                current = db.load_settings(session).to_json()
        flat = dict(current)
        flat.update({f"booking.{k}": v for k, v in current.get("booking", {}).items()})
        updates = {k: str(v) for k, v in args["settings"].items() if str(flat.get(k)) != str(v)}
        if updates:
            changed = True
            if not check_mode:
                current = service.configure(updates, url)
        return {
            "changed": changed,
            "revision": head if not check_mode else before,
            "settings": current,
            "updated": sorted(updates),
            "url": config.safe_url(url or config.db_url()),
        }
