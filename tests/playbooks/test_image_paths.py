"""Confined image paths in the playbooks (issue 12 item 3), run for real by ansible-playbook against localhost:
the vcl_image action refuses paths out of the store naming the option; site.yml's Images play (the play itself,
read from playbooks/site.yml) refuses bad lab_images and lab_image_store before anything is copied or declared;
the launch's copy step (read from roles/vm/tasks/launch_image.yml) checks the database's row again and where it
leads on the master before rsync runs."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from vcl_lab.playbook import run_playbook
from vcl_lab.testing import REPO
from vcl_sched import service

# A notification callback of the test's own: every task's result on every host, one JSON line each (ansible-core
# has no JSON stdout callback without ansible.posix).
RECORDER = """
import json
import os

from ansible.module_utils.common.json import AnsibleJSONEncoder
from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "vcl_test_record"
    CALLBACK_NEEDS_ENABLED = True

    def _keep(self, result, **status):
        line = {"task": result._task.get_name(), "host": result._host.get_name(), **result._result, **status}
        with open(os.environ["VCL_TEST_RECORD"], "a", encoding="utf-8") as out:
            out.write(json.dumps(line, cls=AnsibleJSONEncoder) + "\\n")

    def v2_runner_on_ok(self, result):
        self._keep(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._keep(result, failed=True)

    def v2_runner_on_skipped(self, result):
        self._keep(result, skipped=True)

    def v2_runner_on_unreachable(self, result):
        self._keep(result, unreachable=True)
"""


@pytest.fixture
def store():
    """A fresh image store (its path made only of letters, digits and _, whatever the test's id)."""
    path = Path(tempfile.mkdtemp(prefix="vclstore"))
    yield path
    shutil.rmtree(path)


@pytest.fixture
def lab(tmp_path, store):
    """A lab database whose image_store is ``store``; an inventory whose vcl_master is this machine."""
    url = f"sqlite:///{tmp_path}/vcl.sqlite"
    service.init(url)
    service.configure({"image_store": str(store)}, url)
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"vcl_master": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}}}))
    return url, inventory, tmp_path


def play(lab, plays: list[dict], extra_vars: dict | None = None) -> tuple[int, list[dict]]:
    """Run ``plays``; the exit code and, per task, the localhost result (the json callback's)."""
    url, inventory, tmp_path = lab
    book = tmp_path / "book.yml"
    book.write_text(yaml.safe_dump(plays, sort_keys=False))
    args = []
    if extra_vars is not None:
        (tmp_path / "vars.json").write_text(json.dumps(extra_vars))
        args = ["-e", f"@{tmp_path / 'vars.json'}"]
    callbacks = tmp_path / "callbacks"
    callbacks.mkdir(exist_ok=True)
    (callbacks / "vcl_test_record.py").write_text(RECORDER)
    record = tmp_path / "record.jsonl"
    record.unlink(missing_ok=True)
    recap = run_playbook(inventory, book, *args, cwd=REPO, env={
        "VCL_DB_URL": url, "VCL_TEST_RECORD": str(record), "ANSIBLE_CALLBACK_PLUGINS": str(callbacks),
        "ANSIBLE_CALLBACKS_ENABLED": "vcl_test_record"})
    results = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    assert results or recap.rc == 0, recap.stdout[-3000:] + recap.stderr[-3000:]
    return recap.rc, results


# --- the vcl_image action -------------------------------------------------------------------------------------

def _image_task(**args) -> dict:
    return {"name": "Declare", "vcl.lab.vcl_image": {"name": "g", **args}, "register": "out", "ignore_errors": True}


def test_the_image_action_refuses_paths_out_of_the_store_naming_the_option(lab, store):
    url = lab[0]
    (store / "g").mkdir()
    (store / "g" / "link").symlink_to("/etc/passwd")
    s = str(store)
    bad = [
        ({"disk": "/x.qcow2"}, "disk"),
        ({"disk": "/etc/shadow"}, "disk"),
        ({"disk": f"{s}/g.qcow2"}, "disk"),
        ({"disk": f"{s}/g/../../etc/shadow"}, "disk"),
        ({"disk": f"{s}/g/x\n.qcow2"}, "disk"),
        ({"disk": f"{s}/g/link"}, "disk"),
        ({"disk": "/dev/null"}, "disk"),
        ({"disk": "~/g/disk.qcow2"}, "disk"),  # a str option: never expanded on the controller
        ({"disk": f"{s}/g/disk.qcow2", "kernel": "/boot/vmlinuz"}, "kernel"),
        ({"disk": f"{s}/g/disk.qcow2", "ramdisk": f"{s}/h/initrd"}, "ramdisk"),
    ]
    rc, results = play(lab, [{"name": "Images", "hosts": "localhost", "gather_facts": False,
                              "tasks": [_image_task(**args) for args, _ in bad]}])
    assert rc == 0, results  # every failure ignored: each is read below
    for (args, field), result in zip(bad, results, strict=True):
        assert result.get("failed") and result["field"] == field, (args, result)
        assert result["msg"].startswith(f"{field}: ") and "\n" not in result["msg"], result
    assert service.list_images(url) == []
    rc, results = play(lab, [{"name": "Images", "hosts": "localhost", "gather_facts": False, "tasks": [
        _image_task(disk=f"{s}/g/v1/disk.qcow2", kernel=f"{s}/g/v1/vmlinux")]}])
    assert rc == 0 and results[0]["changed"] and not results[0].get("failed"), results
    assert [i["disk_file"] for i in service.list_images(url)] == [f"{s}/g/v1/disk.qcow2"]


