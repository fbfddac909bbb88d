# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""Filters of the dhcpd role (used as ``vcl.lab.<name>``): check its inputs, write subnets as dhcpd.conf wants
them, and render the VMs' host entries file with the one function vcl_vm_net uses too.

Python's ``ipaddress`` does the address arithmetic that ansible-core's Jinja cannot (there is no
ansible.utils here), so the role can refuse a bad entry, naming it, before anything changes.
"""

from __future__ import annotations

import ipaddress
import re

from ansible.errors import AnsibleFilterError
from ansible_collections.vcl.lab.plugins.module_utils.vcl_vm_files import (
    IFNAME_RE,
    MAC_RE,
    NAME_RE,
    VmFileError,
    dhcp_candidate_path,
    dhcp_check_path,
    dhcp_include,
    render_dhcp_hosts,
)

OPTION_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


def _network(value, field: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(str(value), strict=True)
    except ValueError as err:
        raise ValueError(f"{field}: {value!r} is not an IPv4 network in CIDR form ({err})") from None


def vcl_dhcpd_network(value) -> dict[str, str]:
    """'10.1.2.0/24' -> {'address': '10.1.2.0', 'netmask': '255.255.255.0'} (for `subnet A netmask M`)."""
    try:
        net = _network(value, "subnet")
    except ValueError as err:
        raise AnsibleFilterError(str(err)) from None
    return {"address": str(net.network_address), "netmask": str(net.netmask)}


def vcl_dhcpd_errors(hosts, subnet, gateway, shared=(), options=None, interfaces=(), links=None) -> list[str]:
    """Every problem with the role's inputs, each naming its variable (and entry); [] when all is well.

    ``links`` is the host's ``ip -j -4 address show`` output (parsed): each interface dhcpd listens on
    must exist and carry an address in a declared subnet, or dhcpd would refuse to start."""
    try:
        net = _network(subnet, "dhcpd__subnet")
    except ValueError as err:
        return [str(err)]
    errors: list[str] = []
    declared = [net]
    for index, other in enumerate(shared or []):
        try:
            candidate = _network(other, f"dhcpd__shared_subnets[{index}]")
        except ValueError as err:
            errors.append(str(err))
            continue
        clash = next((d for d in declared if d.overlaps(candidate)), None)
        if clash is not None:
            errors.append(f"dhcpd__shared_subnets[{index}]: {candidate} overlaps {clash}")
        declared.append(candidate)

    reserved = {net.network_address: "the network address", net.broadcast_address: "the broadcast address"}
    try:
        router = ipaddress.IPv4Address(str(gateway))
    except ValueError:
        errors.append(f"dhcpd__gateway: {gateway!r} is not an IPv4 address")
    else:
        if router not in net or router in reserved:
            errors.append(f"dhcpd__gateway: {router} is not a host address of dhcpd__subnet {net}")
        reserved[router] = "dhcpd__gateway"

    for name in options or {}:
        if not isinstance(name, str) or not OPTION_RE.match(name):
            errors.append(f"dhcpd__options: {name!r} is not an option name (lower-case letters, digits and -)")

    if not isinstance(hosts, list):
        return [*errors, f"dhcpd__hosts: must be a list of {{name, mac, ip}}, got {type(hosts).__name__}"]
    seen: dict[str, dict[str, str]] = {"name": {}, "mac": {}, "ip": {}}
    for index, host in enumerate(hosts):
        where = f"dhcpd__hosts[{index}]"
        if not isinstance(host, dict):
            errors.append(f"{where}: {host!r} is not a dict with name, mac and ip")
            continue
        name, mac, ip = host.get("name"), host.get("mac"), host.get("ip")
        if isinstance(name, str) and NAME_RE.match(name):
            where = f"{where} ({name})"
        else:
            errors.append(f"{where}.name: {name!r} is not a safe host name (a letter, then letters, digits, _ or -)")
        if not (isinstance(mac, str) and MAC_RE.match(mac)):
            errors.append(f"{where}.mac: {mac!r} is not a MAC address (six hex pairs separated by ':')")
        try:
            address = ipaddress.IPv4Address(str(ip))
        except ValueError:
            errors.append(f"{where}.ip: {ip!r} is not an IPv4 address")
        else:
            if address not in net:
                errors.append(f"{where}.ip: {address} is not inside dhcpd__subnet {net}")
            elif address in reserved:
                errors.append(f"{where}.ip: {address} is {reserved[address]}")
        for key, value in (("name", name), ("mac", str(mac).lower()), ("ip", str(ip))):
            if value in seen[key]:
                errors.append(f"{where}.{key}: {value} is also {seen[key][value]}.{key}")
            elif value not in ("None", "none"):
                seen[key][value] = where

    if not interfaces:
        errors.append("dhcpd__interfaces: empty; dhcpd must listen on the interface that carries dhcpd__subnet")
    by_name = {link.get("ifname"): link for link in links or []}
    for ifname in interfaces or ():
        if not IFNAME_RE.match(str(ifname)):
            errors.append(f"dhcpd__interfaces: {ifname!r} is not an interface name")
        elif links is not None and ifname not in by_name:
            errors.append(f"dhcpd__interfaces: this host has no interface {ifname} (or it has no IPv4 address)")
        elif links is not None:
            local = [
                ipaddress.IPv4Address(info["local"])
                for info in by_name[ifname].get("addr_info", [])
                if info.get("family") == "inet"
            ]
            if not any(a in d for a in local for d in declared):
                errors.append(
                    f"dhcpd__interfaces: {ifname} has no address in {', '.join(map(str, declared))}; dhcpd would "
                    "not serve it (add its subnet to dhcpd__shared_subnets)"
                )
    return errors


def vcl_dhcpd_hosts_file(hosts) -> str:
    """The VMs' host entries file for HOSTS ({name, mac, ip}): what vcl_vm_net writes for the same VMs."""
    try:
        return render_dhcp_hosts(hosts)
    except VmFileError as err:
        raise AnsibleFilterError(f"dhcpd__hosts: {err}") from None


def vcl_dhcpd_include(path) -> str:
    """The dhcpd.conf statement that includes PATH: `include "PATH";`."""
    try:
        return dhcp_include(path)
    except VmFileError as err:
        raise AnsibleFilterError(str(err)) from None


def vcl_dhcpd_candidate(hosts_file) -> str:
    """Where a candidate of the hosts file is checked before it replaces the live one."""
    return dhcp_candidate_path(hosts_file)


def vcl_dhcpd_check_config(hosts_file) -> str:
    """The check config: dhcpd.conf including the candidate of the hosts file (`dhcpd -t -cf` it)."""
    return dhcp_check_path(hosts_file)


class FilterModule:
    def filters(self):
        return {
            "vcl_dhcpd_errors": vcl_dhcpd_errors,
            "vcl_dhcpd_network": vcl_dhcpd_network,
            "vcl_dhcpd_hosts_file": vcl_dhcpd_hosts_file,
            "vcl_dhcpd_include": vcl_dhcpd_include,
            "vcl_dhcpd_candidate": vcl_dhcpd_candidate,
            "vcl_dhcpd_check_config": vcl_dhcpd_check_config,
        }
