"""Action plugin: check the lab inventory on the controller before site.yml changes any host."""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

LAB_VARS = (
    "lab_subnet", "lab_vm_subnet", "lab_gateway", "lab_vm_gateway", "lab_private_pool", "lab_public_pool",
    "lab_mac_prefix", "lab_domain_type",
)  # fmt: skip


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        try:
            from vcl_sched.preflight import check_inventory
        except ImportError as err:
            raise AnsibleActionFail(
                f"vcl_preflight needs the vcl_sched package next to Ansible ({err}); run scripts/setup.sh"
            ) from None
        task_vars = task_vars or {}
        groups = task_vars.get("groups", {})
        hostvars = task_vars.get("hostvars", {})
        masters = list(groups.get("vcl_master", []))
        slaves = list(groups.get("vcl_slaves", []))
        members = list(dict.fromkeys([*masters, *slaves]))
        if not members:
            raise AnsibleActionFail("inventory: vcl_master: the inventory has no vcl_master and no vcl_slaves hosts")
        # Lab-wide variables live in group_vars/all (or all.vars): read them through the first member.
        reference = hostvars[members[0]]
        lab = {name: reference.get(name) for name in LAB_VARS if reference.get(name) is not None}
        hosts = {name: {"lab_address": hostvars[name].get("lab_address")} for name in members}
        problems = check_inventory(lab, hosts, masters, slaves)
        result["problems"] = [str(p) for p in problems]
        result["checked"] = {"masters": masters, "slaves": slaves}
        result["changed"] = False
        if problems:
            result["failed"] = True
            result["msg"] = "The lab inventory is not valid; nothing was changed:\n" + "\n".join(map(str, problems))
        else:
            result["msg"] = f"inventory ok: master {masters[0]}, {len(slaves)} slave(s)"
        return result
