"""Building the test guest and its cache: the Debian packages (``apt-get download`` + ``dpkg-deb -x``, nothing
is installed on the host), the assembly of ``vmlinux`` (kernel.py), ``initrd.img`` (initramfs.py) and an empty
``disk.qcow2`` base, cached under ``CACHE_DIR/guest/<key>/``.

The key is a hash of the inputs (kernel and busybox package versions, the /init and udhcpc scripts, the module
list and the recipe version): a changed input builds a new guest, an unchanged one is reused.
``CACHE_DIR/guest/current`` points at the newest build.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from vcl_lab._util import CACHE_DIR, LabError, locked, log, require_tools, run, write_file
from vcl_lab.guest import initramfs
from vcl_lab.guest.initramfs import MARKER_PORT, build_initramfs
from vcl_lab.guest.kernel import extract_vmlinux, module_name, pvh_entry, resolve_modules

GUEST_ROOT = CACHE_DIR / "guest"
#: Bump when the build steps change (not only the inputs): it is part of the cache key.
RECIPE_VERSION = 1
KERNEL_METAPACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"
#: Modules /init loads (with their dependencies, found in each module's .modinfo); built-ins are skipped.
MODULES: tuple[str, ...] = ("virtio_pci", "virtio_net", "virtio_blk")
#: cryptomgr.notests skips the crypto self-tests (~0.3 s under software emulation).
DEFAULT_CMDLINE = "console=ttyS0 panic=-1 quiet cryptomgr.notests"
DISK_SIZE = "64M"


@dataclass(frozen=True)
class GuestInputs:
    """What a guest is built from; their hash is the cache key."""

    kernel_package: str  # linux-image-6.1.0-NN-amd64
    kernel_version: str  # its Debian version, e.g. 6.1.192-3
    busybox_version: str
    modules: tuple[str, ...] = MODULES

    def key(self) -> str:
        blob = json.dumps(
            {
                "recipe": RECIPE_VERSION,
                "kernel": [self.kernel_package, self.kernel_version],
                "busybox": [BUSYBOX_PACKAGE, self.busybox_version],
                "modules": list(self.modules),
                "init": initramfs.INIT_SCRIPT,
                "udhcpc": initramfs.UDHCPC_SCRIPT,
                "marker": initramfs.MARKER_SCRIPT,
                "disk_note": initramfs.DISK_SCRIPT,
                "try": initramfs.TRY_SCRIPT,
                "disk": DISK_SIZE,
                "cmdline": DEFAULT_CMDLINE,
            },
            sort_keys=True,
        ).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class Guest:
    """A built guest: its files, the kernel command line to boot it with and the marker port."""

    key: str
    directory: Path
    vmlinux: Path
    initrd: Path
    disk: Path
    cmdline: str
    marker_port: int
    kernel_package: str
    kernel_version: str
    kernel_release: str  # uname -r inside the guest, e.g. 6.1.0-57-amd64
    busybox_version: str
    modules: tuple[str, ...]  # module files in load order, relative to lib/modules/<release>/
    build_seconds: float
    built: bool = False  # True when this call built it (not from the cache)

    def static_cmdline(self, address: str, gateway: str | None = None) -> str:
        """The command line for a static address (``ADDR/PREFIX``) instead of DHCP."""
        if not re.fullmatch(r"\d+\.\d+\.\d+\.\d+/\d+", address):
            raise LabError(f"vcl.ip wants ADDR/PREFIX, not {address!r}")
        extra = f" vcl.ip={address}"
        if gateway:
            if not re.fullmatch(r"\d+\.\d+\.\d+\.\d+", gateway):
                raise LabError(f"vcl.gw wants an IPv4 address, not {gateway!r}")
            extra += f" vcl.gw={gateway}"
        return self.cmdline + extra

    def to_dict(self) -> dict:
        data = asdict(self)
        for name in ("directory", "vmlinux", "initrd", "disk"):
            data[name] = str(data[name])
        data["modules"] = list(self.modules)
        return data

    @classmethod
    def load(cls, directory: Path, *, built: bool = False) -> Guest:
        """A guest from its directory's manifest.json (LabError if incomplete)."""
        try:
            manifest = json.loads((directory / "manifest.json").read_text())
        except (OSError, ValueError) as err:
            raise LabError(f"{directory} holds no complete guest ({err}); rebuild: `vcl lab guest --rebuild`") from err
        guest = cls(
            key=manifest["key"],
            directory=directory,
            vmlinux=directory / "vmlinux",
            initrd=directory / "initrd.img",
            disk=directory / "disk.qcow2",
            cmdline=manifest["cmdline"],
            marker_port=manifest["marker_port"],
            kernel_package=manifest["kernel_package"],
            kernel_version=manifest["kernel_version"],
            kernel_release=manifest["kernel_release"],
            busybox_version=manifest["busybox_version"],
            modules=tuple(manifest["modules"]),
            build_seconds=manifest["build_seconds"],
            built=built,
        )
        missing = [p for p in (guest.vmlinux, guest.initrd, guest.disk) if not p.is_file()]
        if missing:
            lacks = ", ".join(map(str, missing))
            raise LabError(f"guest {directory} lacks {lacks}; rebuild it (`vcl lab guest --rebuild`)")
        return guest


