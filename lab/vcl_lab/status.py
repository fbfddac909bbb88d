"""`vcl lab status`: each machine (role, address, running, ssh, libvirtd) and the bridge and guard."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from vcl_lab import machines, net
from vcl_lab.state import DEFAULT_NAME, LabState


def status(name: str = DEFAULT_NAME, *, probe: bool = True) -> dict:
    """The lab as a JSON-ready dict. ``probe=False`` skips the ssh and libvirtd checks."""
    net.check_name(name)
    state = LabState.load(name)
    if state is None:
        return {"name": name, "exists": False, "machines": [], "healthy": False}
    bridge = {
        "name": state.bridge,
        "exists": net.link_exists(state.bridge),
        "up": net.link_up(state.bridge),
        "ports": net.bridge_ports(state.bridge),
        "guard": net.guard_present(state.bridge),
        "guard_rule": "iptables -I " + " ".join(net.guard_rule(state.bridge)),
    }

    def one(machine) -> dict:
        alive = machines.running(state, machine)
        row = {
            "name": machine.host,
            "role": machine.role,
            "address": machine.address,
            "uplink": machine.uplink,
            "veth": machine.veth,
            "pid": machine.pid if alive else None,
            "running": alive,
            # nspawn gone but the machine's processes still there: `vcl lab up` or `down` cleans it up.
            "crashed": not alive and bool(machines.leftover_pids(state, machine.host)),
            "ssh": None,
            "libvirtd": None,
        }
        if probe and alive:
            row["ssh"] = machines.ssh_answers(state, machine)
            if machine.role == "slave":
                row["libvirtd"] = bool(row["ssh"]) and machines.libvirt_answers(state, machine)
        return row

    order = {"master": 0, "slave": 1, "client": 2}
    members = sorted(state.machines.values(), key=lambda m: (order[m.role], len(m.host), m.host))
    with ThreadPoolExecutor(max_workers=max(1, len(members))) as pool:
        rows = list(pool.map(one, members))
    healthy = (
        bridge["exists"]
        and bridge["guard"]
        and all(r["running"] for r in rows)
        and (not probe or all(r["ssh"] and (r["role"] != "slave" or r["libvirtd"]) for r in rows))
    )
    return {
        "name": state.name,
        "exists": True,
        "healthy": bool(healthy),
        "subnet": state.lan,
        "vm_subnet": state.vm,
        "gateway": str(state.subnets.gateway),
        "bridge": bridge,
        "ssh_key": str(state.key_file),
        "inventory": state.inventories[-1] if state.inventories else None,
        "state_dir": str(state.dir),
        "machines": rows,
    }


def _mark(value) -> str:
    return "-" if value is None else ("yes" if value else "NO")


def format_status(data: dict) -> str:
    if not data["exists"]:
        return f"lab {data['name']}: not up (no state); start it with `vcl lab up --name {data['name']}`"
    br = data["bridge"]
    lines = [
        f"lab {data['name']}: {'healthy' if data['healthy'] else 'NOT healthy'}",
        f"  subnet {data['subnet']} (gateway {data['gateway']}), VM network {data['vm_subnet']}",
        f"  bridge {br['name']}: {'up' if br['up'] else 'down' if br['exists'] else 'missing'}, "
        f"{len(br['ports'])} port(s); guard rule {'present' if br['guard'] else 'MISSING'}",
        f"  inventory {data['inventory']}",
        "",
        f"  {'NAME':<10} {'ROLE':<7} {'ADDRESS':<15} {'RUNNING':<8} {'SSH':<4} LIBVIRTD",
    ]
    for r in data["machines"]:
        lines.append(
            f"  {r['name']:<10} {r['role']:<7} {r['address']:<15} "
            f"{'CRASHED' if r['crashed'] else _mark(r['running']):<8} "
            f"{_mark(r['ssh']):<4} {_mark(r['libvirtd'])}"
        )
    return "\n".join(lines)
