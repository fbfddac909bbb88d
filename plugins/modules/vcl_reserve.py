#!/usr/bin/python
"""Record a reservation or a best-effort request through the scheduler (runs on the controller)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_reserve
short_description: Submit a VCL reservation (a window later) or a best-effort request (now)
description:
  - Runs where the scheduler runs (the controller, with C(delegate_to=localhost)), with the C(vcl_sched) package.
  - >-
    With O(start=now) the request is best effort (SPEC §3), placed and its cores, RAM, disk, MAC and address
    pair claimed in one transaction, or queued with the preemption plan, or refused with the reason.
  - >-
    With a date and time, it is an advance reservation (SPEC §4), accepted (maybe moved later, with why, maybe
    moving lower-priority reservations later) or refused with the reason.
  - Every input is checked first; a bad value fails naming the field and nothing is written.
  - Reports changed when a reservation or instance row was written (a refusal of a reservation is recorded too).
options:
  db_url:
    description: SQLAlchemy URL of the lab database; defaults to C(VCL_DB_URL), then the embedded SQLite file.
    type: str
  owner:
    description: The owner group (C(vcl group add)).
    type: str
    required: true
  user:
    description: The user asking (created on first use and added to the owner group).
    type: str
  cores:
    description: vCPUs.
    type: raw
    required: true
  ram_mb:
    description: RAM in MiB.
    type: raw
    required: true
  hours:
    description: How long; a best-effort request gets at most the look-ahead limit, a reservation the policy's maximum.
    type: raw
    required: true
  start:
    description: C(now) for best effort, else the reservation's start (C(YYYY-MM-DD HH:MM), local time).
    type: str
    default: now
  platform_value:
    description: The platform value PfV of the priority function.
    type: raw
    default: 5
  register_as_slave:
    description: Whether the client joins the pool as a slave (0 or 1).
    type: raw
    default: 0
  member:
    description: Whether the owner is a member (0 or 1).
    type: raw
    default: 0
  image:
    description: The image to run (C(vcl image list)).
    type: str
  disk_gb:
    description: Disk in GiB (best effort only; default the image's).
    type: raw
author: VCL
"""

EXAMPLES = r"""
- name: Ask for a VM now
  vcl_reserve:
    owner: cs101
    cores: 1
    ram_mb: 256
    hours: 2
    start: now
    image: vcl-guest
  delegate_to: localhost
  register: reserve__register_result
"""

RETURN = r"""
result:
  description: >-
    The scheduler's answer. Best effort: id, decision (place, suspend, wait, refused), priority, slave, MAC and
    addresses when placed, hours granted, reason. Reservation: id, state (accepted, refused), priority, start, end,
    rescheduled, reason, moved (other reservations moved later).
  returned: success
  type: dict
kind:
  description: C(BE) (best effort) or C(AR) (advance reservation).
  returned: success
  type: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

SPEC = {
    "db_url": {"type": "str"},
    "owner": {"type": "str", "required": True},
    "user": {"type": "str"},
    "cores": {"type": "raw", "required": True},
    "ram_mb": {"type": "raw", "required": True},
    "hours": {"type": "raw", "required": True},
    "start": {"type": "str", "default": "now"},
    "platform_value": {"type": "raw", "default": 5},
    "register_as_slave": {"type": "raw", "default": 0},
    "member": {"type": "raw", "default": 0},
    "image": {"type": "str"},
    "disk_gb": {"type": "raw"},
}


def main():
    module = AnsibleModule(argument_spec=SPEC, supports_check_mode=True)
    try:
        from vcl_sched import service
        from vcl_sched.errors import VclError
    except ImportError as err:
        module.fail_json(msg=f"vcl_reserve needs the vcl_sched package in the controller's Python ({err})")
    p = module.params
    common = {
        "owner": p["owner"], "cores": p["cores"], "ram_mb": p["ram_mb"], "hours": p["hours"],
        "platform_value": p["platform_value"], "register_as_slave": p["register_as_slave"], "member": p["member"],
        "image": p["image"] or None, "user": p["user"] or None, "dry_run": module.check_mode,
        "url": p["db_url"] or None,
    }
    start = (p["start"] or "now").strip()
    try:
        if start.lower() == "now":
            result = service.request(disk_gb=p["disk_gb"], **common)
            kind = "BE"
            written = result.get("id") is not None
        else:
            if p["disk_gb"] is not None:
                module.fail_json(msg="disk_gb: only a best-effort request (start=now) takes a disk size;"
                                     " a reservation uses the image's")
            result = service.reserve(start=start, **common)
            kind = "AR"
            written = result.get("id") is not None
    except VclError as err:
        module.fail_json(msg=str(err), field=getattr(err, "field", None))
    module.exit_json(changed=bool(written), result=result, kind=kind)


if __name__ == "__main__":
    main()
