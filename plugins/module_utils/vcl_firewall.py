# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""The master's filter table for VCL (module ``vcl_firewall``): what VMs may reach through and on the master.

Two chains, each the first rule of its built-in chain:

- ``VCL-FORWARD`` (FORWARD, whose policy becomes DROP): replies of tracked connections pass; traffic DNAT'd
  to a VM (a lab host reaching it through its public address) passes; a VM's traffic to the lab's networks is
  dropped; to other VMs, dropped unless peers are allowed; out through the uplink (the outside, masqueraded
  by ``vcl_nat``), accepted; anything else from or to the VMs' network, dropped.
- ``VCL-INPUT`` (INPUT): from the VMs' network, only DHCP, DNS and NTP (and replies of the master's own
  connections); everything else a VM sends to the master (sshd, the database, any port) is dropped. Traffic
  from elsewhere is left to the rest of INPUT.

Rule specs are written exactly as ``iptables-save`` prints them, so planning compares text and a second run
plans nothing (the ``Plan`` of module_utils/vcl_nat.py, here for the filter table).
"""

from __future__ import annotations

import re

from ansible_collections.vcl.lab.plugins.module_utils.vcl_nat import IFNAME_RE, InputError, Plan
from ansible_collections.vcl.lab.plugins.module_utils.vcl_nwfilter import FilterInputError, check_address, check_network

FORWARD_CHAIN = "VCL-FORWARD"
INPUT_CHAIN = "VCL-INPUT"
PARENTS = {"FORWARD": FORWARD_CHAIN, "INPUT": INPUT_CHAIN}
# The master's services VMs use: DHCP (to the broadcast address or the master), DNS and NTP on its VM-side address.
SERVICES = (("udp", 53), ("tcp", 53), ("udp", 123))


def rules(vm_subnet, vm_gateway, lab_networks, uplink, peers: bool = False) -> dict[str, list[str]]:
    """{chain: [rule spec, ...]} for the two VCL chains, from checked values (InputError names a bad one)."""
    try:  # the same checks as the slaves' filter (vcl_nwfilter)
        vm = check_network(vm_subnet, "vm_subnet")
        gateway = check_address(vm_gateway, "vm_gateway")
        labs = [check_network(n, f"lab_networks[{i}]") for i, n in enumerate(lab_networks or [])]
    except FilterInputError as err:
        raise InputError(str(err)) from None
    if gateway not in vm:
        raise InputError(f"vm_gateway: {gateway} is outside vm_subnet {vm}")
    if not isinstance(lab_networks, list | tuple) or not lab_networks:
        raise InputError("lab_networks: at least one network (the lab subnet) is needed")
    for i, lab in enumerate(labs):
        if lab.overlaps(vm):
            raise InputError(f"lab_networks[{i}]: {lab} overlaps vm_subnet {vm}")
    if not IFNAME_RE.match(str(uplink or "")):
        raise InputError(f"uplink: {uplink!r} is not an interface name")

    forward = [
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"-d {vm} -m conntrack --ctstate DNAT -j ACCEPT",
        *(f"-s {vm} -d {lab} -j DROP" for lab in labs),
        f"-s {vm} -d {vm} -j {'ACCEPT' if peers else 'DROP'}",
        f"-s {vm} -o {uplink} -j ACCEPT",
        f"-s {vm} -j DROP",
        f"-d {vm} -j DROP",
    ]
    gw = f"{gateway}/32"
    inbound = [
        f"-s {vm} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"-s {vm} -d {gw} -p udp -m udp --sport 68 --dport 67 -j ACCEPT",
        f"-s {vm} -d 255.255.255.255/32 -p udp -m udp --sport 68 --dport 67 -j ACCEPT",
        *(f"-s {vm} -d {gw} -p {proto} -m {proto} --dport {port} -j ACCEPT" for proto, port in SERVICES),
        f"-s {vm} -j DROP",
    ]
    return {FORWARD_CHAIN: forward, INPUT_CHAIN: inbound}


def policies(save_text: str) -> dict[str, str]:
    """The built-in chains' policies in ``iptables-save -t filter`` output."""
    found = {}
    for line in save_text.splitlines():
        match = re.match(r"^:(INPUT|FORWARD|OUTPUT) (ACCEPT|DROP)\b", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def plan(table: dict[str, list[str]], wanted: dict[str, list[str]], forward_policy: str | None) -> list[list[str]]:
    """The argv lists (after ``iptables -w -t filter``) that bring the filter table to WANTED with FORWARD's
    policy DROP; nothing when it is there already."""
    p = Plan({"INPUT": [], "FORWARD": [], "OUTPUT": [], **table})
    for builtin, chain in PARENTS.items():
        p.chain(chain)
        p.exactly(chain, wanted[chain])
        p.once(builtin, f"-j {chain}", first=True)
        # The jump must be the first rule: an earlier ACCEPT (the admin's, or another tool's) would bypass it.
        if p.table[builtin][0] != f"-j {chain}":
            p._run("-D", builtin, "-j", chain)
            p._run("-I", builtin, "1", "-j", chain)
            p.table[builtin].remove(f"-j {chain}")
            p.table[builtin].insert(0, f"-j {chain}")
    if forward_policy != "DROP":
        p._run("-P", "FORWARD", "DROP")
    return p.commands
