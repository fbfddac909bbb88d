#!/usr/bin/python
"""Read what the master's network services must carry from the lab database (runs on the controller)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_lab_info
short_description: The VMs' addresses from the VCL lab database, shaped for the dhcpd, nat and network roles
description:
  - Runs where the scheduler runs (the controller, with C(delegate_to=localhost)), with the C(vcl_sched) package.
  - Reads the instances that hold addresses (pending, running, suspended) and returns them as the dependent
    variables of the roles C(dhcpd) (host entries), C(nat) (one DNAT chain per VM) and C(network) (public aliases).
  - Reads only; never changes anything.
options:
  db_url:
    description: SQLAlchemy URL of the lab database; defaults to C(VCL_DB_URL), then the embedded SQLite file.
    type: str
author: VCL
"""

EXAMPLES = r"""
- name: Read the VMs' addresses
  vcl_lab_info:
  delegate_to: localhost
  run_once: true
  register: site__register_lab
"""

RETURN = r"""
dhcp_hosts:
  description: One C({name, mac, ip}) per VM, for C(dhcpd__hosts).
  returned: success
  type: list
  elements: dict
dnat:
  description: One C({id, public, private}) per VM, for C(nat__dnat).
  returned: success
  type: list
  elements: dict
public_aliases:
  description: The VMs' public addresses, for C(network__public_aliases).
  returned: success
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402


def main():
    module = AnsibleModule(argument_spec={"db_url": {"type": "str"}}, supports_check_mode=True)
    try:
        from vcl_sched import service
        from vcl_sched.errors import VclError
    except ImportError as err:
        module.fail_json(msg=f"vcl_lab_info needs the vcl_sched package in the controller's Python ({err})")
    try:
        rows = service.list_instances(module.params["db_url"] or None)
    except VclError as err:
        module.fail_json(msg=str(err))
    held = [r for r in rows if r["mac"] and r["private_ip"] and r["public_ip"]]
    module.exit_json(
        changed=False,
        instances=held,
        dhcp_hosts=[{"name": f"vm-{r['id']}", "mac": r["mac"], "ip": r["private_ip"]} for r in held],
        dnat=[{"id": r["id"], "public": r["public_ip"], "private": r["private_ip"]} for r in held],
        public_aliases=[r["public_ip"] for r in held],
    )


if __name__ == "__main__":
    main()
