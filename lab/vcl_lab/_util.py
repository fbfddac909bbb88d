"""Small helpers shared by the lab modules: paths, subprocess calls, locks, tool checks."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from vcl_sched.errors import VclError

log = logging.getLogger("vcl_lab")

#: Where the debootstrap images are cached (built once, shared by every lab).
CACHE_DIR = Path(os.environ.get("VCL_LAB_CACHE", "/var/cache/vcl-lab"))
#: Where each lab keeps its runtime state: ``STATE_ROOT/<name>/``.
STATE_ROOT = Path(os.environ.get("VCL_LAB_STATE", "/var/lib/vcl-lab"))

#: The project's apt list for the lab (named in error messages).
APT_LIST = "requirements/apt-lab.txt"


class LabError(VclError):
    """The lab cannot be built, started or stopped; the message names the fix."""


# Which Debian package provides each host tool the lab runs.
_TOOL_PACKAGES = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "iptables": "iptables",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "mount": "mount",
    "umount": "mount",
    "chroot": "coreutils",
}


def require_tools(*tools: str) -> dict[str, str]:
    """Return ``{tool: absolute path}``; raise one LabError naming every missing tool and its package."""
    found: dict[str, str] = {}
    missing: list[str] = []
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
    for tool in tools:
        path = shutil.which(tool, path=search)
        if path is None:
            missing.append(tool)
        else:
            found[tool] = path
    if missing:
        packages = sorted({_TOOL_PACKAGES.get(t, t) for t in missing})
        raise LabError(
            f"missing host tool(s): {', '.join(missing)}; install them with "
            f"`apt-get install {' '.join(packages)}` (every package the lab needs is in {APT_LIST})"
        )
    return found


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the simulated lab needs root (mounts, network namespaces, cgroups): run it as root")


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run an argv list (never a shell string). On failure raise LabError with the command and its stderr."""
    argv = [str(a) for a in argv]
    log.debug("run: %s", argv)
    try:
        proc = subprocess.run(
            argv,
            check=False,
            text=True,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            stdin=subprocess.DEVNULL if input_text is None else None,
            input=input_text,
            timeout=timeout,
            env=env,
        )
    except FileNotFoundError as err:
        raise LabError(f"{argv[0]}: not found ({err}); install the packages in {APT_LIST}") from err
    except subprocess.TimeoutExpired as err:
        raise LabError(f"`{' '.join(argv)}` did not finish within {timeout} s") from err
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip()
        raise LabError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): {detail[-2000:]}")
    return proc


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if missing) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def mounted_under(prefix: Path) -> list[Path]:
    """Mount points at or below ``prefix`` (deepest first), read from /proc/self/mountinfo."""
    prefix_s = str(prefix).rstrip("/")
    points: list[Path] = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            mount_point = line.split()[4].encode().decode("unicode_escape")
            if mount_point == prefix_s or mount_point.startswith(prefix_s + "/"):
                points.append(Path(mount_point))
    return sorted(set(points), key=lambda p: len(p.parts), reverse=True)


def umount_all_under(prefix: Path) -> None:
    for point in mounted_under(prefix):
        run(["umount", point], check=False)
        if point in mounted_under(point):
            run(["umount", "-l", point], check=False)


def safe_rmtree(path: Path) -> None:
    """Remove a directory tree, refusing if anything is still mounted inside it."""
    if not path.exists():
        return
    umount_all_under(path)
    still = mounted_under(path)
    if still:
        raise LabError(f"cannot remove {path}: still mounted: {', '.join(map(str, still))}")
    shutil.rmtree(path)


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".vcl-tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)
