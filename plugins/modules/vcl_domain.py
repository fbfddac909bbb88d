#!/usr/bin/python
# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""The ``vcl_domain`` module: one VM's libvirt domain on a slave (define + start, managed save, remove).

Runs on the slave with its python3-libvirt. A launch that fails part-way undoes exactly what the same run
created (the domain definition, the overlay, files libvirt left behind), so a slave never keeps half a VM.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_domain
short_description: Run, suspend (managed save) or remove one VM's libvirt domain on a VCL slave
description:
  - Runs on a slave (needs python3-libvirt there) and talks to libvirt at O(uri).
  - C(state=running) when the domain does not exist creates the instance's copy-on-write O(overlay) of
    the cached O(base) image (C(qemu-img create -f qcow2 -b BASE -F qcow2 OVERLAY), only when the overlay
    is missing), defines the domain from O(xml) with libvirt's schema validation, and starts it.
    If any of these steps fails, whatever this run created is removed again (domain definition, overlay,
    O(cleanup_paths) that did not exist before) and the module fails naming the step.
  - C(state=running) on a defined domain that is shut off starts it; when it has a managed save image
    the start restores the saved guest (this is how a suspended VM is resumed). A paused domain is resumed.
    A running domain is left alone (no change). O(xml) is only used to define a missing domain.
  - C(state=running) on a defined domain that is shut off without a managed save image, when O(saved_file) is
    a regular file, restores the guest from that file (libvirt's C(virDomainRestore)) instead of a cold boot, then
    removes the file; this resumes a VM that M(vcl.lab.vcl_domain_move) imported from another slave with
    C(start=false).
  - C(state=suspended) saves the guest's memory to disk with libvirt's managed save, so the QEMU process
    ends and the slave's RAM is freed. A domain that is already saved is left alone; a defined domain that
    is shut off without a save image, or a missing one, fails.
  - C(state=shutoff) shuts the guest down and leaves the domain defined with its O(overlay) (a VM whose disk is
    kept is copied from there). It sends an ACPI shutdown request, waits up to O(shutdown_timeout) seconds for the
    guest to power off, then powers it off. A domain already shut off (or saved) is left alone; a missing one fails.
  - C(state=absent) stops the domain if it is active, undefines it together with its managed save image,
    snapshot metadata and NVRAM, then removes O(overlay), O(saved_file) and O(cleanup_paths).
  - With C(state=running), a base image, kernel or initrd missing from the slave's image cache fails the run
    before anything is created, listing them in RV(missing), so the playbook can copy them and run again.
  - O(xml) is refused when it is not a C(<domain>) named O(name), when O(overlay) is not one of its disks,
    or when it has a VNC (or SPICE) console without a password (or a VNC password longer than 8 characters,
    which libvirt refuses).
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
    description: What the domain must be after the run.
    type: str
    choices: [running, suspended, shutoff, absent]
    default: running
  shutdown_timeout:
    description: With O(state=shutoff), seconds to wait for the guest to power off before it is forced (0 forces).
    type: int
    default: 60
  xml:
    description:
      - The domain XML (for example rendered from C(playbooks/templates/domain.xml.j2)).
      - Required with O(state=running) when the domain is not defined yet; checked whenever given.
    type: str
  base:
    description:
      - The cached base image (qcow2) the overlay is backed by.
      - Required with O(state=running) when O(overlay) has to be created; checked in the cache whenever given
        (an overlay brought from elsewhere, a kept disk, needs its base too).
    type: path
  overlay:
    description:
      - The instance's qcow2 overlay; must be a disk of O(xml).
      - Created when missing and the domain is being defined; removed with O(state=absent).
    type: path
  saved_file:
    description:
      - A file of the guest's memory saved with libvirt's C(virDomainSave) (written by M(vcl.lab.vcl_domain_move)
        with C(state=exported) on another slave and copied here).
      - With O(state=running), a domain that is defined and shut off without a managed save image is restored
        from it when it is a regular file (a symlink or anything else is refused), and the file is removed after
        the restore; the saved image must hold this domain (same name and UUID). A missing file means a cold start
        as without this option. Not used when the domain is missing, running or has a managed save image.
      - Removed with O(state=absent).
    type: path
  cleanup_paths:
    description:
      - Further files of the VM removed with O(state=absent) (for example the serial console log).
      - Files among them that a failed launch left behind are removed too.
    type: list
    elements: path
    default: []
  uri:
    description: The libvirt connection URI (C(test:///default) in unit tests).
    type: str
    default: qemu:///system
  lock_timeout:
    description:
      - Seconds to wait while another run holds this domain's lock; then the module fails naming the holder
        (its pid, what it does and since when). C(0) tries once.
    type: int
    default: 300
notes:
  - Supports check mode; C(changed), RV(domain_state) and RV(created) then tell what would happen.
  - Needs python3-libvirt and, to create overlays, C(qemu-img) (qemu-utils) on the slave.
  - "Runs for the same domain are serialised with a lock file C(/run/vcl/locks/vcl_domain.NAME.lock): the directory
    is root's, mode 0700 (refused when it is a symlink, another user's or writable by group or others), the file
    is opened without following symlinks, mode 0600, and names its holder."
"""

EXAMPLES = r"""
- name: Launch the VM (overlay, define, start)
  vcl_domain:
    name: vcl-42
    state: running
    xml: "{{ lookup('ansible.builtin.template', 'templates/domain.xml.j2') }}"
    base: /var/lib/vcl/images/debian-12.qcow2
    overlay: /var/lib/vcl/instances/vcl-42.qcow2
  register: vm

- name: Suspend it (guest memory to disk, RAM freed)
  vcl_domain:
    name: vcl-42
    state: suspended

- name: Resume it
  vcl_domain:
    name: vcl-42
    state: running

- name: Resume a VM imported from another slave with start=false (restores its saved memory, removes the file)
  vcl_domain:
    name: vcl-42
    state: running
    overlay: /var/lib/vcl/instances/vcl-42.qcow2
    saved_file: /var/lib/vcl/instances/vcl-42.save

- name: Remove it and its files
  vcl_domain:
    name: vcl-42
    state: absent
    overlay: /var/lib/vcl/instances/vcl-42.qcow2
    saved_file: /var/lib/vcl/instances/vcl-42.save
    cleanup_paths:
      - /var/log/vcl/vcl-42.serial.log
"""

RETURN = r"""
forced:
  description: With O(state=shutoff), whether the guest had to be powered off (it did not shut down in time).
  returned: when a running domain was shut off
  type: bool
missing:
  description: With O(state=running), the image files the slave's cache lacks (the run failed before any change).
  returned: when image files are missing
  type: list
  elements: str
domain_state:
  description: >-
    The domain's state after the run (predicted in check mode): C(running), C(paused), C(shutoff),
    C(absent), or another libvirt state (C(blocked), C(shutdown), C(crashed), C(pmsuspended), C(nostate)).
  returned: always
  type: str
  sample: running
managed_save:
  description: Whether the domain has a managed save image (it is suspended).
  returned: always
  type: bool
vnc_port:
  description: The VNC port of the running domain (from its live XML); null when not running or not known.
  returned: always
  type: int
  sample: 5900
uuid:
  description: The domain's UUID; null when it does not exist (or would only be defined in check mode).
  returned: always
  type: str
created:
  description: >-
    What this run created (in check mode: would create), in order: C(overlay), C(domain).
    Empty after a failure, since everything created was removed again.
  returned: always
  type: list
  elements: str
  sample: [overlay, domain]
removed:
  description: >-
    Files this run removed (in check mode: would remove): overlay, saved file, cleanup paths, leftovers of a
    failed launch, or the O(saved_file) a domain was restored from.
  returned: always
  type: list
  elements: str
"""

import contextlib
import json
import os
import re
import stat
import time
import xml.etree.ElementTree as ET

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vcl.lab.plugins.module_utils.vcl_domain_xml import (
    ACTIVE_STATES,
    DomainRun,
    InputError,
    StepError,
    abs_path,
    check_common,
    check_xml,
    remove_file,
    run_domain_module,
)
from ansible_collections.vcl.lab.plugins.module_utils.vcl_libvirt import state_name

try:
    import libvirt
except ImportError:  # pragma: no cover - reported by main()
    libvirt = None


def validate(p):
    """Check every input (the common ones with shutdown_timeout, the paths, the XML); returns the normalised
    parameters, with the XML's domain type resolved, or raises InputError naming the field."""
    check_common(p, seconds=("shutdown_timeout",))
    name = p["name"]
    out = dict(p)
    out["base"] = abs_path(p["base"], "base")
    out["overlay"] = abs_path(p["overlay"], "overlay")
    out["cleanup_paths"] = [abs_path(v, "cleanup_paths") for v in p["cleanup_paths"]]
    out["saved_file"] = abs_path(p["saved_file"], "saved_file")
    if out["saved_file"] is not None and out["saved_file"] in (out["base"], out["overlay"]):
        raise InputError("saved_file: must not be the base image or the overlay")
    if out["base"] is not None and out["base"] == out["overlay"]:
        raise InputError("overlay: must not be the base image itself")
    if out["base"] is not None and out["base"] in out["cleanup_paths"]:
        raise InputError("cleanup_paths: must not list the base image")
    if p["xml"] is not None:
        check_xml(p["xml"], name, out["overlay"])
        out["xml"] = resolve_domain_type(p["xml"])
    return out


KVM_FACT = "/etc/ansible/facts.d/vcl_kvm.fact"
_AUTO_TYPE = re.compile(r"""^(\s*<domain\s+type=)(['"])auto\2""")


def resolve_domain_type(xml, fact=KVM_FACT, cpuinfo="/proc/cpuinfo"):
    """``<domain type='auto'>`` becomes this slave's type: the kvm role's fact, else kvm where the CPU
    has VT-x/AMD-V (vmx or svm in cpuinfo; /dev/kvm and libvirt's capabilities are not trusted), else qemu."""
    if not _AUTO_TYPE.match(xml):
        return xml
    kind = None
    try:
        with open(fact, encoding="utf-8") as handle:
            kind = json.load(handle).get("domain_type")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind not in ("kvm", "qemu"):
        try:
            with open(cpuinfo, encoding="utf-8") as handle:
                flags = handle.read()
        except OSError:
            flags = ""
        kind = "kvm" if re.search(r"\b(vmx|svm)\b", flags) else "qemu"
    return _AUTO_TYPE.sub(lambda m: f"{m.group(1)}{m.group(2)}{kind}{m.group(2)}", xml, count=1)


class Domain(DomainRun):
    """The work of one run against one connection; ``result`` is what the module returns."""

    def __init__(self, module, conn, p):
        super().__init__(module, conn, p, libvirt, {
            "changed": False, "created": [], "removed": [], "uuid": None, "managed_save": False, "vnc_port": None,
            "domain_state": "absent",
        })  # fmt: skip

    def describe(self, dom):
        if dom is None:
            return
        self.result["managed_save"] = bool(dom.hasManagedSaveImage(0))
        super().describe(dom)

    def missing_image_files(self, make_overlay):
        """The image files this domain needs that the slave's cache lacks (the base image, when an overlay
        is to be made, and the kernel and initrd the XML boots), so the playbook copies them and retries."""
        wanted = [self.p["base"]] if self.p["base"] else []
        root = ET.fromstring(self.p["xml"])  # noqa: S314  (checked by validate())
        wanted += [(root.findtext(f"os/{tag}") or "").strip() for tag in ("kernel", "initrd")]
        return [path for path in wanted if path and not os.path.isfile(path)]

    # -- state=running -------------------------------------------------------------------------
    def running(self):
        p, dom = self.p, self.lookup()
        if dom is not None:
            return self.start_existing(dom)
        if p["xml"] is None:
            raise InputError(f"xml: required to define {p['name']}, which is not defined yet")
        make_overlay = p["overlay"] is not None and not os.path.exists(p["overlay"])
        missing = self.missing_image_files(make_overlay)
        if missing:
            self.result["missing"] = missing
            raise InputError(f"image: not in this slave's image cache: {', '.join(missing)}")
        if make_overlay:
            if p["base"] is None:
                raise InputError(f"base: required to create the overlay {p['overlay']}, which does not exist")
            if not os.path.isfile(p["base"]):
                raise InputError(f"base: {p['base']} does not exist")
            if not os.path.isdir(os.path.dirname(p["overlay"])):
                raise InputError(f"overlay: directory {os.path.dirname(p['overlay'])} does not exist")
            qemu_img = self.module.get_bin_path("qemu-img")
            if qemu_img is None:
                raise StepError("creating the overlay needs qemu-img (Debian package qemu-utils) on the slave")
        self.result["changed"] = True
        if self.check:
            self.result["created"] = (["overlay"] if make_overlay else []) + ["domain"]
            self.result["domain_state"] = "running"
            return
        existed = {path for path in p["cleanup_paths"] if os.path.lexists(path)}
        created, dom = self.result["created"], None
        try:
            if make_overlay:
                argv = [qemu_img, "create", "-q", "-f", "qcow2", "-b", p["base"], "-F", "qcow2", p["overlay"]]
                created.append("overlay")  # before the call: a half-written file is removed too
                rc, _out, err = self.module.run_command(argv, check_rc=False)
                if rc != 0:
                    raise StepError(f"creating the overlay failed: {' '.join(argv)}: {err.strip()}")
            dom = self.step("defining the domain", self.conn.defineXMLFlags, p["xml"],
                            libvirt.VIR_DOMAIN_DEFINE_VALIDATE)  # fmt: skip
            created.append("domain")
            self.step("starting the domain", dom.create)
        except StepError as err:
            raise self.rolled_back(err, self.rollback(dom, existed)) from None
        self.describe(dom)

    def start_existing(self, dom):
        state = state_name(dom)
        if state == "paused":
            self.result["changed"] = True
            if not self.check:
                self.step("resuming the paused domain", dom.resume)
        elif state not in ACTIVE_STATES:
            if self.p["overlay"] is not None and not os.path.exists(self.p["overlay"]):
                raise StepError(f"overlay: {self.p['overlay']} does not exist but {self.p['name']} is defined"
                                " with it; remove the domain (state=absent) and launch again")  # fmt: skip
            saved_file = None if dom.hasManagedSaveImage(0) else self.saved_file(dom)
            self.result["changed"] = True
            if saved_file is not None:  # the guest's memory from another slave (vcl_domain_move)
                if not self.check:
                    self.step(f"restoring the domain from {saved_file}", self.conn.restoreFlags, saved_file, None, 0)
                    remove_file(saved_file)
                self.result["removed"].append(saved_file)
            elif not self.check:
                saved = dom.hasManagedSaveImage(0)
                self.step("restoring the domain from its managed save" if saved else "starting the domain",
                          dom.create)  # fmt: skip
        self.describe(dom)
        if self.check and self.result["changed"]:
            self.result.update(domain_state="running", managed_save=False)

    def saved_file(self, dom):
        """The option saved_file when it is there to restore ``dom`` from (None when not given or missing);
        InputError when it is a symlink or no regular file, or its saved image holds another domain."""
        path = self.p["saved_file"]
        try:
            st = os.lstat(path) if path is not None else None
        except FileNotFoundError:
            st = None
        if st is None:
            return None
        if not stat.S_ISREG(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise InputError(f"saved_file: {path} is {kind}; refused (nothing followed)")
        _xml, root = self.read_saved_image(path)
        found, uuid = (root.findtext("uuid") or "").strip(), dom.UUIDString()
        if found != uuid:
            raise InputError(f"saved_file: {path} holds the domain with UUID {found!r}, not {self.p['name']}'s {uuid}")
        return path

    def rollback(self, dom, existed):
        """Undo this run's creations; returns what was undone. Never raises: the first error matters."""
        undone = self.undo_definition(dom)
        if "overlay" in self.result["created"] and remove_file(self.p["overlay"]):
            undone.append("overlay")
        for path in self.p["cleanup_paths"]:
            if path not in existed and remove_file(path):
                undone.append(path)
                self.result["removed"].append(path)
        return undone

    # -- state=suspended -----------------------------------------------------------------------
    def suspended(self):
        dom = self.lookup()
        if dom is None:
            raise StepError(f"cannot suspend {self.p['name']}: the domain is not defined")
        state, saved = state_name(dom), bool(dom.hasManagedSaveImage(0))
        if state in ACTIVE_STATES:
            self.result["changed"] = True
            if not self.check:
                self.step("managed save of the domain", dom.managedSave, 0)
        elif not saved:
            raise StepError(f"cannot suspend {self.p['name']}: it is {state} without a managed save image"
                            " (there is no guest memory to save)")  # fmt: skip
        self.describe(dom)
        if self.check and self.result["changed"]:
            self.result.update(domain_state="shutoff", managed_save=True, vnc_port=None)

    # -- state=shutoff -------------------------------------------------------------------------
    def shutoff(self):
        dom = self.lookup()
        if dom is None:
            raise StepError(f"cannot shut {self.p['name']} down: the domain is not defined")
        if dom.isActive():
            self.result["changed"] = True
            if not self.check:
                self.power_off(dom)
        self.describe(dom)
        if self.check and self.result["changed"]:
            self.result.update(domain_state="shutoff", vnc_port=None)

    def power_off(self, dom):
        """An ACPI shutdown, waited for up to shutdown_timeout seconds, then a hard power-off."""
        deadline = time.monotonic() + self.p["shutdown_timeout"]
        if self.p["shutdown_timeout"] > 0:
            with contextlib.suppress(libvirt.libvirtError):  # a guest without ACPI: forced below
                dom.shutdown()
            while time.monotonic() < deadline and dom.isActive():
                time.sleep(0.2)
        self.result["forced"] = False
        if dom.isActive():
            self.result["forced"] = True
            try:
                dom.destroy()
            except libvirt.libvirtError as err:
                if dom.isActive():
                    raise StepError(f"powering the domain off failed: {err}") from None

    # -- state=absent --------------------------------------------------------------------------
    def absent(self):
        dom = self.lookup()
        if dom is not None:
            self.result["changed"] = True
            self.result["uuid"] = dom.UUIDString()
            if not self.check:
                persistent = dom.isPersistent()  # a transient domain is gone once destroyed
                if dom.isActive():
                    self.step("stopping the domain", dom.destroy)
                if persistent:
                    self.step("undefining the domain", self.undefine, dom)
        for path in filter(None, [self.p["overlay"], self.p["saved_file"], *self.p["cleanup_paths"]]):
            if os.path.lexists(path):
                self.result["changed"] = True
                self.result["removed"].append(path)
                if not self.check:
                    remove_file(path)


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "choices": ["running", "suspended", "shutoff", "absent"], "default": "running"},
            "shutdown_timeout": {"type": "int", "default": 60},
            "xml": {"type": "str", "no_log": True},
            "base": {"type": "path"},
            "overlay": {"type": "path"},
            "saved_file": {"type": "path"},
            "cleanup_paths": {"type": "list", "elements": "path", "default": []},
            "uri": {"type": "str", "default": "qemu:///system"},
            "lock_timeout": {"type": "int", "default": 300},
        },
        supports_check_mode=True,
    )
    run_domain_module(module, validate, Domain, libvirt, "vcl_domain")


if __name__ == "__main__":
    main()
