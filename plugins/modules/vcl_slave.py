# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""Documentation of the vcl_slave action plugin (plugins/action/vcl_slave.py does the work, on the controller)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_slave
short_description: Register, drain or remove VCL slaves in the lab database
description:
  - An action plugin (plugins/action/vcl_slave.py) that runs on the controller, in the Python of ansible-playbook
    itself, where the C(vcl_sched) package must be installed; no C(delegate_to) or interpreter is needed.
  - C(state=present) registers the slave, or refreshes its address and total capacity; used counts are never
    touched, and a capacity below what its VMs use is refused naming the field.
  - C(state=drained_unless_listed) marks every registered slave that is not in O(inventory) as draining (no new
    VMs; the ones it hosts keep running).
  - C(state=absent) deletes the slave's row, refused while it hosts VMs.
options:
  db_url:
    description: SQLAlchemy URL of the lab database; defaults to C(VCL_DB_URL), then the embedded SQLite file.
    type: str
  name:
    description: The slave's name (its inventory_hostname).
    type: str
  address:
    description: The slave's lab address (no prefix).
    type: str
  cores:
    description: CPU cores (facts C(processor_vcpus)).
    type: int
  ram_mb:
    description: RAM in MB (facts C(memtotal_mb)).
    type: int
  disk_gb:
    description: Size of the file system holding the image store and overlays, GB.
    type: int
  inventory:
    description: With C(state=drained_unless_listed), the slaves the inventory still lists.
    type: list
    elements: str
  state:
    description: What to do.
    type: str
    choices: [present, absent, drained_unless_listed]
    default: present
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.conn
  - ansible.builtin.action_common_attributes.flow
  - vcl.lab.controller
attributes:
  check_mode:
    support: none
author: VCL developers (@vcl-lab)
"""

EXAMPLES = r"""
- name: Register this slave
  vcl.lab.vcl_slave:
    name: "{{ inventory_hostname }}"
    address: "{{ lab_address | split('/') | first }}"
    cores: "{{ ansible_facts.processor_vcpus }}"
    ram_mb: "{{ ansible_facts.memtotal_mb }}"
    disk_gb: 100
"""

RETURN = r"""
slave:
  description: The slave's row after the run (state=present).
  returned: when state=present
  type: dict
drained:
  description: Slaves marked draining (state=drained_unless_listed).
  returned: when state=drained_unless_listed
  type: list
  elements: str
"""
