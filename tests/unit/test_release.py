"""The build ids the controller ships to the master (vcl_sched.release): the vcl_sched wheel's follows the
wheel's content, the collection vcl.lab's follows exactly what `ansible-galaxy collection build` packs,
and neither moves when the simulated lab, the tests or anything else outside the artifact changes."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from vcl_sched.paths import repo_root
from vcl_sched.release import NO_COLLECTION, ReleaseError, collection_files, describe, main

REPO = repo_root()


def _lab_package() -> str:
    """Where the simulated lab's package lives in the checkout (lab/vcl_lab, its own distribution)."""
    spec = importlib.util.find_spec("vcl_lab")
    if spec is None or spec.origin is None or not Path(spec.origin).is_relative_to(REPO):
        return "lab/vcl_lab"
    return str(Path(spec.origin).parent.relative_to(REPO))


LAB = _lab_package()
#: The lab distribution's own pyproject.toml (none when the package sits at the top, in vcl-sched's).
LAB_PYPROJECT = [str(Path(LAB).parent / "pyproject.toml")] if Path(LAB).parent != Path() else []


def make_tree(root, module_text="X = 1\n"):
    (root / "vcl_sched/migrations").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "vcl_sched"\n')
    (root / "vcl_sched/__init__.py").write_text('__version__ = "1.2.3"\n')
    (root / "vcl_sched/mod.py").write_text(module_text)
    (root / "vcl_sched/migrations/script.py.mako").write_text("${up}\n")
    return root


