"""The lab's root filesystems: one debootstrap base image and a libvirt/QEMU layer on top of it
for slaves (and clients, which may join the pool as slaves; see machines.VIRT_ROLES).

Both are built once and cached under ``CACHE_DIR``, keyed on a hash of their package lists and
of the recipe version, so a changed package list builds a new image and an unchanged one is
reused. Test hosts have no route off the machine: every package a role installs must be here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from vcl_lab._util import CACHE_DIR, LabError, locked, log, require_tools, run, safe_rmtree, write_file

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
#: Bump when the build steps change (not only the package lists): it is part of the cache key.
RECIPE_VERSION = 1

#: Every package the roles install on any host (master, slave, client).
BASE_PACKAGES: tuple[str, ...] = (
    "python3",
    "python3-apt",
    "openssh-server",
    "chrony",
    "isc-dhcp-server",
    "isc-dhcp-client",
    "iptables",
    "iproute2",
    "ifupdown",
    "bridge-utils",
    "procps",
    "iputils-ping",
    "busybox",
    "sudo",
    "systemd",
    "systemd-sysv",
    "dbus",
    "kmod",
    "ca-certificates",
    "netcat-openbsd",
    # nat role: netfilter-persistent restores the saved rules when the firewall service restarts.
    "iptables-persistent",
    # vcl_master role: the vcl package goes into a venv on the master from a controller-built wheelhouse.
    "python3-venv",
    # launches copy images from the master's image store into the slaves' caches.
    "rsync",
    # vcl_master role: the master checks kept disks and flattens captured ones with qemu-img (SPEC §10).
    "qemu-utils",
    # vcl_master role, the web portal: noVNC (the browser's console client, which pulls nodejs and numpy in),
    # websockify (the console proxy; python3-websockify holds its code), openssl (the portal's certificates).
    "novnc",
    "websockify",
    "python3-websockify",
    "python3-numpy",
    # websockify's python3-jwcrypto needs python3-cryptography, whose python3-cffi-backend-api-* dependencies are
    # virtual packages debootstrap does not resolve: name their provider.
    "python3-cffi-backend",
    "openssl",
)

#: The slaves' layer: libvirt + QEMU (software emulation), installed without recommends
#: (which would pull a desktop stack, Xen and LXC drivers) plus the two recommends we use.
SLAVE_PACKAGES: tuple[str, ...] = (
    "libvirt-daemon-system",
    "libvirt-daemon-driver-qemu",
    "libvirt-clients",
    "qemu-system-x86",
    "qemu-utils",
    "python3-libvirt",
    "dnsmasq-base",
    "libxml2-utils",
)

# chrony may serve time and select sources inside a machine but never steer the host's clock
# (machines share it, and CAP_SYS_TIME is not there): the unit's capability condition is
# cleared and chronyd runs with -x. This is the lab's doing, not a role's.
_CHRONY_DROPIN = """\
# Written by vcl lab: nspawn machines share the host clock and lack CAP_SYS_TIME.
[Unit]
ConditionCapability=

[Service]
ExecStart=
ExecStart=!/usr/sbin/chronyd $DAEMON_OPTS -x
"""

_INTERFACES = """\
# Written by vcl lab. Per-interface files live in /etc/network/interfaces.d/.
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback
"""

_QEMU_CONF_MARK = "# vcl lab: cgroup v1 controllers are read-only inside an nspawn machine"


@dataclass(frozen=True)
class Images:
    """The cached root filesystems a lab's overlays are stacked on."""

    base: Path  # rootfs of the base image
    slave_layer: Path  # upper layer for slaves (lowerdir=slave_layer:base)
    base_key: str
    slave_key: str


