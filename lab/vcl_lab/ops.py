"""`up` and `down`: the lab's life cycle. Both are idempotent; `down` also cleans up after a crash."""

from __future__ import annotations

import os
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vcl_lab import guest, image, inventory, machines, net
from vcl_lab._util import (
    STATE_ROOT,
    LabError,
    locked,
    log,
    require_root,
    require_tools,
    run,
    safe_rmtree,
)
from vcl_lab.state import DEFAULT_NAME, LabState, all_labs, cgroup_name, machine_plan, state_dir

HOST_TOOLS = ("debootstrap", "systemd-nspawn", "iptables", "ip", "ssh", "ssh-keygen", "mount", "umount", "chroot")
SSH_TIMEOUT = 90.0
LIBVIRT_TIMEOUT = 90.0


def preflight() -> dict[str, str]:
    """Check root and every host tool; raise LabError naming the fix. Returns the tools' paths."""
    require_root()
    tools = require_tools(*HOST_TOOLS)
    if not Path("/proc/filesystems").read_text().count("overlay"):
        run(["modprobe", "overlay"], check=False)
        if "overlay" not in Path("/proc/filesystems").read_text():
            raise LabError("the kernel has no overlay filesystem; load it with `modprobe overlay`")
    return tools


def _lock(name: str):
    return locked(STATE_ROOT / f".{name}.lock")


def _other_labs(name: str) -> dict[str, net.Subnets]:
    result: dict[str, net.Subnets] = {}
    for other in all_labs():
        if other == name:
            continue
        try:
            st = LabState.load(other)
        except LabError:
            continue
        if st is not None:
            result[other] = st.subnets
    return result


def up(
    name: str = DEFAULT_NAME,
    *,
    slaves: int = 2,
    subnet: str | None = None,
    inventory_dir: Path | None = None,
    wait: bool = True,
    progress=print,
) -> LabState:
    """Build (if needed) and boot the lab; return its state. Running it again is harmless."""
    net.check_name(name)
    tools = preflight()
    images = image.ensure_images(progress=progress)
    guest.ensure_guest(progress=progress)  # the test VM image the inventory declares (lab_images)
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    with _lock(name):
        started = time.monotonic()
        state = LabState.load(name)
        bridge = net.bridge_name(name)
        if state is None:
            # One lab at a time picks a subnet, so two concurrent `up`s never pick the same pair.
            with locked(STATE_ROOT / ".subnets.lock"):
                others = _other_labs(name)
                subnets = net.choose_subnets(name, requested=subnet, other_labs=others, own_bridge=bridge)
                state = LabState(name=name, lan=str(subnets.lan), vm=str(subnets.vm), bridge=bridge)
                state.dir.mkdir(parents=True, exist_ok=True)
                os.chmod(state.dir, 0o700)
                state.save()
        elif subnet and subnet != state.lan:
            raise LabError(f"lab {name} already uses {state.lan}; `vcl lab down --name {name}` to change its subnet")
        else:
            # Our own earlier state: the subnet must still be ours (nothing else took it meanwhile).
            net.choose_subnets(name, requested=state.lan, other_labs=_other_labs(name), own_bridge=bridge)
        state.images = {"base": str(images.base), "slave_layer": str(images.slave_layer)}
        wanted = machine_plan(name, state.subnets, slaves)
        # Record everything before creating it, so `down` can always clean up.
        for host, machine in wanted.items():
            if host in state.machines:
                machine.pid = state.machines[host].pid
        extra = {h: m for h, m in state.machines.items() if h not in wanted}
        state.machines = {**wanted, **extra}
        state.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(state.dir, 0o700)
        state.save()

        if not state.key_file.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"vcl-lab-{name}", "-f", state.key_file])

        sub = state.subnets
        net.ensure_bridge(state.bridge, sub.gateway, sub.lan.prefixlen)
        net.ensure_guard(state.bridge)

        # Machines no longer wanted (fewer --slaves than before) are stopped and removed.
        for host, machine in extra.items():
            progress(f"removing {host}")
            _stop_machines(state, [machine])
            safe_rmtree(state.machine_dir(host))
            del state.machines[host]
        state.machines = wanted
        state.save()

        to_start = [m for m in wanted.values() if not machines.running(state, m)]
        for machine in to_start:
            _clear_leftovers(state, machine)
            first = machines.mount_root(state, machine, images)
            machines.configure_root(state, machine, first_boot=first)
        for machine in to_start:
            machine.pid = machines.start(state, machine, tools["systemd-nspawn"])
            state.save()
        for machine in to_start:
            machines.wait_veth(state, machine, machine.pid)  # type: ignore[arg-type]
        for machine in wanted.values():  # veths of running machines too (bridge re-created?)
            if net.link_exists(machine.veth) and machine.veth not in net.bridge_ports(state.bridge):
                net.enslave(machine.veth, state.bridge)
        if to_start:
            progress(f"started {', '.join(m.host for m in to_start)} ({time.monotonic() - started:.1f} s)")

        inv_dir = inventory_dir or inventory.default_inventory_dir(name)
        path = inventory.write(state, inv_dir)
        if str(path) not in state.inventories:
            state.inventories.append(str(path))
        state.save()
        progress(f"inventory: {path}")

    if wait:
        wait_ready(state, progress=progress)
        progress(f"lab {name} is up ({time.monotonic() - started:.1f} s)")
    return state


