#!/usr/bin/python
"""Register a slave in the lab database with its real capacity, drain slaves gone from the inventory,
or remove one (runs on the controller)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_slave
short_description: Register, drain or remove VCL slaves in the lab database
description:
  - Runs where the scheduler runs (the controller, with C(delegate_to=localhost)), with the C(vcl_sched) package.
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
author: VCL
"""

EXAMPLES = r"""
- name: Register this slave
  vcl_slave:
    name: "{{ inventory_hostname }}"
    address: "{{ lab_address | split('/') | first }}"
    cores: "{{ ansible_facts.processor_vcpus }}"
    ram_mb: "{{ ansible_facts.memtotal_mb }}"
    disk_gb: 100
  delegate_to: localhost
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

from ansible.module_utils.basic import AnsibleModule  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec={
            "db_url": {"type": "str"},
            "name": {"type": "str"},
            "address": {"type": "str"},
            "cores": {"type": "int"},
            "ram_mb": {"type": "int"},
            "disk_gb": {"type": "int"},
            "inventory": {"type": "list", "elements": "str"},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent", "drained_unless_listed"]},
        },
        required_if=[
            ("state", "present", ("name", "address", "cores", "ram_mb", "disk_gb")),
            ("state", "absent", ("name",)),
            ("state", "drained_unless_listed", ("inventory",)),
        ],
        supports_check_mode=False,
    )
    try:
        from vcl_sched import registry
        from vcl_sched.errors import NotFoundError, VclError
    except ImportError as err:
        module.fail_json(msg=f"vcl_slave needs the vcl_sched package in the controller's Python ({err})")
    p = module.params
    url = p["db_url"] or None
    try:
        if p["state"] == "present":
            result = registry.register_slave(p["name"], p["address"], p["cores"], p["ram_mb"], p["disk_gb"], url)
        elif p["state"] == "absent":
            try:
                result = registry.remove_slave(p["name"], url)
            except NotFoundError:
                result = {"changed": False, "removed": None}
        else:
            result = registry.drain_absent(p["inventory"], url)
    except VclError as err:
        module.fail_json(msg=str(err))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