def _apt_candidates(*packages: str) -> dict[str, dict[str, str]]:
    """``{package: {field: value}}`` of each package's candidate version (apt's local lists)."""
    proc = run(["apt-cache", "show", "--no-all-versions", *packages], check=False)
    found: dict[str, dict[str, str]] = {}
    for stanza in re.split(r"\n\s*\n", proc.stdout):
        fields = dict(re.findall(r"^([\w-]+):[ \t]*(.*)$", stanza, re.MULTILINE))
        if "Package" in fields and "Version" in fields:
            found.setdefault(fields["Package"], fields)
    missing = [p for p in packages if p not in found]
    if missing:
        raise LabError(f"apt knows no installable {', '.join(missing)}: run `apt-get update` (needs the Debian mirror)")
    return found


def resolve_inputs() -> GuestInputs:
    """The kernel and busybox versions the mirror has (apt's local lists: no download)."""
    require_tools("apt-cache")
    meta = _apt_candidates(KERNEL_METAPACKAGE)[KERNEL_METAPACKAGE]
    names = re.findall(r"(linux-image-\d[\w.+-]*-amd64)", meta.get("Depends", ""))
    if not names:
        raise LabError(f"{KERNEL_METAPACKAGE} {meta['Version']} depends on no linux-image-*-amd64 package")
    kernel = names[0]
    found = _apt_candidates(kernel, BUSYBOX_PACKAGE)
    return GuestInputs(kernel, found[kernel]["Version"], found[BUSYBOX_PACKAGE]["Version"])


def current_guest() -> Guest | None:
    """The guest ``CACHE_DIR/guest/current`` points at, without asking apt; None if there is none."""
    pointer = GUEST_ROOT / "current"
    if not pointer.is_symlink() and not pointer.exists():
        return None
    try:
        return Guest.load(pointer.resolve())
    except LabError:
        return None


def guest_dir(key: str) -> Path:
    return GUEST_ROOT / key


def ensure_guest(*, rebuild: bool = False, progress: Callable[[str], object] = print) -> Guest:
    """The guest for the mirror's current kernel and busybox, built once (``rebuild``: build again)."""
    try:
        inputs = resolve_inputs()
    except LabError as err:
        fallback = current_guest()
        if fallback is None or rebuild:
            raise
        progress(f"apt cannot resolve the guest's packages ({err}); using the cached guest {fallback.key}")
        return fallback
    key = inputs.key()
    final = guest_dir(key)
    if not rebuild and (final / "manifest.json").is_file():
        _point_current(key)
        return Guest.load(final)
    require_tools("apt-get", "dpkg-deb", "qemu-img")
    GUEST_ROOT.mkdir(parents=True, exist_ok=True)
    with locked(GUEST_ROOT / ".lock"):
        if rebuild or not (final / "manifest.json").is_file():  # another process may have built it meanwhile
            _build(inputs, final, progress)
            built = True
        else:
            built = False
        _point_current(key)
    return Guest.load(final, built=built)


def prune_guests() -> list[Path]:
    """Remove cached guests other than the ``current`` one (and stale build directories)."""
    removed: list[Path] = []
    if not GUEST_ROOT.is_dir():
        return removed
    with locked(GUEST_ROOT / ".lock"):
        pointer = GUEST_ROOT / "current"
        keep = os.readlink(pointer) if pointer.is_symlink() else None
        for entry in GUEST_ROOT.iterdir():
            if entry.is_dir() and not entry.is_symlink() and entry.name != keep:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def _point_current(key: str) -> None:
    pointer = GUEST_ROOT / "current"
    try:
        if pointer.is_symlink() and os.readlink(pointer) == key:
            return
    except OSError:
        pass
    tmp = GUEST_ROOT / f".current.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(key)
    tmp.replace(pointer)


