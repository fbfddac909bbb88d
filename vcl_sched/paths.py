"""Where this package runs from: the checkout (the collection vcl.lab's root) or an installed wheel."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path | None:
    """The checkout this package runs from (``VCL_REPO`` overrides), or None when installed elsewhere."""
    env = os.environ.get("VCL_REPO")
    if env:
        return Path(env)
    candidate = Path(__file__).resolve().parents[1]
    if (candidate / "pyproject.toml").is_file() and (candidate / "vcl_sched").is_dir():
        return candidate
    return None
