"""The repository's layout rules (issue 10), read from the source itself.

- vcl_sched (the scheduler the master installs) imports nothing from vcl_lab (the simulated lab, lab/);
  the vcl-sched wheel holds vcl_sched only, and vcl-lab requires exactly the checkout's vcl-sched.
- The collection's plugins find their helpers as ansible_collections.vcl.lab...: no sys.path or __path__ edits.
- Playbooks and roles name roles and files of the collection without climbing out of it (no ../../roles).
- The modules of vcl_sched (and of vcl_lab) import each other without cycles.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]
SCHED = ROOT / "vcl_sched"


def _python_files(top: Path) -> Iterator[Path]:
    yield from sorted(p for p in top.rglob("*.py") if "__pycache__" not in p.parts)


def _text_files(top: Path) -> Iterator[Path]:
    for path in sorted(top.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
            yield path


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(
    path: Path, *, root: Path = ROOT, skip_type_checking: bool = False
) -> Iterator[tuple[int, str, tuple[str, ...]]]:
    """(line, absolute module, imported names) of every import in the file, at any depth (a function-level
    import is a dependency too). Relative imports are resolved against the file's package. With
    skip_type_checking, imports under ``if TYPE_CHECKING:`` are left out (they never run)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module_name = _module_name(path, root)
    package = module_name if _is_package(path) else module_name.rpartition(".")[0]

    def walk(node: ast.AST) -> Iterator[ast.AST]:
        for child in ast.iter_child_nodes(node):
            if skip_type_checking and isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                yield from (n for c in child.orelse for n in [c, *walk(c)])
                continue
            yield child
            yield from walk(child)

    for node in walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield node.lineno, module, tuple(alias.name for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and ast.unparse(node.func) in ("importlib.import_module", "import_module", "__import__")
        ):
            yield node.lineno, node.args[0].value, ()


# --- vcl_sched and vcl_lab ------------------------------------------------------------------------

def test_vcl_sched_imports_nothing_from_vcl_lab():
    found = [
        f"{_rel(path)}:{line}: imports {module}" + (f" ({', '.join(names)})" if names else "")
        for path in _python_files(SCHED)
        for line, module, names in _imports(path)
        if module == "vcl_lab" or module.startswith("vcl_lab.")
    ]
    assert not found, "vcl_sched must not import the simulated lab (vcl `lab` is an entry point):\n" + "\n".join(found)


def test_the_import_check_sees_every_kind_of_import(tmp_path):
    # The check above must not pass by reading imports wrongly: every spelling is found, relative ones resolved.
    pkg = tmp_path / "vcl_sched"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    probe = pkg / "probe.py"
    probe.write_text(
        "import vcl_lab\n"
        "from vcl_lab.cli import register\n"
        "def later():\n"
        "    import importlib\n"
        "    return importlib.import_module('vcl_lab.ops')\n"
        "from . import db\n"
        "from .lab import cli\n"
    )
    seen = [(line, module) for line, module, _ in _imports(probe, root=tmp_path)]
    assert seen == [(1, "vcl_lab"), (2, "vcl_lab.cli"), (4, "importlib"), (5, "vcl_lab.ops"),
                    (6, "vcl_sched"), (7, "vcl_sched.lab")]


def _pyproject(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def test_the_vcl_sched_wheel_holds_vcl_sched_only():
    # What setuptools puts in the wheel the master installs (`pip wheel` of the checkout).
    find = _pyproject(ROOT / "pyproject.toml")["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(where=str(ROOT), include=find["include"], exclude=find.get("exclude", ()))
    assert "vcl_sched" in packages
    assert [p for p in packages if p.split(".")[0] != "vcl_sched"] == []


def test_vcl_lab_is_its_own_distribution_on_the_checkouts_vcl_sched():
    sched = _pyproject(ROOT / "pyproject.toml")["project"]
    lab = _pyproject(ROOT / "lab" / "pyproject.toml")
    assert lab["project"]["name"] == "vcl-lab"
    assert lab["project"]["dependencies"] == [f"{sched['name']}=={sched['version']}"], (
        "lab/pyproject.toml must require exactly the vcl-sched version of ./pyproject.toml"
    )
    assert lab["project"]["entry-points"]["vcl.commands"] == {"lab": "vcl_lab.cli:register"}
    found = find_packages(where=str(ROOT / "lab"), include=lab["tool"]["setuptools"]["packages"]["find"]["include"])
    assert "vcl_lab" in found and "vcl_lab.guest" in found
    assert [p for p in found if p.split(".")[0] != "vcl_lab"] == []
    assert "lab" in sched["optional-dependencies"], "the `lab` extra is documented in pyproject.toml"
    assert not (SCHED / "lab").exists(), "the simulated lab lives in lab/vcl_lab, not under vcl_sched"


# --- the collection ---------------------------------------------------------------------------------

def test_plugins_do_not_edit_the_import_path():
    found = [
        f"{_rel(path)}:{number}: {line.strip()}"
        for path in _text_files(ROOT / "plugins")
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if "sys.path" in line or "__path__" in line
    ]
    assert not found, (
        "plugins import their helpers as ansible_collections.vcl.lab.plugins...; no sys.path/__path__:\n"
        + "\n".join(found)
    )


def test_playbooks_and_roles_do_not_climb_out_to_roles():
    found = [
        f"{_rel(path)}:{number}: {line.strip()}"
        for top in ("playbooks", "roles")
        for path in _text_files(ROOT / top)
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if "../../roles" in line
    ]
    assert not found, "name roles by FQCN (vcl.lab.<role>), not by ../../roles paths:\n" + "\n".join(found)


# --- no import cycles in vcl_sched ------------------------------------------------------------------

def import_graph(top: Path, root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports (a function-level import counts;
    ``if TYPE_CHECKING:`` imports do not). ``from pkg import name`` is an edge to pkg.name when that is
    a module, else to pkg itself."""
    files = {_module_name(p, root): p for p in _python_files(top)}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for _line, module, names in _imports(path, root=root, skip_type_checking=True):
            if module not in files:
                continue
            submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in files]
            if submodules:
                graph[name].update(submodules)
            if not names or len(submodules) < len(names):
                graph[name].add(module)
        graph[name].discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a path a -> b -> ... -> a) for every strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan; the graphs here are tens of modules deep at most
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)

    found = []
    for component in components:
        members, start = set(component), component[0]
        # Shortest way back to start inside the component (breadth first): a readable cycle.
        previous: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in previous:
            following = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w not in previous:
                        previous[w] = v
                        following.append(w)
            frontier = following
        path = [start]
        while True:
            path.append(previous[path[-1]])
            if path[-1] == start:
                break
        found.append(path[::-1])
    return found


def test_the_cycle_finder_reports_a_cycle_as_a_path():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", ["vcl_sched", "lab/vcl_lab"])
def test_the_modules_of_a_package_import_each_other_without_cycles(package):
    top = ROOT / package
    graph = import_graph(top, root=top.parent)
    assert len(graph) > 10 and any(graph.values()), "the graph was read"
    found = cycles(graph)
    assert not found, f"import cycles among {top.name} modules:\n" + "\n".join(" -> ".join(c) for c in found)
