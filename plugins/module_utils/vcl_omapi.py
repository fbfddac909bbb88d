# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""The running dhcpd's host objects over OMAPI (ISC dhcpd's object API), with the maintained library pypureomapi.

``vcl_vm_net`` writes a VM's host entry to the VMs' host entries file (the durable record, checked by ``dhcpd -t``)
and then makes the running dhcpd hold exactly that entry over OMAPI: no restart, so a launch or a release never
pays dhcpd's restart nor interrupts other VMs' renewals. dhcpd is restarted only when OMAPI is not configured or
fails.

- The key: HMAC-MD5, the one algorithm both dhcpd 4.4's OMAPI and pypureomapi implement, in a root-only file
  on the master that dhcpd.conf includes (the dhcpd role generates it there; it never leaves the master):
  ``key "NAME" { algorithm hmac-md5; secret "BASE64"; };`` (:func:`parse_key_file`).
- dhcpd listens for OMAPI on every address (dhcpd.conf has no listen address for it); the dhcpd role keeps the
  port to the master itself with an INPUT rule, and the client here talks to 127.0.0.1 only.
- dhcpd copies every host object made or removed over OMAPI into its lease file (``host NAME { dynamic; ... }``,
  ``host NAME { deleted; }``) and reads those records back after the config at its next start, where they win:
  a record ``deleted`` hides a host the config declares, a record ``dynamic`` brings back a host the config no
  longer has. The config is the record, so before any restart the host records are dropped from the lease file
  (:func:`strip_host_records`, :data:`HOST_RECORD_PATTERN`; the dhcpd role's restart uses the same pattern).

pypureomapi is imported here only; a target without it gets :class:`OmapiUnavailable` from :func:`connect`, and
the module says so on one line. Modules import this as ``ansible_collections.vcl.lab.plugins.module_utils.vcl_omapi``.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
import sys

try:
    import pypureomapi
except ImportError:  # the module reports it on one line when OMAPI is asked for
    pypureomapi = None

# What dhcpd writes to its lease file for a host object (made, changed or removed over OMAPI): the declaration
# line, indented statements, the closing brace alone on its line.
HOST_RECORD_PATTERN = r"^host \S+ \{\n(?:[ \t].*\n)*\}\n"
HOST_RECORD_RE = re.compile(HOST_RECORD_PATTERN, re.MULTILINE)

KEY_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
_KEY_RE = re.compile(
    r'\s*key\s+(?P<q>"?)(?P<name>[A-Za-z][A-Za-z0-9_-]{0,62})(?P=q)\s*\{\s*'
    r"algorithm\s+(?P<algorithm>[A-Za-z0-9.-]+)\s*;\s*"
    r'secret\s+(?P<sq>"?)(?P<secret>[A-Za-z0-9+/]+={0,2})(?P=sq)\s*;\s*'
    r"\}\s*;\s*"
)
_HMAC_MD5 = ("hmac-md5", "hmac-md5.sig-alg.reg.int")

HOST = "127.0.0.1"  # dhcpd runs on the master, where the module runs; the port is closed to everyone else
TIMEOUT = 5.0

# ISC result codes dhcpd answers with (isc/result.h, dhcp's result.h).
ISC_R_NOTFOUND = 23
_RESULTS = {18: "the object exists", 23: "no object matches", 0x60007: "the lookup keys match different objects",
            0x6000B: "not authorized (wrong key?)"}  # fmt: skip


class OmapiConfigError(ValueError):
    """The key file is not a dhcpd HMAC-MD5 key; the message names it."""


class OmapiUnavailable(RuntimeError):
    """pypureomapi is not importable by the Python running the module."""


class OmapiFailure(RuntimeError):
    """OMAPI could not be reached or refused an operation; the message says what and why."""


def parse_key_file(text: str, path: str = "key file") -> tuple[str, str]:
    """(name, base64 secret) of a dhcpd ``key`` statement using HMAC-MD5 (``#`` comments allowed), else
    OmapiConfigError naming PATH (the secret itself is never in the message)."""
    body = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    match = _KEY_RE.fullmatch(body)
    if match is None:
        raise OmapiConfigError(
            f"{path} is not one dhcpd key statement (key NAME {{ algorithm hmac-md5; secret ...; }};)"
        )
    if match["algorithm"].lower().rstrip(".") not in _HMAC_MD5:
        raise OmapiConfigError(f"{path}: algorithm {match['algorithm']} is not hmac-md5 (the one OMAPI and "
                               "pypureomapi share)")  # fmt: skip
    try:
        secret = base64.b64decode(match["secret"], validate=True)
    except (binascii.Error, ValueError):
        raise OmapiConfigError(f"{path}: the secret is not base64") from None
    if len(secret) < 16:
        raise OmapiConfigError(f"{path}: the secret is shorter than 16 bytes")
    return match["name"], match["secret"]


def strip_host_records(text: str) -> str:
    """A dhcpd lease file without its host records (leases, the DUID and everything else kept)."""
    return HOST_RECORD_RE.sub("", text)


def entry(name, mac, ip) -> dict:
    return {"name": name, "mac": mac, "ip": ip}


def describe(verb: str, host: dict) -> str:
    """``create host vm-7 (52:54:00:..., 10.0.0.7)``: one OMAPI operation, as the module reports it."""
    label = f"host {host['name']}" if host.get("name") else "a host without a name"
    return f"{verb} {label} ({host.get('mac') or 'no MAC'}, {host.get('ip') or 'no fixed address'})"


def plan(name: str, wanted: dict | None, by_name: dict | None, by_mac: dict | None) -> list[tuple[str, dict]]:
    """The operations (``delete``/``create``, host) that make the running dhcpd hold WANTED ({name, mac, ip}) under
    NAME, or nothing under it (WANTED None), given what it holds under NAME (BY_NAME) and under WANTED's MAC
    (BY_MAC). A host with the same data is left alone; one with other data is deleted first, and so is another
    host that holds the MAC."""
    if wanted is None:
        return [("delete", by_name)] if by_name else []
    held = bool(by_name) and by_name["mac"] == wanted["mac"] and by_name["ip"] == wanted["ip"]
    ops = [("delete", by_name)] if by_name and not held else []
    if by_mac and by_mac["name"] != name:
        ops.append(("delete", by_mac))
    return ops if held else [*ops, ("create", wanted)]


def undo(ops: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """The operations that put back what OPS (the done ones, in order) changed."""
    return [("delete" if verb == "create" else "create", host) for verb, host in reversed(ops)]


class Client:
    """One authenticated OMAPI connection to the master's dhcpd (127.0.0.1:PORT)."""

    def __init__(self, port: int, key_name: str, secret: str, timeout: float = TIMEOUT):
        if pypureomapi is None:
            raise OmapiUnavailable(f"the Python library pypureomapi is not installed for {sys.executable}")
        self.port = port
        try:
            self.conn = pypureomapi.Omapi(HOST, port, key_name.encode(), secret.encode(), timeout=timeout)
        except (pypureomapi.OmapiError, OSError, ValueError, AssertionError) as err:
            raise OmapiFailure(f"cannot talk to dhcpd's OMAPI on {HOST}:{port}: {err or type(err).__name__}") from None

    def close(self) -> None:
        self.conn.close()

    def _query(self, message, what: str):
        try:
            return self.conn.query_server(message)
        except (pypureomapi.OmapiError, OSError, ValueError, AssertionError, struct.error) as err:
            raise OmapiFailure(f"{what}: {err or type(err).__name__}") from None

    @staticmethod
    def _status(response) -> tuple[int, str]:
        fields = dict(response.message)
        code = struct.unpack("!I", fields.get(b"result", b"\0\0\0\0"))[0]
        text = fields.get(b"message", b"").decode(errors="replace")
        return code, _RESULTS.get(code, text or f"result {code:#x}")

    @staticmethod
    def _keys(name: str | None = None, mac: str | None = None) -> list[tuple[bytes, bytes]]:
        if name is not None:
            return [(b"name", name.encode())]
        return [(b"hardware-address", pypureomapi.pack_mac(mac)), (b"hardware-type", struct.pack("!I", 1))]

    def _open(self, what: str, **key):
        """The response to ``open host`` by KEY: (handle, fields) or None when dhcpd has no such host."""
        message = pypureomapi.OmapiMessage.open(b"host")
        message.obj.extend(self._keys(**key))
        response = self._query(message, f"looking up {what}")
        if response.opcode == pypureomapi.OMAPI_OP_UPDATE:
            return response.handle, dict(response.obj)
        code, text = self._status(response)
        if response.opcode == pypureomapi.OMAPI_OP_STATUS and code == ISC_R_NOTFOUND:
            return None
        raise OmapiFailure(f"looking up {what}: dhcpd answered: {text}")

    def lookup(self, name: str | None = None, mac: str | None = None) -> dict | None:
        """The host dhcpd holds under NAME (or MAC): {name, mac, ip} (None for a missing part), or None."""
        found = self._open(f"host {name}" if name is not None else f"the host with MAC {mac}", name=name, mac=mac)
        if found is None:
            return None
        fields = found[1]
        try:
            return entry(fields[b"name"].decode() if b"name" in fields else None,
                         pypureomapi.unpack_mac(fields[b"hardware-address"]) if b"hardware-address" in fields else None,
                         pypureomapi.unpack_ip(fields[b"ip-address"]) if b"ip-address" in fields else None)  # fmt: skip
        except (ValueError, struct.error, UnicodeDecodeError) as err:
            raise OmapiFailure(f"reading host {name or mac}: {err}") from None

    def delete(self, host: dict) -> None:
        """Delete HOST (by its name, else its MAC); gone already is fine."""
        key = {"name": host["name"]} if host.get("name") else {"mac": host["mac"]}
        found = self._open(describe("host", host), **key)
        if found is None:
            return
        response = self._query(pypureomapi.OmapiMessage.delete(found[0]), describe("deleting", host))
        code, text = self._status(response)
        if response.opcode != pypureomapi.OMAPI_OP_STATUS or code != 0:
            raise OmapiFailure(f"{describe('deleting', host)}: dhcpd answered: {text}")

    def create(self, host: dict) -> None:
        """Create HOST ({name, mac, ip}) as a new host object (refused by dhcpd if one matches)."""
        message = pypureomapi.OmapiMessage.open(b"host")
        message.message.extend([(b"create", struct.pack("!I", 1)), (b"exclusive", struct.pack("!I", 1))])
        if host.get("name"):
            message.obj.append((b"name", host["name"].encode()))
        message.obj.extend(self._keys(mac=host["mac"]))
        if host.get("ip"):
            message.obj.append((b"ip-address", pypureomapi.pack_ip(host["ip"])))
        response = self._query(message, describe("creating", host))
        if response.opcode != pypureomapi.OMAPI_OP_UPDATE:
            raise OmapiFailure(f"{describe('creating', host)}: dhcpd answered: {self._status(response)[1]}")

    def apply(self, ops: list[tuple[str, dict]], done: list[tuple[str, dict]]) -> None:
        """Run OPS in order, appending each to DONE once it went through (OmapiFailure stops at the first)."""
        for verb, host in ops:
            (self.create if verb == "create" else self.delete)(host)
            done.append((verb, host))
