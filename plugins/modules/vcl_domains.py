#!/usr/bin/python
# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""The ``vcl_domains`` module: what a slave's libvirt really runs (VCL's domains) and its free memory."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_domains
short_description: List VCL's libvirt domains on a slave, with their state and the slave's available memory
description:
  - Runs on a slave (needs python3-libvirt there); reads only, never changes anything.
  - Lists every domain whose name starts with O(prefix), defined or running, with its state, whether it
    has a managed save image (it is suspended), its memory and its VNC port.
  - Also returns the slave's C(MemAvailable) from C(/proc/meminfo), so a suspend can be seen to free RAM.
  - Used by the reconcile playbook to compare the lab database with what the slaves really hold.
version_added: "0.1.0"
author: VCL developers (@vcl-lab)
options:
  prefix:
    description: Only domains whose name starts with this are listed (an empty string lists all).
    type: str
    default: vcl-
  uri:
    description: The libvirt connection URI (C(test:///default) in unit tests).
    type: str
    default: qemu:///system
notes:
  - Supports check mode (it changes nothing either way).
"""

EXAMPLES = r"""
- name: What does this slave run?
  vcl_domains:
  register: slave_domains

- name: Names of the suspended VMs
  ansible.builtin.debug:
    msg: "{{ slave_domains.domains | selectattr('managed_save') | map(attribute='name') | list }}"
"""

RETURN = r"""
domains:
  description: The matching domains, sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The domain's name.
      type: str
    uuid:
      description: The domain's UUID.
      type: str
    state:
      description: C(running), C(paused), C(shutoff), C(blocked), C(shutdown), C(crashed), C(pmsuspended) or C(nostate).
      type: str
    managed_save:
      description: Whether the domain has a managed save image (suspended by VCL).
      type: bool
    memory_mb:
      description: The domain's maximum memory, MiB.
      type: int
    vnc_port:
      description: The VNC port when the domain is running and has one; null otherwise.
      type: int
  sample:
    - {name: vcl-42, uuid: 0b9a..., state: running, managed_save: false, memory_mb: 1024, vnc_port: 5900}
mem_available_mb:
  description: The slave's C(MemAvailable) from C(/proc/meminfo), MiB; null when it cannot be read.
  returned: always
  type: int
"""


from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vcl.lab.plugins.module_utils.vcl_libvirt import STATE_NAMES, URI_RE, vnc_port

try:
    import libvirt
except ImportError:  # pragma: no cover - reported by main()
    libvirt = None


def mem_available_mb(path="/proc/meminfo"):
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def describe(dom):
    """One domain's entry; None when it vanished while being read."""
    try:
        state, max_kib = dom.state()[0], dom.maxMemory()
        name = STATE_NAMES.get(state, "nostate")
        return {
            "name": dom.name(),
            "uuid": dom.UUIDString(),
            "state": name,
            "managed_save": bool(dom.hasManagedSaveImage(0)),
            "memory_mb": max_kib // 1024,
            "vnc_port": vnc_port(dom, (libvirt.libvirtError,)) if name == "running" else None,
        }
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def main():
    module = AnsibleModule(
        argument_spec={
            "prefix": {"type": "str", "default": "vcl-"},
            "uri": {"type": "str", "default": "qemu:///system"},
        },
        supports_check_mode=True,
    )
    prefix, uri = module.params["prefix"] or "", module.params["uri"]
    if not URI_RE.match(uri or ""):
        module.fail_json(msg=f"uri: {uri!r} is not a libvirt URI (for example qemu:///system)")
    if libvirt is None:
        module.fail_json(msg="vcl_domains needs the libvirt Python bindings on the slave (Debian: python3-libvirt)")
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors go to the result, not stderr
    try:
        conn = libvirt.openReadOnly(uri)
    except libvirt.libvirtError as err:
        module.fail_json(msg=f"uri: cannot connect to {uri}: {err}")
    try:
        found = [describe(d) for d in conn.listAllDomains(0) if d.name().startswith(prefix)]
    except libvirt.libvirtError as err:
        module.fail_json(msg=f"listing the domains at {uri} failed: {err}")
    finally:
        conn.close()
    domains = sorted((d for d in found if d is not None), key=lambda d: d["name"])
    module.exit_json(changed=False, domains=domains, mem_available_mb=mem_available_mb())


if __name__ == "__main__":
    main()
