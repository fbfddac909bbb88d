# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""What vcl_domain and vcl_domain_move share: the checks of a VM's name, of a path option and of a domain XML,
whether the controller rendered it (vcl_domain's ``xml``) or libvirt wrote it into a saved guest image
(vcl_domain_move's ``saved_file``). Every check raises InputError with a message that starts with the field.

Also their run: the common checks (name, lock_timeout, uri), DomainRun (the base of their work classes: look-up,
libvirt steps, undoing a definition) and run_domain_module (their main() after the argument spec). No libvirt import
here: the modules import it (and report it missing) and hand it over."""

from __future__ import annotations

import contextlib
import os
import re
import xml.etree.ElementTree as ET

from ansible_collections.vcl.lab.plugins.module_utils.vcl_libvirt import URI_RE, state_name, vnc_port
from ansible_collections.vcl.lab.plugins.module_utils.vcl_lock import LOCK_DIR, MAX_TIMEOUT, LockError, vm_lock

NAME_RE = re.compile(r"^vcl-[A-Za-z0-9_]{1,21}$")
VNC_PASSWD_MAX = 8  # libvirt's qemu driver refuses longer VNC passwords at define
ACTIVE_STATES = {"running", "blocked", "paused", "pmsuspended", "shutdown"}


class InputError(ValueError):
    """A bad parameter; the message names the field."""


class StepError(RuntimeError):
    """A libvirt step (or vcl_domain's qemu-img) failed; the message names the step."""


def check_common(p, seconds=()):
    """The checks both modules make first, in this order: name, lock_timeout, the further optional ``seconds``
    fields (0 when not given), uri. InputError naming the field."""
    name = p["name"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InputError(f"name: {name!r} is not vcl-<id> (id: letters, digits and _, at most 21)")
    timeouts = {"lock_timeout": p["lock_timeout"], **{field: p.get(field, 0) for field in seconds}}
    for field, value in timeouts.items():
        if not isinstance(value, int) or not 0 <= value <= MAX_TIMEOUT:
            raise InputError(f"{field}: {value!r} is not a number of seconds in 0..{MAX_TIMEOUT}")
    if not URI_RE.match(p["uri"] or ""):
        raise InputError(f"uri: {p['uri']!r} is not a libvirt URI (for example qemu:///system)")


def abs_path(value, field):
    """``value`` normalised, or InputError when it is not an absolute path or names a directory (None stays None)."""
    if value is None:
        return None
    if not value or not os.path.isabs(value) or "\0" in value:
        raise InputError(f"{field}: {value!r} is not an absolute path")
    path = os.path.normpath(value)
    if path == "/" or os.path.isdir(path):
        raise InputError(f"{field}: {value!r} is a directory, not a file")
    return path


def graphics_errors(root, field="xml"):
    """What is wrong with the domain's consoles: a VNC or SPICE one without a password, a VNC password too long."""
    for graphics in root.iter("graphics"):
        kind, passwd = graphics.get("type"), graphics.get("passwd")
        if kind in ("vnc", "spice") and not passwd:
            listens = [graphics.get("listen")] + [le.get("address") for le in graphics.iter("listen")]
            where = ", ".join(sorted({a for a in listens if a})) or "the default address"
            yield f"{field}: {kind} graphics on {where} has no passwd attribute (never a console without a password)"
        elif kind == "vnc" and len(passwd) > VNC_PASSWD_MAX:
            yield f"{field}: the VNC passwd is {len(passwd)} characters long; VNC allows at most {VNC_PASSWD_MAX}"


def disk_files(root):
    """The files the domain's disks are backed by, normalised."""
    return {
        os.path.normpath(src.get("file"))
        for disk in root.iter("disk")
        for src in disk.findall("source")
        if src.get("file")
    }


def check_xml(xml, name, overlay, field="xml"):
    """The parsed domain XML, or InputError naming ``field`` (or ``overlay``) with what is wrong: a DOCTYPE or
    ENTITY, XML that is not well-formed, a root that is not <domain>, a <name> other than ``name``, a console
    without a password, an ``overlay`` (when given) that is not one of its disks."""
    if "<!DOCTYPE" in xml or "<!ENTITY" in xml:  # no entity expansion tricks: libvirt needs neither
        raise InputError(f"{field}: a DOCTYPE or ENTITY declaration is not allowed in domain XML")
    try:
        root = ET.fromstring(xml)  # noqa: S314  (no DTD, checked above; written by the controller or libvirt)
    except ET.ParseError as err:
        raise InputError(f"{field}: not well-formed XML ({err})") from None
    if root.tag != "domain":
        raise InputError(f"{field}: the root element is <{root.tag}>, not <domain>")
    found = (root.findtext("name") or "").strip()
    if found != name:
        raise InputError(f"{field}: the domain's <name> is {found!r}, not {name!r} (option name)")
    for error in graphics_errors(root, field):
        raise InputError(error)
    if overlay is not None:
        sources = disk_files(root)
        if overlay not in sources:
            raise InputError(f"overlay: {overlay} is not a disk of the domain XML (its disks: {sorted(sources)})")
    return root


def remove_file(path):
    """Whether ``path`` was there to remove (it is gone now)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


class DomainRun:
    """The work of one run against one connection, the base of vcl_domain's and vcl_domain_move's; ``result`` is what
    the module returns, ``libvirt`` the module's binding."""

    def __init__(self, module, conn, p, libvirt, result):
        self.module, self.conn, self.p, self.libvirt = module, conn, p, libvirt
        self.check = module.check_mode
        self.result = result

    def lookup(self):
        try:
            return self.conn.lookupByName(self.p["name"])
        except self.libvirt.libvirtError as err:
            if err.get_error_code() == self.libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise StepError(f"looking up domain {self.p['name']} failed: {err}") from None

    def describe(self, dom):
        self.result["uuid"] = dom.UUIDString()
        self.result["domain_state"] = state_name(dom)
        running = self.result["domain_state"] == "running"
        self.result["vnc_port"] = vnc_port(dom, (self.libvirt.libvirtError,)) if running else None

    def step(self, what, call, *args):
        try:
            return call(*args)
        except self.libvirt.libvirtError as err:
            raise StepError(f"{what} failed: {err}") from None

    def read_saved_image(self, path):
        """The domain XML in the save image ``path`` (with its VNC password) and its parsed root, checked like
        vcl_domain's ``xml`` (InputError naming saved_file)."""
        xml = self.step(f"reading the domain XML from {path}", self.conn.saveImageGetXMLDesc, path,
                        self.libvirt.VIR_DOMAIN_SAVE_IMAGE_XML_SECURE)  # fmt: skip
        return xml, check_xml(xml, self.p["name"], self.p["overlay"], field="saved_file")

    def undefine(self, dom):
        """Undefine ``dom`` with its managed save image, snapshot metadata and NVRAM."""
        libvirt = self.libvirt
        flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        try:
            dom.undefineFlags(flags | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        except libvirt.libvirtError as err:
            # Drivers without NVRAM support (libvirt's test driver) refuse the flag: retry without it.
            if err.get_error_code() not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
                raise
            dom.undefineFlags(flags)

    def undo_definition(self, dom):
        """Undo this run's definition of ``dom`` (when ``result["created"]`` has it); returns what was undone. Never
        raises: the first error matters."""
        undone = []
        if dom is not None and "domain" in self.result["created"]:
            with contextlib.suppress(self.libvirt.libvirtError):
                if dom.isActive():
                    dom.destroy()
            try:
                self.undefine(dom)
                undone.append("domain")
            except self.libvirt.libvirtError as err:
                undone.append(f"domain NOT undefined ({err})")
        return undone

    def rolled_back(self, err, undone):
        """The StepError of a failed step ``err`` after the roll-back that undid ``undone``; nothing stays created."""
        self.result["created"] = []
        return StepError(f"{err}; rolled back: {', '.join(undone) or 'nothing to undo'}")


def run_domain_module(module, validate, work_class, libvirt, who):
    """vcl_domain's and vcl_domain_move's main() after the argument spec: ``validate`` the parameters, take the
    domain's lock (vcl_domain's prefix: one lock per domain for both modules), connect to libvirt, run the state's
    method of ``work_class`` and exit with its result. ``libvirt`` is the module's binding (None: missing), ``who``
    the module's name."""
    try:
        p = validate(module.params)
    except InputError as err:
        module.fail_json(msg=str(err))
    if libvirt is None:
        module.fail_json(msg=f"{who} needs the libvirt Python bindings on the slave (Debian: python3-libvirt)")
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors go to the result, not stderr

    with contextlib.ExitStack() as held:
        try:
            held.enter_context(vm_lock(p["name"], f"{who} state={p['state']}", p["lock_timeout"], LOCK_DIR,
                                       prefix="vcl_domain"))  # fmt: skip
        except LockError as err:
            module.fail_json(msg=str(err))
        try:
            conn = libvirt.open(p["uri"])
        except libvirt.libvirtError as err:
            module.fail_json(msg=f"uri: cannot connect to {p['uri']}: {err}")
        work = work_class(module, conn, p)
        try:
            getattr(work, p["state"])()
        except (InputError, StepError) as err:
            module.fail_json(msg=str(err), **work.result)
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
    module.exit_json(**work.result)
