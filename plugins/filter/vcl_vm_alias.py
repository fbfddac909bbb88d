# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""Filters of the network role (used as ``vcl.lab.<name>``): each VM's public alias file, rendered by the one
function the module vcl_vm_net uses too (module_utils/vcl_vm_files.py)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.vcl.lab.plugins.module_utils.vcl_vm_files import (
    VmFileError,
    alias_file_name,
    render_alias,
)


def vcl_vm_alias_file(alias, uplink) -> str:
    """The interfaces.d file of ALIAS ({id, public}): PUBLIC/32 on UPLINK."""
    if not isinstance(alias, dict):
        raise AnsibleFilterError(f"network__public_aliases: {alias!r} is not a dict with id and public")
    try:
        return render_alias(alias.get("id"), uplink, alias.get("public"))
    except VmFileError as err:
        raise AnsibleFilterError(f"network__public_aliases ({alias.get('id')!r}): {err}") from None


def vcl_vm_alias_name(vm_id) -> str:
    """The name of VM_ID's alias file in interfaces.d (vcl-vm-ID)."""
    try:
        return alias_file_name(vm_id)
    except VmFileError as err:
        raise AnsibleFilterError(f"network__public_aliases: {err}") from None


class FilterModule:
    def filters(self):
        return {"vcl_vm_alias_file": vcl_vm_alias_file, "vcl_vm_alias_name": vcl_vm_alias_name}
