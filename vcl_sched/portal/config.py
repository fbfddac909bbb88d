"""The portal's configuration file (YAML, written by the vcl_master role, readable by root only)."""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import ValidationError

DEFAULT_PATH = "/etc/vcl/portal.yml"
SECRET_MIN_BYTES = 32


@dataclass(frozen=True)
class PortalConfig:
    db_url: str
    secret: bytes = field(repr=False)
    listen: str = "0.0.0.0"  # noqa: S104 - the portal serves the lab's clients
    port: int = 443
    certfile: str | None = None
    keyfile: str | None = None
    project: str | None = None  # the directory of the ansible.cfg the playbooks run with (None: the checkout)
    inventory: str | None = None
    console_port: int = 6080
    console_tokens: str = "/var/lib/vcl/portal/console-tokens"
    console_passwords: str = str(Path("~/.vcl/consoles").expanduser())
    novnc_dir: str = "/usr/share/novnc"
    https: bool = True  # the session cookie is sent over HTTPS only
    login_per_minute: int = 10  # failed logins per user name and per address before a pause
    run_playbooks: bool = True  # False: actions are refused (a read-only portal, the benchmarks)


_KEYS = {f.name for f in fields(PortalConfig)} - {"secret"} | {"secret_file"}


def _text(data: dict[str, Any], key: str, default: Any = None, required: bool = False) -> Any:
    value = data.get(key, default)
    if value is None:
        if required:
            raise ValidationError(key, "is required")
        return None
    if not isinstance(value, str) or not value.strip() or "\x00" in value or len(value) > 4096:
        raise ValidationError(key, "must be a non-empty text")
    return value


def _port(data: dict[str, Any], key: str, default: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValidationError(key, "must be a port number (1..65535)")
    return value


def _readable_file(key: str, path: str | None, private: bool = False) -> None:
    if path is None:
        return
    try:
        st = os.stat(path)
    except OSError as err:
        raise ValidationError(key, f"{path}: {err.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValidationError(key, f"{path}: not a file")
    if private and st.st_mode & 0o077:
        raise ValidationError(key, f"{path}: readable by others (mode {stat.S_IMODE(st.st_mode):04o}); make it 0600")


def load(path: str | os.PathLike[str] = DEFAULT_PATH) -> PortalConfig:
    """The configuration in ``path``, checked: ValidationError names the first bad key."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as err:
        raise ValidationError("config", f"{path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ValidationError("config", f"{path}: not YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValidationError("config", f"{path}: not a mapping of keys to values")
    unknown = sorted(str(k) for k in data if k not in _KEYS)
    if unknown:
        raise ValidationError(unknown[0], "is not a key of the portal's configuration")
    listen = _text(data, "listen", "0.0.0.0")  # noqa: S104
    try:
        ipaddress.ip_address(listen)
    except ValueError:
        raise ValidationError("listen", f"{listen!r} is not an IP address") from None
    secret_file = _text(data, "secret_file", required=True)
    _readable_file("secret_file", secret_file, private=True)
    secret = Path(secret_file).read_bytes()
    if len(secret) < SECRET_MIN_BYTES:
        raise ValidationError("secret_file", f"holds {len(secret)} bytes; at least {SECRET_MIN_BYTES} are needed")
    certfile, keyfile = _text(data, "certfile"), _text(data, "keyfile")
    if (certfile is None) != (keyfile is None):
        raise ValidationError("keyfile" if keyfile is None else "certfile", "certfile and keyfile go together")
    _readable_file("certfile", certfile)
    _readable_file("keyfile", keyfile, private=True)
    https = data.get("https", certfile is not None)
    if not isinstance(https, bool):
        raise ValidationError("https", "must be true or false")
    per_minute = data.get("login_per_minute", 10)
    if isinstance(per_minute, bool) or not isinstance(per_minute, int) or not 1 <= per_minute <= 1000:
        raise ValidationError("login_per_minute", "must be a whole number in 1..1000")
    run_playbooks = data.get("run_playbooks", True)
    if not isinstance(run_playbooks, bool):
        raise ValidationError("run_playbooks", "must be true or false")
    return PortalConfig(
        db_url=_text(data, "db_url", required=True), secret=secret, listen=listen,
        port=_port(data, "port", 443), certfile=certfile, keyfile=keyfile,
        project=_text(data, "project"), inventory=_text(data, "inventory"),
        console_port=_port(data, "console_port", 6080),
        console_tokens=_text(data, "console_tokens", PortalConfig.console_tokens),
        console_passwords=_text(data, "console_passwords", PortalConfig.console_passwords),
        novnc_dir=_text(data, "novnc_dir", PortalConfig.novnc_dir), https=https,
        login_per_minute=per_minute, run_playbooks=run_playbooks)