# --- site.yml's Images play -------------------------------------------------------------------------------------

def _images_play() -> dict:
    plays = yaml.safe_load((REPO / "playbooks" / "site.yml").read_text())
    (images,) = [p for p in plays if p["name"].startswith("Images")]
    return images


@pytest.fixture
def source(tmp_path):
    directory = Path(tempfile.mkdtemp(prefix="vclsource"))
    for name, content in (("disk.qcow2", b"QFI\xfb"), ("vmlinux", b"k"), ("initrd.img", b"i")):
        (directory / name).write_bytes(content)
    yield directory
    shutil.rmtree(directory)


def _entry(source: Path, /, **changes) -> dict:
    return {"name": "guest", "version": "v1", "description": "a guest", "source": str(source), "disk": "disk.qcow2",
            "kernel": "vmlinux", "ramdisk": "initrd.img", "cmdline": "console=ttyS0", "cores": 1, "ram_mb": 128,
            "disk_gb": 1, **changes}


def test_the_images_play_copies_and_declares_good_images(lab, store, source):
    url = lab[0]
    new_store = store / "site"
    rc, results = play(lab, [_images_play()], {"lab_image_store": str(new_store), "lab_images": [_entry(source)]})
    assert rc == 0, [r for r in results if r.get("failed")]
    assert (new_store / "guest" / "v1" / "disk.qcow2").read_bytes() == b"QFI\xfb"
    assert service.get_settings(url).image_store == str(new_store)
    assert [i["disk_file"] for i in service.list_images(url)] == [f"{new_store}/guest/v1/disk.qcow2"]


BAD_ENTRIES = [
    ({"name": "../../etc"}, "name"),
    ({"name": "a\nb"}, "name"),
    ({"name": "/"}, "name"),
    ({"version": ".."}, "version"),
    ({"version": "v1/../../x"}, "version"),
    ({"version": "v\x00"}, "version"),
    ({"disk": "../../../etc/shadow"}, "disk"),
    ({"disk": "/etc/shadow"}, "disk"),
    ({"disk": "disk.qcow2\n"}, "disk"),
    ({"disk": "$(id)"}, "disk"),
    ({"kernel": ".."}, "kernel"),
    ({"kernel": "/boot/vmlinuz"}, "kernel"),
    ({"ramdisk": "initrd\x1b.img"}, "ramdisk"),
    ({"source": "/"}, "source"),
    ({"source": "//"}, "source"),
    ({"source": "/tmp/../"}, "source"),
    ({"source": "relative/dir"}, "source"),
    ({"source": "/nonexistent/vcl/source"}, "source"),
    ({"description": "line\nbreak"}, "description"),
    ({"description": "bell\x07"}, "description"),
    ({"cmdline": "console=ttyS0\ninit=/bin/sh"}, "cmdline"),
    ({"cores": "1; reboot"}, "cores"),
    ({"ram_mb": "128\n"}, "ram_mb"),
    ({"colour": "red"}, "colour"),
]


def test_the_images_play_refuses_each_bad_entry_naming_the_field_before_anything_changes(lab, store, source):
    url = lab[0]
    new_store = store / "site"
    entries = [_entry(source, name="good"), *(_entry(source, **changes) for changes, _ in BAD_ENTRIES)]
    rc, results = play(lab, [_images_play()], {"lab_image_store": str(new_store), "lab_images": entries})
    assert rc != 0
    failed = [r for r in results if r.get("failed")]
    assert [r["task"] for r in failed] == ["Check the images declared in the inventory"], failed
    good, *bad = failed[0]["results"]
    assert not good.get("failed"), good
    for (changes, field), item in zip(BAD_ENTRIES, bad, strict=True):
        assert item.get("failed"), changes
        named = item["msg"].split(": ")[2].split(", ")  # lab_images: "NAME": FIELD, FIELD: expected ...
        assert named == [field], (changes, item["msg"])
    assert not new_store.exists() and service.list_images(url) == []
    assert service.get_settings(url).image_store == str(store)  # the setting is not changed either


