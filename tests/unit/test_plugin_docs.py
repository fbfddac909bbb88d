"""Every module's and plugin's documentation parses (ansible-doc reads it; lint and admins rely on it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DOC = str(Path(sys.executable).parent / "ansible-doc")
MODULES = sorted(p.stem for p in (REPO / "plugins/modules").glob("*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_module_documentation_parses(module):
    proc = subprocess.run([ANSIBLE_DOC, "-M", str(REPO / "plugins/modules"), "-j", module],
                          cwd=REPO, text=True, capture_output=True)  # fmt: skip
    assert proc.returncode == 0 and "ERROR" not in proc.stderr, proc.stderr
    doc = json.loads(proc.stdout)[module]["doc"]
    assert doc["short_description"] and doc["module"] == module
