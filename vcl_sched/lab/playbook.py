"""Run ansible-playbook against a lab and read its PLAY RECAP (the test harness uses it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from vcl_sched.lab._util import LabError

_RECAP_LINE = re.compile(r"^(?P<host>\S+)\s*:\s*(?P<counts>(?:\w+=\d+\s*)+)$")
COUNTERS = ("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored")


@dataclass(frozen=True)
class HostRecap:
    ok: int = 0
    changed: int = 0
    unreachable: int = 0
    failed: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0


@dataclass
class Recap:
    """The outcome of one ansible-playbook run: exit code, per-host counts, full output."""

    rc: int
    hosts: dict[str, HostRecap] = field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""
    argv: list[str] = field(default_factory=list)

    @property
    def changed(self) -> int:
        return sum(h.changed for h in self.hosts.values())

    @property
    def failed(self) -> int:
        return sum(h.failed + h.unreachable for h in self.hosts.values())

    @property
    def ok(self) -> bool:
        """Exit 0, a recap, and no failed or unreachable host."""
        return self.rc == 0 and bool(self.hosts) and self.failed == 0

    def __getitem__(self, host: str) -> HostRecap:
        return self.hosts[host]

    def summary(self) -> str:
        lines = [f"ansible-playbook exit {self.rc}"]
        for host, c in self.hosts.items():
            lines.append(f"  {host}: ok={c.ok} changed={c.changed} unreachable={c.unreachable} failed={c.failed}")
        return "\n".join(lines)


def parse_recap(output: str) -> dict[str, HostRecap]:
    """Per-host counters from the last PLAY RECAP block of ansible-playbook's output."""
    marker = output.rfind("PLAY RECAP")
    if marker < 0:
        return {}
    hosts: dict[str, HostRecap] = {}
    for line in output[marker:].splitlines()[1:]:
        match = _RECAP_LINE.match(line.strip())
        if not match:
            if hosts and line.strip():
                break
            continue
        counts = dict(part.split("=") for part in match.group("counts").split())
        hosts[match.group("host")] = HostRecap(**{k: int(v) for k, v in counts.items() if k in COUNTERS})
    return hosts


def ansible_tool(tool: str) -> str:
    """The Ansible executable next to this Python (the project's venv), else on PATH."""
    beside = Path(sys.executable).parent / tool
    if beside.exists():
        return str(beside)
    found = shutil.which(tool)
    if found is None:
        raise LabError(f"{tool} not found: run scripts/setup.sh (it installs ansible-core into .venv)")
    return found


def run_playbook(
    inventory: str | os.PathLike[str],
    playbook: str | os.PathLike[str],
    *extra_args: str,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 1800,
) -> Recap:
    """``ansible-playbook -i INVENTORY PLAYBOOK EXTRA...``; never raises on a failed play (read the Recap)."""
    argv = [ansible_tool("ansible-playbook"), "-i", str(inventory), str(playbook), *extra_args]
    run_env = dict(os.environ)
    run_env.update(
        {
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default",  # the recap format parse_recap reads
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
        }
    )
    run_env.update(env or {})
    proc = subprocess.run(
        argv, cwd=cwd, env=run_env, text=True, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    return Recap(proc.returncode, parse_recap(proc.stdout), proc.stdout, proc.stderr, argv)