def wait_ready(state: LabState, *, progress=print) -> None:
    """Wait until every machine answers ssh and every slave's libvirtd answers."""
    started = time.monotonic()

    def ssh_ready(machine) -> bool:
        return machines.wait_until(lambda: machines.ssh_answers(state, machine), SSH_TIMEOUT)

    with ThreadPoolExecutor(max_workers=max(1, len(state.machines))) as pool:
        results = dict(zip(state.machines, pool.map(ssh_ready, state.machines.values()), strict=True))
    late = [h for h, ok in results.items() if not ok]
    if late:
        raise LabError(
            f"no ssh answer within {SSH_TIMEOUT:.0f} s from {', '.join(late)}; see "
            f"{state.dir}/machines/<host>/nspawn.log and `vcl lab status --name {state.name}`"
        )
    progress(f"ssh answers on every machine ({time.monotonic() - started:.1f} s)")
    slaves = [m for m in state.machines.values() if m.role == "slave"]
    if not slaves:
        return

    def virt_ready(machine) -> bool:
        return machines.wait_until(lambda: machines.libvirt_answers(state, machine), LIBVIRT_TIMEOUT, 1.0)

    with ThreadPoolExecutor(max_workers=len(slaves)) as pool:
        ok = dict(zip((m.host for m in slaves), pool.map(virt_ready, slaves), strict=True))
    late = [h for h, good in ok.items() if not good]
    if late:
        raise LabError(f"libvirtd does not answer within {LIBVIRT_TIMEOUT:.0f} s on {', '.join(late)}")
    progress(f"libvirtd answers on every slave ({time.monotonic() - started:.1f} s)")


def _clear_leftovers(state: LabState, machine) -> None:
    """A machine that is not running may still have processes, a veth or a mount from a crash."""
    if machines.leftover_pids(state, machine.host) or machine.pid:
        machines.finish_stop(state, machine, grace=0)
    for d in machines.cgroup_dirs(state.cgroup_name(machine.host)):
        machines.remove_cgroup(d)
    net.delete_link(machine.veth)


def _stop_machines(state: LabState, members: list, grace: float = 15.0) -> None:
    for machine in members:
        # SIGTERM makes nspawn ask the machine's systemd for an orderly shutdown (SIGRTMIN+3).
        machines.signal_machine(state, machine, signal.SIGTERM)
    if not members:
        return
    # A machine whose nspawn is gone (crash) has nobody to shut it down in order: kill it at once.
    graces = {m.host: grace if machines.running(state, m) else 0.0 for m in members}
    with ThreadPoolExecutor(max_workers=len(members)) as pool:
        list(pool.map(lambda m: machines.finish_stop(state, m, grace=graces[m.host]), members))


