"""What the controller ships to the master, each with a build id: the vcl_sched wheel and the collection vcl.lab.

A build id is a hash of exactly what goes into the artifact, so a change reaches the master even without
a version bump, an unchanged tree is never rebuilt or reinstalled, and nothing outside the artifact (the
simulated lab in lab/, tests, benchmarks) changes it:

* the wheel: pyproject.toml and the files under vcl_sched/ that the wheel holds (modules and package data);
  the readme, the long description of the wheel's metadata, does not count;
* the collection: galaxy.yml (the tarball's MANIFEST.json comes from it) and the files
  `ansible-galaxy collection build` puts into the tarball, chosen by the same rules (galaxy.yml's
  build_ignore plus ansible-galaxy's own exclusions): each file's content, its executable bit (the tarball
  keeps it) and, for a link inside the collection, where it points; each directory's name.

`python -m vcl_sched.release [SOURCE]` prints both as JSON (the vcl_master role runs it on the controller);
`python -m vcl_sched.release --files [SOURCE]` prints the collection's entries in the form of the tarball's
FILES.json (name, ftype, chksum_sha256), which the vcl_master role's verify compares with the master's copy.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vcl_sched.errors import VclError
from vcl_sched.paths import repo_root

#: Files under vcl_sched/ that end up in the wheel (pyproject's package-data plus the modules).
SHIPPED = ("*.py", "*.mako", "py.typed")

#: What `ansible-galaxy collection build` leaves out whatever build_ignore says (ansible-core's
#: _build_files_manifest_walk): patterns matched against the path relative to the collection root...
GALAXY_IGNORED = ("MANIFEST.json", "FILES.json", "galaxy.yml", "galaxy.yaml", ".git", "*.pyc", "*.retry",
                  "tests/output")
#: ... and directory names skipped wherever they are.
GALAXY_IGNORED_DIRS = frozenset({"CVS", ".bzr", ".hg", ".git", ".svn", "__pycache__", ".tox"})

_DIGEST_LENGTH = 16

#: The "format" of FILES.json entries (ansible-core's MANIFEST_FORMAT).
FILES_FORMAT = 1

#: describe_collection's answer when there is no collection to build.
NO_COLLECTION = {"namespace": "", "name": "", "version": "", "build": "", "artifact": ""}


class ReleaseError(VclError):
    """The source tree cannot be described (an unreadable or unsupported galaxy.yml)."""


@dataclass(frozen=True)
class Entry:
    """One entry of the collection tarball."""

    name: str  # relative to the collection root, as in FILES.json
    ftype: str  # "file" or "dir"
    sha256: str | None = None  # a file's content (a link's target's content), None for a directory
    executable: bool = False  # the tarball's mode: 0755 when the owner may execute it, else 0644
    link: str | None = None  # where a link inside the collection points, relative to the link's directory

    def to_json(self) -> dict[str, Any]:
        """The entry as FILES.json lists it."""
        return {"name": self.name, "ftype": self.ftype, "chksum_type": "sha256" if self.ftype == "file" else None,
                "chksum_sha256": self.sha256, "format": FILES_FORMAT}


# --- the wheel ----------------------------------------------------------------------------------

def wheel_build(root: Path) -> str:
    """The build id of the vcl_sched wheel of ROOT (pyproject.toml and vcl_sched/'s shipped files)."""
    digest = hashlib.sha256()
    files = sorted(
        {p for pattern in SHIPPED for p in (root / "vcl_sched").rglob(pattern) if "__pycache__" not in p.parts}
    )
    for path in [root / "pyproject.toml", *files]:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:_DIGEST_LENGTH]


# --- the collection -----------------------------------------------------------------------------

def galaxy_file(root: Path) -> Path | None:
    """ROOT's galaxy.yml (or galaxy.yaml), None when ROOT is not a collection."""
    for name in ("galaxy.yml", "galaxy.yaml"):
        if (root / name).is_file():
            return root / name
    return None


