# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""The VMs' traffic filter on a slave, as libvirt nwfilter definitions (pure functions, no libvirt here).

Two filters: NAME (chain root) takes libvirt's ``clean-traffic`` (no MAC, IP or ARP spoofing, IPv4 and ARP
only) and NAME-ipv4 (chain ``ipv4-vcl``, jumped to after clean-traffic's source-address check and before its
accept), which lets a VM's IPv4 reach only what the lab allows:

- DHCP as a client (UDP 68 -> 67, to the broadcast address or the master), never as a server (UDP from
  port 67), nothing else from 0.0.0.0;
- DNS (UDP and TCP 53) and NTP (UDP 123) on the master's VM-side address, nothing else of it;
- frames to the master's MAC (the VMs' router) go on: the master's firewall decides there, with connection
  tracking, what passes (replies to a lab host that reached the VM through its public address, the VM's
  own connections to the outside, NAT'd) and what does not (anything else of the lab);
- nothing else in the lab's networks (the slaves' sshd and VNC consoles, any lab host directly);
- nothing of the VMs' own network (other VMs directly) unless peers are allowed; no broadcast or multicast.

Every value is checked here and the XML is built with ElementTree, never pasted into text.
"""

from __future__ import annotations

import ipaddress
import re
import xml.etree.ElementTree as ET

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,40}$")
# Where the chain sits in the root chain: after no-ip-spoofing's ipv4-ip (-710), before clean-traffic's
# accept of outgoing IPv4 (-650).
CHAIN = "ipv4-vcl"
CHAIN_PRIORITY = "-690"
# The master's services a VM may use on the master's VM-side address: (protocol, port).
SERVICES = (("udp", 53), ("tcp", 53), ("udp", 123))
BROADCAST = "255.255.255.255"
MULTICAST = ipaddress.IPv4Network("224.0.0.0/4")


class FilterInputError(ValueError):
    """A bad option: the message names it."""


def check_name(value, field: str = "name") -> str:
    text = str(value or "")
    if not NAME_RE.match(text):
        raise FilterInputError(f"{field}: {text!r} is not a filter name (a letter, then letters, digits, '_' or '-')")
    return text


def check_network(value, field: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(str(value), strict=True)
    except ValueError:
        raise FilterInputError(f"{field}: {value!r} is not an IPv4 network (N/len)") from None


def check_address(value, field: str) -> ipaddress.IPv4Address:
    try:
        address = ipaddress.IPv4Address(str(value))
    except ValueError:
        raise FilterInputError(f"{field}: {value!r} is not an IPv4 address") from None
    if address.is_unspecified or address.is_multicast or address.is_loopback or str(address) == BROADCAST:
        raise FilterInputError(f"{field}: {address} is not a unicast address")
    return address


def _rule(parent: ET.Element, action: str, priority: int, **ip: str) -> None:
    rule = ET.SubElement(parent, "rule", {"action": action, "direction": "out", "priority": str(priority)})
    ET.SubElement(rule, "ip", ip)


def _net(parent: ET.Element, action: str, priority: int, net: ipaddress.IPv4Network) -> None:
    _rule(parent, action, priority, dstipaddr=str(net.network_address), dstipmask=str(net.prefixlen))


MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def check_mac(value, field: str = "gateway_mac") -> str:
    text = str(value or "").lower()
    if not MAC_RE.match(text) or int(text[:2], 16) & 1 or text == "00:00:00:00:00:00":
        raise FilterInputError(f"{field}: {value!r} is not a unicast MAC address (six hex pairs separated by ':')")
    return text


def build(name, vm_gateway, vm_subnet, lab_networks, peers: bool = False, gateway_mac=None) -> dict[str, str]:
    """{filter name: its XML} for the two filters, from checked values (FilterInputError names a bad one).

    Without ``gateway_mac`` nothing in the lab's networks is reachable at all, not even through the master:
    a VM then cannot answer a lab host that reached it through its public address."""
    name = check_name(name)
    mac = check_mac(gateway_mac) if gateway_mac not in (None, "") else None
    gateway = check_address(vm_gateway, "vm_gateway")
    vm_net = check_network(vm_subnet, "vm_subnet")
    if gateway not in vm_net:
        raise FilterInputError(f"vm_gateway: {gateway} is outside vm_subnet {vm_net}")
    if not isinstance(lab_networks, list | tuple) or not lab_networks:
        raise FilterInputError("lab_networks: at least one network (the lab subnet) is needed")
    labs = [check_network(n, f"lab_networks[{i}]") for i, n in enumerate(lab_networks)]
    for i, net in enumerate(labs):
        if net.overlaps(vm_net):
            raise FilterInputError(f"lab_networks[{i}]: {net} overlaps vm_subnet {vm_net}")
    sub = f"{name}-ipv4"

    root = ET.Element("filter", {"name": name, "chain": "root"})
    ET.SubElement(root, "filterref", {"filter": "clean-traffic"})
    ET.SubElement(root, "filterref", {"filter": sub})

    chain = ET.Element("filter", {"name": sub, "chain": CHAIN, "priority": CHAIN_PRIORITY})
    # A DHCP client's requests (from 0.0.0.0 or its own address) go to the broadcast address or the master.
    _rule(chain, "return", 100, dstipaddr=BROADCAST, protocol="udp", srcportstart="68", dstportstart="67")
    _rule(chain, "return", 101, dstipaddr=str(gateway), protocol="udp", srcportstart="68", dstportstart="67")
    # Nothing else from 0.0.0.0 (clean-traffic lets any UDP from it through, for DHCP), and no DHCP server.
    _rule(chain, "drop", 110, srcipaddr="0.0.0.0")  # noqa: S104 (a match, not a bind)
    _rule(chain, "drop", 120, protocol="udp", srcportstart="67")
    priority = 200
    for protocol, port in SERVICES:
        _rule(chain, "return", priority, dstipaddr=str(gateway), protocol=protocol, dstportstart=str(port))
        priority += 1
    _rule(chain, "drop", 300, dstipaddr=str(gateway))
    if mac is not None:
        _rule(chain, "return", 305, dstmacaddr=mac)
    for i, net in enumerate(labs):
        _net(chain, "drop", 310 + i, net)
    if not peers:
        _net(chain, "drop", 400, vm_net)
    else:
        # Peers reach each other, but not the network's own broadcast address.
        _rule(chain, "drop", 400, dstipaddr=str(vm_net.broadcast_address))
    _rule(chain, "drop", 410, dstipaddr=BROADCAST)
    _net(chain, "drop", 420, MULTICAST)
    return {name: ET.tostring(root, encoding="unicode"), sub: ET.tostring(chain, encoding="unicode")}


def canonical(xml_text: str) -> str:
    """A filter's XML without its uuid, attributes sorted, whitespace between elements dropped: what a define
    would change. libvirt prints a filter back as it was given, plus the uuid."""
    element = ET.fromstring(xml_text)  # noqa: S314 (libvirt's own description of a filter)
    for uuid in element.findall("uuid"):
        element.remove(uuid)

    def strip(node: ET.Element) -> None:
        node.text = (node.text or "").strip() or None
        node.tail = None
        for child in node:
            strip(child)

    strip(element)
    return ET.canonicalize(ET.tostring(element, encoding="unicode"), strip_text=True)


UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def with_uuid(xml_text: str, uuid: str) -> str:
    """A filter's XML with UUID as its first element (redefining a filter keeps the uuid it has)."""
    if not UUID_RE.match(str(uuid)):
        raise FilterInputError(f"uuid: {uuid!r} is not a libvirt uuid")
    element = ET.fromstring(xml_text)  # noqa: S314 (built by build())
    for old in element.findall("uuid"):
        element.remove(old)
    node = ET.Element("uuid")
    node.text = uuid
    element.insert(0, node)
    return ET.tostring(element, encoding="unicode")
