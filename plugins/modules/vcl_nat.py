# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""The ``vcl_nat`` module: the master's nat table for VCL (MASQUERADE and one DNAT chain per VM).

Reads the table with ``iptables-save -t nat``, plans the few ``iptables`` commands (argv lists) that
bring it to the wanted state, runs them, and saves the whole ruleset for netfilter-persistent.
Planning is a pure function of the parsed table, so re-running plans nothing and reports no change.
The parsing, planning, saving and the lock live in plugins/module_utils/vcl_nat.py, shared with vcl_vm_net.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_nat
short_description: VCL's NAT rules on the master (MASQUERADE, one DNAT chain per VM)
description:
  - Keeps the C(nat) table of the master holding the rules VCL needs, and nothing twice.
  - With O(masquerade), the chain C(VCL-POSTROUTING) holds exactly one rule,
    C(-s SUBNET ! -d SUBNET -o OUT_INTERFACE -j MASQUERADE), so the VMs reach the outside through the
    master while traffic that stays inside the VM network keeps its addresses.
  - Every VM gets a chain C(VCL-VM-<id>) holding exactly C(-d PUBLIC/32 -j DNAT --to-destination PRIVATE),
    jumped to from C(VCL-PREROUTING) (traffic arriving at the master) and C(VCL-OUTPUT) (traffic from the
    master itself). The built-in chains C(PREROUTING), C(OUTPUT) and C(POSTROUTING) each get exactly one
    jump to their C(VCL-) chain, inserted first.
  - With O(state=present) the listed VMs' chains are created or corrected; with O(exclusive=true) the
    chains of VMs not listed are removed too (the jumps to them first, then the chain is flushed and
    deleted). With O(state=absent) the listed VMs' chains are removed; other VMs are left alone.
  - Every input is checked before the table is read; a bad entry fails naming the field and nothing
    changes. A public or private address already used by another VM's chain is refused the same way.
  - After a change (or when the saved file is out of date) the whole ruleset (C(iptables-save)) is
    checked with C(iptables-restore --test) and written atomically to O(rules_file), the file
    netfilter-persistent loads at boot.
  - Runs are serialised with a lock file, so two launches at once never race on the same chains.
version_added: "0.1.0"
author: VCL developers (@vcl-lab)
options:
  vms:
    description:
      - The VMs whose DNAT chains this run manages.
      - With O(state=absent) only O(vms[].id) is needed.
    type: list
    elements: dict
    default: []
    suboptions:
      id:
        description:
          - The VM's id (an integer, or letters, digits and C(_), at most 21 characters), so the chain
            C(VCL-VM-<id>) fits iptables' 28-character limit.
        type: raw
        required: true
      public:
        description: The VM's public IPv4 address (an alias on the master's uplink).
        type: str
      private:
        description: The VM's private IPv4 address (on the VM network).
        type: str
  state:
    description: Whether the chains of the listed VMs must exist or not.
    type: str
    choices: [present, absent]
    default: present
  exclusive:
    description:
      - With O(state=present), remove every C(VCL-VM-*) chain whose VM is not in O(vms).
    type: bool
    default: false
  masquerade:
    description:
      - The MASQUERADE rule for the VM network; left alone when not given.
    type: dict
    suboptions:
      subnet:
        description: The VMs' private network (CIDR); traffic from it to elsewhere is masqueraded.
        type: str
        required: true
      out_interface:
        description: Masquerade only traffic leaving through this interface (the master's uplink).
        type: str
  persist:
    description: Save the ruleset to O(rules_file) for netfilter-persistent.
    type: bool
    default: true
  rules_file:
    description: Where the ruleset is saved (netfilter-persistent's IPv4 file).
    type: path
    default: /etc/iptables/rules.v4
notes:
  - Supports check mode; C(changed) and RV(commands) then say what would be run.
  - Needs C(iptables), C(iptables-save) and C(iptables-restore) on the target.
"""

EXAMPLES = r"""
- name: Make the nat table hold exactly the running VMs
  vcl_nat:
    masquerade:
      subnet: 10.213.1.0/24
      out_interface: eth0
    vms:
      - {id: 12, public: 10.213.0.160, private: 10.213.1.16}
      - {id: 13, public: 10.213.0.161, private: 10.213.1.17}
    exclusive: true

- name: Add one VM's DNAT at launch
  vcl_nat:
    vms:
      - {id: 14, public: 10.213.0.162, private: 10.213.1.18}

- name: Remove one VM's DNAT at release
  vcl_nat:
    vms:
      - id: 14
    state: absent
"""

RETURN = r"""
commands:
  description: The iptables commands run (or, in check mode, that would run), in order.
  returned: always
  type: list
  elements: str
  sample:
    - /usr/sbin/iptables -w -t nat -N VCL-VM-14
    - /usr/sbin/iptables -w -t nat -A VCL-VM-14 -d 10.213.0.162/32 -j DNAT --to-destination 10.213.1.18
chains:
  description: The C(VCL-VM-*) chains in the nat table after the run (predicted in check mode).
  returned: always
  type: list
  elements: str
  sample: ["VCL-VM-12", "VCL-VM-13", "VCL-VM-14"]
saved:
  description: Whether O(rules_file) was (or, in check mode, would be) rewritten.
  returned: always
  type: bool
"""

import shlex

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vcl.lab.plugins.module_utils.vcl_nat import (
    InputError,
    Iptables,
    NatError,
    RulesFileError,
    nat_lock,
    parse_masquerade,
    parse_vms,
    plan,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "vms": {
                "type": "list",
                "elements": "dict",
                "default": [],
                "options": {
                    "id": {"type": "raw", "required": True},
                    "public": {"type": "str"},
                    "private": {"type": "str"},
                },
            },
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "exclusive": {"type": "bool", "default": False},
            "masquerade": {
                "type": "dict",
                "options": {"subnet": {"type": "str", "required": True}, "out_interface": {"type": "str"}},
            },
            "persist": {"type": "bool", "default": True},
            "rules_file": {"type": "path", "default": "/etc/iptables/rules.v4"},
        },
        supports_check_mode=True,
    )
    params = module.params
    try:
        if params["exclusive"] and params["state"] == "absent":
            raise InputError("exclusive: only with state=present (it removes the chains of VMs not listed)")
        vms = parse_vms(params["vms"], params["state"])
        masquerade = parse_masquerade(params["masquerade"])
    except InputError as err:
        module.fail_json(msg=str(err))

    nat = Iptables(module)
    with nat_lock(module, "vcl_nat"):
        try:
            todo = plan(nat.table(), vms, params["state"], params["exclusive"], masquerade)
            commands = nat.commands(todo)
            if not module.check_mode:
                nat.apply(commands)
            saved = nat.persist(params["rules_file"], module.check_mode, bool(commands)) if params["persist"] else False
        except InputError as err:
            module.fail_json(msg=str(err))
        except RulesFileError as err:
            module.fail_json(msg=str(err))
        except NatError as err:
            module.fail_json(msg=str(err), commands=nat.done)

    module.exit_json(
        changed=bool(commands) or saved,
        commands=[shlex.join(argv) for argv in commands],
        chains=todo.vm_chains(),
        saved=saved,
    )


if __name__ == "__main__":
    main()
