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
  - With O(instance_dir), also lists the VM files there that no domain owns, in RV(leftovers) (an overlay
    C(NAME.qcow2) or serial log C(NAME.log) whose C(NAME) starts with O(prefix) and is not a domain, as a launch
    cut short by a dead slave can leave them).
  - Used by the reconcile playbook to compare the lab database with what the slaves really hold.
version_added: "0.1.0"
author: VCL developers (@vcl-lab)
options:
  prefix:
    description: Only domains whose name starts with this are listed (an empty string lists all).
    type: str
    default: vcl-
  instance_dir:
    description:
      - The slave's directory of the VMs' overlays and serial logs (the kvm role's C(kvm__instance_dir)).
      - When given, RV(leftovers) lists its VM files that no domain owns; a missing directory holds none.
    type: path
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

- name: Domains, and overlays or logs of VMs that have no domain
  vcl_domains:
    instance_dir: /var/lib/vcl/instances
  register: slave_domains
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
leftovers:
  description:
    - The VMs in O(instance_dir) that have files (C(NAME.qcow2), C(NAME.log)) but no domain, sorted by name;
      empty without O(instance_dir).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The VM's name (its domain's name, were it defined), for example C(vcl-42).
      type: str
    files:
      description: Its files in O(instance_dir), absolute paths, sorted.
      type: list
      elements: str
  sample:
    - {name: vcl-42, files: [/var/lib/vcl/instances/vcl-42.log, /var/lib/vcl/instances/vcl-42.qcow2]}
"""

import os
import re

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


# A VM's files in the instance directory: its overlay and its serial log, named after its domain.
VM_FILE_SUFFIXES = (".qcow2", ".log")
VM_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def leftovers(instance_dir, prefix, domain_names):
    """The VMs with files in ``instance_dir`` (NAME.qcow2, NAME.log) but no domain: [{name, files}], by name.
    Raises OSError when the directory exists but cannot be read."""
    if not os.path.isdir(instance_dir):
        return []
    found = {}
    with os.scandir(instance_dir) as entries:
        for entry in entries:
            stem, dot, suffix = entry.name.rpartition(".")
            if not dot or "." + suffix not in VM_FILE_SUFFIXES or not stem.startswith(prefix):
                continue
            if not VM_NAME_RE.match(stem) or stem in domain_names or not entry.is_file(follow_symlinks=False):
                continue
            found.setdefault(stem, []).append(os.path.join(instance_dir, entry.name))
    return [{"name": name, "files": sorted(files)} for name, files in sorted(found.items())]


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
            "instance_dir": {"type": "path"},
            "uri": {"type": "str", "default": "qemu:///system"},
        },
        supports_check_mode=True,
    )
    prefix, uri, instance_dir = module.params["prefix"] or "", module.params["uri"], module.params["instance_dir"]
    if not URI_RE.match(uri or ""):
        module.fail_json(msg=f"uri: {uri!r} is not a libvirt URI (for example qemu:///system)")
    if instance_dir is not None and (not os.path.isabs(instance_dir) or "\0" in instance_dir):
        module.fail_json(msg=f"instance_dir: {instance_dir!r} is not an absolute path")
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
    left = []
    if instance_dir is not None:
        # A launch in progress (its overlay made, its domain not defined yet) shows here too: the database
        # places that instance on this slave, so reconcile leaves its files alone.
        try:
            left = leftovers(os.path.normpath(instance_dir), prefix, {d["name"] for d in domains})
        except OSError as err:
            module.fail_json(msg=f"instance_dir: cannot read {instance_dir}: {err.strerror or err}")
    module.exit_json(changed=False, domains=domains, mem_available_mb=mem_available_mb(), leftovers=left)


if __name__ == "__main__":
    main()
