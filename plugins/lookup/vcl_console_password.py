# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""Lookup vcl.lab.vcl_console_password: a VM's console (VNC) password, generated once into a file only this
user reads, in the controller's process (no module, no subprocess)."""

from __future__ import annotations

DOCUMENTATION = r"""
name: vcl_console_password
author: VCL developers (@vcl-lab)
version_added: "0.1.0"
short_description: A VM's console password, generated once into a file that only this user reads
description:
  - Returns the password kept in O(_terms[1]) inside the directory O(_terms[0]) on the controller; the first call
    generates it (8 letters and digits, the VNC protocol's limit) and writes it with mode 0600, the file created
    exclusively and never through a symlink.
  - The directory is made if missing and is always left with mode 0700 (a directory that exists with a looser
    mode is tightened); a directory that is a symlink, is not a directory or belongs to another user is refused.
  - The vm role's launch entry point calls it once per VM (file C(vm-ID-MAC.vnc)); the stop removes the file.
  - Runs in the controller's process, so it costs no module run (two C(ansible.builtin.file) tasks and the
    C(ansible.builtin.password) lookup did this before, about 0.8 s per launch).
options:
  _terms:
    description:
      - The directory (an absolute path) and the file's name (letters, digits, C(.), C(_), C(-); no C(/)).
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: The console password of VM 14 (mode 0600 in ~/.vcl/consoles, the directory 0700)
  ansible.builtin.set_fact:
    vm__launch_password: "{{ lookup('vcl.lab.vcl_console_password', '/root/.vcl/consoles', 'vm-14-525400123456.vnc') }}"
  no_log: true
"""

RETURN = r"""
_raw:
  description: The password (one element).
  type: list
  elements: str
"""

import errno
import os
import re
import secrets
import stat
import string

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ALPHABET = string.ascii_letters + string.digits
LENGTH = 8


def _directory(path: str) -> None:
    """Make PATH (mode 0700) or check the one there: a real directory of this user, left 0700."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError as err:
        raise AnsibleLookupError(f"vcl_console_password: directory {path}: {err.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise AnsibleLookupError(f"vcl_console_password: {path} is not a directory (or is a symlink)")
    if info.st_uid != os.geteuid():
        raise AnsibleLookupError(f"vcl_console_password: directory {path} belongs to uid {info.st_uid}, not to"
                                 f" this user ({os.geteuid()})")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)


def _read(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd) as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            raise AnsibleLookupError(f"vcl_console_password: {path} is not a file of this user")
        if stat.S_IMODE(info.st_mode) != 0o600:
            os.fchmod(handle.fileno(), 0o600)
        password = handle.read().strip()
    if not password:
        raise AnsibleLookupError(f"vcl_console_password: {path} is empty")
    return password


def console_password(directory: str, name: str) -> str:
    """The password in DIRECTORY/NAME, generated and written (0600) by the first call."""
    if not isinstance(directory, str) or not os.path.isabs(directory) or os.path.normpath(directory) != directory:
        raise AnsibleLookupError(f"vcl_console_password: directory: {directory!r} is not a normalised absolute path")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise AnsibleLookupError(f"vcl_console_password: name: {name!r} is not a plain file name")
    _directory(directory)
    path = os.path.join(directory, name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as err:
        if err.errno == errno.EEXIST:
            try:
                return _read(path)
            except OSError as err2:
                raise AnsibleLookupError(f"vcl_console_password: {path}: {err2.strerror}") from None
        raise AnsibleLookupError(f"vcl_console_password: {path}: {err.strerror}") from None
    password = "".join(secrets.choice(ALPHABET) for _position in range(LENGTH))
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)  # whatever the umask
        handle.write(password + "\n")
    return password


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        if len(terms) != 2:
            raise AnsibleLookupError("vcl_console_password: expected two terms, the directory and the file's name")
        return [console_password(str(terms[0]), str(terms[1]))]
