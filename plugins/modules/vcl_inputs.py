# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""Documentation of the vcl_inputs action plugin (plugins/action/vcl_inputs.py does the work, on the controller)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_inputs
short_description: Check a VCL playbook's extra variables as data, before anything templates them
description:
  - An action plugin (plugins/action/vcl_inputs.py) that runs on the controller, in the Python of ansible-playbook
    itself, where the C(vcl_sched) package must be installed. It is the first task of every play of the lifecycle
    playbooks (launch, stop, suspend, resume, reserve, dispatch, reconcile).
  - Reads each variable named in O(fields) as it was given (C(-e), ansible-runner, set_fact) without rendering it,
    and checks it with C(vcl_sched.validate) (type, pattern, bounds). A bad value fails the task with one line
    that starts with the field at fault; nothing the value carries is evaluated.
  - A value that is not an extra variable and holds a template (the inventory's or a playbook's own, which
    Ansible trusts) is left to be rendered where it is used.
  - Any other extra variable that holds a Jinja template (C({{), C({%), C({#)) is refused too (requests are data).
  - Not C(ansible.builtin.assert), because an extra variable typed by hand (C(ansible-playbook -e 'id={{ ... }}')) is
    trusted as a template by Ansible, and the first expression that names it (an assert's C(that) or C(fail_msg),
    a role's argument validation) renders it, running what it carries.
options:
  fields:
    description:
      - The variables to check, each with its kind.
      - C(id) a whole number in 1..2147483647; C(ids) one or more ids (C(N) or C(N,M,...)); C(name) a name
        (1-63 letters, digits, C(.), C(_), C(-)); C(cores), C(ram_mb), C(disk_gb), C(hours), C(seats) the
        scheduler's bounds; C(number) a number in 0..1000000; C(flag) 0, 1 or a boolean; C(bool) a boolean;
        C(start) C(now) or a date and time; C(attempts) 1..3; C(lanes) 1..16; C(seconds) 0.01..60; C(path) a
        normalised absolute path of letters, digits and C(._@+-); C(weekdays) weekday names like C(mon,wed);
        C(weeks) 1..52; C(names) a list of names (or names separated by commas); C(text) one line of at most 500
        printable characters; C(timeout) whole seconds 0..3600; C(bwlimit) KiB/s 0..10000000.
    type: dict
    required: true
  required:
    description: Fields that must be given (not empty).
    type: list
    elements: str
    default: []
  one_of:
    description: Fields of which at least one must be given (the first is named when none is).
    type: list
    elements: str
    default: []
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
- name: Check the extra variables (before anything templates them)
  vcl.lab.vcl_inputs:
    fields: {id: id, ids: ids}
    one_of: [id, ids]
"""

RETURN = r"""
checked:
  description: The fields that were given and checked.
  returned: success
  type: list
  elements: str
field:
  description: The field at fault.
  returned: failure
  type: str
"""
