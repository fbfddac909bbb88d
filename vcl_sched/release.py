"""What the controller ships to the master: the vcl source tree, its version and a build id.

The build id is a hash of everything that goes into the wheel (the package's files and
pyproject.toml), so a change reaches the master even without a version bump, and an unchanged tree
is never rebuilt or reinstalled. `python -m vcl_sched.release [SOURCE]` prints it as JSON
(the vcl_master role runs it on the controller).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

from vcl_sched.paths import repo_root

#: Files under vcl_sched/ that end up in the wheel (pyproject's package-data plus the modules).
SHIPPED = ("*.py", "*.mako", "py.typed")


def describe(source: str | Path | None = None) -> dict[str, str]:
    """``{"version", "source", "build"}`` of SOURCE (default: the checkout this package runs from);
    an empty ``source`` when there is no checkout to build from."""
    root = Path(source) if source else repo_root()
    if root is None or not (root / "pyproject.toml").is_file() or not (root / "vcl_sched").is_dir():
        return {"version": "", "source": "", "build": ""}
    init = (root / "vcl_sched/__init__.py").read_text()
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', init, re.MULTILINE)
    digest = hashlib.sha256()
    files = sorted(
        {p for pattern in SHIPPED for p in (root / "vcl_sched").rglob(pattern) if "__pycache__" not in p.parts}
    )
    for path in [root / "pyproject.toml", *files]:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return {"version": match.group(1) if match else "", "source": str(root), "build": digest.hexdigest()[:16]}


if __name__ == "__main__":
    print(json.dumps(describe(sys.argv[1] if len(sys.argv) > 1 else None)))