def read_galaxy(path: Path) -> dict[str, Any]:
    """The collection metadata in PATH, checked for what the build id relies on."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ReleaseError(f"{path}: cannot read it: {err}") from None
    if not isinstance(data, dict):
        raise ReleaseError(f"{path}: not a mapping of collection metadata")
    for key in ("namespace", "name", "version"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ReleaseError(f"{path}: {key}: missing or not a string")
    if "manifest" in data:
        raise ReleaseError(f"{path}: manifest: not supported here; list what the build leaves out in build_ignore")
    ignore = data.get("build_ignore") or []
    if not isinstance(ignore, list) or not all(isinstance(p, str) for p in ignore):
        raise ReleaseError(f"{path}: build_ignore: must be a list of patterns")
    return data


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _file_sha256(path: Path) -> str | None:
    if not path.exists():  # a dangling link: ansible-galaxy lists it without a checksum, then fails to pack it
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def collection_entries(root: Path, build_ignore: Sequence[str], namespace: str, name: str) -> list[Entry]:
    """The entries `ansible-galaxy collection build` packs from ROOT, sorted by name.

    Walks the tree as ansible-core's _build_files_manifest_walk does: a directory is skipped when its name
    is a version-control or cache directory or its relative path matches a pattern; a file when its path
    matches (fnmatch, whose ``*`` also matches ``/``); a link to a directory outside the collection is
    skipped, one inside is listed and not followed."""
    patterns = [*GALAXY_IGNORED, f"{namespace}-{name}-*.tar.gz", *build_ignore]
    top = os.path.realpath(root)

    def ignored(rel: str) -> bool:
        return any(fnmatch.fnmatch(rel, pattern) for pattern in patterns)

    def walk(directory: Path, base: str) -> Iterator[Entry]:
        for item in sorted(os.listdir(directory)):
            path = directory / item
            rel = f"{base}/{item}" if base else item
            if path.is_dir():
                if item in GALAXY_IGNORED_DIRS or ignored(rel):
                    continue
                if path.is_symlink():
                    target = os.path.realpath(path)
                    if _inside(target, top):
                        yield Entry(rel, "dir", link=os.path.relpath(target, os.path.realpath(directory)))
                    continue
                yield Entry(rel, "dir")
                yield from walk(path, rel)
            elif not ignored(rel):
                link = None
                if path.is_symlink() and _inside(os.path.realpath(path), top):
                    link = os.path.relpath(os.path.realpath(path), os.path.realpath(directory))
                executable = path.exists() and bool(path.stat().st_mode & stat.S_IXUSR)
                yield Entry(rel, "file", _file_sha256(path), executable, link)

    return sorted(walk(root, ""), key=lambda entry: entry.name)


def collection_build(galaxy: Path, entries: Sequence[Entry]) -> str:
    """The build id of the collection: galaxy.yml's text and every entry the tarball holds."""
    digest = hashlib.sha256(b"galaxy\0" + galaxy.read_bytes() + b"\0")
    for entry in entries:
        fields = (entry.name, entry.ftype, entry.sha256 or "-", "x" if entry.executable else "-", entry.link or "-")
        digest.update("\0".join(fields).encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()[:_DIGEST_LENGTH]


def describe_collection(root: Path) -> dict[str, str]:
    """``{"namespace", "name", "version", "build", "artifact"}`` of the collection at ROOT (empty strings
    when ROOT has no galaxy.yml); ``artifact`` is the file name `ansible-galaxy collection build` writes."""
    galaxy = galaxy_file(root)
    if galaxy is None:
        return dict(NO_COLLECTION)
    data = read_galaxy(galaxy)
    entries = collection_entries(root, data.get("build_ignore") or [], data["namespace"], data["name"])
    return {"namespace": data["namespace"], "name": data["name"], "version": data["version"],
            "build": collection_build(galaxy, entries),
            "artifact": f"{data['namespace']}-{data['name']}-{data['version']}.tar.gz"}


def collection_files(source: str | Path | None = None) -> list[dict[str, Any]]:
    """The collection's entries at SOURCE (default: the checkout) as FILES.json lists them, sorted by name."""
    root = Path(source) if source else repo_root()
    galaxy = galaxy_file(root) if root is not None else None
    if root is None or galaxy is None:
        raise ReleaseError(f"{root or 'this vcl'}: not a collection source tree (no galaxy.yml)")
    data = read_galaxy(galaxy)
    return [e.to_json() for e in collection_entries(root, data.get("build_ignore") or [], data["namespace"],
                                                     data["name"])]


# --- both ---------------------------------------------------------------------------------------

def describe(source: str | Path | None = None) -> dict[str, Any]:
    """The wheel's ``version``, ``source`` and ``build``, and the ``collection`` (describe_collection) of
    SOURCE (default: the checkout this package runs from); empty strings when there is no checkout to build
    the wheel from."""
    root = Path(source) if source else repo_root()
    if root is None or not (root / "pyproject.toml").is_file() or not (root / "vcl_sched").is_dir():
        return {"version": "", "source": "", "build": "", "collection": dict(NO_COLLECTION)}
    init = (root / "vcl_sched/__init__.py").read_text()
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', init, re.MULTILINE)
    return {"version": match.group(1) if match else "", "source": str(root), "build": wheel_build(root),
            "collection": describe_collection(root)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vcl_sched.release", description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", action="store_true", help="print the collection's entries (FILES.json form)")
    parser.add_argument("source", nargs="?", default="", help="the source tree (default: this vcl's checkout)")
    args = parser.parse_args(argv)
    try:
        data: Any = collection_files(args.source or None) if args.files else describe(args.source or None)
    except VclError as err:
        parser.exit(1, f"vcl_sched.release: {err}\n")
    print(json.dumps(data, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
