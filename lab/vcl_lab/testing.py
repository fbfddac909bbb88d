"""Helpers for tests that drive a lab (tests/lab/conftest.py wraps them in fixtures).

Kept in the package, not in a conftest, so any test directory (role tests, end-to-end tests)
can import them: ``from vcl_lab.testing import Lab, lab_up, run_playbook``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from vcl_lab import net
from vcl_lab import playbook as _playbook
from vcl_lab._util import STATE_ROOT, LabError
from vcl_lab.machines import ssh_argv
from vcl_lab.playbook import HostRecap, Recap, parse_recap
from vcl_lab.state import LabState
from vcl_sched.paths import repo_root

REPO = repo_root() or Path.cwd()


def lab_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """``python -m vcl_lab.cli ARGS`` in a child process, as an admin runs `vcl lab ...`.

    A child process, so the machines' systemd-nspawn processes are not children of the test run."""
    return subprocess.run(
        [sys.executable, "-m", "vcl_lab.cli", *args],
        cwd=REPO,
        text=True,
        capture_output=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@dataclass
class Lab:
    """A running lab: its name, inventory, machines and ssh access."""

    name: str
    inventory: Path
    key_file: Path
    addresses: dict[str, str]  # host -> address
    roles: dict[str, str]  # host -> master | slave | client
    up_output: dict = field(default_factory=dict)

    @property
    def hosts(self) -> list[str]:
        return list(self.addresses)

    def of_role(self, role: str) -> list[str]:
        return [h for h, r in self.roles.items() if r == role]

    def state(self) -> LabState:
        state = LabState.load(self.name)
        if state is None:
            raise LabError(f"lab {self.name} has no state (is it up?)")
        return state

    def ssh(self, host: str, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command on a machine as root over ssh (the path Ansible takes)."""
        state = self.state()
        argv = ssh_argv(state, state.machines[host], *command)
        return subprocess.run(argv, text=True, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def marker(self, public_ip: str, timeout: float = 120) -> str:
        """The test guest's marker (``vcl-guest ready PRIVATE MAC``), read by the client machine through the
        master's DNAT at the VM's public address; an AssertionError with the last error after ``timeout``."""
        probe = ("import socket,sys\ns=socket.create_connection((sys.argv[1],80),3)\ns.settimeout(3)\n"
                 "print(s.recv(200).decode().strip())")
        deadline, last = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            out = self.ssh("client", "python3", "-c", probe, public_ip, timeout=20)
            if out.returncode == 0 and out.stdout.startswith("vcl-guest ready"):
                return out.stdout.strip()
            last = out.stderr.strip()[-200:]
            time.sleep(1)
        raise AssertionError(f"no marker from {public_ip} within {timeout:.0f} s (last: {last})")

    def disk_note(self, public_ip: str, timeout: float = 120) -> tuple[str, int]:
        """The test guest's disk note (``vcl-disk FIRST-MAC BOOTS`` on port 81): the MAC of the disk's first boot
        and how many boots it has seen, read by the client through the master's DNAT."""
        from vcl_lab.guest.initramfs import DISK_PORT, DISK_RE

        probe = ("import socket,sys\ns=socket.create_connection((sys.argv[1],int(sys.argv[2])),3)\ns.settimeout(3)\n"
                 "print(s.recv(200).decode().strip())")
        deadline, last = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            out = self.ssh("client", "python3", "-c", probe, public_ip, str(DISK_PORT), timeout=20)
            match = DISK_RE.search(out.stdout) if out.returncode == 0 else None
            if match:
                return match.group(1), int(match.group(2))
            last = (out.stderr.strip() or out.stdout.strip())[-200:]
            time.sleep(1)
        raise AssertionError(f"no disk note from {public_ip} within {timeout:.0f} s (last: {last})")

    @classmethod
    def from_status(cls, data: dict) -> Lab:
        return cls(
            name=data["name"],
            inventory=Path(data["inventory"]),
            key_file=Path(data["ssh_key"]),
            addresses={m["name"]: m["address"] for m in data["machines"]},
            roles={m["name"]: m["role"] for m in data["machines"]},
            up_output=data,
        )


def lab_up(name: str, slaves: int = 2) -> Lab:
    """`vcl lab up --name NAME --slaves N`; raise LabError with its output when it fails."""
    proc = lab_cli("up", "--name", name, "--slaves", str(slaves), "--json")
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        data = {}
    if proc.returncode != 0 or not data.get("ok"):
        raise LabError(f"`vcl lab up --name {name}` failed (exit {proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
    return Lab.from_status(data)


def lab_down(name: str) -> dict:
    """`vcl lab down --name NAME --json` as a dict with its exit code under ``rc``."""
    proc = lab_cli("down", "--name", name, "--json")
    try:
        return {"rc": proc.returncode, **json.loads(proc.stdout), "stderr": proc.stderr}
    except ValueError:
        return {"rc": proc.returncode, "ok": False, "stdout": proc.stdout, "stderr": proc.stderr}


def run_playbook(lab: Lab, playbook: str | os.PathLike[str], *extra_args: str, **kwargs) -> Recap:
    """``ansible-playbook -i <lab inventory> PLAYBOOK EXTRA...`` from the repository root.

    Returns the Recap: ``recap.hosts["master"].changed``, ``recap.failed``, ``recap.ok``, ``recap.stdout``."""
    return _playbook.run_playbook(lab.inventory, playbook, *extra_args, cwd=REPO, **kwargs)


def host_leftovers(name: str) -> list[str]:
    """What the host still has of lab ``name``, read with the host's own tools (not the lab's code):
    links, mounts, iptables rules, processes, cgroups, state directory."""
    bridge = net.bridge_name(name)
    veth_prefix = "vx-" + bridge.removeprefix("vclbr-") + "-"
    state_dir = str(STATE_ROOT / name)
    left: list[str] = []
    links = subprocess.run(["ip", "-o", "link", "show"], text=True, capture_output=True, check=True).stdout
    for line in links.splitlines():
        ifname = line.split(":")[1].strip().split("@")[0]
        if ifname == bridge or ifname.startswith(veth_prefix):
            left.append(f"link: {line.strip()[:100]}")
    mounts = subprocess.run(["mount"], text=True, capture_output=True, check=True).stdout
    left += [f"mount: {m}" for m in mounts.splitlines() if state_dir + "/" in m]
    rules = subprocess.run(["iptables", "-w", "-S"], text=True, capture_output=True, check=True).stdout
    left += [f"iptables: {r}" for r in rules.splitlines() if bridge in r.split()]
    procs = subprocess.run(["ps", "-eo", "pid=,stat=,args="], text=True, capture_output=True, check=True).stdout
    for line in procs.splitlines():
        fields = line.split(None, 2)
        if len(fields) == 3 and state_dir + "/" in fields[2] and not fields[1].startswith("Z"):
            left.append(f"process: {line.strip()[:120]}")
    for hierarchy in ("systemd", "unified"):
        left += [f"cgroup: {p}" for p in Path("/sys/fs/cgroup", hierarchy).glob(f"vcl-lab-{name}-*")]
    if Path(state_dir).exists():
        left.append(f"state: {state_dir}")
    return left


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class MoleculeRun:
    """One `molecule test` run: exit code, output (no colours) and the PLAY RECAP of each step."""

    rc: int
    output: str
    scenario: str
    steps: dict[str, dict[str, HostRecap]] = field(default_factory=dict)

    def step(self, name: str) -> dict[str, HostRecap]:
        assert name in self.steps, f"molecule never ran the {name} step:\n{self.output}"
        return self.steps[name]

    def succeeded(self, name: str) -> bool:
        return re.search(rf"\[{re.escape(self.scenario)} > {name}\] Executed: Successful", self.output) is not None


def molecule_executable() -> str:
    """molecule next to this Python (the project's venv), else on PATH."""
    beside = Path(sys.executable).parent / "molecule"
    if beside.exists():
        return str(beside)
    found = shutil.which("molecule")
    if found is None:
        raise LabError(
            "molecule is not installed: it is pinned in the `dev` extra of pyproject.toml; run "
            "`.venv/bin/pip install -e '.[postgresql,libvirt,dev,lab]' -e ./lab` (scripts/setup.sh does it)."
        )
    return found


def molecule_env(lab: Lab, ephemeral: Path) -> dict[str, str]:
    """The environment molecule runs in: this venv's Ansible first on PATH, the lab's inventory
    (VCL_LAB_INVENTORY), a per-run ephemeral directory, no colours, nothing MOLECULE_* from outside.

    Molecule writes its own ansible.cfg (ANSIBLE_CONFIG), so the checkout's is not read: its collections path
    comes as ANSIBLE_COLLECTIONS_PATH, which is how the scenarios' plays find the roles, modules and plugins
    (by FQCN, vcl.lab.<name>). No roles or modules by path from the caller's environment."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MOLECULE_") and k not in _playbook.FOREIGN_ANSIBLE_ENV
    }
    env.update(
        {
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
            "ANSIBLE_COLLECTIONS_PATH": _playbook.collections_path(REPO),
            "VCL_LAB_INVENTORY": str(lab.inventory),
            "VCL_REPO": str(REPO),
            "MOLECULE_EPHEMERAL_DIRECTORY": str(ephemeral),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default",  # the recap format parse_recap reads
            "NO_COLOR": "1",
            "PY_COLORS": "0",
        }
    )
    return env


def run_molecule(
    lab: Lab, project: Path, ephemeral: Path, scenario: str = "default", timeout: float = 1200
) -> MoleculeRun:
    """`molecule test --scenario-name SCENARIO` in PROJECT (a role directory) against the lab's machines."""
    proc = subprocess.run(
        [molecule_executable(), "test", "--scenario-name", scenario],
        cwd=project, env=molecule_env(lab, ephemeral),
        text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout,
    )  # fmt: skip
    output = _ANSI.sub("", proc.stdout)
    run = MoleculeRun(rc=proc.returncode, output=output, scenario=scenario)
    for step in ("converge", "idempotence", "verify", "side_effect", "cleanup"):
        start = output.find(f"[{scenario} > {step}] Executing")
        if start < 0:
            continue
        end = output.find(f"[{scenario} > {step}] Executed", start)
        run.steps[step] = parse_recap(output[start : end if end >= 0 else len(output)])
    return run
