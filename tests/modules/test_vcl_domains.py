"""plugins/modules/vcl_domains.py's leftovers: VM files in the instance directory that no domain owns, against
libvirt's test driver (no daemon) and a real directory.

`test:///default` keeps its state only inside one process, so the module runs in this process through Ansible's
own test helper (`patch_module_args`), with a connection held open by a fixture; bad input runs the module as
its own process, the way Ansible's wrapper does."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

libvirt = pytest.importorskip("libvirt")
from ansible.module_utils.testing import patch_module_args  # noqa: E402

pytestmark = pytest.mark.libvirt

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "ansible_collections.vcl.lab.plugins.modules"
ENV = {**os.environ, "PYTHONPATH": str(REPO / "collections")}
URI = "test:///default"
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

vcl_domains = importlib.import_module(f"{PACKAGE}.vcl_domains")


def run(capsys, **args) -> dict:
    capsys.readouterr()
    with patch_module_args({"uri": URI, **args}), pytest.raises(SystemExit):
        vcl_domains.main()
    return json.loads(capsys.readouterr().out)


def run_process(tmp_path: Path, **args) -> dict:
    args_file = tmp_path / f"args-{uuid.uuid4().hex[:6]}.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"uri": URI, **args}}))
    proc = subprocess.run([sys.executable, "-m", f"{PACKAGE}.vcl_domains", str(args_file)],
                          text=True, capture_output=True, env=ENV)  # fmt: skip
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def conn():
    handle = libvirt.open(URI)
    yield handle
    handle.close()


@pytest.fixture
def defined(conn):
    """A domain defined in the test driver (a VM that exists), removed afterwards."""
    name = "vcl-d" + uuid.uuid4().hex[:8]
    dom = conn.defineXML(f"<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory>"
                         "<os><type>hvm</type></os></domain>")  # fmt: skip
    yield name
    dom.undefine()


def test_files_with_no_domain_are_leftovers_and_nothing_else_is(tmp_path, defined, capsys):
    instances = tmp_path / "instances"
    instances.mkdir()
    files = ("vcl-77.qcow2", "vcl-77.log", "vcl-78.log", f"{defined}.qcow2", f"{defined}.log", "other-5.qcow2",
             "vcl-79.txt", "vcl-80.qcow2.part", "base.qcow2")
    for name in files:
        (instances / name).write_text("x")
    (instances / "vcl-81.qcow2").mkdir()  # a directory is no VM's file
    (instances / "vcl-82.log").symlink_to(instances / "vcl-77.log")  # neither is a link

    result = run(capsys, instance_dir=str(instances))
    assert result["changed"] is False and defined in [d["name"] for d in result["domains"]], result
    assert result["leftovers"] == [
        {"name": "vcl-77", "files": [str(instances / "vcl-77.log"), str(instances / "vcl-77.qcow2")]},
        {"name": "vcl-78", "files": [str(instances / "vcl-78.log")]},
    ], result
    assert all((instances / name).is_file() for name in files), "listing never removes anything"

    # The prefix applies to files as to domains.
    assert run(capsys, instance_dir=str(instances), prefix="other-")["leftovers"] == [
        {"name": "other-5", "files": [str(instances / "other-5.qcow2")]}]


def test_no_instance_dir_or_a_missing_one_has_no_leftovers(tmp_path, capsys):
    assert run(capsys)["leftovers"] == []
    assert run(capsys, instance_dir=str(tmp_path / "none-yet"))["leftovers"] == []


@pytest.mark.parametrize(("args", "field"), [
    ({"instance_dir": "relative/instances"}, "instance_dir"),
    ({"uri": "nonsense"}, "uri"),
])  # fmt: skip
def test_bad_input_fails_naming_the_field(tmp_path, args, field):
    result = run_process(tmp_path, **args)
    assert result.get("failed") is True and result["msg"].startswith(f"{field}:"), result
