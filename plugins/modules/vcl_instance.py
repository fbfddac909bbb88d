#!/usr/bin/python
"""One step of a VM's life in the lab database, as the lifecycle playbooks take it (runs on the controller)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_instance
short_description: Record a step of a VCL VM's life in the lab database, or ask the scheduler what to do
description:
  - Runs where the scheduler runs (the controller, with C(delegate_to=localhost)), with the C(vcl_sched) package.
  - The playbooks act on the hosts; this module records each step (C(vcl_sched.lifecycle)) and takes the decisions.
  - C(describe) returns what the playbooks need to act on an instance (slave, addresses, image files).
  - C(place) chooses a slave and claims cores, RAM, disk, a MAC and an address pair in one transaction (a
    best-effort request keeps the claim it got when accepted), never on a slave listed in O(exclude).
  - C(unplace) gives a failed launch's claim back; C(running) and C(failed) record a launch's outcome.
  - C(suspended) and C(resumed) record libvirt managedsave and its restore (cores and RAM freed or claimed again).
  - C(stopped) releases everything (idempotent: an instance that already ended reports no change).
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
      - With C(reconcile), per slave name C({reachable, domains {name: state}, facts {cores, ram_mb, disk_gb}}).
    type: dict
    default: {}
author: VCL
"""

EXAMPLES = r"""
- name: Claim a slave and addresses for instance 42
  vcl_instance:
    action: place
    id: 42
    exclude: [slave1]
  delegate_to: localhost
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

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

ACTIONS = ["describe", "place", "unplace", "running", "failed", "suspended", "resumed", "stopped", "start_due",
           "dispatch_plan", "reconcile"]
NEEDS_ID = set(ACTIONS) - {"start_due", "dispatch_plan", "reconcile"}
READ_ONLY = {"describe", "dispatch_plan"}


def main():
    module = AnsibleModule(
        argument_spec={
            "db_url": {"type": "str"},
            "action": {"type": "str", "required": True, "choices": ACTIONS},
            "id": {"type": "raw"},
            "exclude": {"type": "list", "elements": "str", "default": []},
            "console_port": {"type": "raw"},
            "reason": {"type": "str", "default": ""},
            "observed": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    try:
        from vcl_sched import lifecycle
        from vcl_sched.errors import VclError
    except ImportError as err:
        module.fail_json(msg=f"vcl_instance needs the vcl_sched package in the controller's Python ({err})")
    p = module.params
    action = p["action"]
    url = p["db_url"] or None
    if action in NEEDS_ID and p["id"] in (None, ""):
        module.fail_json(msg=f"id: action {action} needs the instance id")
    try:
        if module.check_mode and action not in READ_ONLY:
            if action in NEEDS_ID:
                module.exit_json(changed=True, instance=lifecycle.describe(p["id"], url))
            module.exit_json(changed=True)
        if action == "describe":
            module.exit_json(changed=False, instance=lifecycle.describe(p["id"], url))
        if action == "place":
            row = lifecycle.place(p["id"], p["exclude"], url)
            module.exit_json(changed=row["placed"] == "claimed", instance=row)
        if action == "unplace":
            module.exit_json(changed=True, instance=lifecycle.unplace(p["id"], p["reason"], url))
        if action in ("running", "failed", "suspended", "resumed"):
            if action == "running":
                row = lifecycle.mark_running(p["id"], p["console_port"], url)
            elif action == "failed":
                row = lifecycle.mark_failed(p["id"], p["reason"], url)
            else:
                row = lifecycle.suspended(p["id"], action == "suspended", url)
            module.exit_json(changed=row.pop("changed"), instance=row)
        if action == "stopped":
            row = lifecycle.stop(p["id"], url=url)
            module.exit_json(changed=row.pop("changed"), instance=row)
        if action == "start_due":
            started = lifecycle.start_due_reservations(url=url)
            module.exit_json(changed=bool(started), started=started)
        if action == "dispatch_plan":
            module.exit_json(changed=False, plan=lifecycle.dispatch_plan(url=url))
        if action == "reconcile":
            result = lifecycle.reconcile(p["observed"], url)
            changed = any(result[k] for k in ("lost", "down", "up", "capacity"))
            module.exit_json(changed=changed, reconciled=result)
    except VclError as err:
        module.fail_json(msg=str(err), field=getattr(err, "field", None))


if __name__ == "__main__":
    main()