def make_checkout(root):
    """A checkout shaped like the real one, with the real galaxy.yml (its build_ignore decides)."""
    make_tree(root)
    (root / "galaxy.yml").write_text((REPO / "galaxy.yml").read_text())
    files = {
        "README.md": "# vcl\n",
        "meta/runtime.yml": "requires_ansible: '>=2.16.0'\n",
        "roles/vcl_master/tasks/main.yml": "- name: A task\n  ansible.builtin.debug:\n",
        "roles/vcl_master/molecule/default/verify.yml": "---\n",
        "plugins/modules/vcl_instance.py": "DOCUMENTATION = ''\n",
        "plugins/module_utils/vcl_nat.py": "A = 1\n",
        "playbooks/dispatch.yml": "---\n",
        **{name: '[project]\nname = "vcl-lab"\n' for name in LAB_PYPROJECT},
        f"{LAB}/__init__.py": "",
        f"{LAB}/machines.py": "M = 1\n",
        "tests/unit/test_x.py": "def test_x(): pass\n",
        "tests/lab/test_y.py": "def test_y(): pass\n",
        "tests/conftest.py": "",
        "bench/site.py": "B = 1\n",
        "scripts/setup.sh": "#!/bin/sh\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def ids(root):
    data = describe(root)
    return data["build"], data["collection"]["build"]


# --- the wheel ----------------------------------------------------------------------------------

def test_the_build_id_changes_with_the_code_not_with_caches(tmp_path):
    tree = make_tree(tmp_path / "a")
    first = describe(tree)
    assert first["version"] == "1.2.3" and first["source"] == str(tree) and len(first["build"]) == 16
    assert first["collection"] == NO_COLLECTION, "no galaxy.yml, no collection"
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
    assert describe(tmp_path) == {"version": "", "source": "", "build": "", "collection": NO_COLLECTION}


# --- the collection and the wheel side by side ----------------------------------------------------

def test_the_lab_the_tests_and_the_tools_change_neither_build_id(tmp_path):
    tree = make_checkout(tmp_path / "c")
    first = ids(tree)
    assert all(len(i) == 16 for i in first)
    assert describe(tree)["collection"] | {"build": ""} == {
        "namespace": "vcl", "name": "lab", "version": (describe(REPO)["collection"]["version"]), "build": "",
        "artifact": f"vcl-lab-{describe(REPO)['collection']['version']}.tar.gz"}
    for name in (f"{LAB}/machines.py", *LAB_PYPROJECT, "tests/unit/test_x.py",
                 "tests/lab/test_y.py", "tests/conftest.py", "bench/site.py", "scripts/setup.sh"):
        (tree / name).write_text("changed = True\n")
        assert ids(tree) == first, f"{name} is in neither artifact"
    for name in (f"{LAB}/new.py", f"{LAB}/sub/new.py", "tests/unit/test_new.py", "tests/db/test_new.py"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text("new = True\n")
        assert ids(tree) == first, f"a new {name} is in neither artifact"
    (tree / "roles/vcl_master/tasks/__pycache__").mkdir()
    (tree / "roles/vcl_master/tasks/__pycache__/x.pyc").write_bytes(b"\0")
    (tree / "plugins/modules/vcl_instance.pyc").write_bytes(b"\0")
    (tree / "vcl-lab-0.1.0.tar.gz").write_bytes(b"an old build")
    assert ids(tree) == first, "caches and earlier builds are not packed"
    assert ids(make_checkout(tmp_path / "d")) == first, "same content, same builds"


@pytest.mark.parametrize("name", ["roles/vcl_master/tasks/main.yml", "plugins/modules/vcl_instance.py",
                                  "plugins/module_utils/vcl_nat.py", "playbooks/dispatch.yml", "README.md",
                                  "roles/vcl_master/molecule/default/verify.yml"])
def test_collection_content_changes_the_collection_build_only(tmp_path, name):
    tree = make_checkout(tmp_path / "c")
    wheel, collection = ids(tree)
    (tree / name).write_text((tree / name).read_text() + "# changed\n")
    assert ids(tree)[0] == wheel, "the wheel does not hold the collection"
    assert ids(tree)[1] != collection


def test_the_scheduler_changes_the_wheel_build_only(tmp_path):
    tree = make_checkout(tmp_path / "c")
    wheel, collection = ids(tree)
    (tree / "vcl_sched/mod.py").write_text("X = 2\n")
    changed = ids(tree)
    assert changed[0] != wheel and changed[1] == collection
    (tree / "vcl_sched/new.py").write_text("")
    assert ids(tree)[0] not in (wheel, changed[0]) and ids(tree)[1] == collection


def test_what_the_tarball_keeps_beyond_content_changes_the_collection_build(tmp_path):
    tree = make_checkout(tmp_path / "c")
    builds = {ids(tree)[1]}
    (tree / "roles/vcl_master/files").mkdir()  # an empty directory is packed
    builds.add(ids(tree)[1])
    mode = (tree / "plugins/modules/vcl_instance.py").stat().st_mode
    (tree / "plugins/modules/vcl_instance.py").chmod(mode | stat.S_IXUSR)  # packed 0755 instead of 0644
    builds.add(ids(tree)[1])
    (tree / "roles/vcl_master/tasks/main.yml").rename(tree / "roles/vcl_master/tasks/other.yml")
    builds.add(ids(tree)[1])
    (tree / "galaxy.yml").write_text((tree / "galaxy.yml").read_text().replace("\nversion:", "\nversion: 9.9.9\n#"))
    builds.add(ids(tree)[1])
    assert describe(tree)["collection"]["version"] == "9.9.9"
    assert len(builds) == 5, "each of these changes the tarball, so each is a new build"


def test_a_galaxy_file_the_build_id_cannot_follow_is_an_error_naming_the_field(tmp_path, capsys):
    tree = make_tree(tmp_path / "c")
    (tree / "galaxy.yml").write_text("namespace: vcl\nname: lab\nversion: 1.0.0\nmanifest: {}\n")
    with pytest.raises(ReleaseError, match="manifest"):
        describe(tree)
    (tree / "galaxy.yml").write_text("namespace: vcl\nname: lab\nversion: 1.0.0\nbuild_ignore: tests\n")
    with pytest.raises(ReleaseError, match="build_ignore"):
        describe(tree)
    (tree / "galaxy.yml").write_text("namespace: vcl\nname: lab\n")
    with pytest.raises(SystemExit) as stop:
        main([str(tree)])
    captured = capsys.readouterr()
    assert stop.value.code == 1 and captured.out == "" and "version: missing" in captured.err


def test_the_command_prints_both_builds_and_the_files(tmp_path, capsys):
    tree = make_checkout(tmp_path / "c")
    assert main([str(tree)]) == 0
    assert json.loads(capsys.readouterr().out) == describe(tree)
    assert main(["--files", str(tree)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == collection_files(tree)
    names = [e["name"] for e in listed]
    assert "roles/vcl_master/tasks/main.yml" in names and "plugins/modules/vcl_instance.py" in names
    assert not [n for n in names if n.startswith(("vcl_sched", LAB.split("/")[0], "bench", "scripts", "tests/"))]
    (tree / "galaxy.yml").unlink()
    with pytest.raises(SystemExit) as stop:
        main(["--files", str(tree)])
    assert stop.value.code == 1 and "no galaxy.yml" in capsys.readouterr().err


# --- the same rules as ansible-galaxy -------------------------------------------------------------

def galaxy_build(tree, out):
    """`ansible-galaxy collection build` of TREE; the tarball's path."""
    run = subprocess.run([sys.executable, "-m", "ansible", "galaxy", "collection", "build", str(tree), "--output-path",
                          str(out)], capture_output=True, text=True, cwd=out.parent,
                         env={k: v for k, v in os.environ.items() if k != "ANSIBLE_CONFIG"})
    assert run.returncode == 0, run.stdout + run.stderr
    (tarball,) = out.glob("*.tar.gz")
    return tarball


def packed(tarball):
    with tarfile.open(tarball) as tar:
        files = json.load(tar.extractfile("FILES.json"))["files"]
        members = {m.name: m for m in tar.getmembers()}
    return sorted((e for e in files if e["name"] != "."), key=lambda e: e["name"]), members


def test_the_entries_are_those_ansible_galaxy_packs(tmp_path):
    tree = make_checkout(tmp_path / "c")
    (tree / "roles/vcl_master/tests/output").mkdir(parents=True)  # "tests/output" is anchored at the root
    (tree / "roles/vcl_master/tests/output/x").write_text("kept\n")
    (tree / "tests/output").mkdir()
    (tree / "tests/output/result.xml").write_text("dropped\n")
    (tree / "roles/.git").mkdir()
    (tree / "roles/.git/HEAD").write_text("dropped\n")
    (tree / "roles/a.retry").write_text("dropped\n")
    (tree / "plugins/modules/tool.sh").write_text("#!/bin/sh\n")
    (tree / "plugins/modules/tool.sh").chmod(0o755)
    (tree / "roles/vcl_master/alias.yml").symlink_to("tasks/main.yml")  # inside: packed as a link
    (tree / "roles/alias").symlink_to("vcl_master")  # a directory link inside: listed, not followed
    (tmp_path / "outside.txt").write_text("outside\n")
    (tree / "meta/outside.txt").symlink_to(tmp_path / "outside.txt")  # outside: packed as a copy
    (tmp_path / "outdir").mkdir()
    (tree / "meta/outdir").symlink_to(tmp_path / "outdir")  # a directory outside: skipped
    (tree / "collections/ansible_collections/vcl").mkdir(parents=True)
    (tree / "collections/ansible_collections/vcl/lab").symlink_to("../../..")

    ours = collection_files(tree)
    (tmp_path / "out").mkdir()
    files, members = packed(galaxy_build(tree, tmp_path / "out"))
    assert ours == files, "the same entries as the tarball's FILES.json, field for field"
    assert members["plugins/modules/tool.sh"].mode == 0o755 and members["meta/runtime.yml"].mode == 0o644
    assert members["roles/vcl_master/alias.yml"].issym() and members["meta/outside.txt"].isfile()
    assert "roles/vcl_master/tests/output/x" in members and "tests/output/result.xml" not in members


def test_the_checkout_entries_are_those_ansible_galaxy_packs(tmp_path):
    """The real checkout, with its real galaxy.yml: the build id covers exactly the tarball's files
    (retried when someone changed the tree during the build)."""
    for attempt in range(3):
        before = collection_files(REPO)
        out = tmp_path / f"out{attempt}"
        out.mkdir()
        files, _members = packed(galaxy_build(REPO, out))
        if before == collection_files(REPO):
            break
    assert before == files
    names = [e["name"] for e in files]
    assert not [n for n in names if n.split("/")[0] in ("vcl_sched", LAB.split("/")[0], "bench", "scripts")]
    assert not [n for n in names if n.startswith("tests/") and n.endswith(".py")], "no test code is shipped"