def _download(packages: list[str], into: Path, progress) -> list[Path]:
    argv = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *packages]
    proc = _run_in(argv, into)
    if proc.returncode != 0:
        progress("apt-get download failed; refreshing apt's lists once (apt-get update)")
        run(["apt-get", "update", "-q"], timeout=600)
        proc = _run_in(argv, into)
        if proc.returncode != 0:
            raise LabError(
                f"`{' '.join(argv)}` failed (exit {proc.returncode}): {proc.stderr.strip()[-1000:]}; the Debian mirror "
                "must be reachable (the versions come from apt's lists: a newer kernel after `apt-get update` "
                "builds a new guest)"
            )
    debs = sorted(into.glob("*.deb"))
    if len(debs) != len(packages):
        raise LabError(f"apt-get download left {[d.name for d in debs]} in {into}, expected {len(packages)} packages")
    return debs


def _run_in(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    log.debug("run (in %s): %s", cwd, argv)
    return subprocess.run(argv, cwd=cwd, text=True, capture_output=True, stdin=subprocess.DEVNULL, check=False)


def _build(inputs: GuestInputs, final: Path, progress) -> None:
    started = time.monotonic()
    steps: dict[str, float] = {}

    def step(name: str, since: float) -> float:
        now = time.monotonic()
        steps[name] = round(now - since, 2)
        return now

    progress(
        f"building the test guest ({inputs.kernel_package} {inputs.kernel_version}, busybox {inputs.busybox_version})"
    )
    GUEST_ROOT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=GUEST_ROOT))
    try:
        out = work / "out"
        out.mkdir(mode=0o755)
        downloads = work / "debs"
        downloads.mkdir()
        t = time.monotonic()
        kernel_pin = f"{inputs.kernel_package}={inputs.kernel_version}"
        busybox_pin = f"{BUSYBOX_PACKAGE}={inputs.busybox_version}"
        debs = _download([kernel_pin, busybox_pin], downloads, progress)
        t = step("download", t)
        kernel_deb = next(d for d in debs if d.name.startswith(inputs.kernel_package + "_"))
        busybox_deb = next(d for d in debs if d.name.startswith(BUSYBOX_PACKAGE + "_"))
        kroot, broot = work / "kernel", work / "busybox"
        run(["dpkg-deb", "-x", kernel_deb, kroot], timeout=600)
        run(["dpkg-deb", "-x", busybox_deb, broot], timeout=120)
        t = step("unpack", t)

        vmlinuz = sorted((kroot / "boot").glob("vmlinuz-*"))
        if len(vmlinuz) != 1:
            raise LabError(f"{kernel_deb.name} has {len(vmlinuz)} boot/vmlinuz-* files, expected one")
        release = vmlinuz[0].name.removeprefix("vmlinuz-")
        elf = extract_vmlinux(vmlinuz[0].read_bytes())
        if pvh_entry(elf) is None:
            raise LabError(f"the kernel of {kernel_deb.name} has no PVH note: QEMU cannot boot it as vmlinux")
        _write(out / "vmlinux", elf)
        t = step("vmlinux", t)

        moddir = kroot / "lib/modules" / release
        available = {module_name(p): p for p in _lines(moddir / "modules.order")}
        builtin = {module_name(p) for p in _lines(moddir / "modules.builtin")}
        order = resolve_modules(inputs.modules, available, builtin, lambda rel: (moddir / rel).read_bytes())
        busybox = broot / "bin/busybox"
        if not busybox.is_file():
            raise LabError(f"{busybox_deb.name} has no bin/busybox")
        cpio = build_initramfs(busybox.read_bytes(), release, [(rel, (moddir / rel).read_bytes()) for rel in order])
        _write(out / "initrd.img", gzip.compress(cpio, compresslevel=6, mtime=0))
        t = step("initrd", t)

        run(["qemu-img", "create", "-q", "-f", "qcow2", out / "disk.qcow2", DISK_SIZE])
        (out / "disk.qcow2").chmod(0o644)
        t = step("disk", t)

        seconds = round(time.monotonic() - started, 1)
        manifest = {
            "key": inputs.key(),
            "recipe": RECIPE_VERSION,
            "kernel_package": inputs.kernel_package,
            "kernel_version": inputs.kernel_version,
            "kernel_release": release,
            "busybox_version": inputs.busybox_version,
            "modules": order,
            "cmdline": DEFAULT_CMDLINE,
            "marker_port": MARKER_PORT,
            "pvh_entry": hex(pvh_entry(elf) or 0),
            "sizes": {p.name: p.stat().st_size for p in sorted(out.iterdir())},
            "build_seconds": seconds,
            "steps": steps,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_file(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        old = None
        if final.exists():
            old = GUEST_ROOT / f".old-{final.name}-{os.getpid()}"
            final.rename(old)
        out.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    detail = ", ".join(f"{k} {v:.1f} s" for k, v in steps.items())
    progress(f"test guest built in {time.monotonic() - started:.1f} s ({detail}): {final}")


def _lines(path: Path) -> list[str]:
    try:
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except OSError:
        return []


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o644)
