# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""Documentation of the vcl_session action plugin (plugins/action/vcl_session.py does the work, on the controller)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_session
short_description: Class sessions of the VCL lab database, take a seat, see who holds which VM, cancel
description:
  - An action plugin (plugins/action/vcl_session.py) that runs on the controller, in the Python of ansible-playbook
    itself, where the C(vcl_sched) package must be installed.
  - A session is a reservation, a block of seats for a group over a window (SPEC §4).
  - >-
    O(action=take) gives O(user) (default the acting user) a seat of the running session O(reservation): the seat
    they hold already (changed false, a member never gets two), else a prelaunched seat nobody holds, else a new
    seat while the block has one (state pending, to launch).
  - O(action=show) is the teacher's view, each seat with who holds it, its VM's state, slave and address; a student
    sees their own seat only.
  - O(action=cancel) cancels one occurrence (O(reservation)) or every occurrence to come of a weekly O(series);
    running seats end at the next dispatch.
  - The acting user's role is checked (SPEC §7); a refusal fails naming the field and writes nothing.
options:
  db_url:
    description: SQLAlchemy URL of the lab database; defaults to C(VCL_DB_URL), then the embedded SQLite file.
    type: str
  action:
    description: What to do.
    type: str
    required: true
    choices: [take, show, cancel]
  reservation:
    description: The session's reservation id.
    type: raw
  series:
    description: A weekly series' id (O(action=cancel) only).
    type: raw
  user:
    description: The member who takes the seat (O(action=take)); teachers and admins may name any member.
    type: str
  acting_user:
    description: The lab user on whose behalf this runs (the portal or C(vcl --as)); left out, the controller's admin.
    type: str
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.conn
  - ansible.builtin.action_common_attributes.flow
  - vcl.lab.controller
attributes:
  check_mode:
    support: partial
    details: O(action=show) runs; take and cancel change nothing and say so.
author: VCL developers (@vcl-lab)
"""

EXAMPLES = r"""
- name: Take ann's seat of session 12
  vcl.lab.vcl_session:
    action: take
    reservation: 12
    user: ann
  register: seat__register_take

- name: The teacher's view
  vcl.lab.vcl_session:
    action: show
    reservation: 12
"""

RETURN = r"""
seat:
  description: The seat taken (action take) — seat, id, user, state, slave, public_ip, ends_at, how, changed.
  returned: action take
  type: dict
session:
  description: The session (action show) — reservation, group, seats, members, members_without_seat, running.
  returned: action show
  type: dict
cancelled:
  description: What was cancelled (action cancel) — cancelled (reservation ids), ending (instance ids), series.
  returned: action cancel
  type: dict
"""
