#!/usr/bin/python
"""Documentation of the vcl_preflight action plugin (plugins/action/vcl_preflight.py does the work)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_preflight
short_description: Check a VCL lab inventory before anything changes
description:
  - Runs on the controller (an action plugin) and reads the inventory's groups and variables.
  - Fails with every problem found, each naming the host (or C(inventory)) and the field, when there is not
    exactly one C(vcl_master), a host's C(lab_address) is outside C(lab_subnet) or reused, the public and
    private pools overlap each other, leave their subnets, differ in size or contain a host's address, or
    C(lab_domain_type) or C(lab_mac_prefix) are invalid.
options: {}
author: VCL developers (@vcl-lab)
"""

EXAMPLES = r"""
- name: Check the inventory
  vcl_preflight:
"""

RETURN = r"""
problems:
  description: "One line per problem: C(HOST: FIELD: what is wrong)."
  returned: always
  type: list
  elements: str
"""
