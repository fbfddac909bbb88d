"""The collection as an admin consumes it: `ansible-galaxy collection build` makes a tarball that installs into
an empty collections path and works from there, outside this checkout (no ansible.cfg of ours, no link to the
checkout on the collections path).

Checks, from the installed copy: `ansible-doc` of a module, `ansible-inventory` with the inventory plugin by
FQCN against a real SQLite lab database, and reserve.yml run by FQCN (`ansible-playbook vcl.lab.reserve`)
against a temporary database, with an answer read back from the database.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from vcl_sched import service

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(argv, cwd, env=None, timeout=600):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    environ.update({"ANSIBLE_NOCOLOR": "1", "PYTHONWARNINGS": "ignore", **(env or {})})
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The built tarball, installed into an empty collections path; yields (collections path, tarball)."""
    root = tmp_path_factory.mktemp("collection")
    build = root / "build"
    proc = run([BIN / "ansible-galaxy", "collection", "build", "--output-path", build, REPO], cwd=root)
    assert proc.returncode == 0, proc.stderr
    galaxy = yaml.safe_load((REPO / "galaxy.yml").read_text())
    tarball = build / f"{galaxy['namespace']}-{galaxy['name']}-{galaxy['version']}.tar.gz"
    assert tarball.is_file(), proc.stdout
    path = root / "collections"
    path.mkdir()
    # From a directory without ansible.cfg, into an empty path: nothing of the checkout is on it.
    proc = run([BIN / "ansible-galaxy", "collection", "install", "-p", path, tarball], cwd=root,
               env={"ANSIBLE_COLLECTIONS_PATH": str(path)})  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    home = path / "ansible_collections" / "vcl" / "lab"
    assert (home / "MANIFEST.json").is_file()
    assert not home.is_symlink()
    return path, tarball


def test_the_tarball_holds_ansible_content_only(installed):
    _, tarball = installed
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    # galaxy.yml becomes MANIFEST.json
    for wanted in ("MANIFEST.json", "FILES.json", "meta/runtime.yml", "playbooks/reserve.yml",
                   "plugins/inventory/vcl_slaves.py", "roles/dhcpd/tasks/main.yml", "plugins/modules/vcl_domain.py"):
        assert wanted in names, wanted
    for unwanted in ("vcl_sched", "vcl_lab", "lab", "tests/unit", "tests/lab", "bench", "scripts", ".venv",
                     "collections", "pyproject.toml", "ansible.cfg"):
        assert not any(n == unwanted or n.startswith(unwanted + "/") for n in names), unwanted


def test_ansible_doc_reads_a_module_from_the_installed_collection(installed, tmp_path):
    path, _ = installed
    proc = run([BIN / "ansible-doc", "--json", "vcl.lab.vcl_domain"], cwd=tmp_path,
               env={"ANSIBLE_COLLECTIONS_PATH": str(path)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)["vcl.lab.vcl_domain"]["doc"]
    assert doc["collection"] == "vcl.lab"
    assert str(path) in doc["filename"]
    assert {"name", "state", "overlay"} <= set(doc["options"])


@pytest.fixture
def lab_db(tmp_path):
    url = f"sqlite:///{tmp_path}/vcl.sqlite"
    service.init(url)
    service.configure({"private_pool": "10.77.1.16-10.77.1.20", "public_pool": "10.77.0.160-10.77.0.164"}, url)
    service.add_group("cs", url=url)
    service.add_slave("s1", "10.77.0.21", 4, 8192, 50, url=url)
    service.add_slave("s2", "10.77.0.22", 2, 4096, 50, url=url)
    return url


def test_ansible_inventory_uses_the_plugin_by_fqcn(installed, lab_db, tmp_path):
    path, _ = installed
    inventory = tmp_path / "inv"
    inventory.mkdir()
    (inventory / "vcl_slaves.yml").write_text(f"plugin: vcl.lab.vcl_slaves\ndb_url: {lab_db}\n")
    proc = run([BIN / "ansible-inventory", "-i", inventory, "--list"], cwd=tmp_path,
               env={"ANSIBLE_COLLECTIONS_PATH": str(path), "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "true"})
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert sorted(data["vcl_registered"]["hosts"]) == ["s1", "s2"]
    # Values from the database are data: strings come back marked unsafe (never templated).
    assert data["_meta"]["hostvars"]["s1"]["ansible_host"] == {"__ansible_unsafe": "10.77.0.21"}
    assert data["_meta"]["hostvars"]["s2"]["vcl_cores_total"] == 2


def test_reserve_runs_by_fqcn_against_a_temporary_database(installed, lab_db, tmp_path):
    path, _ = installed
    hosts = tmp_path / "hosts.yml"
    hosts.write_text("all:\n  hosts: {}\n")  # the implicit localhost only: an advance reservation needs no host
    argv = [BIN / "ansible-playbook", "-i", hosts, "vcl.lab.reserve", "-e", "owner=cs", "-e", "cores=2",
            "-e", "ram_mb=512", "-e", "hours=2", "-e", json.dumps({"start": "2026-11-23 10:00"})]
    env = {"ANSIBLE_COLLECTIONS_PATH": str(path), "VCL_DB_URL": lab_db, "VCL_NOW": "2026-11-22 10:00"}
    proc = run(argv, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    reservations = service.list_reservations(lab_db, include_all=True)["reservations"]
    assert len(reservations) == 1
    assert reservations[0]["owner"] == "cs" and reservations[0]["cores"] == 2
    assert reservations[0]["start"] == "2026-11-23 10:00"
    # And a bad field is refused by the installed playbook too, naming it, with nothing written.
    proc = run([*argv, "-e", "cores=lots"], cwd=tmp_path, env=env)
    assert proc.returncode != 0
    assert "cores" in proc.stdout
    assert len(service.list_reservations(lab_db, include_all=True)["reservations"]) == 1


def test_ansible_builder_reads_the_execution_environment(installed, tmp_path):
    """`ansible-builder create` accepts execution-environment.yml (no container engine needed for the context),
    and its own introspection finds the collection's Python and system requirements in the installed copy."""
    path, tarball = installed
    context = tmp_path / "ee"
    (context / "meta").mkdir(parents=True)
    (context / "dist").mkdir()
    shutil.copy(REPO / "execution-environment.yml", context)
    for name in ("ee-requirements.txt", "ee-bindep.txt"):
        shutil.copy(REPO / "meta" / name, context / "meta")
    shutil.copy(tarball, context / "dist" / "vcl-lab.tar.gz")
    proc = run([BIN / "ansible-builder", "create", "-f", "execution-environment.yml", "--context", "ctx"], cwd=context)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    built = context / "ctx" / "_build"
    assert (built / "_build" / "vcl-lab.tar.gz").is_file()
    assert "vcl-lab.tar.gz" in (built / "requirements.yml").read_text()
    proc = run([sys.executable, built / "scripts" / "introspect.py", "introspect", path], cwd=context)
    assert proc.returncode == 0, proc.stderr
    found = yaml.safe_load(proc.stdout)
    python = " ".join(found["python"])
    system = " ".join(found["system"])
    assert "vcl-sched" in python and "libvirt-python" in python and "from collection vcl.lab" in python
    assert "libvirt-dev [compile platform:dpkg]" in system and "openssh-client" in system
