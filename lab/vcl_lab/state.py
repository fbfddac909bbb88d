"""A lab's state file (``STATE_ROOT/<name>/state.json``): what `down` removes, even after a crash.

Everything is recorded *before* it is created, so an interrupted `up` leaves a state file that
names every bridge, rule, cgroup, mount and process it may have made.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vcl_lab import net
from vcl_lab._util import STATE_ROOT, LabError, write_file

DEFAULT_NAME = "vcl0"
STATE_VERSION = 1

MASTER_OCTET = 10
SLAVE_OCTET = 20  # slaveN gets .20+N
CLIENT_OCTET = 50
MAX_SLAVES = CLIENT_OCTET - SLAVE_OCTET - 1


@dataclass
class Machine:
    host: str  # inventory hostname (and the hostname inside)
    role: str  # master | slave | client
    address: str  # 10.213.0.10 (no prefix)
    uplink: str  # interface name inside the machine
    veth: str  # host-side veth, enslaved in the lab bridge
    pid: int | None = None  # the systemd-nspawn process

    @property
    def group(self) -> str:
        return {"master": "vcl_master", "slave": "vcl_slaves", "client": "vcl_clients"}[self.role]


@dataclass
class LabState:
    name: str
    lan: str
    vm: str
    bridge: str
    machines: dict[str, Machine] = field(default_factory=dict)
    inventories: list[str] = field(default_factory=list)  # hosts.yml files `up` wrote
    images: dict[str, str] = field(default_factory=dict)
    version: int = STATE_VERSION

    # --- derived paths and values -----------------------------------------------------------------
    @property
    def dir(self) -> Path:
        return state_dir(self.name)

    @property
    def key_file(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def subnets(self) -> net.Subnets:
        return net.Subnets(ipaddress.IPv4Network(self.lan), ipaddress.IPv4Network(self.vm))

    def machine_dir(self, host: str) -> Path:
        return self.dir / "machines" / host

    def root(self, host: str) -> Path:
        return self.machine_dir(host) / "root"

    def cgroup_name(self, host: str) -> str:
        return cgroup_name(self.name, host)

    # --- persistence -----------------------------------------------------------------------------
    def save(self) -> None:
        data = asdict(self)
        write_file(self.dir / "state.json", json.dumps(data, indent=2, sort_keys=True) + "\n", 0o600)

    @classmethod
    def load(cls, name: str) -> LabState | None:
        path = state_dir(name) / "state.json"
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            machines = {h: Machine(**m) for h, m in data.pop("machines", {}).items()}
            return cls(machines=machines, **data)
        except (ValueError, TypeError) as err:
            raise LabError(f"{path} is unreadable ({err}); remove the lab with `vcl lab down --name {name}`") from err


def state_dir(name: str) -> Path:
    return STATE_ROOT / name


def cgroup_name(lab: str, host: str) -> str:
    return f"vcl-lab-{lab}-{host}"


def all_labs() -> list[str]:
    if not STATE_ROOT.is_dir():
        return []
    return sorted(p.name for p in STATE_ROOT.iterdir() if (p / "state.json").is_file())


def machine_plan(state_name: str, subnets: net.Subnets, slaves: int) -> dict[str, Machine]:
    """The machines of a lab with ``slaves`` slaves: master, slave1..N, client."""
    if not 0 <= slaves <= MAX_SLAVES:
        raise LabError(f"--slaves {slaves}: give 0 to {MAX_SLAVES}")
    plan: list[tuple[str, str, int]] = [("master", "master", MASTER_OCTET)]
    plan += [(f"slave{i}", "slave", SLAVE_OCTET + i) for i in range(1, slaves + 1)]
    plan.append(("client", "client", CLIENT_OCTET))
    return {
        host: Machine(
            host=host,
            role=role,
            address=str(subnets.host(octet)),
            uplink="eth0",
            veth=net.veth_name(state_name, host),
        )
        for host, role, octet in plan
    }
