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


def _flat(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as `vcl config set` names them (booking.KEY)."""
    flat = {k: v for k, v in settings.items() if k != "booking"}
    flat.update({f"booking.{k}": v for k, v in settings.get("booking", {}).items()})
    return flat


class ActionModule(VclControllerAction):
    ARGUMENT_SPEC = ARGUMENT_SPEC

    def work(self, args: dict[str, Any], check_mode: bool) -> dict[str, Any]:
        from vcl_sched import catalogue, config, db, service

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
        flat = _flat(current)
        # Unknown settings (an inventory variable left undefined on purpose) are ""; values are text, as
        # `vcl config set` takes them.
        wanted = {str(k): "" if v is None else str(v) for k, v in args["settings"].items()}
        updates = {k: v for k, v in wanted.items() if str(flat.get(k)) != v}
        updated: list[str] = []
        if updates:
            # The whole batch at once (subnets, gateways and pools together: the order of the keys never matters);
            # changed only when the database's settings differ afterwards (a value written in another spelling of
            # the same setting changes nothing).
            if check_mode:
                # The batch is checked as the run would apply it (the slaves' addresses are checked by the run)
                after = catalogue.merged_settings(
                    config.settings_from_json(current) if current else config.Settings(), updates
                ).to_json()
            else:
                after = service.configure(updates, url)
            flat_after = _flat(after)
            names = {k: config.SETTING_ALIASES.get(k, k) for k in updates}
            updated = sorted(k for k, name in names.items() if flat_after.get(name) != flat.get(name))
            changed = changed or bool(updated)
            current = current if check_mode else after
        return {
            "changed": changed,
            "revision": head if not check_mode else before,
            "settings": current,
            "updated": updated,
            "url": config.safe_url(url or config.db_url()),
        }
