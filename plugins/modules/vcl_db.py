#!/usr/bin/python
"""Create or migrate the lab database and set its lab-wide settings (runs on the controller)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_db
short_description: Create or upgrade the VCL lab database and apply settings from the inventory
description:
  - Runs where the scheduler runs (the controller, with C(delegate_to=localhost)), with the C(vcl_sched) package.
  - Brings the schema to the newest revision (keeping data) and sets the given settings, for example the
    address pools and MAC prefix from the inventory. Reports changed only when something was written.
options:
  db_url:
    description: SQLAlchemy URL of the lab database; defaults to C(VCL_DB_URL), then the embedded SQLite file.
    type: str
  settings:
    description:
      - Settings to apply (C(vcl config show) lists them), for example C(private_pool), C(public_pool), C(mac_prefix).
    type: dict
    default: {}
author: VCL
"""

EXAMPLES = r"""
- name: Create the lab database
  vcl_db:
    settings:
      private_pool: 10.0.1.16-10.0.1.254
      public_pool: 10.0.0.160-10.0.0.223
  delegate_to: localhost
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
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec={"db_url": {"type": "str"}, "settings": {"type": "dict", "default": {}}},
        supports_check_mode=True,
    )
    try:
        from vcl_sched import config, db, service
        from vcl_sched.errors import VclError
    except ImportError as err:
        module.fail_json(msg=f"vcl_db needs the vcl_sched package in the controller's Python ({err})")
    url = module.params["db_url"] or None
    try:
        before = db.current_revision(url)
        head = db.head_revision()
        changed = before != head
        if changed and not module.check_mode:
            service.init(url)
        current = {}
        if not changed or not module.check_mode:
            with db.read(url) as session:
                current = db.load_settings(session).to_json()
        flat = dict(current)
        flat.update({f"booking.{k}": v for k, v in current.get("booking", {}).items()})
        updates = {k: str(v) for k, v in module.params["settings"].items() if str(flat.get(k)) != str(v)}
        if updates:
            changed = True
            if not module.check_mode:
                current = service.configure(updates, url)
        module.exit_json(
            changed=changed,
            revision=head if not module.check_mode else before,
            settings=current,
            updated=sorted(updates),
            url=config.safe_url(url or config.db_url()),
        )
    except VclError as err:
        module.fail_json(msg=str(err))


if __name__ == "__main__":
    main()
