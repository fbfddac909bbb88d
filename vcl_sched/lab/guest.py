"""The tiny bootable test guest: a Debian kernel, a busybox initramfs and an empty qcow2 base.

Built by the project's own code from two Debian packages (``apt-get download`` + ``dpkg-deb -x``,
nothing is installed on the host) and cached under ``CACHE_DIR/guest/<key>/``, where the key is a
hash of the inputs (kernel and busybox package versions, the /init and udhcpc scripts, the module
list and the recipe version): a changed input builds a new guest, an unchanged one is reused.
``CACHE_DIR/guest/current`` points at the newest build.

- ``vmlinux``: the *uncompressed* ELF kernel, taken out of the package's bzImage here. QEMU boots
  it directly through its PVH note; decompressing a bzImage under software emulation costs 5-7 s.
- ``initrd.img``: a gzip'd newc cpio (written here, no host ``cpio`` needed) with a static busybox,
  the virtio modules from the same kernel package (and their dependencies) and an ``/init`` that
  prints ``vcl-guest: booted``, configures eth0 (``vcl.ip=ADDR/PREFIX`` [``vcl.gw=ADDR``] on the
  kernel command line, else DHCP with busybox udhcpc), prints ``vcl-guest: lease <ip>`` once and
  answers every TCP connection on port 80 with one line ``vcl-guest ready <ip> <mac>``.
- ``disk.qcow2``: a small empty qcow2 to use as a launch's backing image.

    from vcl_sched.lab.guest import ensure_guest
    g = ensure_guest()                    # cold: 5-9 s here (downloads ~72 MB); cached: ~1 s (apt-cache)
    g.vmlinux, g.initrd, g.disk, g.cmdline, g.marker_port
    g.static_cmdline("192.168.0.10/24", "192.168.0.1")
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

from vcl_sched.lab._util import CACHE_DIR, LabError, locked, log, require_tools, run, write_file

GUEST_ROOT = CACHE_DIR / "guest"
#: Bump when the build steps change (not only the inputs): it is part of the cache key.
RECIPE_VERSION = 1
KERNEL_METAPACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"
#: Modules /init loads (with their dependencies, found in each module's .modinfo); built-ins are skipped.
MODULES: tuple[str, ...] = ("virtio_pci", "virtio_net", "virtio_blk")
MARKER_PORT = 80
#: cryptomgr.notests skips the crypto self-tests (~0.3 s under software emulation).
DEFAULT_CMDLINE = "console=ttyS0 panic=-1 quiet cryptomgr.notests"
DISK_SIZE = "64M"

BOOTED_LINE = "vcl-guest: booted"
#: The serial console's line once eth0 has an address (DHCP lease or vcl.ip=): group 1 is the address.
LEASE_RE = re.compile(r"^vcl-guest: lease (\d+\.\d+\.\d+\.\d+)\s*$", re.MULTILINE)
#: What each connection to MARKER_PORT reads: groups are the address and the MAC.
MARKER_RE = re.compile(r"^vcl-guest ready (\d+\.\d+\.\d+\.\d+) ([0-9a-f]{2}(?::[0-9a-f]{2}){5})\s*$", re.MULTILINE)

INIT_SCRIPT = r"""#!/bin/sh
# /init of the vcl test guest (written by vcl_sched.lab.guest). Busybox only; never exits.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
echo "vcl-guest: booted"
say() { echo "vcl-guest: $*"; }
hang() { say "error: $*"; while :; do sleep 3600; done; }
mkdir -p /run/vcl /tmp
while read -r mod; do
    insmod "/lib/modules/$mod" || say "error: insmod $mod failed"
done </etc/vcl/modules
i=0
while [ ! -e /sys/class/net/eth0 ]; do
    i=$((i + 1))
    [ "$i" -gt 300 ] && hang "no eth0 after 30 s"
    usleep 100000
done
STATIC=
GW=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vcl.ip=*) STATIC="${arg#vcl.ip=}" ;;
        vcl.gw=*) GW="${arg#vcl.gw=}" ;;
    esac
done
ip link set lo up
ip link set eth0 up
MAC=$(cat /sys/class/net/eth0/address)
if [ -n "$STATIC" ]; then
    ip addr add "$STATIC" dev eth0 || hang "bad vcl.ip=$STATIC"
    [ -n "$GW" ] && { ip route add default via "$GW" || say "error: bad vcl.gw=$GW"; }
    IP="${STATIC%/*}"
