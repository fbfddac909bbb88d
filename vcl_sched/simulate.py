"""A dispatch run with every host step succeeding: the lab database as the playbooks would leave it.

``run_dispatch`` does, in the database only, what ``dispatch.yml`` does with the hosts: start what is due,
stop what expired, suspend, launch (lease, claim, running) and resume, in that order, each step through
the same lifecycle functions the playbooks' ``vcl.lab.vcl_instance`` tasks call. It is how a week of the
lab is simulated (``bench/week.py``) and how the model test drives the scheduler: the decisions are the
real ones; only libvirt, dhcpd and iptables are left out. Set the clock with ``VCL_NOW``.

``fail`` (an instance id → bool callable) makes a launch's host steps fail for chosen instances: the launch
then undoes its claim, as launch.yml's rescue does, and the instance is recorded failed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from . import lifecycle
from .errors import CapacityError, ConflictError


def run_dispatch(now: datetime | None = None, url: str | None = None,
                 fail: Callable[[int], bool] | None = None) -> dict[str, Any]:
    started = lifecycle.start_due_reservations(now, url)
    plan = lifecycle.dispatch_plan(now, url)
    done: dict[str, Any] = {"started": started, "plan": plan, "stopped": [], "suspended": [], "launched": [],
                            "waiting": [], "failed": [], "resumed": [], "refused": []}
    for iid in plan["stop"]:
        lifecycle.stop(iid, url=url)
        done["stopped"].append(iid)
    for iid in plan["suspend"]:
        lifecycle.suspended(iid, True, url)
        done["suspended"].append(iid)
    for iid in plan["launch"]:
        taken = lifecycle.lease(iid, url)
        token = taken["lease"]
        if token is None:
            done["refused"].append((iid, taken["refused"]))
            continue
        try:
            lifecycle.place(iid, url=url, lease_token=token)
        except (CapacityError, ConflictError) as err:
            lifecycle.unlease(iid, token, str(err), url)
            done["waiting"].append(iid)
            continue
        if fail is not None and fail(iid):
            lifecycle.unplace(iid, "simulated host failure", url, lease_token=token, net_clean=True)
            lifecycle.mark_failed(iid, "simulated host failure", url, lease_token=token, net_clean=True)
            done["failed"].append(iid)
            continue
        lifecycle.mark_running(iid, url=url, lease_token=token)
        done["launched"].append(iid)
    for iid in plan["resume"]:
        try:
            lifecycle.suspended(iid, False, url)
        except CapacityError:
            continue
        done["resumed"].append(iid)
    return done


def stop_now(instance_id: int, url: str | None = None) -> dict[str, Any]:
    """What ``vcl stop ID`` leaves in the database once the hosts' steps succeeded."""
    return lifecycle.stop(instance_id, url=url)
