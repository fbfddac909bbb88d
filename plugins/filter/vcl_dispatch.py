# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""Filters of the dispatch playbook (used as ``vcl.lab.<name>``): a dispatch plan's launches dealt to lanes."""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError

# A slave's inventory name, as the database and the inventory plugin allow it (a lane's host name is built on it).
SLAVE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
MAX_WIDTH = 16


def vcl_lanes(lanes, slaves, width) -> dict[str, list[int]]:
    """LANES ({slave: [instance ids]}, the plan's launches by the slave each is planned on), for the slaves named
    in SLAVES only, dealt round-robin to at most WIDTH lanes per slave: {'lane-SLAVE-K': [ids]} (K from 1), the
    ids in plan order in each lane, no lane empty."""
    if not isinstance(lanes, dict):
        raise AnsibleFilterError(f"lanes: expected a mapping of slave to instance ids, not {type(lanes).__name__}")
    if isinstance(width, bool):
        raise AnsibleFilterError(f"dispatch_launches_per_slave: {width!r} is not a whole number")
    try:
        width = int(str(width).strip())
    except ValueError:
        raise AnsibleFilterError(f"dispatch_launches_per_slave: {width!r} is not a whole number") from None
    if not 1 <= width <= MAX_WIDTH:
        raise AnsibleFilterError(f"dispatch_launches_per_slave: {width} is not in 1..{MAX_WIDTH}")
    known = {str(name) for name in slaves or []}
    out: dict[str, list[int]] = {}
    for slave, ids in lanes.items():
        slave = str(slave)
        if slave not in known:
            continue
        if not SLAVE_RE.fullmatch(slave):
            raise AnsibleFilterError(f"lanes: {slave!r} is not a slave's name")
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise AnsibleFilterError(f"lanes: the launches of {slave} are not a list of instance ids")
        for k in range(min(width, len(ids))):
            out[f"lane-{slave}-{k + 1}"] = [int(i) for i in ids[k::width]]
    return out


class FilterModule:
    def filters(self):
        return {"vcl_lanes": vcl_lanes}
