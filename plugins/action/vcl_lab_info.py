# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""Action plugin vcl.lab.vcl_lab_info: the VMs' addresses from the lab database, shaped for the dhcpd, nat and
network roles, on the controller (plugins/modules/vcl_lab_info.py documents it)."""

from __future__ import annotations

from typing import Any

from ansible_collections.vcl.lab.plugins.plugin_utils.vcl_controller import VclControllerAction

# The task's arguments: the same as plugins/modules/vcl_lab_info.py documents.
ARGUMENT_SPEC = {"db_url": {"type": "str"}}


class ActionModule(VclControllerAction):
    ARGUMENT_SPEC = ARGUMENT_SPEC

    def work(self, args: dict[str, Any], check_mode: bool) -> dict[str, Any]:
        from vcl_sched import service

        rows = service.list_instances(args["db_url"] or None)
        held = [r for r in rows if r["mac"] and r["private_ip"] and r["public_ip"]]
        return {
            "changed": False,
            "instances": held,
            "dhcp_hosts": [{"name": f"vm-{r['id']}", "mac": r["mac"], "ip": r["private_ip"]} for r in held],
            "dnat": [{"id": r["id"], "public": r["public_ip"], "private": r["private_ip"]} for r in held],
            "public_aliases": [{"id": r["id"], "public": r["public_ip"]} for r in held],
        }