def _key(*parts: object) -> str:
    blob = json.dumps([RECIPE_VERSION, SUITE, *parts], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def base_key() -> str:
    return _key("base", sorted(BASE_PACKAGES))


def slave_key() -> str:
    return _key("slave", base_key(), sorted(SLAVE_PACKAGES))


def base_dir() -> Path:
    return CACHE_DIR / f"base-{base_key()}"


def slave_dir() -> Path:
    return CACHE_DIR / f"slave-{slave_key()}"


def cached() -> Images | None:
    """The cached images if both are complete, else None."""
    base, slave = base_dir(), slave_dir()
    if (base / "manifest.json").is_file() and (slave / "manifest.json").is_file():
        return Images(base / "rootfs", slave / "rootfs", base_key(), slave_key())
    return None


def debian_mirror() -> str:
    """The Debian mirror the host itself uses (``VCL_LAB_MIRROR`` overrides it)."""
    override = os.environ.get("VCL_LAB_MIRROR")
    if override:
        return override
    candidates: list[str] = []
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":  # deb822 stanzas
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(
                    (k.strip().lower(), v.strip())
                    for k, _, v in (ln.partition(":") for ln in stanza.splitlines() if not ln.startswith("#"))
                    if k.strip()
                )
                suites = fields.get("suites", "").split()
                if "deb" in fields.get("types", "").split() and SUITE in suites:
                    candidates += fields.get("uris", "").split()
        else:
            for line in text.splitlines():
                words = line.split("#", 1)[0].split()
                if len(words) >= 3 and words[0] == "deb":
                    rest = [w for w in words[1:] if not w.startswith("[")]
                    if len(rest) >= 2 and rest[1] == SUITE:
                        candidates.append(rest[0])
    for uri in candidates:
        if "security" not in uri:
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def ensure_images(*, progress=print) -> Images:
    """Return the cached images, building whatever is missing (cold: a few minutes)."""
    have = cached()
    if have is not None:
        return have
    require_tools("debootstrap", "chroot", "mount", "umount")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with locked(CACHE_DIR / ".lock"):
        if not (base_dir() / "manifest.json").is_file():
            _build_base(progress)
        if not (slave_dir() / "manifest.json").is_file():
            _build_slave_layer(progress)
    have = cached()
    if have is None:  # pragma: no cover - the builders raise on failure
        raise LabError(f"image build finished but {CACHE_DIR} has no complete image")
    return have


def _fresh_tmp(final: Path) -> Path:
    tmp = final.with_name(final.name + ".tmp")
    safe_rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _manifest(path: Path, **data: object) -> None:
    write_file(path / "manifest.json", json.dumps(data, indent=2, sort_keys=True) + "\n")


def _build_base(progress) -> None:
    final = base_dir()
    tmp = _fresh_tmp(final)
    rootfs = tmp / "rootfs"
    mirror = debian_mirror()
    progress(f"building the lab base image (debootstrap {SUITE} from {mirror}; takes a minute or two)")
    started = time.monotonic()
    log_path = CACHE_DIR / "build-base.log"
    with open(log_path, "w") as log_file:
        proc = _run_logged(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=" + ",".join(sorted(BASE_PACKAGES)),
                SUITE,
                str(rootfs),
                mirror,
            ],
            log_file,
        )
    if proc != 0:
        raise LabError(
            f"debootstrap failed (exit {proc}); see {log_path}. It needs the Debian mirror {mirror} "
            "(set VCL_LAB_MIRROR to use another one)"
        )
    _configure_base(rootfs)
    _manifest(
        tmp,
        kind="base",
        key=base_key(),
        suite=SUITE,
        mirror=mirror,
        packages=sorted(BASE_PACKAGES),
        built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        build_seconds=round(time.monotonic() - started, 1),
    )
    tmp.rename(final)
    progress(f"base image ready in {time.monotonic() - started:.0f} s: {final}")