else
    # Wait for the carrier (virtio_net reports it a moment after probing): sent before, the first
    # DISCOVER could be dropped and udhcpc would retry only 2 s later. Not operstate: the kernel's
    # link watch updates that up to 1 s late although packets already flow.
    i=0
    while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ] && [ "$i" -lt 100 ]; do
        i=$((i + 1))
        usleep 50000
    done
    # Foreground (-f) in a background job: it keeps renewing; its script writes /run/vcl/ip.
    udhcpc -f -i eth0 -s /etc/vcl/udhcpc.sh -t 4 -T 2 -A 2 >/dev/null 2>&1 &
    while [ ! -s /run/vcl/ip ]; do usleep 100000; done
    IP=$(cat /run/vcl/ip)
fi
echo "vcl-guest ready $IP $MAC" >/run/vcl/marker
# One line per connection, as many connections as come (-ll); restarted should nc ever stop.
(while :; do nc -ll -p 80 -e /etc/vcl/marker.sh; usleep 500000; done) </dev/null >/dev/null 2>&1 &
say "lease $IP"
while :; do wait; sleep 3600; done
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
# udhcpc event script of the vcl test guest: apply address and router, record the address.
case "$1" in
    deconfig)
        ip addr flush dev "$interface"
        ip link set "$interface" up
        ;;
    bound|renew)
        [ "$(cat /run/vcl/ip 2>/dev/null)" = "$ip" ] || ip addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface" 2>/dev/null
        if [ -n "$router" ]; then
            ip route del default 2>/dev/null
            for r in $router; do ip route add default via "$r" dev "$interface" && break; done
        fi
        echo "$ip" >/run/vcl/ip.new && mv /run/vcl/ip.new /run/vcl/ip
        ;;
esac
exit 0
"""

MARKER_SCRIPT = "#!/bin/sh\ncat /run/vcl/marker\n"


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
                "init": INIT_SCRIPT,
                "udhcpc": UDHCPC_SCRIPT,
                "marker": MARKER_SCRIPT,
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


# --- ELF -------------------------------------------------------------------------------------------

ELF_MAGIC = b"\x7fELF"
PT_NOTE = 4
SHT_NOBITS = 8
XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point QEMU looks for


@dataclass(frozen=True)
class _ElfHeader:
    phoff: int
    shoff: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int
    shstrndx: int


def _elf_header(data: bytes) -> _ElfHeader:
    if data[:4] != ELF_MAGIC:
        raise LabError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise LabError("not a little-endian 64-bit ELF file")
    if len(data) < 64:
        raise LabError("truncated ELF header")
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHH", data, 0x36)
    return _ElfHeader(phoff, shoff, phentsize, phnum, shentsize, shnum, shstrndx)


def _program_headers(data: bytes, hdr: _ElfHeader) -> list[tuple[int, int, int]]:
    """(type, offset, filesz) of each program header."""
    out = []
    for i in range(hdr.phnum):
        base = hdr.phoff + i * hdr.phentsize
        if base + 56 > len(data):
            raise LabError("truncated ELF program headers")
        p_type, _flags, p_offset = struct.unpack_from("<IIQ", data, base)
        (p_filesz,) = struct.unpack_from("<Q", data, base + 32)
        out.append((p_type, p_offset, p_filesz))
    return out


def _section_headers(data: bytes, hdr: _ElfHeader) -> list[tuple[int, int, int, int]]:
    """(name offset, type, offset, size) of each section header."""
    out = []
    for i in range(hdr.shnum):
        base = hdr.shoff + i * hdr.shentsize
        if base + 64 > len(data):
            raise LabError("truncated ELF section headers")
        sh_name, sh_type = struct.unpack_from("<II", data, base)
        sh_offset, sh_size = struct.unpack_from("<QQ", data, base + 24)
        out.append((sh_name, sh_type, sh_offset, sh_size))
    return out


def elf_notes(data: bytes) -> Iterable[tuple[bytes, int, bytes]]:
    """(name, type, descriptor) of every note in the ELF's PT_NOTE segments."""
    hdr = _elf_header(data)
    for p_type, offset, size in _program_headers(data, hdr):
        if p_type != PT_NOTE:
            continue
        pos, end = offset, min(offset + size, len(data))
        while pos + 12 <= end:
            namesz, descsz, n_type = struct.unpack_from("<III", data, pos)
            pos += 12
            name = data[pos : pos + namesz].rstrip(b"\0")
            pos += (namesz + 3) & ~3
            desc = data[pos : pos + descsz]
            pos += (descsz + 3) & ~3
            yield name, n_type, desc


