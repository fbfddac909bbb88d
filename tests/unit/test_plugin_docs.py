"""Every module's and plugin's documentation parses (ansible-doc reads it; lint and admins rely on it), by FQCN
through the checkout's collections path (ansible.cfg), as admins call them."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DOC = str(Path(sys.executable).parent / "ansible-doc")
PLUGINS = [
    ("module", p.stem) for p in sorted((REPO / "plugins/modules").glob("*.py"))
] + [
    (kind, p.stem)
    for kind, folder in (("inventory", "inventory"), ("filter", "filter"), ("lookup", "lookup"))
    for p in sorted((REPO / "plugins" / folder).glob("*.py"))
    if not p.stem.startswith("_")
]


def test_the_checkout_is_the_collection_vcl_lab():
    link = REPO / "collections/ansible_collections/vcl/lab"
    assert link.is_symlink() and link.resolve() == REPO


@pytest.mark.parametrize(("kind", "name"), PLUGINS, ids=[f"{k}:{n}" for k, n in PLUGINS])
def test_plugin_documentation_parses(kind, name):
    fqcn = f"vcl.lab.{name}"
    if kind == "filter":
        # Every filter the file defines is found by FQCN in the collection, and documented (its sidecar YAML).
        module = importlib.import_module(f"ansible_collections.vcl.lab.plugins.filter.{name}")
        names = sorted(module.FilterModule().filters())
        proc = subprocess.run([ANSIBLE_DOC, "-t", "filter", "-j", *(f"vcl.lab.{n}" for n in names)], cwd=REPO,
                              text=True, capture_output=True)  # fmt: skip
        assert proc.returncode == 0 and "ERROR" not in proc.stderr and "WARNING" not in proc.stderr, proc.stderr
        docs = json.loads(proc.stdout)
        assert names and sorted(docs) == [f"vcl.lab.{n}" for n in names], sorted(docs)
        for filter_name, entry in docs.items():
            doc = entry["doc"]
            assert doc["short_description"] and doc["options"]["_input"] and entry["return"], filter_name
            assert doc["name"] == filter_name.rpartition(".")[2]
        return
    proc = subprocess.run([ANSIBLE_DOC, "-t", kind, "-j", fqcn], cwd=REPO, text=True, capture_output=True)
    assert proc.returncode == 0 and "ERROR" not in proc.stderr, proc.stderr
    doc = json.loads(proc.stdout)[fqcn]["doc"]
    assert doc["short_description"] and doc["collection"] == "vcl.lab"
    assert doc["plugin_name"] == fqcn if "plugin_name" in doc else doc.get("module", doc.get("name")) == name
