#!/usr/bin/python
# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""The ``vcl_nwfilter`` module: define the VMs' traffic filter in a slave's libvirt."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_nwfilter
short_description: Define the libvirt network filter every VCL VM's interface uses on a slave
description:
  - Runs on a slave (needs python3-libvirt, libvirt's nwfilter driver and ebtables there).
  - "Defines two libvirt nwfilters: O(name) (chain root), which takes libvirt's C(clean-traffic) (no MAC, IP or
    ARP spoofing, only IPv4 and ARP) and O(name)C(-ipv4) (chain C(ipv4-vcl)), which lets a VM's IPv4 reach
    DHCP (as a client), DNS and NTP on the master's VM-side address O(vm_gateway) and nothing else of that
    address; frames to the master's MAC O(gateway_mac) otherwise go on (the master's firewall, C(vcl_firewall),
    decides with connection tracking); never any other host of O(lab_networks), never another VM of O(vm_subnet)
    unless O(peers), never a broadcast or multicast address."
  - A VM's domain refers to O(name) with its address as the parameter C(IP) (the vm role's domain template does).
    A domain that refers to a filter its slave lacks does not start, so no VM runs unfiltered.
  - A filter already defined exactly so is left alone; a different one is redefined, and libvirt applies the
    new rules to the running VMs' interfaces at once.
version_added: "0.1.0"
author: VCL developers (@vcl-lab)
options:
  name:
    description: The filter's name (a letter, then letters, digits, C(_) or C(-)); the chain filter is NAME-ipv4.
    type: str
    default: vcl-vm
  vm_gateway:
    description: The master's address on the VMs' network (their DHCP server, DNS and NTP).
    type: str
    required: true
  vm_subnet:
    description: The VMs' private network (CIDR).
    type: str
    required: true
  lab_networks:
    description: The lab's networks (CIDR) VMs may never reach directly; at least the lab subnet.
    type: list
    elements: str
    required: true
  gateway_mac:
    description:
      - The MAC address of the master's interface on the VMs' network (their router).
      - Without it, VMs reach nothing in O(lab_networks) even through the master, so they cannot answer a lab
        host that reached them through their public address.
    type: str
  peers:
    description: Whether VMs may reach each other on O(vm_subnet).
    type: bool
    default: false
  uri:
    description: The libvirt connection URI.
    type: str
    default: qemu:///system
notes:
  - Supports check mode.
"""

EXAMPLES = r"""
- name: Define the VMs' traffic filter
  vcl.lab.vcl_nwfilter:
    vm_gateway: 10.213.1.1
    vm_subnet: 10.213.1.0/24
    lab_networks: [10.213.0.0/24]
    gateway_mac: "02:00:0a:d5:00:0a"
"""

RETURN = r"""
filters:
  description: The filters' names, and for each whether it was (or in check mode would be) defined.
  returned: always
  type: dict
  sample: {"vcl-vm": false, "vcl-vm-ipv4": true}
"""

import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vcl.lab.plugins.module_utils.vcl_nwfilter import FilterInputError, build, canonical, with_uuid

try:
    import libvirt
except ImportError:  # reported by main()
    libvirt = None

URI_RE = re.compile(r"^[a-z][a-z0-9+]*://[A-Za-z0-9_./@:-]*$")


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "default": "vcl-vm"},
            "vm_gateway": {"type": "str", "required": True},
            "vm_subnet": {"type": "str", "required": True},
            "lab_networks": {"type": "list", "elements": "str", "required": True},
            "gateway_mac": {"type": "str"},
            "peers": {"type": "bool", "default": False},
            "uri": {"type": "str", "default": "qemu:///system"},
        },
        supports_check_mode=True,
    )
    p = module.params
    if not URI_RE.match(p["uri"] or ""):
        module.fail_json(msg=f"uri: {p['uri']!r} is not a libvirt URI (for example qemu:///system)")
    try:
        wanted = build(p["name"], p["vm_gateway"], p["vm_subnet"], p["lab_networks"], p["peers"],
                       p["gateway_mac"])
    except FilterInputError as err:
        module.fail_json(msg=str(err))
    if libvirt is None:
        module.fail_json(msg="python3-libvirt is missing on this host (the vcl.lab.kvm role installs it)")
    try:
        conn = libvirt.open(p["uri"])
    except libvirt.libvirtError as err:
        module.fail_json(msg=f"uri: cannot connect to {p['uri']}: {err}")

    defined = {}
    try:
        # The chain filter first: the root filter refers to it.
        for filter_name in sorted(wanted, key=lambda n: n == p["name"]):
            xml = wanted[filter_name]
            try:
                existing = conn.nwfilterLookupByName(filter_name)
                current, uuid = canonical(existing.XMLDesc(0)), existing.UUIDString()
            except libvirt.libvirtError:
                current = uuid = None
            defined[filter_name] = current != canonical(xml)
            if defined[filter_name] and not module.check_mode:
                # A filter is redefined under its own uuid (libvirt refuses a second one by the same name).
                conn.nwfilterDefineXML(with_uuid(xml, uuid) if uuid else xml)
    except libvirt.libvirtError as err:
        module.fail_json(msg=f"defining the filter {filter_name} failed: {err}", filters=defined)
    finally:
        conn.close()
    module.exit_json(changed=any(defined.values()), filters=defined)


if __name__ == "__main__":
    main()
