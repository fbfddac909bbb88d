#!/usr/bin/python
# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""The ``vcl_domain_move`` module: move one VM's running guest to another slave (a drained slave's VMs keep their
boot). On the source slave the guest's memory is saved to a file; the playbook copies that file and the VM's
overlay; on the target slave the domain is defined from the saved image and restored.

Runs on the slave with its python3-libvirt, under the same per-domain lock as vcl_domain. An import that fails
part-way undefines the domain it defined; the saved file and the overlay stay, since they are the VM.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_domain_move
short_description: Export a VM's running guest to a file on one VCL slave and import it on another
description:
  - Runs on a slave (needs python3-libvirt there) and talks to libvirt at O(uri). Used to drain a slave, each of its
    VMs moves to another slave and keeps its boot (memory, devices and disk as they were).
  - C(state=exported), on the slave the VM leaves, saves the guest's memory to O(saved_file) with libvirt's
    C(virDomainSave); the QEMU process ends, the domain stays defined and shut off, O(overlay) is not touched.
    A running or paused domain is saved as it is (a paused one is restored paused). A domain suspended earlier with
    managed save (M(vcl.lab.vcl_domain) with C(state=suspended)) is started paused from its managed save image and
    saved to O(saved_file) at once, marked to run when it is restored. A domain that is shut off without a managed
    save image while O(saved_file) is a regular file is exported already (no change); without the file there is
    nothing to save and the module fails, as it does for a domain that is not defined.
  - The saved file is made mode 0600 (it holds the guest's memory and its VNC password). A failed save leaves no
    file at O(saved_file) (any file there was stale, since the domain was running).
  - Copying O(saved_file) and O(overlay) from the source slave to the target slave is the playbook's job, not this
    module's. Both slaves must use the same instance directory layout, since the domain XML inside the saved image
    names the overlay (and the serial log) by their paths on the source slave; the overlay's base image (and a
    kernel and initrd the VM boots) must be in the target slave's image cache at the same paths.
  - C(state=imported), on the target slave, reads the domain XML from O(saved_file) (with its VNC password) and
    checks it the way M(vcl.lab.vcl_domain) checks its C(xml) (no DOCTYPE or ENTITY, a C(<domain>) named O(name),
    O(overlay) one of its disks, no console without a password). It is refused when a domain of that name with
    another UUID is defined on this slave. It defines the domain (persistent, with libvirt's schema validation)
    unless it is defined already; with O(start=true) it restores the guest from O(saved_file) (libvirt's
    C(virDomainRestore)) and removes the file. With O(start=false) the domain stays defined and shut off and
    O(saved_file) stays in place; M(vcl.lab.vcl_domain) with C(state=running) and its C(saved_file) option restores
    it later.
  - C(state=imported) for a domain that is running already (an earlier run restored it) changes nothing, except that
    a left-over O(saved_file) of the same domain is removed.
  - If a step of the import fails, the domain definition this run made is undefined again and the module fails naming
    the step; O(saved_file) and O(overlay) stay (they are the VM).
  - Every input is checked before anything changes; a bad one fails naming the field.
version_added: "0.1.0"
author: VCL developers (@vcl-lab)
options:
  name:
    description:
      - The domain's name, C(vcl-<id>) where the id is letters, digits and C(_) (at most 21).
    type: str
    required: true
  state:
    description:
      - C(exported) on the slave the VM leaves, C(imported) on the slave it moves to.
    type: str
    choices: [exported, imported]
    required: true
  saved_file:
    description:
      - The file of the guest's memory (libvirt's save image), for example C(/var/lib/vcl/instances/vcl-42.save).
      - With O(state=exported) its directory must exist, and the file is written there; with O(state=imported) it
        must be a regular file (the playbook copied it there). A symlink or a directory is refused, nothing is
        followed.
    type: path
    required: true
  overlay:
    description:
      - The VM's qcow2 overlay; must be a regular file (no symlink) and a disk of the domain.
      - Never changed or removed by this module; the playbook copies it with O(saved_file).
    type: path
    required: true
  start:
    description:
      - With O(state=imported), whether to restore the guest now (and remove O(saved_file)), or only define the
        domain and leave O(saved_file) for M(vcl.lab.vcl_domain) to restore later.
    type: bool
    default: true
  vnc_listen:
    description:
      - With O(state=imported), the address of this slave that the VM's VNC console listens on. The saved image names
        the source slave's address, where QEMU could not listen here; when given, the listen address of the domain
        XML, in the definition and in the saved image (libvirt's C(virDomainSaveImageDefineXML)), becomes this one.
    type: str
  uri:
    description: The libvirt connection URI (C(test:///default) in unit tests).
    type: str
    default: qemu:///system
  lock_timeout:
    description:
      - Seconds to wait while another run holds this domain's lock (the lock M(vcl.lab.vcl_domain) takes too); then
        the module fails naming the holder (its pid, what it does and since when). C(0) tries once.
    type: int
    default: 300
notes:
  - Supports check mode; C(changed), RV(domain_state) and RV(created) then tell what would happen.
  - Needs python3-libvirt on the slave.
  - "Runs for the same domain are serialised with vcl_domain's lock file C(/run/vcl/locks/vcl_domain.NAME.lock)."
  - Libvirt gives the restored domain's VNC console a free port on the target slave (C(autoport)), which need not be
    the port it had on the source slave; RV(vnc_port) is the new one.
"""

EXAMPLES = r"""
- name: Save the VM's memory on the slave that is drained
  vcl_domain_move:
    name: vcl-42
    state: exported
    saved_file: /var/lib/vcl/instances/vcl-42.save
    overlay: /var/lib/vcl/instances/vcl-42.qcow2
  delegate_to: "{{ source_slave }}"

# (the playbook copies vcl-42.save and vcl-42.qcow2 to the same paths on the target slave)

- name: Restore it on the target slave
  vcl_domain_move:
    name: vcl-42
    state: imported
    saved_file: /var/lib/vcl/instances/vcl-42.save
    overlay: /var/lib/vcl/instances/vcl-42.qcow2
    vnc_listen: "{{ target_slave_address }}"
  delegate_to: "{{ target_slave }}"
  register: moved

- name: Forget it on the source slave (the overlay and the saved file there are copies now)
  vcl_domain:
    name: vcl-42
    state: absent
    overlay: /var/lib/vcl/instances/vcl-42.qcow2
    saved_file: /var/lib/vcl/instances/vcl-42.save
  delegate_to: "{{ source_slave }}"
"""

RETURN = r"""
domain_state:
  description: >-
    The domain's state after the run (predicted in check mode): C(shutoff) after an export (C(absent) when the
    domain was transient), C(running) (or C(paused), when it was saved paused) after an import with O(start=true),
    C(shutoff) with O(start=false).
  returned: always
  type: str
  sample: running
uuid:
  description: The domain's UUID (the same on both slaves); with O(state=imported) in check mode, the saved image's.
  returned: always
  type: str
saved_file:
  description: With O(state=exported), the file the guest's memory is in.
  returned: when O(state=exported)
  type: str
size_bytes:
  description: With O(state=exported), the size of O(saved_file); null in check mode when it would be written.
  returned: when O(state=exported)
  type: int
vnc_port:
  description: With O(state=imported), the VNC port of the running domain (from its live XML); null when not known.
  returned: when O(state=imported)
  type: int
  sample: 5901
created:
  description: With O(state=imported), what this run created (in check mode, would create), C(domain) or nothing.
  returned: when O(state=imported)
  type: list
  elements: str
  sample: [domain]
removed:
  description: With O(state=imported), the O(saved_file) this run removed (after the restore, or a left-over one).
  returned: when O(state=imported)
  type: list
  elements: str
"""

import ipaddress
import os
import stat
import xml.etree.ElementTree as ET

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vcl.lab.plugins.module_utils.vcl_domain_xml import (
    ACTIVE_STATES,
    DomainRun,
    InputError,
    StepError,
    abs_path,
    check_common,
    disk_files,
    remove_file,
    run_domain_module,
)
from ansible_collections.vcl.lab.plugins.module_utils.vcl_libvirt import state_name

try:
    import libvirt
except ImportError:  # pragma: no cover - reported by main()
    libvirt = None


def validate(p):
    """Check every input (the common ones, saved_file and overlay, vnc_listen); returns the normalised parameters or
    raises InputError naming the field."""
    check_common(p)
    out = dict(p)
    out["saved_file"] = abs_path(p["saved_file"], "saved_file")
    out["overlay"] = abs_path(p["overlay"], "overlay")
    if out["saved_file"] == out["overlay"]:
        raise InputError("saved_file: must not be the overlay")
    if p.get("vnc_listen") is not None:
        try:
            out["vnc_listen"] = str(ipaddress.ip_address(p["vnc_listen"]))
        except ValueError:
            raise InputError(f"vnc_listen: {p['vnc_listen']!r} is not an IP address") from None
    return out


def regular_file(path, field, required=True):
    """The lstat of ``path``, a regular file; None when it is missing and not ``required``. InputError naming
    ``field`` when it is missing and required, a symlink (never followed) or anything but a regular file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if required:
            raise InputError(f"{field}: {path} does not exist") from None
        return None
    except OSError as err:
        raise InputError(f"{field}: cannot examine {path}: {err.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise InputError(f"{field}: {path} is a symlink; refused (nothing followed)")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{field}: {path} is not a regular file; refused")
    return st


def retarget_vnc(root, address):
    """Whether ``root``'s VNC consoles listened elsewhere than ``address``; they listen there now (the attribute and
    the <listen type='address'> elements)."""
    changed = False
    for graphics in root.iter("graphics"):
        if graphics.get("type") != "vnc":
            continue
        if graphics.get("listen") not in (None, address):
            graphics.set("listen", address)
            changed = True
        for listen in graphics.findall("listen"):
            if listen.get("type") == "address" and listen.get("address") != address:
                listen.set("address", address)
                changed = True
    return changed


class Move(DomainRun):
    """The work of one run against one connection; ``result`` is what the module returns."""

    def __init__(self, module, conn, p):
        super().__init__(module, conn, p, libvirt, {"changed": False, "uuid": None, "domain_state": "absent"})

    # -- state=exported ------------------------------------------------------------------------
    def exported(self):
        p, name, path = self.p, self.p["name"], self.p["saved_file"]
        self.result.update(saved_file=path, size_bytes=None)
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            raise InputError(f"saved_file: directory {directory} does not exist")
        existing = regular_file(path, "saved_file", required=False)
        regular_file(p["overlay"], "overlay")
        dom = self.lookup()
        if dom is None:
            raise StepError(f"cannot export {name}: the domain is not defined")
        self.result["uuid"] = dom.UUIDString()
        root = ET.fromstring(self.step("reading the domain's XML", dom.XMLDesc, 0))  # noqa: S314  (libvirt's)
        if p["overlay"] not in disk_files(root):
            raise InputError(f"overlay: {p['overlay']} is not a disk of {name} (its disks: {sorted(disk_files(root))})")
        state, managed, persistent = state_name(dom), bool(dom.hasManagedSaveImage(0)), bool(dom.isPersistent())
        if state in ACTIVE_STATES:
            self.result["changed"] = True
            if not self.check:
                self.save(dom, 0)
        elif managed:
            self.result["changed"] = True
            if not self.check:
                self.save_from_managed_save(dom)
        elif existing is None:
            raise StepError(f"cannot export {name}: it is {state} without a managed save image and {path} does not"
                            " exist (nothing to save)")  # fmt: skip
        if self.check and self.result["changed"]:
            self.result["domain_state"] = "shutoff" if persistent else "absent"
            return
        self.result["domain_state"] = state_name(dom) if persistent else "absent"  # a transient one is gone now
        self.result["size_bytes"] = self.seal(path)

    def save(self, dom, flags):
        """virDomainSave to saved_file; a failed save removes what it wrote."""
        path = self.p["saved_file"]
        try:
            dom.saveFlags(path, None, flags)
        except libvirt.libvirtError as err:
            removed = remove_file(path)
            raise StepError(f"saving the guest's memory to {path} failed: {err}"
                            + ("; the partial file was removed" if removed else "")) from None  # fmt: skip

    def save_from_managed_save(self, dom):
        """A suspended domain: started paused from its managed save image, then saved to saved_file, marked to run
        when it is restored. A failed save puts the guest back into a managed save image."""
        paused = True
        try:
            dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        except libvirt.libvirtError as err:
            # Drivers that cannot start paused (libvirt's test driver) refuse the flag: start it running.
            if err.get_error_code() not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
                raise StepError(f"starting the domain from its managed save failed: {err}") from None
            paused = False
            self.step("starting the domain from its managed save", dom.createWithFlags, 0)
        try:
            self.save(dom, libvirt.VIR_DOMAIN_SAVE_RUNNING if paused else 0)
        except StepError as err:
            try:
                if dom.isActive():
                    dom.managedSave(libvirt.VIR_DOMAIN_SAVE_RUNNING if paused else 0)
                undone = "the domain is in its managed save again"
            except libvirt.libvirtError as again:
                undone = f"the domain could NOT be put back into its managed save ({again})"
            raise StepError(f"{err}; {undone}") from None

    def seal(self, path):
        """saved_file made 0600 (opened without following a symlink); its size."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as err:
            raise StepError(f"saved_file: cannot open {path} after the save: {err.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StepError(f"saved_file: {path} is not a regular file after the save")
            if stat.S_IMODE(st.st_mode) != 0o600 and self.result["changed"]:
                os.fchmod(fd, 0o600)
            return st.st_size
        finally:
            os.close(fd)

    # -- state=imported ------------------------------------------------------------------------
    def imported(self):
        p, name, path = self.p, self.p["name"], self.p["saved_file"]
        self.result.update(created=[], removed=[], vnc_port=None)
        regular_file(p["overlay"], "overlay")
        present = regular_file(path, "saved_file", required=False) is not None
        dom = self.lookup()
        root = xml = None
        if present:
            xml, root = self.read_saved_image(path)
            image_uuid = (root.findtext("uuid") or "").strip()
            if dom is not None and dom.UUIDString() != image_uuid:
                raise InputError(f"name: {name} is defined on this slave with UUID {dom.UUIDString()}, but {path}"
                                 f" holds the domain with UUID {image_uuid!r}; refused")  # fmt: skip
            self.result["uuid"] = image_uuid
        if dom is not None and state_name(dom) in ACTIVE_STATES:  # restored by an earlier run
            if present:
                self.result["changed"] = True
                self.result["removed"].append(path)
                if not self.check:
                    remove_file(path)
            self.describe(dom)
            return
        if not present:
            raise InputError(f"saved_file: {path} does not exist (no guest memory to restore)")
        if dom is not None and dom.hasManagedSaveImage(0):
            raise StepError(f"cannot import {name}: it has a managed save image on this slave (another guest memory"
                            " than saved_file); remove the domain (vcl_domain state=absent) first")  # fmt: skip
        retarget = p.get("vnc_listen") is not None and retarget_vnc(root, p["vnc_listen"])
        if retarget:
            xml = ET.tostring(root, encoding="unicode")
        if dom is None or retarget or p["start"]:
            self.result["changed"] = True
        if self.check:
            self.result["created"] = ["domain"] if dom is None else []
            self.result["removed"] = [path] if p["start"] else []
            self.result["domain_state"] = "running" if p["start"] else "shutoff"
            return
        try:
            if dom is None or retarget:  # a defined domain gets the new VNC address too
                defined = self.step("defining the domain", self.conn.defineXMLFlags, xml,
                                    libvirt.VIR_DOMAIN_DEFINE_VALIDATE)  # fmt: skip
                if dom is None:
                    dom = defined
                    self.result["created"].append("domain")
            if retarget:
                self.step("updating the VNC address in the saved image", self.conn.saveImageDefineXML, path, xml, 0)
            if p["start"]:
                self.step(f"restoring the domain from {path}", self.conn.restoreFlags, path, None, 0)
        except StepError as err:
            raise self.rolled_back(err, self.undo_definition(dom)) from None
        if p["start"]:
            remove_file(path)
            self.result["removed"].append(path)
        self.describe(dom)


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "choices": ["exported", "imported"], "required": True},
            "saved_file": {"type": "path", "required": True},
            "overlay": {"type": "path", "required": True},
            "start": {"type": "bool", "default": True},
            "vnc_listen": {"type": "str"},
            "uri": {"type": "str", "default": "qemu:///system"},
            "lock_timeout": {"type": "int", "default": 300},
        },
        supports_check_mode=True,
    )
    run_domain_module(module, validate, Move, libvirt, "vcl_domain_move")


if __name__ == "__main__":
    main()
