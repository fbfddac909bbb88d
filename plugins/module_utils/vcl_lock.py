# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""Per-VM locks on a slave: one lock file per VM in a directory only root can write, opened without following
symlinks, held with ``flock`` and waited for at most a timeout; the holder writes who it is into the file, so a
run that gives up names the holder (pid, what it does, since when).

    with vm_lock("vcl-42", "vcl_domain state=absent", timeout=300):
        ...

Why: a lock file in a world-writable directory (``/run/lock``) can be created, held or replaced by a symlink by
any local user of the slave, who could then block a VM's operations forever or make root write elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
import time

LOCK_DIR = "/run/vcl/locks"
DEFAULT_TIMEOUT = 300  # seconds a run waits for another run on the same VM
MAX_TIMEOUT = 24 * 3600
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_POLL = 0.1


class LockError(RuntimeError):
    """The lock could not be taken (unsafe directory or file, or the timeout passed); the message says why."""


def _check_dir(fd: int, path: str) -> None:
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode):
        raise LockError(f"lock: {path} is not a directory")
    if st.st_uid not in (0, os.geteuid()):
        raise LockError(f"lock: {path} is owned by uid {st.st_uid}, not root; refused")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise LockError(f"lock: {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); refused")


def _open_dir(path: str) -> int:
    """The lock directory, created 0700 when missing (its parent 0755), opened without following a symlink
    and checked: a directory, owned by root (or this user), not writable by group or others; made 0700."""
    parent = os.path.dirname(path.rstrip("/")) or "/"
    os.makedirs(parent, mode=0o755, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise LockError(f"lock: {path} is a symlink or not a directory; refused (nothing followed)") from None
        raise LockError(f"lock: cannot open the lock directory {path}: {err.strerror}") from None
    try:
        _check_dir(fd, path)
        if stat.S_IMODE(os.fstat(fd).st_mode) != 0o700:
            os.fchmod(fd, 0o700)  # readable by others is not needed: only root takes these locks
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_file(dir_fd: int, filename: str, path: str) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(filename, flags, 0o600, dir_fd=dir_fd)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise LockError(f"lock: {path} is a symlink; refused (nothing followed)") from None
        raise LockError(f"lock: cannot open {path}: {err.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid not in (0, os.geteuid()):
        os.close(fd)
        raise LockError(f"lock: {path} is not a plain lock file of root's (a link, device or another's file); refused")
    if stat.S_IMODE(st.st_mode) != 0o600:
        os.fchmod(fd, 0o600)
    return fd


def describe_holder(text: str) -> str:
    """What a lock file says about its holder, as one phrase for a message."""
    try:
        info = json.loads(text)
        return f"pid {int(info['pid'])} ({str(info['action'])[:120]}) since {str(info['since'])[:40]}"
    except (ValueError, KeyError, TypeError):
        return "an unknown holder (the lock file names none)"


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode("utf-8", "replace")


@contextlib.contextmanager
def vm_lock(name: str, action: str, timeout: float = DEFAULT_TIMEOUT, lock_dir: str = LOCK_DIR, prefix: str = "vcl"):
    """Hold the lock of VM ``name`` for the block; wait at most ``timeout`` seconds for another holder, then
    raise LockError naming it. ``action`` (what this run does) is written into the file for the next waiter."""
    if not _NAME_RE.match(name):
        raise LockError(f"lock: {name!r} is not a VM name")
    if not 0 <= timeout <= MAX_TIMEOUT:
        raise LockError(f"lock_timeout: {timeout} is not in 0..{MAX_TIMEOUT} seconds")
    filename = f"{prefix}.{name}.lock"
    path = os.path.join(lock_dir, filename)
    dir_fd = _open_dir(lock_dir)
    try:
        fd = _open_file(dir_fd, filename, path)
    finally:
        os.close(dir_fd)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockError(f"lock: {name} is busy: held by {describe_holder(_read(fd))}; gave up after"
                                    f" {timeout:g} s (lock file {path})") from None  # fmt: skip
                time.sleep(_POLL)
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        record = json.dumps({"pid": os.getpid(), "action": action, "since": since}) + "\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode("utf-8"), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # released: nobody holds it (closing the file releases the flock)
    finally:
        os.close(fd)
