"""What tests/modules/test_vcl_domain.py and test_vcl_domain_move.py share: libvirt's test driver held open, a fresh
VM from the real roles/vm/templates/domain.xml.j2 with a real qcow2 base image, and running a module in this process
(Ansible's own `patch_module_args`) or as its own process, the way Ansible's wrapper does.

The fixtures are taken over by assignment (`qemu_img = domain_support.qemu_img`), so each test file has its own
module-scoped connection. The test files skip before importing this when libvirt is missing."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import jinja2
import libvirt
import pytest
from ansible.module_utils.testing import patch_module_args

REPO = Path(__file__).resolve().parents[2]
# Modules are imported the collection way (pytest puts collections/ on sys.path; processes get PYTHONPATH).
PACKAGE = "ansible_collections.vcl.lab.plugins.modules"
ENV = {**os.environ, "PYTHONPATH": str(REPO / "collections")}
TEMPLATE_DIR = REPO / "roles/vm/templates"
URI = "test:///default"
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # failed look-ups are expected here, not noise


def load(name: str):
    return importlib.import_module(f"{PACKAGE}.{name}")


def run(module, capsys, check_mode: bool = False, **args) -> dict:
    """Run a module's main() in this process; returns its JSON result."""
    capsys.readouterr()
    with patch_module_args({"uri": URI, **args, "_ansible_check_mode": check_mode}), pytest.raises(SystemExit):
        module.main()
    return json.loads(capsys.readouterr().out)


def run_process(module_name: str, tmp_path: Path, /, **args) -> dict:
    """Run the module ``module_name`` as its own process (fresh test driver state), the way Ansible's wrapper does."""
    args_file = tmp_path / f"args-{uuid.uuid4().hex[:6]}.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"uri": URI, **args}}))
    proc = subprocess.run([sys.executable, "-m", f"{PACKAGE}.{module_name}", str(args_file)],
                          text=True, capture_output=True, env=ENV)  # fmt: skip
    return json.loads(proc.stdout)


def render(**variables) -> str:
    """The real template, rendered as Ansible does (trim_blocks) with undefined variables as errors."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), undefined=jinja2.StrictUndefined,
                             trim_blocks=True)  # fmt: skip
    return env.get_template("domain.xml.j2").render(**variables)


def domain(name: str):
    try:
        return libvirt.open(URI).lookupByName(name)
    except libvirt.libvirtError:
        return None


@pytest.fixture(scope="module", autouse=True)
def test_driver():
    """test:///default forgets everything when its last connection closes (each module run closes its
    own): this one stays open, so state lives from one module run to the next, as with a daemon."""
    conn = libvirt.open(URI)
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def qemu_img() -> str:
    path = shutil.which("qemu-img")
    if path is None:
        pytest.fail("qemu-img is missing: scripts/setup.sh installs it (qemu-utils)", pytrace=False)
    return path


def vm_fixture(prefix: str, mac: str):
    """The fixture ``vm``: a fresh VM's parameters, its name ``prefix`` and 8 hex digits, its NIC's MAC ``mac``: a real
    qcow2 base image, and where its overlay, serial log (``log``) and saved memory (``saved``) go. Afterwards the
    domains whose names start with the VM's are destroyed and undefined."""

    @pytest.fixture
    def vm(tmp_path, qemu_img):
        """A fresh VM's parameters (name, base, overlay, log, saved, vars, xml); its domains removed afterwards."""
        base = tmp_path / "base.qcow2"
        subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
        name = prefix + uuid.uuid4().hex[:8]
        variables = {
            "vm__domain_name": name, "vm__domain_type": "qemu", "vm__domain_memory_mb": 128, "vm__domain_vcpus": 1,
            "vm__domain_overlay": str(tmp_path / f"{name}.qcow2"), "vm__domain_mac": mac,
            "vm__domain_serial_log": str(tmp_path / f"{name}.log"), "vm__domain_vnc_listen": "10.0.0.21",
            "vm__domain_vnc_password": "s3cret",
        }  # fmt: skip
        yield {"name": name, "base": str(base), "overlay": variables["vm__domain_overlay"],
               "log": variables["vm__domain_serial_log"], "saved": str(tmp_path / f"{name}.save"),
               "vars": variables, "xml": render(**variables)}  # fmt: skip
        conn = libvirt.open(URI)
        for dom in conn.listAllDomains():
            if dom.name().startswith(name):
                if dom.isActive():
                    dom.destroy()
                if dom.isPersistent():
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)

    return vm
