"""plugins/modules/vcl_domain.py and vcl_domains.py against libvirt's test driver (no daemon), with the real
qemu-img for overlays and the real roles/vm/templates/domain.xml.j2.

`test:///default` keeps its state only inside one process, so the stateful tests run the modules in this
process through Ansible's own test helper (`patch_module_args`); every test uses its own domain names.
Input validation runs the module as a separate process with its arguments file, the way Ansible's
wrapper does (as tests/modules/test_vcl_network.py does)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import jinja2
import pytest

libvirt = pytest.importorskip("libvirt")
import domain_support  # noqa: E402
from domain_support import URI, domain, load, render, run  # noqa: E402

pytestmark = pytest.mark.libvirt

test_driver, qemu_img = domain_support.test_driver, domain_support.qemu_img
vm = domain_support.vm_fixture("vcl-t", mac="52:54:00:12:34:56")
vcl_domain = load("vcl_domain")
vcl_domains = load("vcl_domains")


def launch_args(vm: dict) -> dict:
    return {"name": vm["name"], "state": "running", "xml": vm["xml"], "base": vm["base"], "overlay": vm["overlay"],
            "cleanup_paths": [vm["log"]]}  # fmt: skip


# -- the template ----------------------------------------------------------------------------------


def test_template_escapes_every_value_and_defines_with_validation(vm):
    odd = {"vm__domain_overlay": "/srv/vcl/it's <a> & b.qcow2", "vm__domain_vnc_password": "p'\"<&>",
           "vm__domain_cmdline": "a=<b> c='d'", "vm__domain_kernel": "/boot/vmlinuz",
           "vm__domain_initrd": "/boot/initrd.img", "vm__domain_bridge": "vmbr1"}  # fmt: skip
    xml = render(**{**vm["vars"], **odd})
    root = ET.fromstring(xml)
    assert root.get("type") == "qemu" and root.findtext("name") == vm["name"]
    assert root.find("devices/disk/source").get("file") == odd["vm__domain_overlay"]
    assert root.find("devices/disk/target").get("bus") == "virtio"
    assert root.find("devices/disk/driver").get("type") == "qcow2"
    graphics = root.find("devices/graphics")
    assert (graphics.get("type"), graphics.get("autoport")) == ("vnc", "yes")
    assert graphics.get("passwd") == odd["vm__domain_vnc_password"] and graphics.get("listen") == "10.0.0.21"
    assert root.findtext("os/cmdline") == odd["vm__domain_cmdline"] and root.findtext("os/kernel") == "/boot/vmlinuz"
    assert root.findtext("os/initrd") == "/boot/initrd.img" and root.find("os/boot") is None
    nic = root.find("devices/interface")
    assert nic.get("type") == "bridge" and nic.find("source").get("bridge") == "vmbr1"
    assert nic.find("mac").get("address") == "52:54:00:12:34:56" and nic.find("model").get("type") == "virtio"
    assert root.find("devices/serial").get("type") == "file" and root.find("devices/console") is not None
    assert root.find("devices/serial/source").get("append") == "on", "a resume must not truncate the log"
    assert root.find("features/acpi") is not None and root.findtext("on_poweroff") == "destroy"

    dom = libvirt.open(URI).defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
    try:
        live = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE))
        assert live.find("devices/graphics").get("passwd") == odd["vm__domain_vnc_password"]
        assert live.find("devices/disk/source").get("file") == odd["vm__domain_overlay"]
    finally:
        dom.undefine()


def test_template_without_kernel_boots_from_the_disk_on_br0(vm):
    root = ET.fromstring(vm["xml"])
    assert root.find("os/kernel") is None and root.find("os/boot").get("dev") == "hd"
    assert root.find("devices/interface/source").get("bridge") == "br0"


@pytest.mark.parametrize(
    ("password", "error"),
    [(None, "is_required"), ("", "is_required"), (False, "is_required"), ("123456789", "is_longer_than_8")],
)
def test_template_refuses_a_vnc_console_without_a_usable_password(vm, password, error):
    variables = dict(vm["vars"])
    if password is None:
        del variables["vm__domain_vnc_password"]
    else:
        variables["vm__domain_vnc_password"] = password
    with pytest.raises(jinja2.UndefinedError, match=f"vm__domain_vnc_password_{error}"):
        render(**variables)


# -- the life of a VM ------------------------------------------------------------------------------


def test_running_suspended_running_absent_and_every_second_run_changes_nothing(vm, capsys, qemu_img):
    first = run(vcl_domain, capsys, **launch_args(vm))
    assert first["changed"] is True and first["created"] == ["overlay", "domain"], first
    assert first["domain_state"] == "running" and first["managed_save"] is False and first["uuid"]
    info = json.loads(subprocess.run([qemu_img, "info", "--output=json", vm["overlay"]], text=True,
                                     capture_output=True, check=True).stdout)  # fmt: skip
    assert info["format"] == "qcow2" and info["backing-filename"] == vm["base"]
    assert info["backing-filename-format"] == "qcow2"
    assert "s3cret" not in json.dumps(first), "the VNC password never appears in the result"
    assert run(vcl_domain, capsys, **launch_args(vm)) | {"invocation": None} == first | {
        "changed": False, "created": [], "invocation": None,
    }  # fmt: skip

    saved = run(vcl_domain, capsys, name=vm["name"], state="suspended")
    assert saved["changed"] is True and saved["managed_save"] is True and saved["domain_state"] == "shutoff", saved
    assert saved["vnc_port"] is None and saved["uuid"] == first["uuid"]
    again = run(vcl_domain, capsys, name=vm["name"], state="suspended")
    assert again["changed"] is False and again["managed_save"] is True, again
    listed = run(vcl_domains, capsys)
    mine = [d for d in listed["domains"] if d["name"] == vm["name"]]
    assert mine == [{"name": vm["name"], "uuid": first["uuid"], "state": "shutoff", "managed_save": True,
                     "memory_mb": 128, "vnc_port": None}], listed  # fmt: skip

    resumed = run(vcl_domain, capsys, **launch_args(vm))
    assert resumed["changed"] is True and resumed["created"] == [], resumed
    assert resumed["domain_state"] == "running" and resumed["managed_save"] is False
    assert domain(vm["name"]).hasManagedSaveImage(0) == 0

    Path(vm["log"]).write_text("serial output\n")
    gone = run(vcl_domain, capsys, name=vm["name"], state="absent", overlay=vm["overlay"], cleanup_paths=[vm["log"]])
    assert gone["changed"] is True and gone["domain_state"] == "absent", gone
    assert sorted(gone["removed"]) == sorted([vm["overlay"], vm["log"]])
    assert domain(vm["name"]) is None and not Path(vm["overlay"]).exists() and not Path(vm["log"]).exists()
    assert Path(vm["base"]).exists(), "the cached base image is never removed"
    still = run(vcl_domain, capsys, name=vm["name"], state="absent", overlay=vm["overlay"], cleanup_paths=[vm["log"]])
    assert still["changed"] is False and still["removed"] == [], still


def test_absent_removes_a_suspended_domain_with_its_save_image(vm, capsys):
    run(vcl_domain, capsys, **launch_args(vm))
    run(vcl_domain, capsys, name=vm["name"], state="suspended")
    gone = run(vcl_domain, capsys, name=vm["name"], state="absent", overlay=vm["overlay"])
    assert gone["changed"] is True and "failed" not in gone, gone
    assert domain(vm["name"]) is None and not Path(vm["overlay"]).exists()


def test_a_paused_domain_is_resumed(vm, capsys):
    run(vcl_domain, capsys, **launch_args(vm))
    domain(vm["name"]).suspend()
    result = run(vcl_domain, capsys, **launch_args(vm))
    assert result["changed"] is True and result["domain_state"] == "running", result


def test_shutoff_powers_the_guest_off_and_keeps_the_domain_and_its_overlay(vm, capsys):
    """A VM whose disk is kept: state=shutoff asks the guest to shut down, waits up to shutdown_timeout, then powers
    it off (the test driver's guests ignore the request); the definition and the overlay stay, and running starts
    it again from the same overlay."""
    first = run(vcl_domain, capsys, **launch_args(vm))
    would = run(vcl_domain, capsys, check_mode=True, name=vm["name"], state="shutoff", shutdown_timeout=0)
    assert would["changed"] is True and would["domain_state"] == "shutoff" and domain(vm["name"]).isActive()
    off = run(vcl_domain, capsys, name=vm["name"], state="shutoff", shutdown_timeout=1)
    assert off["changed"] is True and off["domain_state"] == "shutoff" and off["uuid"] == first["uuid"], off
    assert isinstance(off["forced"], bool) and off["vnc_port"] is None and off["managed_save"] is False
    assert domain(vm["name"]) is not None and not domain(vm["name"]).isActive() and Path(vm["overlay"]).exists()
    again = run(vcl_domain, capsys, name=vm["name"], state="shutoff", shutdown_timeout=0)
    assert again["changed"] is False and "forced" not in again, again
    back = run(vcl_domain, capsys, name=vm["name"], state="running")  # no xml needed: the domain is defined
    assert back["changed"] is True and back["domain_state"] == "running" and back["created"] == [], back
    gone = run(vcl_domain, capsys, name="vcl-t" + uuid.uuid4().hex[:8], state="shutoff")
    assert gone.get("failed") is True and "is not defined" in gone["msg"], gone


def test_a_kept_disk_brought_as_the_overlay_needs_its_base_in_the_cache(vm, capsys, qemu_img, tmp_path):
    """An overlay that exists already (a kept disk copied to the slave) is used as it is, and its base must be in
    the cache: a missing base is listed in `missing` (the playbook copies the image and runs again)."""
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-b", vm["base"], "-F", "qcow2", vm["overlay"]],
                   check=True)
    before = Path(vm["overlay"]).read_bytes()
    missing = run(vcl_domain, capsys, **{**launch_args(vm), "base": str(tmp_path / "absent" / "base.qcow2")})
    assert missing.get("failed") is True and missing["missing"] == [str(tmp_path / "absent" / "base.qcow2")]
    assert domain(vm["name"]) is None and Path(vm["overlay"]).read_bytes() == before  # nothing created or removed
    started = run(vcl_domain, capsys, **launch_args(vm))
    assert started["changed"] is True and started["created"] == ["domain"], started


def test_check_mode_reports_and_changes_nothing(vm, capsys):
    would = run(vcl_domain, capsys, check_mode=True, **launch_args(vm))
    assert would["changed"] is True and would["created"] == ["overlay", "domain"], would
    assert would["domain_state"] == "running"
    assert domain(vm["name"]) is None and not Path(vm["overlay"]).exists()

    run(vcl_domain, capsys, **launch_args(vm))
    would = run(vcl_domain, capsys, check_mode=True, name=vm["name"], state="suspended")
    assert would["changed"] is True and would["managed_save"] is True and would["domain_state"] == "shutoff"
    assert domain(vm["name"]).isActive() and not domain(vm["name"]).hasManagedSaveImage(0)
    would = run(vcl_domain, capsys, check_mode=True, name=vm["name"], state="absent", overlay=vm["overlay"])
    assert would["changed"] is True and would["removed"] == [vm["overlay"]], would
    assert domain(vm["name"]).isActive() and Path(vm["overlay"]).exists()


# -- failures leave nothing behind -----------------------------------------------------------------


def test_a_failed_start_undoes_the_definition_the_overlay_and_new_files(vm, capsys, monkeypatch):
    Path(vm["log"]).unlink(missing_ok=True)

    def failing_create(self, *args):
        Path(vm["log"]).write_text("qemu started writing its log\n")  # what a real failed start leaves
        raise libvirt.libvirtError("Cannot get interface MTU on 'br0': No such device")

    monkeypatch.setattr(libvirt.virDomain, "create", failing_create)
    result = run(vcl_domain, capsys, **launch_args(vm))
    assert result.get("failed") is True, result
    assert result["msg"].startswith("starting the domain failed: Cannot get interface MTU"), result
    assert "rolled back: domain, overlay" in result["msg"] and result["created"] == []
    assert domain(vm["name"]) is None and not Path(vm["overlay"]).exists() and not Path(vm["log"]).exists()
    assert Path(vm["base"]).exists()


def test_a_file_that_existed_before_the_failed_launch_is_kept(vm, capsys, monkeypatch, qemu_img):
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-b", vm["base"], "-F", "qcow2", vm["overlay"]],
                   check=True)  # fmt: skip
    Path(vm["log"]).write_text("an earlier boot\n")

    def failing_create(self, *args):
        raise libvirt.libvirtError("boom")

    monkeypatch.setattr(libvirt.virDomain, "create", failing_create)
    result = run(vcl_domain, capsys, **launch_args(vm))
    assert result.get("failed") is True and result["msg"].endswith("rolled back: domain"), result
    assert domain(vm["name"]) is None and Path(vm["overlay"]).exists() and Path(vm["log"]).exists()


def test_xml_that_libvirt_rejects_on_define_leaves_nothing(vm, capsys):
    bad = vm["xml"].replace("<memory unit='MiB'>128</memory>", "<memory unit='MiB'>lots</memory>")
    result = run(vcl_domain, capsys, **{**launch_args(vm), "xml": bad})
    assert result.get("failed") is True and result["msg"].startswith("defining the domain failed:"), result
    assert "rolled back: overlay" in result["msg"]
    assert domain(vm["name"]) is None and not Path(vm["overlay"]).exists()


def test_a_base_image_qemu_img_rejects_leaves_nothing(vm, capsys, tmp_path):
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * 65536)
    result = run(vcl_domain, capsys, **{**launch_args(vm), "base": str(raw)})
    assert result.get("failed") is True and result["msg"].startswith("creating the overlay failed:"), result
    assert result["msg"].endswith("rolled back: nothing to undo"), result
    assert domain(vm["name"]) is None and not Path(vm["overlay"]).exists()


def test_suspending_a_domain_that_cannot_be_saved_fails(vm, capsys):
    missing = run(vcl_domain, capsys, name=vm["name"], state="suspended")
    assert missing.get("failed") is True and "is not defined" in missing["msg"], missing
    libvirt.open(URI).defineXML(vm["xml"])
    off = run(vcl_domain, capsys, name=vm["name"], state="suspended")
    assert off.get("failed") is True and "shutoff without a managed save image" in off["msg"], off
    assert not domain(vm["name"]).isActive()


def test_a_defined_domain_whose_overlay_is_gone_is_not_started(vm, capsys):
    libvirt.open(URI).defineXML(vm["xml"])
    result = run(vcl_domain, capsys, **launch_args(vm))
    assert result.get("failed") is True and result["msg"].startswith("overlay:"), result
    assert not domain(vm["name"]).isActive() and not Path(vm["overlay"]).exists()


def test_vcl_domains_lists_only_the_prefix_and_the_available_memory(vm, capsys):
    run(vcl_domain, capsys, **launch_args(vm))
    listed = run(vcl_domains, capsys, prefix=vm["name"])
    assert listed["changed"] is False and [d["name"] for d in listed["domains"]] == [vm["name"]], listed
    assert listed["domains"][0]["state"] == "running" and listed["domains"][0]["managed_save"] is False
    assert isinstance(listed["mem_available_mb"], int) and listed["mem_available_mb"] > 0
    everything = run(vcl_domains, capsys, prefix="")
    assert "test" in [d["name"] for d in everything["domains"]], "the test driver's own domain, with no prefix"
    assert "test" not in [d["name"] for d in run(vcl_domains, capsys)["domains"]]


# -- input checks ----------------------------------------------------------------------------------


def _xml_without_password(vm, listen="10.0.0.21"):
    xml = vm["xml"].replace(" passwd='s3cret'", "")
    return xml.replace("10.0.0.21", listen)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (lambda vm: {"name": "vm-12"}, "name", "vcl-<id>"),
        (lambda vm: {"name": "vcl-1;reboot"}, "name", "vcl-<id>"),
        (lambda vm: {"uri": "nonsense"}, "uri", "not a libvirt URI"),
        (lambda vm: {"state": "stopped"}, "state", "must be one of"),
        (lambda vm: {"xml": None}, "xml", "required to define"),
        (lambda vm: {"xml": "<domain><name>"}, "xml", "not well-formed"),
        (lambda vm: {"xml": vm["xml"].replace(vm["name"], "vcl-other")}, "xml", "not 'vcl-"),
        (lambda vm: {"xml": _xml_without_password(vm)}, "xml", "vnc graphics on 10.0.0.21 has no passwd"),
        (lambda vm: {"xml": _xml_without_password(vm, "127.0.0.1")}, "xml", "has no passwd"),
        (lambda vm: {"xml": vm["xml"].replace("'s3cret'", "'123456789'")}, "xml", "9 characters long"),
        (lambda vm: {"xml": "<!DOCTYPE d [<!ENTITY a 'b'>]>" + vm["xml"]}, "xml", "DOCTYPE"),
        (lambda vm: {"overlay": "relative.qcow2"}, "overlay", "not an absolute path"),
        (lambda vm: {"overlay": "/srv/other.qcow2"}, "overlay", "not a disk of the domain XML"),
        (lambda vm: {"cleanup_paths": ["/tmp"]}, "cleanup_paths", "is a directory"),
        (lambda vm: {"base": None}, "base", "required to create the overlay"),
        (lambda vm: {"base": "/nonexistent/base.qcow2"}, "image", "cache: /nonexistent/base.qcow2"),
        (lambda vm: {"state": "shutoff", "shutdown_timeout": -1}, "shutdown_timeout", "number of seconds"),
        (lambda vm: {"state": "shutoff", "shutdown_timeout": 999999}, "shutdown_timeout", "number of seconds"),
    ],
)
def test_bad_input_names_the_field_and_changes_nothing(vm, tmp_path, change, field, words):
    args = {**launch_args(vm), **change(vm)}
    args = {k: v for k, v in args.items() if v is not None}
    result = domain_support.run_process("vcl_domain", tmp_path, **args)
    assert result.get("failed") is True, result
    assert result["msg"].startswith(f"{field}:") or f"value of {field} must be" in result["msg"], result
    assert words in result["msg"], result
    assert not Path(vm["overlay"]).exists()
    if field == "image":  # the playbook copies what is listed and runs the module again
        assert result["missing"] == ["/nonexistent/base.qcow2"]


def test_bad_input_is_refused_before_touching_an_existing_domain(vm, capsys):
    run(vcl_domain, capsys, **launch_args(vm))
    result = run(vcl_domain, capsys, name=vm["name"], state="absent", overlay="/etc")
    assert result.get("failed") is True and result["msg"].startswith("overlay:"), result
    assert domain(vm["name"]).isActive() and Path(vm["overlay"]).exists()


@pytest.mark.parametrize(("fact", "flags", "expected"), [
    ('{"domain_type": "qemu"}', "flags : fpu vmx sse", "qemu"),  # the kvm role's decision wins
    ('{"domain_type": "kvm"}', "flags : fpu sse", "kvm"),
    (None, "flags : fpu vmx sse", "kvm"),  # no fact: the CPU flags decide
    (None, "flags : fpu svm", "kvm"),
    (None, "flags : fpu sse", "qemu"),
    ("not json", "flags : fpu", "qemu"),
])
def test_auto_domain_type_is_resolved_on_the_slave(tmp_path, fact, flags, expected):
    mod = vcl_domain
    fact_file = tmp_path / "vcl_kvm.fact"
    if fact is not None:
        fact_file.write_text(fact)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(flags + "\n")
    xml = "<domain type='auto'>\n  <name>vcl-1</name>\n</domain>"
    out = mod.resolve_domain_type(xml, str(fact_file), str(cpuinfo))
    assert out == xml.replace("'auto'", f"'{expected}'")
    fixed = "<domain type='qemu'><name>vcl-1</name></domain>"
    assert mod.resolve_domain_type(fixed, str(fact_file), str(cpuinfo)) == fixed


# -- saved_file: a guest's memory brought from another slave (vcl_domain_move) ------------------------------------


def _saved(vm: dict, capsys, tmp_path: Path) -> str:
    """The VM launched, then its memory saved to a file with libvirt's virDomainSave: defined, shut off, no managed
    save image (what vcl_domain_move leaves with state=imported and start=false)."""
    run(vcl_domain, capsys, **launch_args(vm))
    path = str(tmp_path / f"{vm['name']}.save")
    domain(vm["name"]).saveFlags(path, None, 0)
    assert not domain(vm["name"]).isActive() and not domain(vm["name"]).hasManagedSaveImage(0)
    return path


def test_running_restores_from_saved_file_and_removes_it(vm, capsys, tmp_path):
    saved = _saved(vm, capsys, tmp_path)
    would = run(vcl_domain, capsys, check_mode=True, **launch_args(vm), saved_file=saved)
    assert would["changed"] is True and would["removed"] == [saved] and would["domain_state"] == "running", would
    assert not domain(vm["name"]).isActive() and Path(saved).is_file()

    result = run(vcl_domain, capsys, **launch_args(vm), saved_file=saved)
    assert result["changed"] is True and result["domain_state"] == "running", result
    assert result["removed"] == [saved] and result["created"] == [] and not Path(saved).exists()
    assert domain(vm["name"]).state() == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_RESTORED]
    again = run(vcl_domain, capsys, **launch_args(vm), saved_file=saved)
    assert again["changed"] is False and again["removed"] == [], again


def test_running_without_the_saved_file_starts_cold_as_before(vm, capsys, tmp_path):
    run(vcl_domain, capsys, **launch_args(vm))
    domain(vm["name"]).destroy()
    result = run(vcl_domain, capsys, **launch_args(vm), saved_file=str(tmp_path / "absent.save"))
    assert result["changed"] is True and result["removed"] == [], result
    assert domain(vm["name"]).state() == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED]


def test_a_managed_save_image_wins_over_saved_file(vm, capsys, tmp_path):
    saved = _saved(vm, capsys, tmp_path)
    domain(vm["name"]).create()
    run(vcl_domain, capsys, name=vm["name"], state="suspended")
    result = run(vcl_domain, capsys, **launch_args(vm), saved_file=saved)
    assert result["changed"] is True and result["removed"] == [] and result["managed_save"] is False, result
    assert Path(saved).is_file(), "not used: the managed save image was restored"


def test_a_saved_file_that_is_a_symlink_or_holds_another_domain_is_refused(vm, capsys, tmp_path):
    saved = _saved(vm, capsys, tmp_path)
    link = str(tmp_path / "link.save")
    os.symlink(saved, link)
    linked = run(vcl_domain, capsys, **launch_args(vm), saved_file=link)
    assert linked.get("failed") is True and linked["msg"] == f"saved_file: {link} is a symlink; refused (nothing" \
        " followed)", linked  # fmt: skip
    assert not domain(vm["name"]).isActive() and Path(saved).is_file()

    dom = domain(vm["name"])
    first_uuid = dom.UUIDString()
    dom.undefine()
    libvirt.open(URI).defineXML(vm["xml"])  # the same name, another UUID
    other = run(vcl_domain, capsys, **launch_args(vm), saved_file=saved)
    assert other.get("failed") is True and other["msg"].startswith(f"saved_file: {saved} holds the domain with UUID"
                                                                   f" '{first_uuid}', not"), other  # fmt: skip
    assert not domain(vm["name"]).isActive() and Path(saved).is_file()


def test_absent_removes_the_saved_file_too(vm, capsys, tmp_path):
    saved = _saved(vm, capsys, tmp_path)
    gone = run(vcl_domain, capsys, name=vm["name"], state="absent", overlay=vm["overlay"], saved_file=saved)
    assert gone["changed"] is True and sorted(gone["removed"]) == sorted([vm["overlay"], saved]), gone
    assert domain(vm["name"]) is None and not Path(saved).exists()