def test_a_source_that_leads_to_root_is_refused(lab, store, tmp_path):
    link = Path(tempfile.mkdtemp(prefix="vcllink")) / "src"
    try:
        link.symlink_to("/")
        rc, results = play(lab, [_images_play()], {"lab_image_store": str(store / "site"),
                                                   "lab_images": [_entry(link)]})
        failed = [r for r in results if r.get("failed")]
        assert rc != 0 and failed[0]["results"][0]["msg"].split(": ")[2] == "source", failed
        assert not (store / "site").exists()
    finally:
        shutil.rmtree(link.parent)


@pytest.mark.parametrize("bad_store", ["/", "//", "/var/lib/vcl/images/", "/var/lib/../images", "/srv/my images",
                                       "/srv/i\nx", "relative", "/var/lib/vcl/./images"])
def test_the_images_play_refuses_a_bad_store(lab, store, source, bad_store):
    rc, results = play(lab, [_images_play()], {"lab_image_store": bad_store, "lab_images": [_entry(source)]})
    failed = [r for r in results if r.get("failed")]
    assert rc != 0 and [r["task"] for r in failed] == ["Check the image store"], failed
    assert failed[0]["msg"].startswith("lab_image_store: ")
    assert service.list_images(lab[0]) == []


def test_the_images_play_refuses_images_that_are_not_a_list(lab, store, source):
    rc, results = play(lab, [_images_play()], {"lab_image_store": str(store), "lab_images": _entry(source)})
    failed = [r for r in results if r.get("failed")]
    assert rc != 0 and failed[0]["msg"].startswith("lab_images: "), failed


# --- the launch's copy step -------------------------------------------------------------------------------------

def _copy_step() -> dict:
    tasks = yaml.safe_load((REPO / "roles" / "vm" / "tasks" / "launch_image.yml").read_text())
    (step,) = [t for t in tasks if t["name"].startswith("Copy the image into the slave's cache")]
    attempt = yaml.safe_load((REPO / "roles" / "vm" / "tasks" / "launch_attempt.yml").read_text())
    (include,) = [t for t in attempt[0]["block"] if t.get("ansible.builtin.include_tasks") == "launch_image.yml"]
    assert include["when"] == "vm__launch_register_domain.missing | default([]) | length > 0"
    return step


def _launch(lab, store: Path, disk: str) -> list[dict]:
    rc, results = play(lab, [{"name": "Launch", "hosts": "localhost", "gather_facts": False, "vars": {
        "vm__launch_vm": {"image_disk": disk, "image_store": str(store), "slave_address": "127.0.0.1"},
        "vm__launch_register_domain": {"missing": [disk]}}, "tasks": [_copy_step()]}])
    assert rc != 0 or not any(r.get("failed") for r in results)
    return results


@pytest.mark.parametrize("disk", ["/x.qcow2", "{store}/x.qcow2", "{store}/a/../../etc/shadow", "{store}/a/b/c/x",
                                  "{store}X/a/x", "{store}/a/.x/y", "{store}/a/x\n/y"])
def test_the_launch_checks_the_rows_path_before_copying(lab, store, disk):
    results = _launch(lab, store, disk.format(store=store))
    failed = [r for r in results if r.get("failed")]
    assert [r["task"] for r in failed] == ["Check that the image's directory is an image directory below the store"]
    assert failed[0]["msg"].startswith("image_disk: ")
    assert not any(r["task"] == "Copy the image's directory to the slave" and "cmd" in r for r in results)


@pytest.mark.parametrize("target", ["/", "/etc", "."])
def test_the_launch_refuses_an_image_directory_that_leads_out_of_the_store_on_the_master(lab, store, target):
    (store / "img").symlink_to(target)
    results = _launch(lab, store, f"{store}/img/disk.qcow2")
    failed = [r for r in results if r.get("failed")]
    assert [r["task"] for r in failed] == ["Check that no symlink leads the image's directory out of the store"]
    assert failed[0]["msg"].startswith("image_disk: on the master ")
    assert not any(r["task"] == "Copy the image's directory to the slave" and "cmd" in r for r in results)


def test_a_good_row_reaches_rsync_with_the_safe_options(lab, store):
    (store / "img").mkdir()
    (store / "img" / "disk.qcow2").write_bytes(b"QFI\xfb")
    results = _launch(lab, store, f"{store}/img/disk.qcow2")
    (copy,) = [r for r in results if r["task"] == "Copy the image's directory to the slave"]
    assert copy["cmd"].startswith("rsync --archive --safe-links --no-devices --no-specials --ignore-existing ")
    assert copy["cmd"].endswith(f" {store}/img/ root@127.0.0.1:{store}/img/"), copy["cmd"]
