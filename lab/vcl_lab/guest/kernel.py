"""What the test guest takes from a Debian kernel package, read in Python (no host tools for ELF or
bzImage): the uncompressed ELF kernel out of the bzImage, its PVH entry note, and the kernel modules to load
in dependency order (from each module's .modinfo section).

QEMU boots ``vmlinux`` directly through its PVH note; decompressing a bzImage under software emulation
costs 5-7 s, so the build decompresses it once, here.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from vcl_lab._util import LabError, require_tools

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
