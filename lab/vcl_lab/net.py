"""The lab's host-side network: names, subnets, the bridge, its guard rule and the machines' veths.

Names are derived from the lab name and fit Linux's 15-character interface limit. A lab owns a
pair of /24s inside 10.213.0.0/16 (the LAN, then the VMs' private network); the first pair tried
is derived from the name (``vcl<k>`` starts at 10.213.2k.0), and pairs that anything on the host
already routes or that another lab holds are skipped.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path

from vcl_lab._util import LabError, run

SUPERNET = ipaddress.IPv4Network("10.213.0.0/16")
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")
IFNAMSIZ = 15


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise LabError(f"lab name {name!r}: use 1-12 lower-case letters and digits, starting with a letter (e.g. vcl0)")
    return name


def _short(name: str) -> str:
    """At most 6 characters that identify the lab in interface names."""
    if len(name) <= 6:
        return name
    return name[:2] + hashlib.sha256(name.encode()).hexdigest()[:4]


def bridge_name(name: str) -> str:
    result = f"vclbr-{_short(name)}"
    assert len(result) <= IFNAMSIZ
    return result


def machine_tag(host: str) -> str:
    """master → m, slave12 → s12, client → c."""
    if host == "master":
        return "m"
    if host == "client":
        return "c"
    match = re.fullmatch(r"slave(\d+)", host)
    if match:
        return "s" + match.group(1)
    return hashlib.sha256(host.encode()).hexdigest()[:3]


def veth_name(name: str, host: str) -> str:
    result = f"vx-{_short(name)}-{machine_tag(host)}"
    if len(result) > IFNAMSIZ:
        raise LabError(f"interface name {result!r} exceeds {IFNAMSIZ} characters; use a shorter lab name")
    return result


@dataclass(frozen=True)
class Subnets:
    lan: ipaddress.IPv4Network  # hosts' static addresses; the host bridge is .1
    vm: ipaddress.IPv4Network  # VMs' private network behind the master

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.lan.network_address + 1

    def host(self, last_octet: int) -> ipaddress.IPv4Address:
        return self.lan.network_address + last_octet

    def vm_host(self, last_octet: int) -> ipaddress.IPv4Address:
        return self.vm.network_address + last_octet


def _pair(index: int) -> Subnets:
    base = int(SUPERNET.network_address) + index * 2 * 256
    return Subnets(
        ipaddress.IPv4Network((base, 24)),
        ipaddress.IPv4Network((base + 256, 24)),
    )


PAIRS = SUPERNET.num_addresses // 512  # 128 pairs of /24


def preferred_index(name: str) -> int:
    match = re.fullmatch(r"vcl(\d+)", name)
    if match and int(match.group(1)) < PAIRS:
        return int(match.group(1))
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % PAIRS


def host_networks(exclude_dev: str | None = None) -> list[tuple[ipaddress.IPv4Network, str]]:
    """Every IPv4 network the host has an address in or a route to, with the device (or table)."""
    used: list[tuple[ipaddress.IPv4Network, str]] = []
    addrs = json.loads(run(["ip", "-4", "-j", "addr", "show"]).stdout or "[]")
    for link in addrs:
        dev = link.get("ifname", "?")
        if dev == exclude_dev:
            continue
        for info in link.get("addr_info", []):
            net = ipaddress.IPv4Network(f"{info['local']}/{info.get('prefixlen', 32)}", strict=False)
            used.append((net, f"address {info['local']}/{info.get('prefixlen')} on {dev}"))
    routes = json.loads(run(["ip", "-4", "-j", "route", "show", "table", "all"]).stdout or "[]")
    for route in routes:
        dst, dev = route.get("dst", ""), route.get("dev", "")
        if dst in ("", "default") or dev == exclude_dev:
            continue
        try:
            net = ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False)
        except ValueError:
            continue
        used.append((net, f"route {dst} dev {dev or '?'}"))
    return used


def _conflict(subnets: Subnets, used: list[tuple[ipaddress.IPv4Network, str]]) -> str | None:
    for net, what in used:
        if net.prefixlen == 0:
            continue
        if net.overlaps(subnets.lan) or net.overlaps(subnets.vm):
            return what
    return None


def choose_subnets(
    name: str,
    *,
    requested: str | None,
    other_labs: dict[str, Subnets],
    own_bridge: str,
) -> Subnets:
    """The lab's subnet pair: the requested one (checked), else the first free pair from the name's."""
    used = host_networks(exclude_dev=own_bridge)
    for lab, nets in other_labs.items():
        used.append((nets.lan, f"lab {lab}"))
        used.append((nets.vm, f"lab {lab}"))
    if requested:
        try:
            lan = ipaddress.IPv4Network(requested)
        except ValueError as err:
            raise LabError(f"--subnet {requested}: {err}") from err
        if lan.prefixlen != 24:
            raise LabError(f"--subnet {requested}: give a /24 (the VMs' network is the next /24)")
        subnets = Subnets(lan, ipaddress.IPv4Network((int(lan.network_address) + 256, 24)))
        what = _conflict(subnets, used)
        if what:
            raise LabError(
                f"subnets {subnets.lan} + {subnets.vm} for lab {name} are already used on this machine "
                f"({what}); pick another --subnet or bring that down"
            )
        return subnets
    start = preferred_index(name)
    taken: list[str] = []
    for step in range(PAIRS):
        subnets = _pair((start + step) % PAIRS)
        what = _conflict(subnets, used)
        if what is None:
            return subnets
        taken.append(f"{subnets.lan} ({what})")
    raise LabError(
        f"no free pair of /24 subnets left in {SUPERNET} for lab {name} (all taken, first: {taken[:3]}); "
        "bring another lab down or pass --subnet"
    )


# --- bridge and guard -------------------------------------------------------------------------------


def link_exists(ifname: str) -> bool:
    return Path("/sys/class/net", ifname).exists()


def ensure_bridge(bridge: str, gateway: ipaddress.IPv4Address, prefixlen: int) -> None:
    if not link_exists(bridge):
        run(["ip", "link", "add", bridge, "type", "bridge", "forward_delay", "0", "stp_state", "0"])
    addr = f"{gateway}/{prefixlen}"
    current = json.loads(run(["ip", "-4", "-j", "addr", "show", "dev", bridge]).stdout or "[]")
    have = {f"{a['local']}/{a['prefixlen']}" for link in current for a in link.get("addr_info", [])}
    if addr not in have:
        run(["ip", "addr", "add", addr, "dev", bridge])
    run(["ip", "link", "set", bridge, "up"])
    # Stale neighbour entries would keep an old MAC for a reused address.
    run(["ip", "neigh", "flush", "dev", bridge], check=False)


def delete_link(ifname: str) -> None:
    if link_exists(ifname):
        run(["ip", "link", "delete", ifname], check=False)


def guard_rule(bridge: str) -> list[str]:
    """The FORWARD rule that keeps lab traffic on the machine (without the -I/-C/-D verb)."""
    return ["FORWARD", "-i", bridge, "!", "-o", bridge, "-j", "DROP"]


def guard_present(bridge: str) -> bool:
    return run(["iptables", "-w", "-C", *guard_rule(bridge)], check=False).returncode == 0


def ensure_guard(bridge: str) -> None:
    if not guard_present(bridge):
        run(["iptables", "-w", "-I", *guard_rule(bridge)])


def remove_guard(bridge: str) -> None:
    for _ in range(32):  # exactly our rule, however many copies an interrupted run left
        if not guard_present(bridge):
            return
        run(["iptables", "-w", "-D", *guard_rule(bridge)])


def enslave(ifname: str, bridge: str) -> None:
    run(["ip", "link", "set", ifname, "master", bridge])
    run(["ip", "link", "set", ifname, "up"])


def bridge_ports(bridge: str) -> list[str]:
    brif = Path("/sys/class/net", bridge, "brif")
    return sorted(p.name for p in brif.iterdir()) if brif.is_dir() else []


def link_up(ifname: str) -> bool:
    try:
        return bool(int(Path("/sys/class/net", ifname, "flags").read_text(), 16) & 0x1)  # IFF_UP
    except OSError:
        return False
