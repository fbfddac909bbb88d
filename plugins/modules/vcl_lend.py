# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""Documentation of the vcl_lend action plugin (plugins/action/vcl_lend.py does the work, on the controller)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_lend
short_description: Client PCs lent to the pool (SPEC §9) in the VCL lab database
description:
  - An action plugin (plugins/action/vcl_lend.py) that runs on the controller, in the Python of ansible-playbook
    itself, where the C(vcl_sched) package must be installed (C(vcl_sched.lending)).
  - The playbooks change the hosts (C(lend.yml) bootstraps a PC as a slave, C(reclaim.yml) moves its VMs away);
    this module records each step in one transaction.
  - C(list) reads the lent PCs; C(owed) the served requests whose user promised a PC (register_as_slave=1) and
    was not asked yet; C(due) the lent PCs whose lending window has ended.
  - C(decline) records that the user of request O(id) declines to lend (O(reason=declined)) or that their PC did
    not answer (O(reason=unreachable)), and returns the warning; after the lab's C(decline_limit) declines, the
    user's register_as_slave=1 counts as 0.
  - C(enrol) registers the PC O(name) at O(address) with its capacity, lent by O(user) for O(hours) (and keeps
    the promise of request O(id) when given).
  - C(reclaim) takes the PC back (no new VM; RV(vms) must move); C(move_begin) holds room for VM O(id) on another
    slave and says where it goes; C(move_commit) records it there (O(running) or suspended); C(move_abort) gives
    the room back; C(finish) takes the drained PC out of the pool.
  - Every input is checked before anything is written; errors name the field.
options:
  db_url:
    description: SQLAlchemy URL of the lab database; defaults to C(VCL_DB_URL), then the embedded SQLite file.
    type: str
  action:
    description: The step.
    type: str
    required: true
    choices: [list, owed, due, decline, enrol, reclaim, move_begin, move_commit, move_abort, finish]
  acting_user:
    description: The lab user on whose behalf the playbook runs (the portal, C(vcl --as)); their role is checked.
    type: str
  id:
    description: >-
      The instance: the served request (C(decline), and C(enrol) when it keeps a request's promise) or the VM that
      moves (C(move_begin), C(move_commit), C(move_abort)).
    type: raw
  user:
    description: With C(enrol), the PC's owner, who lends it.
    type: str
  name:
    description: The PC's name as a slave (C(enrol), C(reclaim), C(finish)).
    type: str
  address:
    description: With C(enrol), the PC's address on the lab LAN.
    type: str
  cores:
    description: With C(enrol), the PC's cores (from facts).
    type: raw
  ram_mb:
    description: With C(enrol), the PC's RAM in MB (from facts).
    type: raw
  disk_gb:
    description: With C(enrol), the size in GB of the file system that holds its image cache and overlays.
    type: raw
  hours:
    description: With C(enrol), how long the PC is lent, in whole hours (1..672).
    type: raw
  reason:
    description: With C(decline), why the PC is not lent.
    type: str
    choices: [declined, unreachable]
    default: declined
  running:
    description: With C(move_commit), whether the VM runs on the slave it moved to (else it waits suspended there).
    type: bool
    default: true
  console_port:
    description: With C(move_commit), the VM's VNC port on the slave it moved to.
    type: raw
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
- name: Register the PC as a lent slave for 8 hours, keeping request 42's promise
  vcl.lab.vcl_lend:
    action: enrol
    id: 42
    user: ann
    name: ann-pc
    address: 192.0.2.40
    cores: 4
    ram_mb: 8192
    disk_gb: 200
    hours: 8

- name: Hold room for VM 7 of a PC being taken back
  vcl.lab.vcl_lend:
    action: move_begin
    id: 7
  register: reclaim__register_move
"""

RETURN = r"""
lent:
  description: With C(list), the lent PCs (a slave's row with lent_by, lend_until, lend_state and vms).
  returned: with list
  type: list
  elements: dict
owed:
  description: With C(owed), the served requests whose user owes a PC (id, user, served_at, declines).
  returned: with owed
  type: list
  elements: dict
due:
  description: With C(due), the names of the lent PCs whose lending window has ended.
  returned: with due
  type: list
  elements: str
warning:
  description: With C(decline), what the user is told (their declines against the limit).
  returned: with decline
  type: str
slave:
  description: >-
    With C(enrol), the PC's row as a slave (with lent_by, lend_until and lend_state); with C(reclaim), its name.
  returned: with enrol and reclaim
  type: raw
vms:
  description: With C(reclaim), the running or suspended VMs that must move off the PC.
  returned: with reclaim
  type: list
  elements: int
move:
  description: >-
    With C(move_begin): C(id), C(domain), C(state), C(from) and C(from_address), C(to) and C(to_address), and
    C(resume) (whether it runs on there, else it waits suspended).
  returned: with move_begin
  type: dict
instance:
  description: With C(move_commit), the instance on the slave it moved to.
  returned: with move_commit
  type: dict
"""
