#!/usr/bin/python
"""Bring a host's live addressing in line with the lab's plan, without cutting the session it runs over."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_network
short_description: Apply a lab host's static addressing live (uplink, optional bridge, extra addresses)
description:
  - Makes the running state match the plan the C(network) role also writes to C(/etc/network/interfaces.d),
    so a host is right now and after a reboot.
  - With O(bridge), the uplink is enslaved into a Linux bridge that takes over the uplink's MAC and addresses;
    all changes go to the kernel in one C(ip -batch) call, so an ssh session over the uplink survives.
  - Addresses inside O(managed_ranges) that are not wanted (for example public aliases of VMs that are gone)
    are removed; other addresses are left alone.
options:
  uplink:
    description: The interface that carries the lab LAN.
    type: str
    required: true
  bridge:
    description: Bridge that holds the uplink (slaves). Omit to keep the addresses on the uplink itself.
    type: str
  address:
    description: The host's lab address with prefix (CIDR), for example C(10.0.0.21/24).
    type: str
    required: true
  gateway:
    description: Default gateway; omit to leave the default route alone.
    type: str
  addresses:
    description: Further addresses (CIDR) on the same interface, for example the VM network gateway or public aliases.
    type: list
    elements: str
    default: []
  managed_ranges:
    description: Inclusive IPv4 ranges C(FIRST-LAST) this module owns; addresses in them not listed are removed.
    type: list
    elements: str
    default: []
author: VCL developers (@vcl-lab)
"""

EXAMPLES = r"""
- name: Put the uplink into br0
  vcl_network:
    uplink: eth0
    bridge: br0
    address: 10.0.0.21/24
    gateway: 10.0.0.1
"""

RETURN = r"""
commands:
  description: The C(ip) commands that were (or in check mode would be) run.
  returned: always
  type: list
  elements: str
"""

import ipaddress
import json
import re

from ansible.module_utils.basic import AnsibleModule

_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")


def _iface(module, field, value):
    if value is not None and not _IFNAME.match(value):
        module.fail_json(msg=f"{field}: {value!r} is not a valid interface name")
    return value


def _cidr(module, field, value):
    try:
        return ipaddress.IPv4Interface(value)
    except ValueError:
        module.fail_json(msg=f"{field}: {value!r} is not an IPv4 address with prefix (CIDR)")


def _ranges(module, values):
    ranges = []
    for value in values:
        try:
            first, last = (ipaddress.IPv4Address(p.strip()) for p in value.split("-", 1))
        except ValueError:
            module.fail_json(msg=f"managed_ranges: {value!r} is not FIRST-LAST (two IPv4 addresses)")
        if first > last:
            module.fail_json(msg=f"managed_ranges: {value!r} ends before it starts")
        ranges.append((first, last))
    return ranges


def _ip_json(module, *args):
    rc, out, err = module.run_command(["ip", "-j", *args], check_rc=False)
    if rc != 0:
        module.fail_json(msg=f"ip {' '.join(args)} failed: {err.strip()}")
    return json.loads(out or "[]")


def plan(links, addrs, routes, p, ranges):
    """The ip -batch lines that take the live state (ip -j output) to the plan ``p``."""
    by_name = {link["ifname"]: link for link in links}
    uplink, bridge = p["uplink"], p["bridge"]
    if uplink not in by_name:
        raise ValueError(f"uplink: interface {uplink!r} does not exist on this host")
    target = bridge or uplink
    lines = []
    if bridge:
        current = by_name.get(bridge)
        if current is None:
            lines.append(f"link add name {bridge} type bridge stp_state 0 forward_delay 0")
            lines.append(f"link set dev {bridge} address {by_name[uplink]['address']}")
        elif current.get("linkinfo", {}).get("info_kind") != "bridge":
            raise ValueError(f"bridge: {bridge!r} exists and is not a bridge")
        if current is None or "UP" not in current.get("flags", []):
            lines.append(f"link set dev {bridge} up")
        if by_name[uplink].get("master") != bridge:
            lines.append(f"link set dev {uplink} master {bridge}")
    if "UP" not in by_name[uplink].get("flags", []):
        lines.append(f"link set dev {uplink} up")

    have = {}
    for entry in addrs:
        for info in entry.get("addr_info", []):
            if info.get("family") == "inet":
                addr = ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}")
                have.setdefault(entry["ifname"], set()).add(addr)
    want = [p["address"], *p["addresses"]]
    for addr in want:
        if addr not in have.get(target, set()):
            lines.append(f"address add {addr.with_prefixlen} dev {target}")
    wanted_ips = {a.ip for a in want}

    def managed(ip) -> bool:
        return any(first <= ip <= last for first, last in ranges)

    for addr in sorted(have.get(target, set())):
        if addr not in want and (managed(addr.ip) or addr.ip in wanted_ips):
            lines.append(f"address del {addr.with_prefixlen} dev {target}")
    if bridge:
        # The bridge carries the addresses now; the enslaved uplink keeps none (else replies leave by it).
        for addr in sorted(have.get(uplink, set())):
            lines.append(f"address del {addr.with_prefixlen} dev {uplink}")

    gateway = p["gateway"]
    if gateway is not None:
        default = [r for r in routes if r.get("dst") == "default"]
        moving = bridge is not None and any(
            ln.startswith("address del ") and ln.endswith(f" dev {uplink}") for ln in lines
        )
        if moving or not any(r.get("gateway") == str(gateway) and r.get("dev") == target for r in default):
            lines.append(f"route replace default via {gateway} dev {target}")
    return lines


def main():
    module = AnsibleModule(
        argument_spec={
            "uplink": {"type": "str", "required": True},
            "bridge": {"type": "str"},
            "address": {"type": "str", "required": True},
            "gateway": {"type": "str"},
            "addresses": {"type": "list", "elements": "str", "default": []},
            "managed_ranges": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    a = module.params
    p = {
        "uplink": _iface(module, "uplink", a["uplink"]),
        "bridge": _iface(module, "bridge", a["bridge"]),
        "address": _cidr(module, "address", a["address"]),
        "addresses": [_cidr(module, "addresses", v) for v in a["addresses"]],
        "gateway": None,
    }
    if a["gateway"]:
        try:
            p["gateway"] = ipaddress.IPv4Address(a["gateway"])
        except ValueError:
            module.fail_json(msg=f"gateway: {a['gateway']!r} is not an IPv4 address")
    ranges = _ranges(module, a["managed_ranges"])

    try:
        lines = plan(
            _ip_json(module, "-d", "link", "show"), _ip_json(module, "address", "show"),
            _ip_json(module, "-4", "route", "show"), p, ranges,
        )  # fmt: skip
    except ValueError as err:
        module.fail_json(msg=str(err))
    if lines and not module.check_mode:
        # One process, in order: the session's packets see at most a moment without an address.
        rc, _out, err = module.run_command(["ip", "-batch", "-"], data="\n".join(lines) + "\n", check_rc=False)
        if rc != 0:
            module.fail_json(msg=f"ip -batch failed: {err.strip()}", commands=lines)
    module.exit_json(changed=bool(lines), commands=lines)


if __name__ == "__main__":
    main()
