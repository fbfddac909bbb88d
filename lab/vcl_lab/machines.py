"""One lab machine: its overlay root, its own cgroups, its systemd-nspawn process, ssh to it.

Each nspawn starts in its own cgroup (in the named ``systemd`` v1 hierarchy and in the unified
one): with no systemd on the host, ``--keep-unit`` would otherwise put every machine in one
cgroup and their systemds would fight over one tree. Stopping a machine kills whatever is left
in those cgroups, so a machine whose nspawn crashed is still removed completely.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

from vcl_lab import net
from vcl_lab._util import LabError, log, mounted_under, run, write_file
from vcl_lab.image import Images
from vcl_lab.state import LabState, Machine

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: Hierarchies each machine gets its own cgroup in (those that exist on the host).
CGROUP_HIERARCHIES = ("systemd", "unified")

#: Roles whose machines get the libvirt/QEMU layer: slaves, and clients (a client may join the
#: pool as a slave, and test hosts cannot download packages). The master gets the base only.
VIRT_ROLES = ("slave", "client")

SSH_OPTIONS = (
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "BatchMode=yes",
    "-o", "LogLevel=ERROR",
    "-o", "ConnectTimeout=3",
)  # fmt: skip


# --- cgroups ---------------------------------------------------------------------------------------


def cgroup_dirs(name: str) -> list[Path]:
    """The machine's cgroup directories, one per hierarchy the host mounts (not necessarily existing)."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():  # pure cgroup v2 host
        return [CGROUP_ROOT / name]
    return [CGROUP_ROOT / h / name for h in CGROUP_HIERARCHIES if (CGROUP_ROOT / h / "cgroup.procs").exists()]


def cgroup_pids(directory: Path) -> set[int]:
    pids: set[int] = set()
    if not directory.is_dir():
        return pids
    for procs in directory.rglob("cgroup.procs"):
        try:
            pids.update(int(p) for p in procs.read_text().split())
        except OSError:
            continue
    return pids


