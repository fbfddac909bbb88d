# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""Documentation of the vcl_db action plugin (plugins/action/vcl_db.py does the work, on the controller)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_db
short_description: Create or upgrade the VCL lab database and apply settings from the inventory
description:
  - An action plugin (plugins/action/vcl_db.py) that runs on the controller, in the Python of ansible-playbook
    itself, where the C(vcl_sched) package must be installed; no C(delegate_to) or interpreter is needed.
  - Brings the schema to the newest revision (keeping data) and sets the given settings, for example the
    address pools and MAC prefix from the inventory. Reports changed only when something was written.
  - A database on another host is reached through O(db_url); on the master itself, its own installation's
    C(vcl db init --json) and C(vcl config set KEY=VALUE --json) do the same work.
options:
  db_url:
    description: SQLAlchemy URL of the lab database; defaults to C(VCL_DB_URL), then the embedded SQLite file.
    type: str
  settings:
    description:
      - Settings to apply (C(vcl config show) lists them), for example C(private_pool), C(public_pool), C(mac_prefix).
      - The lab's networks, from the inventory, so that C(vcl config set), C(vcl slave add) and the C(vcl_slaves)
        inventory check against them; C(lab_subnet) and C(vm_subnet) (CIDR), C(lab_gateway), C(vm_gateway) and
        C(master_address) (IPv4 addresses). An empty value is unknown, and the checks that need it are skipped.
      - The settings are applied as one batch, checked as a whole (new subnets and the pools inside them at once),
        so the order of the keys never matters; a setting whose value is null is set to the empty string.
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
- name: Create the lab database
  vcl.lab.vcl_db:
    settings:
      private_pool: 10.0.1.16-10.0.1.254
      public_pool: 10.0.0.160-10.0.0.223
      lab_subnet: 10.0.0.0/24
      vm_subnet: 10.0.1.0/24
      lab_gateway: 10.0.0.1
      vm_gateway: 10.0.1.1
      master_address: 10.0.0.10
"""

RETURN = r"""
revision:
  description: The schema revision after the run.
  returned: success
  type: str
settings:
  description: All settings after the run.
  returned: success
  type: dict
updated:
  description: The names of the settings this run changed (a value the database already holds is not listed).
  returned: success
  type: list
  elements: str
url:
  description: The database's URL, without its password.
  returned: success
  type: str
"""
