# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""Documentation of the vcl_lab_info action plugin (plugins/action/vcl_lab_info.py does the work, on the controller)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_lab_info
short_description: The VMs' addresses from the VCL lab database, shaped for the dhcpd, nat and network roles
description:
  - An action plugin (plugins/action/vcl_lab_info.py) that runs on the controller, in the Python of ansible-playbook
    itself, where the C(vcl_sched) package must be installed; no C(delegate_to) or interpreter is needed.
  - Reads the instances that hold addresses (pending, running, suspended) and returns them as the dependent
    variables of the roles C(dhcpd) (host entries), C(nat) (one DNAT chain per VM) and C(network) (public aliases).
  - Reads only; never changes anything.
options:
  db_url:
    description: SQLAlchemy URL of the lab database; defaults to C(VCL_DB_URL), then the embedded SQLite file.
    type: str
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.conn
  - ansible.builtin.action_common_attributes.flow
  - vcl.lab.controller
attributes:
  check_mode:
    support: full
author: VCL developers (@vcl-lab)
"""

EXAMPLES = r"""
- name: Read the VMs' addresses
  vcl.lab.vcl_lab_info:
  run_once: true
  register: site__register_lab
"""

RETURN = r"""
instances:
  description: The instances that hold addresses (pending, running, suspended), as C(vcl list --json) shows them.
  returned: success
  type: list
  elements: dict
dhcp_hosts:
  description: One C({name, mac, ip}) per VM, for C(dhcpd__hosts).
  returned: success
  type: list
  elements: dict
dnat:
  description: One C({id, public, private}) per VM, for C(nat__dnat).
  returned: success
  type: list
  elements: dict
public_aliases:
  description: One C({id, public}) per VM, for C(network__public_aliases) (one alias file per VM, named by its id).
  returned: success
  type: list
  elements: dict
"""