def pvh_entry(data: bytes) -> int | None:
    """The PVH entry point (Xen note XEN_ELFNOTE_PHYS32_ENTRY) of an ELF kernel, or None."""
    for name, n_type, desc in elf_notes(data):
        if name == b"Xen" and n_type == XEN_ELFNOTE_PHYS32_ENTRY and len(desc) >= 4:
            return struct.unpack_from("<I", desc)[0]
    return None


def elf_extent(data: bytes) -> int:
    """How many leading bytes the ELF file occupies (the bzImage payload appends relocations)."""
    hdr = _elf_header(data)
    end = max(64, hdr.phoff + hdr.phnum * hdr.phentsize, hdr.shoff + hdr.shnum * hdr.shentsize)
    for _type, offset, size in _program_headers(data, hdr):
        end = max(end, offset + size)
    for _name, sh_type, offset, size in _section_headers(data, hdr):
        if sh_type != SHT_NOBITS:
            end = max(end, offset + size)
    if end > len(data):
        raise LabError(f"truncated ELF file: it needs {end} bytes, has {len(data)}")
    return end


def elf_section(data: bytes, wanted: str) -> bytes | None:
    """The contents of the section named ``wanted``, or None."""
    hdr = _elf_header(data)
    sections = _section_headers(data, hdr)
    if not sections or hdr.shstrndx >= len(sections):
        return None
    _n, _t, str_off, str_size = sections[hdr.shstrndx]
    names = data[str_off : str_off + str_size]
    for name_off, sh_type, offset, size in sections:
        end = names.find(b"\0", name_off)
        if names[name_off:end].decode(errors="replace") == wanted:
            return b"" if sh_type == SHT_NOBITS else data[offset : offset + size]
    return None


# --- bzImage -> vmlinux ----------------------------------------------------------------------------