def down(name: str = DEFAULT_NAME, *, progress=print, grace: float = 15.0) -> dict:
    """Remove every machine, mount, veth, cgroup, the bridge, the guard rule, the inventory and the state.

    Works from the state file, and from the names derived from ``name`` when the state is gone.
    Returns a summary of what was removed.
    """
    net.check_name(name)
    require_root()
    require_tools("ip", "iptables", "umount")
    summary: dict = {"name": name, "machines": [], "inventories": [], "existed": False}
    if not STATE_ROOT.exists():
        STATE_ROOT.mkdir(parents=True, exist_ok=True)
    with _lock(name):
        started = time.monotonic()
        state = None
        try:
            state = LabState.load(name)
        except LabError as err:
            log.warning("%s; cleaning up from derived names", err)
        bridge = net.bridge_name(name)
        if state is None:
            state = LabState(name=name, lan="0.0.0.0/32", vm="0.0.0.0/32", bridge=bridge)
            # Machines we do not know about from a lost state file: find their cgroups and roots.
            hosts = set()
            for h in ("systemd", "unified"):
                for d in (machines.CGROUP_ROOT / h).glob(cgroup_name(name, "*")):
                    hosts.add(d.name.removeprefix(cgroup_name(name, "")))
            mdir = state_dir(name) / "machines"
            if mdir.is_dir():
                hosts |= {p.name for p in mdir.iterdir()}
            for host in sorted(hosts):
                state.machines[host] = _unknown(name, host)
        else:
            summary["existed"] = True
        _stop_machines(state, list(state.machines.values()), grace=grace)
        summary["machines"] = sorted(state.machines)
        for br in {state.bridge, bridge}:
            for port in net.bridge_ports(br):
                if port.startswith("vx-"):
                    net.delete_link(port)
            net.delete_link(br)
            net.remove_guard(br)
        summary["inventories"] = inventory.remove(state)
        safe_rmtree(state.dir)
        summary["existed"] = summary["existed"] or bool(summary["machines"])
        summary["seconds"] = round(time.monotonic() - started, 2)
    lock = STATE_ROOT / f".{name}.lock"
    lock.unlink(missing_ok=True)
    progress(f"lab {name} is down ({summary['seconds']} s)")
    return summary


def _unknown(name: str, host: str):
    from vcl_lab.state import Machine

    return Machine(host=host, role="client", address="", uplink="eth0", veth=net.veth_name(name, host))


def is_clean(name: str = DEFAULT_NAME) -> list[str]:
    """What is left of lab ``name`` on the host (empty when nothing): links, mounts, rules, cgroups,
    processes, state. The tests and `status` use it."""
    leftovers: list[str] = []
    bridge = net.bridge_name(name)
    prefix = f"vx-{bridge.removeprefix('vclbr-')}-"
    for link in Path("/sys/class/net").iterdir():
        if link.name == bridge or link.name.startswith(prefix):
            leftovers.append(f"link {link.name}")
    sdir = state_dir(name)
    from vcl_lab._util import mounted_under

    leftovers += [f"mount {p}" for p in mounted_under(sdir)]
    if shutil.which("iptables") or Path("/usr/sbin/iptables").exists():
        rules = run(["iptables", "-w", "-S"], check=False).stdout
        leftovers += [f"iptables {r}" for r in rules.splitlines() if bridge in r.split()]
    for h in ("systemd", "unified", ""):
        base = machines.CGROUP_ROOT / h if h else machines.CGROUP_ROOT
        leftovers += [f"cgroup {d}" for d in base.glob(cgroup_name(name, "*"))]
    needle = str(sdir).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if needle + b"/" in cmdline and int(proc.name) != os.getpid():
            shown = cmdline.replace(b"\0", b" ").decode(errors="replace")[:120]
            leftovers.append(f"process {proc.name}: {shown}")
    if sdir.exists():
        leftovers.append(f"state {sdir}")
    return leftovers
