# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""Documentation of the vcl_reserve action plugin (plugins/action/vcl_reserve.py does the work, on the controller)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_reserve
short_description: Submit a VCL reservation (a window later) or a best-effort request (now)
description:
  - An action plugin (plugins/action/vcl_reserve.py) that runs on the controller, in the Python of ansible-playbook
    itself, where the C(vcl_sched) package must be installed; no C(delegate_to) or interpreter is needed.
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
    description: The user the request is for (created on first use; membership is the group's business).
    type: str
  acting_user:
    description:
      - The lab user on whose behalf the request is made (the portal or C(vcl --as) pass who logged in); their
        role is checked (a teacher books for the groups they own, a student requests for themselves in their
        groups). Left out, the controller's user acts, as the lab's admin.
    type: str
  cores:
    description: vCPUs (of each seat, for a reservation).
    type: raw
    required: true
  seats:
    description:
      - With a O(start) time, the number of seats the reservation books for the group (a block of seats, each one VM
        of O(cores) and O(ram_mb)); the whole block must fit in the pool and each seat on one slave.
      - A best-effort request (O(start=now)) is one VM.
    type: raw
    default: 1
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
    description:
      - The platform value PfV of the priority function; left out, the image's platform value (5 without an image).
      - Admins only (an override within 0..platform_value_max).
    type: raw
  register_as_slave:
    description: Whether the client joins the pool as a slave (0 or 1).
    type: raw
    default: 0
  member:
    description:
      - MON, whether the user belongs to the owner group (0 or 1); left out, derived from the membership.
      - Admins only (an override).
    type: raw
  prelaunch:
    description:
      - A reservation's seats all start C(prelaunch_lead_minutes) before its window opens, handed to the group's
        members (true), or each when a member takes it (false, C(vcl.lab.seat)).
    type: bool
    default: true
  keep_disk:
    description:
      - Keep the VM's disk when it stops, and start from the user's kept disk of O(image) (SPEC §10); for a
        reservation, every seat does so with its holder's disk. Needs O(image).
    type: bool
    default: false
  weekdays:
    description: A weekly session on these days (C(mon,wed)) at O(start)'s time; needs O(weeks).
    type: str
  weeks:
    description: A weekly session for this many weeks (1..52) from O(start)'s week; needs O(weekdays).
    type: raw
  image:
    description: The image to run (C(vcl image list)).
    type: str
  disk_gb:
    description: Disk in GiB (best effort only; default the image's).
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
- name: Ask for a VM now
  vcl.lab.vcl_reserve:
    owner: cs101
    cores: 1
    ram_mb: 256
    hours: 2
    start: now
    image: vcl-guest
  register: reserve__register_result
"""

RETURN = r"""
result:
  description: >-
    The scheduler's answer. Best effort: id, decision (place, suspend, wait, refused), priority, slave, MAC and
    addresses when placed, hours granted, reason. Reservation: id, state (accepted, refused), priority, start, end,
    rescheduled, reason, moved (other reservations moved later), prelaunch, series. A weekly session: series,
    occurrences (one reservation answer each, a refused one with its reason), accepted, moved, refused.
  returned: success
  type: dict
kind:
  description: C(BE) (best effort) or C(AR) (advance reservation).
  returned: success
  type: str
"""
