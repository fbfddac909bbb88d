"""The build id the controller ships to the master (vcl_sched.release): it follows the wheel's content."""

from __future__ import annotations

from vcl_sched.release import describe


def make_tree(root, module_text="X = 1\n"):
    (root / "vcl_sched/migrations").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "vcl_sched"\n')
    (root / "vcl_sched/__init__.py").write_text('__version__ = "1.2.3"\n')
    (root / "vcl_sched/mod.py").write_text(module_text)
    (root / "vcl_sched/migrations/script.py.mako").write_text("${up}\n")
    return root


def test_the_build_id_changes_with_the_code_not_with_caches(tmp_path):
    tree = make_tree(tmp_path / "a")
    first = describe(tree)
    assert first["version"] == "1.2.3" and first["source"] == str(tree) and len(first["build"]) == 16
    (tree / "vcl_sched/__pycache__").mkdir()
    (tree / "vcl_sched/__pycache__/mod.cpython-311.pyc").write_bytes(b"\0")
    assert describe(tree) == first, "bytecode caches are not part of the wheel"
    assert describe(make_tree(tmp_path / "b"))["build"] == first["build"], "same content, same build"
    (tree / "vcl_sched/mod.py").write_text("X = 2\n")
    assert describe(tree)["build"] != first["build"]
    (tree / "vcl_sched/mod.py").write_text("X = 1\n")
    (tree / "vcl_sched/migrations/script.py.mako").write_text("${down}\n")
    assert describe(tree)["build"] != first["build"], "package data counts too"


def test_no_source_tree_means_nothing_to_build(tmp_path):
    assert describe(tmp_path) == {"version": "", "source": "", "build": ""}