# Magic numbers of the payload formats the kernel's boot code can decompress.
_PAYLOAD_MAGICS: tuple[tuple[str, bytes], ...] = (
    ("xz", b"\xfd7zXZ\x00"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("gzip", b"\x1f\x8b\x08"),
    ("lz4", b"\x02\x21\x4c\x18"),
    ("bzip2", b"BZh"),
    ("lzma", b"\x5d\x00\x00"),
)


def _decompress(kind: str, blob: bytes) -> bytes:
    if kind == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(blob)
    if kind == "lzma":
        return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(blob)
    if kind == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(blob)
    if kind == "bzip2":
        return bz2.BZ2Decompressor().decompress(blob)
    # No stdlib module for these (Python 3.11): the command-line tool, which stops at trailing data.
    tool = {"zstd": ["zstd", "-d", "-c", "-q"], "lz4": ["lz4", "-d", "-c", "-q"]}[kind]
    require_tools(tool[0])
    with tempfile.NamedTemporaryFile() as handle:
        handle.write(blob)
        handle.flush()
        proc = subprocess.run([*tool, handle.name], capture_output=True, check=False)
    if not proc.stdout:
        raise LabError(f"{tool[0]} could not decompress the kernel: {proc.stderr.decode(errors='replace')[-300:]}")
    return proc.stdout


def _payload_candidates(image: bytes) -> Iterable[tuple[str, int, int | None]]:
    """(format, offset, length or None) to try, best first: the boot header's payload, then magics."""
    if image[0x202:0x206] == b"HdrS":
        (version,) = struct.unpack_from("<H", image, 0x206)
        setup_sects = image[0x1F1] or 4
        if version >= 0x208:
            payload_offset, payload_length = struct.unpack_from("<II", image, 0x248)
            start = (setup_sects + 1) * 512 + payload_offset
            for kind, magic in _PAYLOAD_MAGICS:
                if image[start : start + len(magic)] == magic:
                    yield kind, start, payload_length
                    break
    for kind, magic in _PAYLOAD_MAGICS:
        pos = image.find(magic)
        while pos >= 0:
            yield kind, pos, None
            pos = image.find(magic, pos + 1)


def extract_vmlinux(image: bytes) -> bytes:
    """The uncompressed ELF kernel inside a bzImage (an ELF input is returned as is, trimmed).

    The payload is located through the boot protocol header (payload_offset/length), else by
    scanning for the magic of a compressed stream whose contents start with an ELF header."""
    if image[:4] == ELF_MAGIC:
        return image[: elf_extent(image)]
    tried: list[str] = []
    for kind, start, length in _payload_candidates(image):
        blob = image[start : start + length] if length else image[start:]
        try:
            data = _decompress(kind, blob)
        except (lzma.LZMAError, zlib.error, OSError, EOFError, ValueError, LabError) as err:
            tried.append(f"{kind}@{start}: {err}")
            continue
        if data[:4] != ELF_MAGIC:
            tried.append(f"{kind}@{start}: not ELF")
            continue
        return data[: elf_extent(data)]
    detail = "; ".join(tried[:6]) or "no known compressed payload found"
    raise LabError(f"no ELF kernel inside this bzImage ({detail})")


# --- kernel modules --------------------------------------------------------------------------------


def module_name(path: str) -> str:
    """The module name of a .ko path, as the kernel spells it (dashes become underscores)."""
    base = Path(path).name
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def modinfo(ko: bytes) -> dict[str, list[str]]:
    """The key=value pairs of a module's .modinfo section (a key may repeat)."""
    section = elf_section(ko, ".modinfo")
    if section is None:
        raise LabError("no .modinfo section: not a kernel module")
    info: dict[str, list[str]] = {}
    for item in section.split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


def resolve_modules(
    wanted: Iterable[str], available: dict[str, str], builtin: set[str], read: Callable[[str], bytes]
) -> list[str]:
    """Module files to load, dependencies first, for the ``wanted`` module names.

    ``available`` maps module name -> path (relative to lib/modules/<release>/, as in modules.order),
    ``builtin`` holds built-in module names (nothing to load), ``read(path)`` returns a module's bytes."""
    order: list[str] = []
    state: dict[str, str] = {}  # name -> "visiting" | "done"

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if state.get(name) == "done" or name in builtin:
            return
        if state.get(name) == "visiting":
            raise LabError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        if name not in available:
            needed_by = " -> ".join(chain) or "the guest"
            raise LabError(f"kernel module {name} (needed by {needed_by}) is not in the kernel package")
        state[name] = "visiting"
        info = modinfo(read(available[name]))
        for dep in ",".join(info.get("depends", [])).split(","):
            if dep:
                visit(dep, (*chain, name))
        state[name] = "done"
        order.append(available[name])

    for name in wanted:
        visit(name, ())
    return order


# --- cpio (newc) -----------------------------------------------------------------------------------

S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR = 0o040000, 0o100000, 0o120000, 0o020000


class CpioWriter:
    """A newc ("070701") cpio archive, as the kernel unpacks an initramfs. Deterministic: owner root,
    mtime 0, inode numbers in order of addition. Parents must be added before their children."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._ino = 0
        self._names: set[str] = set()
        self._closed = False

    def _entry(self, name: str, mode: int, data: bytes = b"", *, nlink: int = 1, rdev: tuple[int, int] = (0, 0)):
        if self._closed:
            raise ValueError("archive already finished")
        name = name.strip("/")
        if not name or name in self._names:
            raise ValueError(f"bad or duplicate cpio entry name: {name!r}")
        parent = name.rpartition("/")[0]
        if parent and parent not in self._names:
            raise ValueError(f"cpio entry {name!r} added before its directory {parent!r}")
        self._names.add(name)
        self._ino += 1
        self._chunks.append(self._header(self._ino, mode, len(data), nlink, rdev, name))
        self._chunks.append(data + _pad4(len(data)))

    @staticmethod
    def _header(ino: int, mode: int, size: int, nlink: int, rdev: tuple[int, int], name: str) -> bytes:
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
        return header + _pad4(len(header))

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, S_IFDIR | mode, nlink=2)

    def add_dirs(self, name: str, mode: int = 0o755) -> None:
        """Add ``name`` and any missing parents."""
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            path = "/".join(parts[:i])
            if path not in self._names:
                self.add_dir(path, mode)

    def add_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, S_IFREG | mode, data)

    def add_symlink(self, name: str, target: str) -> None:
        self._entry(name, S_IFLNK | 0o777, target.encode())

    def add_char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        if not self._closed:
            self._chunks.append(self._header(0, 0, 0, 1, (0, 0), "TRAILER!!!"))
            self._closed = True
        return b"".join(self._chunks)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def build_initramfs(busybox: bytes, kernel_release: str, modules: list[tuple[str, bytes]]) -> bytes:
    """The guest's initramfs as an uncompressed newc cpio. ``modules``: (relative path, bytes) in load order."""
    cpio = CpioWriter()
    for d in ("bin", "dev", "etc", "etc/vcl", "proc", "sys", "run", "tmp", "root"):
        cpio.add_dir(d, 0o1777 if d == "tmp" else 0o755)
    # The kernel opens /dev/console for /init before /init can mount devtmpfs.
    cpio.add_char_device("dev/console", 5, 1)
    cpio.add_char_device("dev/null", 1, 3, 0o666)
    cpio.add_file("bin/busybox", busybox, 0o755)
    cpio.add_symlink("bin/sh", "busybox")
    cpio.add_file("init", INIT_SCRIPT.encode(), 0o755)
    cpio.add_file("etc/vcl/udhcpc.sh", UDHCPC_SCRIPT.encode(), 0o755)
    cpio.add_file("etc/vcl/marker.sh", MARKER_SCRIPT.encode(), 0o755)
    base = f"lib/modules/{kernel_release}"
    listing = []
    for rel, data in modules:
        path = f"{base}/{rel}"
        cpio.add_dirs(path.rpartition("/")[0])
        cpio.add_file(path, data)
        listing.append(f"{kernel_release}/{rel}")
    cpio.add_file("etc/vcl/modules", "".join(f"{m}\n" for m in listing).encode())
    return cpio.finish()


# --- the build -------------------------------------------------------------------------------------


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


# --- a libvirt domain for it -----------------------------------------------------------------------


def domain_xml(
    name: str,
    *,
    kernel: str,
    initrd: str,
    cmdline: str,
    serial_log: str,
    bridge: str = "br0",
    mac: str | None = None,
    disk: str | None = None,
    memory_mib: int = 192,
    on_reboot: str = "destroy",
) -> str:
    """A minimal ``qemu`` (software emulation) domain booting the guest's kernel directly.

    ACPI on (a poweroff hangs without it), no USB, one virtio NIC on ``bridge``, the serial console in a
    file (``serial_log``), an optional virtio disk (a qcow2 overlay of disk.qcow2). Paths are on
    the libvirt host. A guest that panics (panic=-1) reboots, which ``on_reboot=destroy`` ends."""
    dom = ET.Element("domain", type="qemu")
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", unit="MiB").text = str(memory_mib)
    ET.SubElement(dom, "vcpu").text = "1"
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_el, "kernel").text = kernel
    ET.SubElement(os_el, "initrd").text = initrd
    ET.SubElement(os_el, "cmdline").text = cmdline
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(dom, "clock", offset="utc")
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    ET.SubElement(dom, "on_reboot").text = on_reboot
    ET.SubElement(dom, "on_crash").text = "destroy"
    devices = ET.SubElement(dom, "devices")
    if disk:
        disk_el = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk_el, "driver", name="qemu", type="qcow2")
        ET.SubElement(disk_el, "source", file=disk)
        ET.SubElement(disk_el, "target", dev="vda", bus="virtio")
    iface = ET.SubElement(devices, "interface", type="bridge")
    if mac:
        ET.SubElement(iface, "mac", address=mac)
    ET.SubElement(iface, "source", bridge=bridge)
    ET.SubElement(iface, "model", type="virtio")
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=serial_log)
    ET.SubElement(serial, "target", port="0")
    # No USB controller: the kernel's USB handoff quirk costs ~0.45 s under emulation.
    ET.SubElement(devices, "controller", type="usb", model="none")
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(dom, encoding="unicode")
