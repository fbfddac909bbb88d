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
    choices: [describe, lease, unlease, place, unplace, running, failed, suspended, resumed, stopped, net_gone,
              start_due, dispatch_plan, reconcile]
  id:
    description: The instance; required by every action but C(start_due), C(dispatch_plan) and C(reconcile).
    type: raw
  acting_user:
    description:
      - With O(action=describe), the lab user on whose behalf a playbook runs (the portal, C(vcl --as)); the task
        fails naming C(id) unless the VM is theirs, a seat of a group they teach, or they are an admin.
    type: str
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
      - A name with state C(files) is an overlay or serial log C(vcl-<id>) left in the instance directory without
        a domain.
    type: dict
    default: {}
  lease:
    description:
      - The token C(lease) returned; C(place), C(unplace), C(running) and C(failed) must carry it when the
        instance is leased (one launch per instance). A wrong or missing token fails naming C(lease).
      - "C(unlease) hands the lease back when a launch ends without running the VM (no slave has room yet): the
        instance waits, pending, for the next dispatch."
      - "C(lease) itself returns C(lease=null) and the reason in C(refused), without failing, when another run
        holds a live lease, the instance is not pending, or its window has passed (it is then ended)."
    type: str
  net_clean:
    description:
      - "With C(unplace) and C(failed), whether the master's entries of this VM are known to be gone (or were
        never made). Otherwise its address pair is quarantined until C(net_gone), so no other VM gets addresses
        the master may still route to this one."
    type: bool
    default: false
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
lease:
  description: With C(lease), the token the launch's later steps carry, or null when refused.
  returned: with lease
  type: str
refused:
  description: With C(lease), why the instance cannot be launched by this run ("" when leased).
  returned: with lease
  type: str
pairs_freed:
  description: With C(net_gone), how many quarantined address pairs became free.
  returned: with net_gone
  type: int
plan:
  description: >-
    With C(dispatch_plan), the ids to stop, suspend, launch and resume, those that wait, and notes; C(lanes) maps
    each slave's name to the launches planned on it, in order (dispatch.yml runs the lanes side by side).
  returned: with dispatch_plan
  type: dict
started:
  description: >-
    With C(start_due), the reservations that became active (with C(prelaunch), their seats' pending instances,
    handed to the group's members; without, none: members take seats).
  returned: with start_due
  type: list
  elements: dict
reconciled:
  description: >-
    With C(reconcile): C(lost) instances, slaves marked C(down) or C(up), C(ok), C(capacity) changes, C(orphans)
    (C({slave, domain}) to remove from that slave), C(unnet) (instances whose entries the master may still carry:
    take them off the master's network, then C(net_gone)), C(requeued) (C({lost, id, kind})), C(leases_expired)
    and C(unclaimed) (claims on a slave that does not answer given back; the instance waits, pending).
  returned: with reconcile
  type: dict
"""