def remove_cgroup(directory: Path) -> None:
    if not directory.is_dir():
        return
    subdirs = sorted((p for p in directory.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
    for sub in [*subdirs, directory]:
        try:
            sub.rmdir()
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("cannot remove cgroup %s: %s", sub, err)


def _join_cgroups(dirs: list[Path]) -> None:
    """Runs in the forked child before exec: move itself into the machine's cgroups."""
    me = str(os.getpid())
    for directory in dirs:
        with open(directory / "cgroup.procs", "w") as handle:
            handle.write(me)


# --- processes -------------------------------------------------------------------------------------


def pid_alive(pid: int | None) -> bool:
    """True if ``pid`` runs (a zombie does not count)."""
    if not pid:
        return False
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it happens to be our child
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def is_our_nspawn(pid: int | None, root: Path) -> bool:
    if not pid_alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(argv) and argv[0].endswith(b"systemd-nspawn") and str(root).encode() in argv


def running(state: LabState, machine: Machine) -> bool:
    return is_our_nspawn(machine.pid, state.root(machine.host))


# --- overlay root ----------------------------------------------------------------------------------


def mount_root(state: LabState, machine: Machine, images: Images) -> bool:
    """Mount the machine's overlay root if needed; return True if its upper layer is new."""
    mdir = state.machine_dir(machine.host)
    upper, work, root = mdir / "upper", mdir / "work", mdir / "root"
    fresh = not upper.exists()
    for d in (upper, work, root):
        d.mkdir(parents=True, exist_ok=True)
    if root not in mounted_under(root):
        lower = f"{images.slave_layer}:{images.base}" if machine.role in VIRT_ROLES else str(images.base)
        run(["mount", "-t", "overlay", f"vcl-lab-{state.name}-{machine.host}", "-o",
             f"lowerdir={lower},upperdir={upper},workdir={work}", root])  # fmt: skip
    return fresh or not (mdir / "configured").exists()


def configure_root(state: LabState, machine: Machine, *, first_boot: bool) -> None:
    """Write hostname, hosts, root's key and (first boot only) the static address into the machine."""
    root = state.root(machine.host)
    subnets = state.subnets
    write_file(root / "etc/hostname", machine.host + "\n")
    hosts = ["127.0.0.1\tlocalhost", f"127.0.1.1\t{machine.host}", ""]
    hosts += [f"{m.address}\t{m.host}" for m in state.machines.values()]
    write_file(root / "etc/hosts", "\n".join(hosts) + "\n")
    pub = state.key_file.with_suffix(".pub").read_text()
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # The lab's key is added, never written over the file: a machine booted again keeps the keys the roles gave it
    # (the master's key on the slaves, which the master's copies of images and disks use), as a rebooted PC does.
    keys = ssh_dir / "authorized_keys"
    lines = keys.read_text().splitlines() if keys.is_file() and not keys.is_symlink() else []
    if pub.strip() not in (line.strip() for line in lines):
        lines.append(pub.strip())
    write_file(keys, "\n".join(lines) + "\n", 0o600)
    if first_boot:
        # Each machine gets its own ssh host keys (the image's would make every machine look the same).
        for key in (root / "etc/ssh").glob("ssh_host_*"):
            key.unlink()
        run(["ssh-keygen", "-q", "-A", "-f", root])
        # The `network` role manages this file afterwards; the lab writes it only once.
        write_file(
            root / "etc/network/interfaces.d" / machine.uplink,
            "# Written by vcl lab for the first boot; the network role manages it from now on.\n"
            f"auto {machine.uplink}\n"
            f"iface {machine.uplink} inet static\n"
            f"    address {machine.address}/{subnets.lan.prefixlen}\n"
            f"    gateway {subnets.gateway}\n",
        )
        write_file(state.machine_dir(machine.host) / "configured", "")


def umount_root(state: LabState, host: str) -> None:
    root = state.root(host)
    for point in mounted_under(state.machine_dir(host)):
        run(["umount", point], check=False)
        if point in mounted_under(point):
            run(["umount", "-l", point], check=False)
    if root in mounted_under(root):
        raise LabError(f"cannot unmount {root}; see `findmnt {root}`")


# --- start / stop ----------------------------------------------------------------------------------


def start(state: LabState, machine: Machine, nspawn: str) -> int:
    """Start the machine's systemd-nspawn in its own cgroups; return its pid (host side)."""
    name = state.cgroup_name(machine.host)
    dirs = cgroup_dirs(name)
    if not dirs:
        raise LabError(f"no cgroup hierarchy found under {CGROUP_ROOT}; mount cgroupfs first")
    for d in dirs:
        if cgroup_pids(d):
            raise LabError(f"cgroup {d} still has processes; run `vcl lab down --name {state.name}` first")
        d.mkdir(exist_ok=True)
    root = state.root(machine.host)
    argv = [
        nspawn, "-q",
        "-D", str(root),
        "--boot",
        f"--machine={state.name}-{machine.host}",
        f"--hostname={machine.host}",
        "--register=no", "--keep-unit",
        "--private-network",
        f"--network-veth-extra={machine.veth}:{machine.uplink}",
        "--console=passive",
        "--link-journal=no",
        "--resolv-conf=off",
        "--timezone=off",
    ]  # fmt: skip
    log_path = state.machine_dir(machine.host) / "nspawn.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            preexec_fn=lambda: _join_cgroups(dirs),
        )
    return proc.pid


def wait_veth(state: LabState, machine: Machine, pid: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if net.link_exists(machine.veth):
            net.enslave(machine.veth, state.bridge)
            return
        if not pid_alive(pid):
            break
        time.sleep(0.05)
    log_path = state.machine_dir(machine.host) / "nspawn.log"
    tail = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
    raise LabError(f"machine {machine.host}: systemd-nspawn did not create {machine.veth}; {log_path}:\n{tail}")


def signal_machine(state: LabState, machine: Machine, sig: int) -> None:
    if running(state, machine):
        with contextlib.suppress(ProcessLookupError):
            os.kill(machine.pid, sig)  # type: ignore[arg-type]


def leftover_pids(state: LabState, host: str) -> set[int]:
    pids: set[int] = set()
    for d in cgroup_dirs(state.cgroup_name(host)):
        pids |= cgroup_pids(d)
    return pids


def finish_stop(state: LabState, machine: Machine, *, grace: float) -> None:
    """Wait up to ``grace`` s for an orderly exit, then kill what is left, unmount, remove cgroups."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and (running(state, machine) or leftover_pids(state, machine.host)):
        time.sleep(0.1)
    for _ in range(50):
        pids = leftover_pids(state, machine.host)
        if running(state, machine):
            pids.add(machine.pid)  # type: ignore[arg-type]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    else:
        survivors = sorted(leftover_pids(state, machine.host))
        raise LabError(f"machine {machine.host}: processes survive SIGKILL: {survivors}")
    pid_alive(machine.pid)  # reap if it was our child
    for d in cgroup_dirs(state.cgroup_name(machine.host)):
        remove_cgroup(d)
    net.delete_link(machine.veth)
    umount_root(state, machine.host)
    machine.pid = None


# --- ssh -------------------------------------------------------------------------------------------


def ssh_argv(state: LabState, machine: Machine, *command: str, timeout: int = 3) -> list[str]:
    opts = list(SSH_OPTIONS)
    opts[-1] = f"ConnectTimeout={timeout}"
    # The remote side hands the command to a shell: quote each word so the argv arrives intact.
    return ["ssh", *opts, "-i", str(state.key_file), f"root@{machine.address}", "--", shlex.join(command)]


def ssh(state: LabState, machine: Machine, *command: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a command in the machine over ssh (the same path Ansible takes)."""
    return run(ssh_argv(state, machine, *command), check=False, timeout=timeout)


def ssh_answers(state: LabState, machine: Machine) -> bool:
    try:
        return ssh(state, machine, "true", timeout=10).returncode == 0
    except LabError:
        return False


def libvirt_answers(state: LabState, machine: Machine) -> bool:
    try:
        return ssh(state, machine, "virsh", "-c", "qemu:///system", "list", timeout=60).returncode == 0
    except LabError:
        return False


def wait_until(check, timeout: float, interval: float = 0.3) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
