#!/usr/bin/python
# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""The ``vcl_firewall`` module: the master's filter table — what VMs may reach through and on the master."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_firewall
short_description: Make the VCL master's filter table let VMs reach the outside and DHCP, DNS and NTP only
description:
  - Runs on the master. Keeps two chains of the filter table, each the first rule of its built-in chain, and
    FORWARD's policy DROP.
  - "C(VCL-FORWARD) (from FORWARD): replies of tracked connections pass; traffic DNAT'd to a VM (a lab host that
    reached it through its public address) passes; a VM's traffic to O(lab_networks) is dropped, to other VMs
    dropped unless O(peers); out through O(uplink) (the outside, masqueraded by C(vcl_nat)) accepted; anything else
    from or to O(vm_subnet) dropped."
  - "C(VCL-INPUT) (from INPUT): from O(vm_subnet), only DHCP, DNS (UDP and TCP 53) and NTP (UDP 123) on
    O(vm_gateway), and replies of the master's own connections; the rest (sshd, the database, any port) is
    dropped. Traffic from elsewhere goes on to the rest of INPUT."
  - Each chain is made to hold exactly its rules (drifted or duplicated rules are repaired); a second run changes
    nothing. Takes the lock C(vcl_nat) takes, and saves the whole ruleset to O(rules_file) (checked with
    C(iptables-restore --test) first) for netfilter-persistent.
version_added: "0.1.0"
author: VCL developers (@vcl-lab)
options:
  vm_subnet:
    description: The VMs' private network (CIDR).
    type: str
    required: true
  vm_gateway:
    description: The master's address on O(vm_subnet) (the VMs' router, DHCP server, DNS and NTP).
    type: str
    required: true
  lab_networks:
    description: The lab's networks (CIDR) VMs never reach; at least the lab subnet.
    type: list
    elements: str
    required: true
  uplink:
    description: The master's interface towards the outside (the inventory's C(lab_uplink)).
    type: str
    required: true
  peers:
    description: Whether VMs may reach each other through the master.
    type: bool
    default: false
  persist:
    description: Save the ruleset to O(rules_file) when it changed.
    type: bool
    default: true
  rules_file:
    description: netfilter-persistent's IPv4 rules file.
    type: path
    default: /etc/iptables/rules.v4
notes:
  - Supports check mode.
"""

EXAMPLES = r"""
- name: VMs reach the outside and the master's DHCP, DNS and NTP, nothing else of the lab
  vcl.lab.vcl_firewall:
    vm_subnet: 10.213.1.0/24
    vm_gateway: 10.213.1.1
    lab_networks: [10.213.0.0/24]
    uplink: eth0
"""

RETURN = r"""
commands:
  description: The iptables commands run (in check mode, that would run), as shell-quoted text.
  returned: always
  type: list
  elements: str
saved:
  description: Whether O(rules_file) was (or, in check mode, would be) rewritten.
  returned: always
  type: bool
"""

import shlex

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vcl.lab.plugins.module_utils.vcl_firewall import plan, policies, rules
from ansible_collections.vcl.lab.plugins.module_utils.vcl_nat import (
    InputError,
    Iptables,
    NatError,
    nat_lock,
    parse_nat,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "vm_subnet": {"type": "str", "required": True},
            "vm_gateway": {"type": "str", "required": True},
            "lab_networks": {"type": "list", "elements": "str", "required": True},
            "uplink": {"type": "str", "required": True},
            "peers": {"type": "bool", "default": False},
            "persist": {"type": "bool", "default": True},
            "rules_file": {"type": "path", "default": "/etc/iptables/rules.v4"},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        wanted = rules(p["vm_subnet"], p["vm_gateway"], p["lab_networks"], p["uplink"], p["peers"])
    except InputError as err:
        module.fail_json(msg=str(err))

    tables = Iptables(module)
    commands: list[list[str]] = []
    with nat_lock(module, "vcl_firewall"):
        try:
            text = tables.run([tables.iptables_save, "-t", "filter"])
            todo = plan(parse_nat(text), wanted, policies(text).get("FORWARD"))
            commands = [[tables.iptables, "-w", "-t", "filter", *argv] for argv in todo]
            if not module.check_mode:
                tables.apply(commands)
            saved = tables.persist(p["rules_file"], module.check_mode, bool(commands)) if p["persist"] else False
        except NatError as err:
            module.fail_json(msg=str(err), commands=tables.done)
    module.exit_json(changed=bool(commands) or saved, commands=[shlex.join(a) for a in commands], saved=saved)


if __name__ == "__main__":
    main()
