"""Image files confined to the image store (issue 12, confined paths; SPEC §11).

A launch copies the directory of an image's disk from the master's store to a slave, which may be a student's lent
PC: an image path must never name anything outside the store, nor the store itself. An image file (its disk, kernel
or ramdisk) is accepted only when it is

- text of at most :data:`MAX_PATH` characters, each of :data:`PATH_CHARS` (ASCII letters, digits and ``._+-/``: no
  spaces, control or non-ASCII characters, nothing a shell, Jinja, rsync or qemu reads specially: ``$ ~ : * { }``);
- absolute and normalised: ``os.path.normpath`` gives it back unchanged, with no ``//``, no trailing ``/`` and no
  ``.`` or ``..`` component;
- in an image directory of its own below the store: ``STORE/NAME/FILE`` or ``STORE/NAME/VERSION/FILE``, each of
  NAME, VERSION and FILE starting with a letter or digit; never a file directly in the store (the launch would
  copy the whole store). The kernel and ramdisk are in the disk's directory;
- on this machine, when the file or its directories exist: reached without a symlink out of its image directory
  (``os.path.realpath`` stays inside the real image directory, itself strictly below the real store), and a regular
  file (never a device, fifo, socket or directory).

Pure functions: no database, no settings; the caller passes the store (``Settings.image_store``).
"""

from __future__ import annotations

import os
import stat
import string
from typing import Any

from .config import check_image_store
from .errors import ValidationError

PATH_CHARS = frozenset(string.ascii_letters + string.digits + "._+-/")
NAME_START = frozenset(string.ascii_letters + string.digits)
MAX_PATH = 1024
# Below the store: NAME/FILE or NAME/VERSION/FILE.
MIN_DEPTH, MAX_DEPTH = 2, 3
FIELDS = ("disk_file", "kernel", "ramdisk")


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


def _is_below(root: str, path: str) -> bool:
    """Whether ``path`` is strictly below ``root`` (both absolute and normalised)."""
    return path.startswith(root.rstrip("/") + "/") and path != root


def text(value: Any, field: str) -> str:
    """``value`` if it is an absolute, normalised path of :data:`PATH_CHARS` (what can be checked without the
    store)."""
    if not isinstance(value, str) or not value:
        raise ValidationError(field, "required: an absolute path in the image store" if value in (None, "")
                              else f"{value!r} is not text")
    if len(value) > MAX_PATH:
        raise ValidationError(field, f"{_shown(value)} is longer than {MAX_PATH} characters")
    odd = sorted(set(value) - PATH_CHARS)
    if odd:
        raise ValidationError(field, f"{_shown(value)} contains {odd[0]!r}: image paths use only ASCII letters,"
                                     " digits and ._+-/")
    if not value.startswith("/"):
        raise ValidationError(field, f"{_shown(value)} must be an absolute path in the image store")
    parts = value.split("/")[1:]
    if "//" in value or value.endswith("/") or "." in parts or ".." in parts or os.path.normpath(value) != value:
        raise ValidationError(field, f"{_shown(value)} must be a normalised path (no '..', '.', '//' or trailing '/')")
    return value


def shape(store: str, value: Any, field: str) -> str:
    """``value`` if it is a well-formed image file path in ``store`` (text only: nothing is read on disk)."""
    value = text(value, field)
    if not _is_below(store, value):
        raise ValidationError(field, f"{_shown(value)} is outside the image store {store}")
    below = value[len(store.rstrip("/")) + 1:].split("/")
    if not MIN_DEPTH <= len(below) <= MAX_DEPTH:
        raise ValidationError(field, f"{_shown(value)} must be {store}/NAME/FILE or {store}/NAME/VERSION/FILE: an"
                                     " image lives in a directory of its own, which is what a launch copies")
    if any(part[0] not in NAME_START for part in below):
        raise ValidationError(field, f"{_shown(value)}: each name below the store starts with a letter or digit")
    return value


def on_disk(store: str, path: str, field: str) -> None:
    """Check ``path`` (already well formed) on this machine: no symlink out of its image directory, which stays
    strictly below the store; where it exists, a regular file. Paths that do not exist here pass (the store may be
    on another host than the controller)."""
    real_store = os.path.realpath(store)
    directory = os.path.dirname(path)
    real_dir = os.path.realpath(directory)
    if not _is_below(real_store, real_dir):
        raise ValidationError(field, f"{_shown(path)}: its directory leads to {real_dir}, not below the image store"
                                     f" {real_store} (a symlink out of the store)")
    real = os.path.realpath(path)
    if not _is_below(real_dir, real):
        raise ValidationError(field, f"{_shown(path)} leads to {real}, outside its image directory {real_dir}"
                                     " (a symlink out of it)")
    try:
        if os.path.lexists(directory) and not stat.S_ISDIR(os.stat(directory).st_mode):
            raise ValidationError(field, f"{_shown(path)}: {directory} is not a directory")
        if not os.path.lexists(path):
            return
        mode = os.stat(path).st_mode
    except OSError as err:
        raise ValidationError(field, f"{_shown(path)} cannot be read here: {err.strerror}") from None
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a fifo" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")
        raise ValidationError(field, f"{_shown(path)} is {kind}: an image file must be a regular file")


def image_files(store: str, disk: Any, kernel: Any = None, ramdisk: Any = None, *, check_disk: bool = True,
                fields: tuple[str, str, str] = FIELDS) -> tuple[str, str | None, str | None]:
    """The image's disk, kernel and ramdisk, checked (module docstring); kernel and ramdisk may be None or ""
    (none). ``check_disk=False`` checks the text only. A ValidationError names ``fields`` (disk_file, kernel,
    ramdisk by default), or image_store when the store itself is not a proper directory."""
    store = check_image_store(store)
    disk = shape(store, disk, fields[0])
    extra: list[str | None] = []
    for field, value in zip(fields[1:], (kernel, ramdisk), strict=True):
        if value is None or value == "":
            extra.append(None)
            continue
        value = shape(store, value, field)
        if os.path.dirname(value) != os.path.dirname(disk):
            raise ValidationError(field, f"{_shown(value)} must be in the disk's directory {os.path.dirname(disk)}"
                                         " (the launch copies that directory only)")
        extra.append(value)
    if check_disk:
        for field, value in zip(fields, (disk, *extra), strict=True):
            if value is not None:
                on_disk(store, value, field)
    return disk, extra[0], extra[1]


def image_dir(store: str, disk: Any, field: str = "disk_file") -> str:
    """The directory a launch copies to a slave: the disk's, strictly below the store (text checks only)."""
    return os.path.dirname(shape(check_image_store(store), disk, field))
