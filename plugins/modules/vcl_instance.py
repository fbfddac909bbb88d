# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""Documentation of the vcl_instance action plugin (plugins/action/vcl_instance.py does the work, on the controller)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_instance
short_description: Record a step of a VCL VM's life in the lab database, or ask the scheduler what to do
description:
  - An action plugin (plugins/action/vcl_instance.py) that runs on the controller, in the Python of ansible-playbook
    itself, where the C(vcl_sched) package must be installed; no C(delegate_to) or interpreter is needed.
  - The playbooks act on the hosts; this module records each step (C(vcl_sched.lifecycle)) and takes the decisions.
  - C(describe) returns what the playbooks need to act on an instance (slave, addresses, image files).
  - C(place) chooses a slave and claims cores, RAM, disk, a MAC and an address pair in one transaction (a
    best-effort request keeps the claim it got when accepted), never on a slave listed in O(exclude).
  - C(unplace) gives a failed launch's claim back; C(running) and C(failed) record a launch's outcome.
  - C(suspended) and C(resumed) record libvirt managedsave and its restore (cores and RAM freed or claimed again).
  - C(stopped) releases everything; it is idempotent (an instance that already ended reports no change).
  - C(start_due) turns accepted reservations whose window began into pending instances; C(dispatch_plan) says
    which instances a dispatch run stops, suspends, launches and resumes, in that order.
  - C(reconcile) compares the database with O(observed) (what libvirt reports per slave).
  - Every input is checked before anything is written; errors name the field.
options:
  db_url:
    description: SQLAlchemy URL of the lab database; defaults to C(VCL_DB_URL), then the embedded SQLite file.
    type: str
  action:
    description: The step.
    type: str
    required: true
    choices: [describe, place, unplace, running, failed, suspended, resumed, stopped, start_due, dispatch_plan,
              reconcile]
  id:
    description: The instance; required by every action but C(start_due), C(dispatch_plan) and C(reconcile).
    type: raw
  exclude:
    description: With C(place), slaves not to use (those a launch already failed on).
    type: list
    elements: str
    default: []
  console_port:
    description: With C(running), the VNC port of the domain on its slave.
    type: raw
  reason:
    description: With C(unplace) and C(failed), why (kept in the audit log).
    type: str
    default: ""
  observed:
    description:
      - "With C(reconcile), per slave name C({reachable, domains {name: state}, facts {cores, ram_mb, disk_gb}})."
    type: dict
    default: {}
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
- name: Claim a slave and addresses for instance 42
  vcl.lab.vcl_instance:
    action: place
    id: 42
    exclude: [slave1]
  register: launch__register_claim
"""

RETURN = r"""
instance:
  description: >-
    The instance after the step: id, state, slave, slave_address, cores, ram_mb, disk_gb, mac, private_ip,
    public_ip, console_port, domain, dhcp_name, image, image_disk, image_kernel, image_ramdisk, image_cmdline.
  returned: for actions on one instance
  type: dict
plan:
  description: With C(dispatch_plan), the ids to stop, suspend, launch and resume, those that wait, and notes.
  returned: with dispatch_plan
  type: dict
started:
  description: With C(start_due), the reservations that became instances.
  returned: with start_due
  type: list
  elements: dict
reconciled:
  description: With C(reconcile), instances found lost, slaves marked down or up, orphan domains, capacity changes.
  returned: with reconcile
  type: dict
"""
