# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""The files a VM's network state lives in on the master, each rendered by ONE function here and read back
only by the parser beside it.

- The VMs' DHCP host entries: one file that dhcpd.conf includes (:data:`DHCP_HOSTS_FILE`), one
  ``host vm-ID { ... }`` block per VM. The dhcpd role writes it from the lab database (filter
  ``vcl.lab.vcl_dhcpd_hosts_file``), the module ``vcl_vm_net`` adds or removes one entry at a launch or
  release (:func:`render_dhcp_hosts`, :func:`parse_dhcp_hosts`).
- A changed hosts file never replaces a working one unchecked: the candidate goes to
  :func:`dhcp_candidate_path` and ``dhcpd -t -cf`` :func:`dhcp_check_path` must accept it; that check config
  is dhcpd.conf as the dhcpd role renders it, including the candidate instead of the live file
  (:func:`dhcp_include` writes both include lines). On success the candidate stays, equal to the live file.
- Each VM's public alias: its own ifupdown file ``/etc/network/interfaces.d/vcl-vm-ID``
  (:func:`render_alias`, :func:`parse_alias`), written by the network role and by ``vcl_vm_net``.

Plain functions of their arguments (no I/O), shared by modules (on the master) and filter plugins (on the
controller): imported as ``ansible_collections.vcl.lab.plugins.module_utils.vcl_vm_files``.
"""

from __future__ import annotations

import ipaddress
import os
import re

from ansible_collections.vcl.lab.plugins.module_utils.vcl_nat import ID_RE

DHCP_HOSTS_FILE = "/etc/dhcp/dhcpd.vcl-vms.conf"
ALIASES_DIR = "/etc/network/interfaces.d"
ALIAS_PREFIX = "vcl-vm-"

MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
# A bare dhcpd.conf token: no quoting needed, nothing that could end the declaration.
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
# A path dhcpd.conf can name in double quotes.
PATH_RE = re.compile(r'^/[^"\\\n;]*$')

DHCP_HEADER = (
    "# The VMs' DHCP host entries, one per VM, sorted by name; dhcpd.conf includes this file.\n"
    "# Written only by VCL (the collection vcl.lab): the dhcpd role from the lab database, vcl_vm_net at a\n"
    "# launch or release. Do not edit: a file that is not as VCL writes it is refused, not merged.\n"
)
_HOST_BLOCK = re.compile(
    r"host (?P<name>\S+) \{\n  hardware ethernet (?P<mac>\S+);\n  fixed-address (?P<ip>\S+);\n\}\n"
)

ALIAS_HEADER = (
    "# A VCL VM's public address: a /32 alias on the master's uplink, DNATed to its private address.\n"
    "# Written only by VCL (the collection vcl.lab): the network role from the lab database, vcl_vm_net at a\n"
    "# launch or release.\n"
)
_ALIAS_STANZA = re.compile(r"# VM (?P<id>\S+)\niface (?P<dev>\S+) inet static\n    address (?P<ip>\S+)/32\n")


class VmFileError(ValueError):
    """A bad entry, or a file that is not as the render function writes it; the message names the field."""


def _ipv4(value, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise VmFileError(f"{field}: {value!r} is not an IPv4 address")
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise VmFileError(f"{field}: {value!r} is not an IPv4 address") from None


def vm_name(vm_id) -> str:
    """The id a VM's files are named by (an integer, or letters, digits and _): VmFileError otherwise."""
    if isinstance(vm_id, bool) or not isinstance(vm_id, int | str) or not ID_RE.match(str(vm_id)):
        raise VmFileError(f"id: {vm_id!r} is not a VM id (a non-negative integer, or letters, digits and _)")
    return str(vm_id)


# --- DHCP host entries ---------------------------------------------------------------------------------


def dhcp_host(entry, field: str = "entry") -> dict[str, str]:
    """ENTRY ({name, mac, ip}) checked and normalised (MAC in lower case); VmFileError naming FIELD."""
    if not isinstance(entry, dict):
        raise VmFileError(f"{field}: {entry!r} is not a dict with name, mac and ip")
    name, mac = entry.get("name"), entry.get("mac")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise VmFileError(f"{field}.name: {name!r} is not a safe host name (a letter, then letters, digits, _ or -)")
    if not isinstance(mac, str) or not MAC_RE.match(mac):
        raise VmFileError(f"{field}.mac: {mac!r} is not a MAC address (six hex pairs separated by ':')")
    return {"name": name, "mac": mac.lower(), "ip": _ipv4(entry.get("ip"), f"{field}.ip")}


