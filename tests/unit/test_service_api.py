"""The service layer's shape: ``vcl_sched.service`` re-exports the public API from one module per concern,
and the concern modules depend downward only (validate and audit at the bottom, then catalogue, claims,
bookings; the facade on top)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from vcl_sched import audit, bookings, catalogue, claims, service, validate

SCHED = Path(__file__).resolve().parents[2] / "vcl_sched"
# Each concern module may import only the concern modules listed for it.
LAYERS = {
    "validate": set(),
    "audit": {"validate"},
    "catalogue": {"validate", "audit"},
    "claims": {"validate", "audit", "catalogue"},
    "bookings": {"validate", "audit", "catalogue", "claims"},
    "service": {"validate", "audit", "catalogue", "claims", "bookings"},
}
CONCERNS = {"validate": validate, "audit": audit, "catalogue": catalogue, "claims": claims, "bookings": bookings}


def _sched_imports(name: str) -> set[str]:
    """The vcl_sched modules ``name`` imports (``from . import x``, ``from .x import y``, at any depth)."""
    found = set()
    for node in ast.walk(ast.parse((SCHED / f"{name}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vcl_sched."):
            found.add(node.module.split(".")[1])
    return found


def _defined(name: str) -> set[str]:
    """The names a module defines at its top level (functions, classes, assignments)."""
    found = set()
    for node in ast.parse((SCHED / f"{name}.py").read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            found.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                found |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return found


_DEFINED = {name: _defined(name) for name in CONCERNS}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_concern_modules_depend_downward_only(name):
    upward = (_sched_imports(name) & set(LAYERS)) - LAYERS[name]
    assert not upward, f"vcl_sched/{name}.py imports {sorted(upward)}: a concern module imports only those below it"


def test_the_facade_only_reexports_and_keeps_every_public_name():
    tree = ast.parse((SCHED / "service.py").read_text())
    code = [n for n in tree.body if not isinstance(n, ast.Import | ast.ImportFrom)
            and not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    assert [ast.unparse(n).split(" =")[0] for n in code] == ["__all__"]  # no code of its own
    for name in service.__all__:
        homes = [m for m, defined in _DEFINED.items() if name in defined]
        assert len(homes) == 1, f"service.{name} is defined in {homes}, not in exactly one concern module"
        assert getattr(service, name) is getattr(CONCERNS[homes[0]], name)
    # What the CLI, the collection's modules, bench/ and the tests call, with the same signatures.
    for name, params in {
        "request": ["owner", "cores", "ram_mb", "hours", "platform_value", "register_as_slave", "member", "disk_gb",
                    "image", "user", "dry_run", "explain", "keep_disk", "url"],
        "reserve": ["owner", "cores", "ram_mb", "start", "hours", "platform_value", "register_as_slave", "member",
                    "image", "user", "seats", "prelaunch", "series_id", "dry_run", "keep_disks", "url"],
        "ensure_image": ["name", "disk_file", "description", "kernel", "ramdisk", "cmdline", "cores", "ram_mb",
                         "disk_gb", "platform_value", "url"],
        "commit_claim": ["plan", "url"],
        "new_claim_plan": ["slave", "demand", "group_id", "priority", "ends", "mac_prefix", "register_as_slave",
                           "image_id"],
        "list_instances": ["url", "include_all"],
        "configure": ["updates", "url"],
    }.items():
        assert list(inspect.signature(getattr(service, name)).parameters) == params, name
