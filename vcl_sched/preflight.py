"""Pre-flight checks of a lab inventory, before site.yml changes any host (kubespray's validate_inventory).

Pure functions over plain data: the `vcl_preflight` action plugin hands them the inventory's groups and
variables, and fails the run with every problem found, each naming the host (or `inventory`) and the field.
The address checks are vcl_sched.config's, which `vcl config set` runs on the database's copy of the lab's
networks (lab_subnet, vm_subnet, the gateways, master_address).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vcl_sched import config
from vcl_sched.errors import ValidationError
from vcl_sched.validate import NAME_RE

DOMAIN_TYPES = ("auto", "kvm", "qemu")


@dataclass(frozen=True)
class Problem:
    where: str  # a host name, or "inventory" for lab-wide variables
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.field}: {self.message}"


def _network(value: Any, where: str, field: str, problems: list[Problem]) -> ipaddress.IPv4Network | None:
    if value in (None, ""):
        problems.append(Problem(where, field, "is not set"))
        return None
    try:
        return config.parse_network(value, field)
    except ValidationError as err:
        problems.append(Problem(where, field, err.message))
        return None


def _address(value: Any, where: str, field: str, problems: list[Problem]) -> ipaddress.IPv4Address | None:
    try:
        return config.parse_host_address(value, field)
    except ValidationError as err:
        problems.append(Problem(where, field, err.message))
        return None


def _pool(value: Any, field: str, problems: list[Problem]) -> tuple[int, int] | None:
    if value in (None, ""):
        problems.append(Problem("inventory", field, "is not set"))
        return None
    try:
        return config.pool_bounds(str(value), field)
    except ValidationError as err:
        problems.append(Problem("inventory", field, err.message))
        return None


def _problem(problems: list[Problem], where: str, field: str, message: str) -> None:
    if message:
        problems.append(Problem(where, field, message))


def check_inventory(
    lab: Mapping[str, Any], hosts: Mapping[str, Mapping[str, Any]], masters: Sequence[str], slaves: Sequence[str]
) -> list[Problem]:
    """Every problem with a lab inventory; an empty list means site.yml may go on.

    ``lab`` holds the lab-wide ``lab_*`` variables; ``hosts`` maps each master and slave to its variables
    (``lab_address`` in CIDR form); ``masters`` and ``slaves`` are the groups' members in inventory order."""
    problems: list[Problem] = []
    if len(masters) != 1:
        found = ", ".join(masters) if masters else "none"
        problems.append(
            Problem("inventory", "vcl_master", f"exactly one master is needed, found {len(masters)} ({found})")
        )

    lan = _network(lab.get("lab_subnet"), "inventory", "lab_subnet", problems)
    vm = _network(lab.get("lab_vm_subnet"), "inventory", "lab_vm_subnet", problems)
    if lan and vm:
        _problem(problems, "inventory", "lab_vm_subnet", config.subnets_overlap_problem(lan, vm, "lab_subnet"))
    reserved: dict[ipaddress.IPv4Address, str] = {}  # addresses no pool may hand out, and whose they are
    for field, net in (("lab_gateway", lan), ("lab_vm_gateway", vm)):
        if lab.get(field) in (None, ""):
            continue
        address = _address(lab[field], "inventory", field, problems)
        if address is not None and net is not None:
            _problem(problems, "inventory", field, config.in_network_problem(address, net))
        if address is not None:
            reserved[address] = f"inventory {field}"

    for host in dict.fromkeys([*masters, *slaves]):
        if not NAME_RE.match(host):
            problems.append(Problem(host, "inventory_hostname", "must be 1-63 letters, digits, '.', '_' or '-'"))
        value = hosts.get(host, {}).get("lab_address")
        if value in (None, ""):
            problems.append(Problem(host, "lab_address", "is not set (the host's static lab address, CIDR)"))
            continue
        try:
            iface = ipaddress.IPv4Interface(str(value))
        except ValueError:
            problems.append(Problem(host, "lab_address", f"{value!r} is not an IPv4 address with prefix (CIDR)"))
            continue
        if lan is not None:
            if iface.ip not in lan or iface.network != lan:
                problems.append(Problem(host, "lab_address", f"{value} is outside the lab subnet {lan}"))
            elif config.edge_address(iface.ip, lan):
                problems.append(Problem(host, "lab_address", f"{iface.ip} is the network or broadcast address"))
        if iface.ip in reserved:
            problems.append(Problem(host, "lab_address", f"{iface.ip} is already used by {reserved[iface.ip]}"))
        else:
            reserved[iface.ip] = f"host {host}"

    private = _pool(lab.get("lab_private_pool"), "lab_private_pool", problems)
    public = _pool(lab.get("lab_public_pool"), "lab_public_pool", problems)
    if private and vm:
        _problem(problems, "inventory", "lab_private_pool", config.pool_outside_problem(private, vm, "lab_vm_subnet"))
    if public and lan:
        _problem(problems, "inventory", "lab_public_pool", config.pool_outside_problem(public, lan, "lab_subnet"))
    if private and public:
        _problem(
            problems, "inventory", "lab_public_pool", config.pools_overlap_problem(private, public, "lab_private_pool")
        )
    for field, bounds in (("lab_private_pool", private), ("lab_public_pool", public)):
        if bounds is None:
            continue
        for address, owner in reserved.items():
            if config.pool_holds(bounds, address):
                where = owner.split(" ", 1)[1] if owner.startswith("host ") else "inventory"
                problems.append(Problem(where, field, f"{config.show_bounds(bounds)} contains {address} ({owner})"))
    try:
        config.parse_mac_prefix(lab.get("lab_mac_prefix", config.DEFAULT_MAC_PREFIX))
    except ValidationError as err:
        problems.append(Problem("inventory", "lab_mac_prefix", err.message))
    domain_type = str(lab.get("lab_domain_type", "auto"))
    if domain_type not in DOMAIN_TYPES:
        problems.append(
            Problem("inventory", "lab_domain_type", f"{domain_type!r}: choose one of {', '.join(DOMAIN_TYPES)}")
        )
    return problems