def _natural(name: str) -> list:
    """vm-2 before vm-10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name)]


def dhcp_hosts(entries, field: str = "entries") -> list[dict[str, str]]:
    """ENTRIES checked (each as dhcp_host, no name, MAC or address twice) and sorted by name as the file is."""
    if not isinstance(entries, list | tuple):
        raise VmFileError(f"{field}: must be a list of {{name, mac, ip}}, got {type(entries).__name__}")
    hosts = [dhcp_host(entry, f"{field}[{index}]") for index, entry in enumerate(entries)]
    for key in ("name", "mac", "ip"):
        seen: dict[str, int] = {}
        for index, host in enumerate(hosts):
            if host[key] in seen:
                raise VmFileError(f"{field}[{index}].{key}: {host[key]} is also {field}[{seen[host[key]]}].{key}")
            seen[host[key]] = index
    return sorted(hosts, key=lambda host: (_natural(host["name"]), host["name"]))


def render_dhcp_hosts(entries) -> str:
    """The hosts file for ENTRIES ({name, mac, ip}, in any order): the header, then one block per host."""
    blocks = "".join(
        f"host {h['name']} {{\n  hardware ethernet {h['mac']};\n  fixed-address {h['ip']};\n}}\n"
        for h in dhcp_hosts(entries)
    )
    return DHCP_HEADER + ("\n" + blocks if blocks else "")


def parse_dhcp_hosts(text: str, field: str = "hosts file") -> list[dict[str, str]]:
    """The entries of a hosts file render_dhcp_hosts wrote (sorted by name).

    Comment and blank lines are skipped; anything else must be a host block exactly as rendered, or
    VmFileError names FIELD and the line."""
    entries, pos, line = [], 0, 1
    while pos < len(text):
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end + 1
        current = text[pos:end]
        if current.strip() == "" or current.startswith("#"):
            pos, line = end, line + 1
            continue
        match = _HOST_BLOCK.match(text, pos)
        if match is None:
            raise VmFileError(
                f"{field}: line {line} ({current.rstrip()!r}) is not a host entry as VCL writes it "
                "(edited by hand? the dhcpd role rewrites the file from the lab database)"
            )
        entries.append(match.groupdict())
        pos, line = match.end(), line + 4
    try:
        return dhcp_hosts(entries, "entries")
    except VmFileError as err:
        raise VmFileError(f"{field}: {err}") from None


def dhcp_include(path: str) -> str:
    """The dhcpd.conf statement that includes PATH."""
    if not isinstance(path, str) or not PATH_RE.match(path):
        raise VmFileError(f"path: {path!r} is not an absolute path dhcpd.conf can include")
    return f'include "{path}";'


def dhcp_candidate_path(hosts_file: str) -> str:
    """Where a candidate of HOSTS_FILE is written and checked before it replaces the live one."""
    base, ext = os.path.splitext(hosts_file)
    return f"{base}.candidate{ext}"


def dhcp_check_path(hosts_file: str) -> str:
    """The check config: dhcpd.conf as the dhcpd role renders it, including the candidate of HOSTS_FILE."""
    base, ext = os.path.splitext(hosts_file)
    return f"{base}.check{ext}"


# --- public aliases ------------------------------------------------------------------------------------


def alias_file_name(vm_id) -> str:
    """The file in interfaces.d that carries VM_ID's public alias."""
    return ALIAS_PREFIX + vm_name(vm_id)


def alias_id(file_name: str) -> str | None:
    """The VM id an alias file is named for, or None when FILE_NAME is not one."""
    rest = file_name.removeprefix(ALIAS_PREFIX)
    return rest if rest != file_name and ID_RE.match(rest) else None


def render_alias(vm_id, uplink: str, public: str) -> str:
    """VM_ID's alias file: PUBLIC/32 on UPLINK, for ifupdown (no `auto`: the uplink's own file brings it up)."""
    name = vm_name(vm_id)
    if not isinstance(uplink, str) or not IFNAME_RE.match(uplink):
        raise VmFileError(f"uplink: {uplink!r} is not an interface name")
    address = _ipv4(public, "public")
    return f"{ALIAS_HEADER}# VM {name}\niface {uplink} inet static\n    address {address}/32\n"


def parse_alias(text: str, field: str = "alias file") -> dict[str, str]:
    """{id, uplink, public} of an alias file render_alias wrote; VmFileError naming FIELD otherwise."""
    match = _ALIAS_STANZA.fullmatch(text, len(ALIAS_HEADER)) if text.startswith(ALIAS_HEADER) else None
    try:
        if match is None or render_alias(match["id"], match["dev"], match["ip"]) != text:
            raise VmFileError("not a VM's public alias as VCL writes it")
    except VmFileError as err:
        raise VmFileError(f"{field}: {err} (edited by hand?)") from None
    return {"id": match["id"], "uplink": match["dev"], "public": match["ip"]}