def _run_logged(argv: list[str], log_file) -> int:
    log.debug("run (logged): %s", argv)
    return subprocess.run(argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode


def _configure_base(rootfs: Path) -> None:
    """Make the image safe and quiet on a machine without a route out."""
    # chrony: no pool/server lines (they would send NTP traffic off the machine), not enabled.
    chrony_conf = rootfs / "etc/chrony/chrony.conf"
    if chrony_conf.is_file():
        lines = [
            ("#" + ln) if re.match(r"\s*(pool|server|peer)\s", ln) else ln
            for ln in chrony_conf.read_text().splitlines()
        ]
        write_file(chrony_conf, "\n".join(lines) + "\n")
    write_file(rootfs / "etc/systemd/system/chrony.service.d/vcl-lab.conf", _CHRONY_DROPIN)
    run(["chroot", rootfs, "systemctl", "disable", "chrony.service"], check=False)
    # isc-dhcp-server is a SysV script: disable (not mask) so the dhcpd role can enable it.
    run(["chroot", rootfs, "update-rc.d", "isc-dhcp-server", "disable"], check=False)
    for unit in ("isc-dhcp-server.service", "isc-dhcp-server6.service"):
        (rootfs / "etc/systemd/system/multi-user.target.wants" / unit).unlink(missing_ok=True)
    # No name service and no outside anything.
    resolv = rootfs / "etc/resolv.conf"
    if resolv.is_symlink():
        resolv.unlink()
    write_file(resolv, "")
    write_file(rootfs / "etc/network/interfaces", _INTERFACES)
    (rootfs / "etc/network/interfaces.d").mkdir(parents=True, exist_ok=True)
    # Each machine gets its own machine-id at boot (nspawn passes one when the file is empty).
    write_file(rootfs / "etc/machine-id", "", 0o444)
    (rootfs / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    # Units that make no sense in a container, or wait for hardware.
    for unit in ("systemd-timesyncd.service", "getty@tty1.service", "apt-daily.timer", "apt-daily-upgrade.timer"):
        write_mask(rootfs, unit)
    (rootfs / "root/.ssh").mkdir(mode=0o700, parents=True, exist_ok=True)
    run(["chroot", rootfs, "apt-get", "clean"], check=False)


def write_mask(rootfs: Path, unit: str) -> None:
    link = rootfs / "etc/systemd/system" / unit
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to("/dev/null")


def _build_slave_layer(progress) -> None:
    """apt-get install the slave packages in a chroot on an overlay of the base; keep the upper dir."""
    base = base_dir() / "rootfs"
    final = slave_dir()
    tmp = _fresh_tmp(final)
    upper, work, merged = tmp / "rootfs", tmp / "work", tmp / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    progress("building the slaves' libvirt/QEMU image layer (apt-get in a chroot; about a minute)")
    started = time.monotonic()
    log_path = CACHE_DIR / "build-slave.log"
    run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={base},upperdir={upper},workdir={work}", merged])
    try:
        run(["mount", "-t", "proc", "proc", merged / "proc"])
        run(["mount", "--bind", "/dev", merged / "dev"])
        # Downloads need a resolver for the build only; the image keeps an empty resolv.conf.
        shutil.copyfile("/etc/resolv.conf", merged / "etc/resolv.conf")
        write_file(merged / "usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755)
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "DEBIAN_FRONTEND": "noninteractive",
            "LC_ALL": "C",
            "HOME": "/root",
        }
        with open(log_path, "w") as log_file:
            for argv in (
                ["apt-get", "update"],
                ["apt-get", "install", "-y", "--no-install-recommends", *sorted(SLAVE_PACKAGES)],
                ["apt-get", "clean"],
            ):
                log_file.write(f"$ {' '.join(argv)}\n")
                log_file.flush()
                code = subprocess.run(
                    ["chroot", str(merged), *argv],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                ).returncode
                if code != 0:
                    raise LabError(f"building the slave layer: `{' '.join(argv)}` failed (exit {code}); see {log_path}")
        (merged / "usr/sbin/policy-rc.d").unlink()
        write_file(merged / "etc/resolv.conf", "")
        for lists in (merged / "var/lib/apt/lists").glob("*"):
            if lists.is_file() and lists.name != "lock":
                lists.unlink()
        _configure_slave(merged)
    finally:
        for point in (merged / "dev", merged / "proc", merged):
            run(["umount", point], check=False)
    shutil.rmtree(work)
    merged.rmdir()
    _manifest(
        tmp,
        kind="slave-layer",
        key=slave_key(),
        base_key=base_key(),
        packages=sorted(SLAVE_PACKAGES),
        built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        build_seconds=round(time.monotonic() - started, 1),
    )
    tmp.rename(final)
    progress(f"slave layer ready in {time.monotonic() - started:.0f} s: {final}")


def _configure_slave(root: Path) -> None:
    qemu_conf = root / "etc/libvirt/qemu.conf"
    text = qemu_conf.read_text() if qemu_conf.is_file() else ""
    if _QEMU_CONF_MARK not in text:
        write_file(qemu_conf, text + f"\n{_QEMU_CONF_MARK}\ncgroup_controllers = [ ]\n", 0o600)
    # libvirt-guests would try to suspend guests on every machine shutdown.
    write_mask(root, "libvirt-guests.service")
    # libvirt's default NAT network would add its own bridge and dnsmasq; the lab does not use it.
    autostart = root / "etc/libvirt/qemu/networks/autostart/default.xml"
    if autostart.is_symlink() or autostart.exists():
        autostart.unlink()


def prune(keep: Images | None = None) -> list[Path]:
    """Remove cached images other than the current ones; return what was removed."""
    removed: list[Path] = []
    current = {base_dir().name, slave_dir().name}
    if not CACHE_DIR.is_dir():
        return removed
    with locked(CACHE_DIR / ".lock"):
        for entry in CACHE_DIR.iterdir():
            if entry.is_dir() and entry.name not in current and entry.name.startswith(("base-", "slave-")):
                safe_rmtree(entry)
                removed.append(entry)
    return removed
