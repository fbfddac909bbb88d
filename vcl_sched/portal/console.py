"""The console in the browser (SPEC §8, §11): noVNC in the page, websockify on the master as the proxy.

The VM's owner opening its console page gets a one-time token file in ``console_tokens`` (websockify's
TokenFile plugin maps the token to the slave's VNC address and port; the file is mode 0600 and swept after
``TOKEN_SECONDS``) and the VNC password in the page itself: never in a URL, a cookie or a log. The password
comes from the file the launch wrote in ``console_passwords`` (``vm-ID-MAC.vnc``), read without following links.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import stat
import time
from pathlib import Path

from ..errors import ConflictError

TOKEN_SECONDS = 120
_PASSWORD_RE = re.compile(r"^[A-Za-z0-9]{1,8}$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{20,64}$")


def password(directory: str, instance_id: int, mac: str | None) -> str:
    """The VNC password of VM ``instance_id``, from the file its launch wrote."""
    if not mac or not re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", mac):
        raise ConflictError(f"id: VM {instance_id} has no console yet")
    path = Path(directory) / f"vm-{instance_id}-{mac.replace(':', '')}.vnc"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        raise ConflictError(f"id: VM {instance_id} has no console password on this master") from None
    with os.fdopen(fd, encoding="ascii", errors="replace") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise ConflictError(f"id: VM {instance_id} has no console password on this master")
        text = handle.read(64).strip()
    if not _PASSWORD_RE.match(text):
        raise ConflictError(f"id: VM {instance_id}'s console password file is not one")
    return text


def sweep(directory: str, now: float | None = None) -> int:
    """Remove token files older than TOKEN_SECONDS; how many went."""
    now = time.time() if now is None else now
    gone = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not _TOKEN_RE.match(entry.name):
            continue
        try:
            old = now - entry.stat(follow_symlinks=False).st_mtime > TOKEN_SECONDS
            if entry.is_file(follow_symlinks=False) and old:
                os.unlink(entry.path)
                gone += 1
        except FileNotFoundError:
            continue
    return gone


def new_token(directory: str, address: str, port: int) -> str:
    """A token websockify maps to ``address:port`` (the slave's VNC console), in a file of its own."""
    ipaddress.ip_address(address)  # an address from the database, checked again before it is written
    if not 1 <= int(port) <= 65535:
        raise ConflictError("id: the VM's console port is not one")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    sweep(directory)
    token = secrets.token_urlsafe(24)
    fd = os.open(Path(directory) / token, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(f"{token}: {address}:{int(port)}\n")
    return token
