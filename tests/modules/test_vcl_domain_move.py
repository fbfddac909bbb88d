"""plugins/modules/vcl_domain_move.py against libvirt's test driver (no daemon): a VM's guest memory saved to a file on
one slave and restored on another, with the real roles/vm/templates/domain.xml.j2 and real qcow2 overlays.

`test:///default` keeps its state only inside one process, so the stateful tests run the modules in this process
through Ansible's own test helper (`patch_module_args`) with a connection held open by a fixture; every test uses
its own domain names. Two slaves are two node files (`test:///ABS/node.xml`): each connection to one starts afresh
from its file, so the round trip checks what each run returns and leaves on disk.

What the test driver cannot do: start a domain paused (VIR_DOMAIN_START_PAUSED; the module then starts it running
and saves it at once), restore a paused guest paused (it always restores running), give a VNC console a port, or
check a save image against the disks' real contents; QEMU's C(-vnc) binding is not exercised either."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

libvirt = pytest.importorskip("libvirt")
import domain_support  # noqa: E402
from domain_support import URI, domain, load, run  # noqa: E402

pytestmark = pytest.mark.libvirt

SECURE = libvirt.VIR_DOMAIN_SAVE_IMAGE_XML_SECURE
test_driver, qemu_img = domain_support.test_driver, domain_support.qemu_img
vm = domain_support.vm_fixture("vcl-m", mac="52:54:00:12:34:57")
vcl_domain = load("vcl_domain")
vcl_domain_move = load("vcl_domain_move")


def launch(vm: dict, capsys) -> dict:
    result = run(vcl_domain, capsys, name=vm["name"], state="running", xml=vm["xml"], base=vm["base"],
                 overlay=vm["overlay"])  # fmt: skip
    assert result["changed"] is True and result["domain_state"] == "running", result
    return result


def move_args(vm: dict, state: str, **more) -> dict:
    return {"name": vm["name"], "state": state, "saved_file": vm["saved"], "overlay": vm["overlay"], **more}


def exported(vm: dict, capsys) -> dict:
    """The VM launched and exported, then forgotten by this "slave" (undefined; its overlay and saved file stay), so
    that an import here is what an import on the target slave is."""
    launched = launch(vm, capsys)
    result = run(vcl_domain_move, capsys, **move_args(vm, "exported"))
    assert result["changed"] is True and result["uuid"] == launched["uuid"], result
    domain(vm["name"]).undefine()
    return result


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- state=exported --------------------------------------------------------------------------------


def test_export_of_a_running_domain_saves_its_memory_and_keeps_the_definition(vm, capsys):
    launched = launch(vm, capsys)
    overlay = Path(vm["overlay"]).read_bytes()
    result = run(vcl_domain_move, capsys, **move_args(vm, "exported"))
    assert result["changed"] is True and "failed" not in result, result
    assert result["domain_state"] == "shutoff" and result["uuid"] == launched["uuid"]
    assert result["saved_file"] == vm["saved"] and result["size_bytes"] == os.path.getsize(vm["saved"]) > 0
    assert mode(vm["saved"]) == 0o600 and "s3cret" not in json.dumps(result)
    dom = domain(vm["name"])
    assert dom.isPersistent() and not dom.isActive() and not dom.hasManagedSaveImage(0)
    assert Path(vm["overlay"]).read_bytes() == overlay, "the overlay is not touched"
    image = ET.fromstring(libvirt.open(URI).saveImageGetXMLDesc(vm["saved"], SECURE))
    assert image.findtext("uuid") == launched["uuid"] and image.find("devices/graphics").get("passwd") == "s3cret"

    again = run(vcl_domain_move, capsys, **move_args(vm, "exported"))
    assert again["changed"] is False and again["size_bytes"] == result["size_bytes"], again
    assert again["domain_state"] == "shutoff" and again["uuid"] == launched["uuid"]


def test_export_of_a_paused_domain(vm, capsys):
    launch(vm, capsys)
    domain(vm["name"]).suspend()
    result = run(vcl_domain_move, capsys, **move_args(vm, "exported"))
    assert result["changed"] is True and result["domain_state"] == "shutoff", result
    assert Path(vm["saved"]).is_file() and not domain(vm["name"]).isActive()


def test_export_of_a_suspended_vm_starts_it_from_its_managed_save_and_saves_it(vm, capsys):
    launch(vm, capsys)
    suspended = run(vcl_domain, capsys, name=vm["name"], state="suspended")
    assert suspended["managed_save"] is True, suspended
    result = run(vcl_domain_move, capsys, **move_args(vm, "exported"))
    assert result["changed"] is True and result["domain_state"] == "shutoff", result
    assert result["size_bytes"] == os.path.getsize(vm["saved"]) > 0 and mode(vm["saved"]) == 0o600
    dom = domain(vm["name"])
    assert not dom.isActive() and not dom.hasManagedSaveImage(0), "the managed save image became saved_file"
    again = run(vcl_domain_move, capsys, **move_args(vm, "exported"))
    assert again["changed"] is False, again


def test_export_fails_for_a_missing_domain_and_when_there_is_nothing_to_save(vm, capsys, qemu_img):
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-b", vm["base"], "-F", "qcow2", vm["overlay"]],
                   check=True)  # fmt: skip
    missing = run(vcl_domain_move, capsys, **move_args(vm, "exported"))
    assert missing.get("failed") is True and missing["msg"] == f"cannot export {vm['name']}: the domain is not defined"
    libvirt.open(URI).defineXML(vm["xml"])
    off = run(vcl_domain_move, capsys, **move_args(vm, "exported"))
    assert off.get("failed") is True and off["msg"].endswith("does not exist (nothing to save)"), off
    assert "shutoff without a managed save image" in off["msg"] and not Path(vm["saved"]).exists()


def test_export_refuses_a_symlink_a_directory_and_a_missing_directory(vm, capsys, tmp_path):
    launch(vm, capsys)
    target = tmp_path / "elsewhere"
    target.write_text("not to be overwritten\n")
    os.symlink(target, vm["saved"])
    linked = run(vcl_domain_move, capsys, **move_args(vm, "exported"))
    assert linked.get("failed") is True and linked["msg"] == f"saved_file: {vm['saved']} is a symlink; refused" \
        " (nothing followed)", linked  # fmt: skip
    assert target.read_text() == "not to be overwritten\n" and domain(vm["name"]).isActive()
    os.unlink(vm["saved"])
    nodir = run(vcl_domain_move, capsys, **move_args(vm, "exported", saved_file=str(tmp_path / "no" / "vm.save")))
    assert nodir.get("failed") is True and nodir["msg"] == f"saved_file: directory {tmp_path / 'no'} does not exist"
    (tmp_path / "adir").mkdir()
    adir = domain_support.run_process("vcl_domain_move", tmp_path,
                                      **move_args(vm, "exported", saved_file=str(tmp_path / "adir")))
    assert adir.get("failed") is True and adir["msg"].startswith("saved_file:") and "is a directory" in adir["msg"]
    assert domain(vm["name"]).isActive()


def test_export_refuses_an_overlay_that_is_not_the_domains_disk(vm, capsys, tmp_path):
    launch(vm, capsys)
    other = tmp_path / "other.qcow2"
    other.write_bytes(b"x")
    result = run(vcl_domain_move, capsys, **move_args(vm, "exported", overlay=str(other)))
    assert result.get("failed") is True and result["msg"].startswith(f"overlay: {other} is not a disk of"), result
    assert domain(vm["name"]).isActive() and not Path(vm["saved"]).exists()


def test_a_failed_save_leaves_no_file_and_the_domain_running(vm, capsys, monkeypatch):
    launch(vm, capsys)

    def failing_save(self, path, dxml, flags):
        Path(path).write_bytes(b"half a guest")  # what an interrupted save leaves
        raise libvirt.libvirtError("No space left on device")

    monkeypatch.setattr(libvirt.virDomain, "saveFlags", failing_save)
    result = run(vcl_domain_move, capsys, **move_args(vm, "exported"))
    assert result.get("failed") is True, result
    assert result["msg"] == f"saving the guest's memory to {vm['saved']} failed: No space left on device; the" \
        " partial file was removed", result  # fmt: skip
    assert not Path(vm["saved"]).exists() and domain(vm["name"]).isActive()


def test_a_failed_save_of_a_suspended_vm_puts_it_back_into_its_managed_save(vm, capsys, monkeypatch):
    launch(vm, capsys)
    run(vcl_domain, capsys, name=vm["name"], state="suspended")

    def failing_save(self, path, dxml, flags):
        raise libvirt.libvirtError("boom")

    monkeypatch.setattr(libvirt.virDomain, "saveFlags", failing_save)
    result = run(vcl_domain_move, capsys, **move_args(vm, "exported"))
    assert result.get("failed") is True and result["msg"].endswith("the domain is in its managed save again"), result
    dom = domain(vm["name"])
    assert not dom.isActive() and dom.hasManagedSaveImage(0) and not Path(vm["saved"]).exists()


# -- state=imported --------------------------------------------------------------------------------


def test_import_with_start_restores_the_guest_and_removes_the_file(vm, capsys):
    saved = exported(vm, capsys)
    result = run(vcl_domain_move, capsys, **move_args(vm, "imported"))
    assert result["changed"] is True and "failed" not in result, result
    assert result["created"] == ["domain"] and result["removed"] == [vm["saved"]]
    assert result["domain_state"] == "running" and result["uuid"] == saved["uuid"]
    assert result["vnc_port"] is None, "the test driver gives no port"
    assert "s3cret" not in json.dumps(result)
    dom = domain(vm["name"])
    assert dom.isPersistent() and dom.state() == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_RESTORED]
    assert not Path(vm["saved"]).exists() and Path(vm["overlay"]).exists()
    live = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE))
    assert live.find("devices/graphics").get("passwd") == "s3cret", "the VNC password came along"

    again = run(vcl_domain_move, capsys, **move_args(vm, "imported"))
    assert again["changed"] is False and again["created"] == [] and again["removed"] == [], again
    assert again["domain_state"] == "running" and again["uuid"] == saved["uuid"]


def test_a_left_over_saved_file_next_to_the_running_domain_is_removed(vm, capsys):
    exported(vm, capsys)
    kept = Path(vm["saved"]).read_bytes()
    run(vcl_domain_move, capsys, **move_args(vm, "imported"))
    Path(vm["saved"]).write_bytes(kept)  # the restore went through, the removal did not
    result = run(vcl_domain_move, capsys, **move_args(vm, "imported"))
    assert result["changed"] is True and result["removed"] == [vm["saved"]] and result["created"] == [], result
    assert not Path(vm["saved"]).exists() and domain(vm["name"]).isActive()


def test_import_without_start_defines_it_and_vcl_domain_restores_it_later(vm, capsys):
    saved = exported(vm, capsys)
    result = run(vcl_domain_move, capsys, **move_args(vm, "imported", start=False))
    assert result["changed"] is True and result["created"] == ["domain"] and result["removed"] == [], result
    assert result["domain_state"] == "shutoff" and result["uuid"] == saved["uuid"]
    dom = domain(vm["name"])
    assert dom.isPersistent() and not dom.isActive() and Path(vm["saved"]).is_file()
    again = run(vcl_domain_move, capsys, **move_args(vm, "imported", start=False))
    assert again["changed"] is False and again["created"] == [], again

    resumed = run(vcl_domain, capsys, name=vm["name"], state="running", overlay=vm["overlay"],
                  saved_file=vm["saved"])  # fmt: skip
    assert resumed["changed"] is True and resumed["domain_state"] == "running", resumed
    assert resumed["removed"] == [vm["saved"]] and resumed["created"] == [] and resumed["uuid"] == saved["uuid"]
    assert domain(vm["name"]).state() == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_RESTORED]
    assert not Path(vm["saved"]).exists()


def test_import_with_vnc_listen_moves_the_console_to_this_slaves_address(vm, capsys):
    exported(vm, capsys)
    result = run(vcl_domain_move, capsys, **move_args(vm, "imported", start=False, vnc_listen="10.0.0.22"))
    assert result["changed"] is True, result
    image = ET.fromstring(libvirt.open(URI).saveImageGetXMLDesc(vm["saved"], SECURE))
    defined = ET.fromstring(domain(vm["name"]).XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE))
    for root in (image, defined):
        graphics = root.find("devices/graphics")
        assert graphics.get("listen") == "10.0.0.22" and graphics.find("listen").get("address") == "10.0.0.22"
        assert graphics.get("passwd") == "s3cret"
    again = run(vcl_domain_move, capsys, **move_args(vm, "imported", start=False, vnc_listen="10.0.0.22"))
    assert again["changed"] is False, again
    started = run(vcl_domain_move, capsys, **move_args(vm, "imported", vnc_listen="10.0.0.22"))
    assert started["changed"] is True and started["domain_state"] == "running" and started["created"] == []
    live = ET.fromstring(domain(vm["name"]).XMLDesc(0))
    assert live.find("devices/graphics").get("listen") == "10.0.0.22"


@pytest.mark.parametrize("case", ["name", "overlay", "uuid", "overlay_symlink", "saved_symlink", "no_file"])
def test_import_is_refused_and_changes_nothing(vm, capsys, tmp_path, case):
    exported(vm, capsys)
    image = Path(vm["saved"]).read_bytes()
    args = move_args(vm, "imported")
    if case == "name":
        args["name"] = "vcl-m" + uuid.uuid4().hex[:8]  # the saved image names the first
        expected = f"saved_file: the domain's <name> is '{vm['name']}', not '{args['name']}' (option name)"
    elif case == "overlay":
        other = tmp_path / "other.qcow2"
        other.write_bytes(b"x")
        args["overlay"] = str(other)
        expected = f"overlay: {other} is not a disk of the domain XML (its disks: ['{vm['overlay']}'])"
    elif case == "uuid":
        libvirt.open(URI).defineXML(vm["xml"])  # the same name, a new UUID
        found = domain(vm["name"]).UUIDString()
        expected = f"name: {vm['name']} is defined on this slave with UUID {found}, but {vm['saved']} holds"
    elif case == "overlay_symlink":
        moved = tmp_path / "real.qcow2"
        os.rename(vm["overlay"], moved)
        os.symlink(moved, vm["overlay"])
        expected = f"overlay: {vm['overlay']} is a symlink; refused (nothing followed)"
    elif case == "saved_symlink":
        moved = tmp_path / "real.save"
        os.rename(vm["saved"], moved)
        os.symlink(moved, vm["saved"])
        expected = f"saved_file: {vm['saved']} is a symlink; refused (nothing followed)"
    else:
        os.unlink(vm["saved"])
        expected = f"saved_file: {vm['saved']} does not exist (no guest memory to restore)"
    before = domain(args["name"]) and domain(args["name"]).UUIDString()
    result = run(vcl_domain_move, capsys, **args)
    assert result.get("failed") is True and result["msg"].startswith(expected), result
    after = domain(args["name"])
    assert (after and after.UUIDString()) == before, "no domain defined or replaced"
    assert after is None or not after.isActive()
    if case != "no_file":
        assert Path(vm["saved"]).read_bytes() == image, "the saved file stays (it is the VM)"


def test_a_failed_restore_undefines_the_domain_and_keeps_the_files(vm, capsys, monkeypatch):
    exported(vm, capsys)

    def failing_restore(self, path, dxml, flags):
        raise libvirt.libvirtError("Cannot get interface MTU on 'br0': No such device")

    monkeypatch.setattr(libvirt.virConnect, "restoreFlags", failing_restore)
    result = run(vcl_domain_move, capsys, **move_args(vm, "imported"))
    assert result.get("failed") is True and result["created"] == [], result
    assert result["msg"] == f"restoring the domain from {vm['saved']} failed: Cannot get interface MTU on 'br0': No" \
        " such device; rolled back: domain", result  # fmt: skip
    assert domain(vm["name"]) is None and Path(vm["saved"]).is_file() and Path(vm["overlay"]).is_file()


def test_check_mode_reports_and_changes_nothing(vm, capsys):
    launched = launch(vm, capsys)
    would = run(vcl_domain_move, capsys, check_mode=True, **move_args(vm, "exported"))
    assert would["changed"] is True and would["domain_state"] == "shutoff" and would["size_bytes"] is None, would
    assert domain(vm["name"]).isActive() and not Path(vm["saved"]).exists()

    run(vcl_domain_move, capsys, **move_args(vm, "exported"))
    domain(vm["name"]).undefine()
    would = run(vcl_domain_move, capsys, check_mode=True, **move_args(vm, "imported", vnc_listen="10.0.0.22"))
    assert would["changed"] is True and would["created"] == ["domain"] and would["removed"] == [vm["saved"]], would
    assert would["domain_state"] == "running" and would["uuid"] == launched["uuid"]
    assert domain(vm["name"]) is None and Path(vm["saved"]).is_file()
    image = ET.fromstring(libvirt.open(URI).saveImageGetXMLDesc(vm["saved"], SECURE))
    assert image.find("devices/graphics").get("listen") == "10.0.0.21", "the saved image is not rewritten"
    would = run(vcl_domain_move, capsys, check_mode=True, **move_args(vm, "imported", start=False))
    assert would["changed"] is True and would["domain_state"] == "shutoff" and would["removed"] == [], would


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"name": "vm-12"}, "name", "vcl-<id>"),
        ({"state": "moved"}, "state", "must be one of"),
        ({"uri": "nonsense"}, "uri", "not a libvirt URI"),
        ({"saved_file": "relative.save"}, "saved_file", "not an absolute path"),
        ({"overlay": "relative.qcow2"}, "overlay", "not an absolute path"),
        ({"saved_file": "/srv/vcl-1.qcow2", "overlay": "/srv/vcl-1.qcow2"}, "saved_file", "must not be the overlay"),
        ({"vnc_listen": "slave-2"}, "vnc_listen", "not an IP address"),
        ({"lock_timeout": -1}, "lock_timeout", "number of seconds"),
    ],
)
def test_bad_input_names_the_field(tmp_path, change, field, words):
    args = {"name": "vcl-1", "state": "imported", "saved_file": "/srv/vcl-1.save", "overlay": "/srv/vcl-1.qcow2",
            **change}  # fmt: skip
    result = domain_support.run_process("vcl_domain_move", tmp_path, **args)
    assert result.get("failed") is True, result
    assert result["msg"].startswith(f"{field}:") or f"value of {field} must be" in result["msg"], result
    assert words in result["msg"], result


# -- two slaves ------------------------------------------------------------------------------------


def test_a_round_trip_between_two_slaves_keeps_the_uuid_the_password_and_the_disk(vm, capsys, tmp_path, qemu_img):
    """Slave A and slave B are two node files: A runs the VM, B has no domain. Export on A, the playbook's copy (here
    the saved file moves to B's incoming path; the overlay keeps its path, as the same layout on both slaves has it),
    import on B."""
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-b", vm["base"], "-F", "qcow2", vm["overlay"]],
                   check=True)  # fmt: skip
    vm_uuid = str(uuid.uuid4())
    xml = vm["xml"].replace(f"<name>{vm['name']}</name>", f"<name>{vm['name']}</name>\n  <uuid>{vm_uuid}</uuid>")
    slave_a, slave_b = tmp_path / "slave-a.xml", tmp_path / "slave-b.xml"
    slave_a.write_text(f"<node>\n{xml}\n</node>\n")
    slave_b.write_text("<node/>\n")
    uri_a, uri_b = f"test://{slave_a}", f"test://{slave_b}"
    assert libvirt.open(uri_a).lookupByName(vm["name"]).isActive(), "slave A runs the VM"

    out = run(vcl_domain_move, capsys, **move_args(vm, "exported", uri=uri_a))
    assert out["changed"] is True and out["uuid"] == vm_uuid and out["domain_state"] == "shutoff", out
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    copied = incoming / Path(vm["saved"]).name
    shutil.copy2(vm["saved"], copied)
    assert os.path.getsize(copied) == out["size_bytes"]

    args = move_args(vm, "imported", uri=uri_b, saved_file=str(copied), vnc_listen="10.0.0.22")
    into = run(vcl_domain_move, capsys, **args)
    assert into["changed"] is True and "failed" not in into, into
    assert into["uuid"] == vm_uuid and into["domain_state"] == "running" and into["created"] == ["domain"]
    assert into["removed"] == [str(copied)] and not copied.exists() and Path(vm["overlay"]).is_file()
    assert Path(vm["saved"]).is_file(), "slave A's saved file is A's to remove (vcl_domain state=absent)"
    assert libvirt.open(uri_b).listAllDomains() == [], "each connection to a node file starts afresh"


def test_export_of_a_transient_domain_leaves_no_domain(vm, capsys, qemu_img):
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-b", vm["base"], "-F", "qcow2", vm["overlay"]],
                   check=True)  # fmt: skip
    libvirt.open(URI).createXML(vm["xml"], 0)
    result = run(vcl_domain_move, capsys, **move_args(vm, "exported"))
    assert result["changed"] is True and result["domain_state"] == "absent", result
    assert domain(vm["name"]) is None and result["size_bytes"] == os.path.getsize(vm["saved"])
