"""What the `vcl` command, the collection's modules, the benchmarks and the tests call: every read and
write of the lab database, in one namespace (``from vcl_sched import service; service.request(...)``).

This module only re-exports; the code lives in one module per concern, each depending only on the ones
below it:

- ``validate``  input checks (names, whole numbers, bounds); errors name the field;
- ``audit``     the audit log, written in the transaction of each change, and read back;
- ``catalogue`` settings and address pools, groups, users, images, slaves;
- ``claims``    choosing a slave in SQL (the policy's one declaration, placement.POLICIES), the claim by
  compare-and-swap on the slave's generation, address pairs and MACs, the claim transaction, release;
- ``bookings``  advance reservations (admission through ``calendar``) and best-effort requests.

The decisions are the pure functions of ``priority``, ``placement``, ``calendar`` and ``preempt``.
"""

from __future__ import annotations

from .audit import actor, audit, audit_log
from .bookings import ACTIVE_BOOKINGS, list_reservations, request, reserve
from .catalogue import (
    add_group,
    add_image,
    add_slave,
    configure,
    ensure_image,
    get_settings,
    init,
    list_groups,
    list_images,
    list_slaves,
    set_slave_status,
)
from .claims import (
    HOLDS_CAPACITY,
    TIE_SAMPLE,
    ClaimPlan,
    StaleClaim,
    allocate_addresses,
    choose_slave,
    claim_slave,
    commit_claim,
    filter_counts,
    list_instances,
    new_claim_plan,
    new_mac,
    release,
    release_addresses,
    release_slave,
    set_suspended,
    slave_state,
    slave_states,
)
from .validate import NAME_RE, check_name, iso, positive, slave_input, whole

__all__ = [
    "ACTIVE_BOOKINGS",
    "HOLDS_CAPACITY",
    "NAME_RE",
    "TIE_SAMPLE",
    "ClaimPlan",
    "StaleClaim",
    "actor",
    "add_group",
    "add_image",
    "add_slave",
    "allocate_addresses",
    "audit",
    "audit_log",
    "check_name",
    "choose_slave",
    "claim_slave",
    "commit_claim",
    "configure",
    "ensure_image",
    "filter_counts",
    "get_settings",
    "init",
    "iso",
    "list_groups",
    "list_images",
    "list_instances",
    "list_reservations",
    "list_slaves",
    "new_claim_plan",
    "new_mac",
    "positive",
    "release",
    "release_addresses",
    "release_slave",
    "request",
    "reserve",
    "set_slave_status",
    "set_suspended",
    "slave_input",
    "slave_state",
    "slave_states",
    "whole",
]
