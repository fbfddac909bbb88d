"""Run ansible-playbook against a lab and read its PLAY RECAP (the test harness uses it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from vcl_lab._util import LabError
from vcl_sched import runner
from vcl_sched.paths import repo_root

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


# Settings that would name Ansible content by path, or another configuration, from the caller's environment:
# the checkout's ansible.cfg names everything (the collection vcl.lab through its collections_path).
FOREIGN_ANSIBLE_ENV = (
    "ANSIBLE_CONFIG",
    "ANSIBLE_ROLES_PATH",
    "ANSIBLE_LIBRARY",
    "ANSIBLE_MODULE_UTILS",
    "ANSIBLE_ACTION_PLUGINS",
    "ANSIBLE_FILTER_PLUGINS",
    "ANSIBLE_INVENTORY_PLUGINS",
    "ANSIBLE_COLLECTIONS_PATH",
    "ANSIBLE_COLLECTIONS_PATHS",
)


def collections_path(root: Path) -> str:
    """ANSIBLE_COLLECTIONS_PATH for a checkout at ``root``, for runs that do not read its ansible.cfg (molecule):
    the collections path the checkout's ansible.cfg names (collections/, where vcl.lab links to the checkout,
    then Ansible's usual places), as the `vcl` command's playbook runs compute it."""
    return os.pathsep.join(str(path) for path in runner.collections_path(root))


def run_playbook(
    inventory: str | os.PathLike[str],
    playbook: str | os.PathLike[str],
    *extra_args: str,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 1800,
) -> Recap:
    """``ansible-playbook -i INVENTORY PLAYBOOK EXTRA...`` in ``cwd`` (default: the checkout), with that
    directory's ansible.cfg (an ANSIBLE_CONFIG or content path from the caller's environment does not count;
    ``env`` may still set them). Never raises on a failed play (read the Recap)."""
    if cwd is None:
        cwd = repo_root() or Path.cwd()
    argv = [ansible_tool("ansible-playbook"), "-i", str(inventory), str(playbook), *extra_args]
    run_env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ANSIBLE_ENV}
    config = Path(cwd) / "ansible.cfg"
    if config.is_file():
        run_env["ANSIBLE_CONFIG"] = str(config)
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
