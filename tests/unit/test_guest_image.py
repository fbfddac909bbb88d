"""The test guest's builder, offline: ELF/PVH parsing, bzImage extraction, module order, the cpio
writer, the /init scripts and the cache logic, on small synthetic inputs (no network, no apt)."""

from __future__ import annotations

import gzip
import json
import lzma
import shutil
import stat
import struct
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vcl_lab._util import LabError
from vcl_lab.guest import build, domain, initramfs, kernel

# --- synthetic ELF files ---------------------------------------------------------------------------


def _note(name: bytes, n_type: int, desc: bytes) -> bytes:
    name0 = name + b"\0"
    out = struct.pack("<III", len(name0), len(desc), n_type) + name0 + b"\0" * (-len(name0) % 4)
    return out + desc + b"\0" * (-len(desc) % 4)


def make_elf(*, notes: bytes = b"", sections: dict[str, bytes] | None = None, body: bytes = b"") -> bytes:
    """A little-endian ELF64 with one PT_LOAD (``body``), one PT_NOTE (``notes``) and named sections."""
    sections = dict(sections or {})
    phnum = 2
    data_off = 64 + phnum * 56
    blob = bytearray()
    load_off = data_off
    blob += body
    note_off = data_off + len(blob)
    blob += notes
    sec_offsets = {}
    for name, content in sections.items():
        sec_offsets[name] = data_off + len(blob)
        blob += content
    names = b"\0" + b"".join(n.encode() + b"\0" for n in [*sections, ".shstrtab"])
    shstr_off = data_off + len(blob)
    blob += names
    blob += b"\0" * (-len(blob) % 8)
    shoff = data_off + len(blob)
    shnum = len(sections) + 2  # null + sections + .shstrtab
    header = bytearray(b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9)
    header += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x1000000, 64, shoff, 0, 64, 56, phnum, 64, shnum, shnum - 1)
    phdrs = struct.pack("<IIQQQQQQ", 1, 5, load_off, 0x1000000, 0x1000000, len(body), len(body) + 4096, 4096)
    phdrs += struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(notes), len(notes), 4)
    shdrs = b"\0" * 64
    name_pos = 1
    for name, content in sections.items():
        shdrs += struct.pack("<IIQQQQIIQQ", name_pos, 1, 0, 0, sec_offsets[name], len(content), 0, 0, 1, 0)
        name_pos += len(name) + 1
    shdrs += struct.pack("<IIQQQQIIQQ", name_pos, 3, 0, 0, shstr_off, len(names), 0, 0, 1, 0)
    return bytes(header + phdrs + blob + shdrs)


PVH = _note(b"Linux", 6, b"6.1.0") + _note(b"Xen", 18, struct.pack("<I", 0x1000850))
KERNEL = make_elf(notes=PVH, sections={".text": b"\x90" * 300}, body=b"\xcc" * 1000)
RELOCS = b"\x11\x22\x33\x44" * 50  # what the kernel's payload carries after the ELF (vmlinux.relocs)


def make_bzimage(payload: bytes, *, header: bool = True, setup_sects: int = 3, stub: bytes = b"") -> bytes:
    """A bzImage-shaped file: setup sectors with a boot header, then ``stub`` and the payload."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    if header:
        setup[0x202:0x206] = b"HdrS"
        struct.pack_into("<H", setup, 0x206, 0x20F)
        struct.pack_into("<II", setup, 0x248, len(stub), len(payload))
    return bytes(setup) + stub + payload + struct.pack("<I", len(KERNEL) + len(RELOCS))


def test_pvh_entry_is_read_from_the_xen_note():
    assert kernel.pvh_entry(KERNEL) == 0x1000850
    assert kernel.pvh_entry(make_elf(notes=_note(b"Linux", 6, b"6.1.0"), body=b"x" * 16)) is None
    assert kernel.pvh_entry(make_elf(notes=_note(b"Xen", 17, b"\0" * 8))) is None  # another Xen note type


def test_elf_extent_drops_trailing_data_and_rejects_truncation():
    assert kernel.elf_extent(KERNEL + RELOCS) == len(KERNEL)
    with pytest.raises(LabError, match="truncated"):
        kernel.elf_extent(KERNEL[:-100])
    with pytest.raises(LabError, match="not an ELF"):
        kernel.elf_extent(b"MZ" + KERNEL)


def test_extract_vmlinux_through_the_boot_header():
    payload = lzma.compress(KERNEL + RELOCS, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    image = make_bzimage(payload, stub=b"\x00" * 64)
    assert kernel.extract_vmlinux(image) == KERNEL


@pytest.mark.parametrize("kind", ["xz", "gzip"])
def test_extract_vmlinux_by_magic_without_a_header(kind):
    blob = KERNEL + RELOCS
    payload = lzma.compress(blob, format=lzma.FORMAT_XZ) if kind == "xz" else gzip.compress(blob, mtime=0)
    # A decoy: the magic of a stream that does not decompress, before the real one.
    decoy = b"\xfd7zXZ\x00garbage" if kind == "xz" else b"\x1f\x8b\x08garbage"
    image = make_bzimage(payload, header=False, stub=decoy)
    assert kernel.extract_vmlinux(image) == KERNEL


def test_extract_vmlinux_refuses_a_payload_that_is_not_elf():
    image = make_bzimage(lzma.compress(b"\0" * 4096, format=lzma.FORMAT_XZ), stub=b"")
    with pytest.raises(LabError, match="no ELF kernel"):
        kernel.extract_vmlinux(image)
    with pytest.raises(LabError, match="no known compressed payload"):
        kernel.extract_vmlinux(b"\0" * 8192)


def test_an_elf_input_is_returned_trimmed():
    assert kernel.extract_vmlinux(KERNEL + RELOCS) == KERNEL


# --- modules ---------------------------------------------------------------------------------------


def ko(name: str, depends: str) -> bytes:
    info = f"license=GPL\0depends={depends}\0name={name}\0vermagic=6.1.0 SMP mod_unload\0".encode()
    return make_elf(sections={".modinfo": info, ".text": b"\xc3"})


def test_modinfo_reads_the_modinfo_section():
    info = kernel.modinfo(ko("virtio_net", "net_failover,virtio,virtio_ring"))
    assert info["depends"] == ["net_failover,virtio,virtio_ring"]
    assert info["name"] == ["virtio_net"]
    with pytest.raises(LabError, match="modinfo"):
        kernel.modinfo(make_elf(sections={".text": b"\xc3"}))


def test_module_name_normalises_dashes_and_suffixes():
    assert kernel.module_name("kernel/drivers/char/hw_random/virtio-rng.ko") == "virtio_rng"
    assert kernel.module_name("kernel/net/core/failover.ko.xz") == "failover"


def _fake_tree():
    files = {
        "kernel/drivers/virtio/virtio_ring.ko": ko("virtio_ring", ""),
        "kernel/drivers/virtio/virtio.ko": ko("virtio", "virtio_ring"),
        "kernel/drivers/virtio/virtio_pci.ko": ko("virtio_pci", "virtio_pci_legacy_dev,virtio,virtio_ring"),
        "kernel/drivers/virtio/virtio_pci_legacy_dev.ko": ko("virtio_pci_legacy_dev", ""),
        "kernel/net/core/failover.ko": ko("failover", ""),
        "kernel/drivers/net/net-failover.ko": ko("net_failover", "failover"),
        "kernel/drivers/net/virtio_net.ko": ko("virtio_net", "net_failover,virtio,virtio_ring"),
        "kernel/drivers/block/virtio_blk.ko": ko("virtio_blk", "virtio,virtio_ring,crc32c"),
    }
    available = {kernel.module_name(p): p for p in files}
    return files, available


def test_resolve_modules_orders_dependencies_first_and_skips_builtins():
    files, available = _fake_tree()
    reads: list[str] = []

    def read(path: str) -> bytes:
        reads.append(path)
        return files[path]

    order = kernel.resolve_modules(["virtio_pci", "virtio_net", "virtio_blk"], available, {"crc32c"}, read)
    names = [kernel.module_name(p) for p in order]
    assert sorted(names) == sorted(available)  # each once, only what is needed
    for module, deps in {
        "virtio": ["virtio_ring"],
        "virtio_pci": ["virtio", "virtio_pci_legacy_dev"],
        "net_failover": ["failover"],
        "virtio_net": ["net_failover", "virtio"],
        "virtio_blk": ["virtio"],
    }.items():
        for dep in deps:
            assert names.index(dep) < names.index(module), (dep, module, names)
    assert len(reads) == len(set(reads))  # each module read once


def test_resolve_modules_fails_on_missing_and_cyclic_modules():
    files, available = _fake_tree()
    with pytest.raises(LabError, match=r"crc32c .*virtio_blk"):
        kernel.resolve_modules(["virtio_blk"], available, set(), files.__getitem__)
    files["kernel/a.ko"], files["kernel/b.ko"] = ko("a", "b"), ko("b", "a")
    available.update(a="kernel/a.ko", b="kernel/b.ko")
    with pytest.raises(LabError, match="cycle: a -> b -> a"):
        kernel.resolve_modules(["a"], available, set(), files.__getitem__)
    # A built-in wanted module needs nothing at all.
    assert kernel.resolve_modules(["virtio_pci"], available, {"virtio_pci"}, files.__getitem__) == []


# --- cpio ------------------------------------------------------------------------------------------


def parse_newc(data: bytes) -> list[dict]:
    """An independent, strict reader of newc archives: every field checked, alignment enforced."""
    entries, pos = [], 0
    while True:
        assert pos % 4 == 0, f"header at unaligned offset {pos}"
        assert data[pos : pos + 6] == b"070701", f"bad magic at {pos}: {data[pos : pos + 6]!r}"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, nlink, mtime, size, _dmaj, _dmin, rmaj, rmin, namesize, check = fields
        name_start = pos + 110
        name = data[name_start : name_start + namesize]
        assert name.endswith(b"\0") and b"\0" not in name[:-1], name
        pos = name_start + namesize
        pos += -pos % 4
        body = data[pos : pos + size]
        assert len(body) == size
        pos += size
        assert data[pos : pos + (-pos % 4)] == b"\0" * (-pos % 4)
        pos += -pos % 4
        entry = dict(
            name=name[:-1].decode(),
            ino=ino,
            mode=mode,
            uid=uid,
            gid=gid,
            nlink=nlink,
            mtime=mtime,
            data=body,
            rdev=(rmaj, rmin),
            check=check,
        )
        if entry["name"] == "TRAILER!!!":
            assert pos == len(data), "data after the trailer"
            return entries
        entries.append(entry)


def test_cpio_writer_makes_a_valid_newc_archive():
    w = initramfs.CpioWriter()
    w.add_dir("bin")
    w.add_file("bin/busybox", b"\x7fELF-static" * 3, 0o755)
    w.add_symlink("bin/sh", "busybox")
    w.add_dir("dev")
    w.add_char_device("dev/console", 5, 1)
    w.add_dirs("lib/modules/6.1.0-57-amd64/kernel/net")
    w.add_file("init", b"#!/bin/sh\n", 0o755)
    w.add_file("empty", b"")
    data = w.finish()
    assert w.finish() == data  # finishing twice changes nothing
    entries = {e["name"]: e for e in parse_newc(data)}
    assert list(entries)[:5] == ["bin", "bin/busybox", "bin/sh", "dev", "dev/console"]
    assert stat.S_ISDIR(entries["bin"]["mode"]) and entries["bin"]["nlink"] == 2
    assert entries["bin/busybox"]["data"] == b"\x7fELF-static" * 3
    assert stat.S_IMODE(entries["bin/busybox"]["mode"]) == 0o755 and stat.S_ISREG(entries["bin/busybox"]["mode"])
    assert stat.S_ISLNK(entries["bin/sh"]["mode"]) and entries["bin/sh"]["data"] == b"busybox"
    assert stat.S_ISCHR(entries["dev/console"]["mode"]) and entries["dev/console"]["rdev"] == (5, 1)
    assert "lib/modules/6.1.0-57-amd64/kernel" in entries and "lib" in entries
    assert entries["empty"]["data"] == b""
    assert len({e["ino"] for e in entries.values()}) == len(entries)
    assert all(e["uid"] == 0 and e["gid"] == 0 and e["mtime"] == 0 for e in entries.values())


def test_cpio_writer_refuses_orphans_and_duplicates():
    w = initramfs.CpioWriter()
    with pytest.raises(ValueError, match="before its directory"):
        w.add_file("etc/passwd", b"")
    w.add_dir("etc")
    with pytest.raises(ValueError, match="duplicate"):
        w.add_dir("/etc/")
    w.finish()
    with pytest.raises(ValueError, match="finished"):
        w.add_dir("more")


def test_cpio_archive_extracts_with_a_real_cpio(tmp_path):
    tool = shutil.which("cpio") or shutil.which("busybox")
    if tool is None:
        pytest.skip("neither cpio nor busybox on this host (the strict reader above still checks the format)")
    archive = initramfs.build_initramfs(b"BUSYBOX", "6.1.0-57-amd64", [("kernel/net/core/failover.ko", b"KO")])
    argv = [tool, "-i", "-d"] if tool.endswith("cpio") and not tool.endswith("busybox") else [tool, "cpio", "-i", "-d"]
    subprocess.run(argv, input=archive, cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "bin/busybox").read_bytes() == b"BUSYBOX"
    assert (tmp_path / "bin/sh").is_symlink()
    assert (tmp_path / "lib/modules/6.1.0-57-amd64/kernel/net/core/failover.ko").read_bytes() == b"KO"


def test_initramfs_holds_busybox_init_scripts_and_modules_in_order():
    mods = [("kernel/drivers/virtio/virtio_ring.ko", b"R"), ("kernel/drivers/virtio/virtio.ko", b"V")]
    entries = {e["name"]: e for e in parse_newc(initramfs.build_initramfs(b"BB", "6.1.0-57-amd64", mods))}
    init = entries["init"]
    assert stat.S_IMODE(init["mode"]) == 0o755 and init["data"] == initramfs.INIT_SCRIPT.encode()
    assert entries["bin/busybox"]["data"] == b"BB" and entries["bin/sh"]["data"] == b"busybox"
    assert entries["dev/console"]["rdev"] == (5, 1)
    assert entries["etc/vcl/modules"]["data"] == (
        b"6.1.0-57-amd64/kernel/drivers/virtio/virtio_ring.ko\n6.1.0-57-amd64/kernel/drivers/virtio/virtio.ko\n"
    )
    assert entries["lib/modules/6.1.0-57-amd64/kernel/drivers/virtio/virtio.ko"]["data"] == b"V"
    assert stat.S_IMODE(entries["etc/vcl/udhcpc.sh"]["mode"]) == 0o755


# --- the guest's scripts and their contract ------------------------------------------------------


@pytest.mark.parametrize("script", ["INIT_SCRIPT", "UDHCPC_SCRIPT", "MARKER_SCRIPT", "DISK_SCRIPT"])
def test_guest_scripts_are_valid_shell(script, tmp_path):
    path = tmp_path / "s.sh"
    path.write_text(getattr(initramfs, script))
    proc = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_init_prints_the_lines_the_tests_look_for():
    assert 'echo "vcl-guest: booted"' in initramfs.INIT_SCRIPT
    assert 'say "lease $IP"' in initramfs.INIT_SCRIPT and initramfs.INIT_SCRIPT.count("lease $IP") == 1
    assert 'echo "vcl-guest ready $IP $MAC"' in initramfs.INIT_SCRIPT
    assert "-p 80 " in initramfs.INIT_SCRIPT and initramfs.MARKER_PORT == 80
    assert initramfs.LEASE_RE.search("x\nvcl-guest: lease 10.0.0.5\r\n").group(1) == "10.0.0.5"
    m = initramfs.MARKER_RE.search("vcl-guest ready 10.0.0.5 52:54:00:aa:bb:01\n")
    assert m.groups() == ("10.0.0.5", "52:54:00:aa:bb:01")


def test_udhcpc_script_applies_address_and_router(tmp_path):
    """Run the udhcpc script with a stub `ip` and a private /run/vcl: it must add ADDR/PREFIX and
    the default route, and record the address."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    (bindir / "ip").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    (bindir / "ip").chmod(0o755)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    script = tmp_path / "udhcpc.sh"
    script.write_text(initramfs.UDHCPC_SCRIPT.replace("/run/vcl/", f"{run_dir}/"))
    env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "interface": "eth0",
        "ip": "10.9.8.7",
        "mask": "22",
        "router": "10.9.8.1 10.9.8.2",
    }
    subprocess.run(["sh", str(script), "bound"], env=env, check=True)
    lines = calls.read_text().splitlines()
    assert "addr add 10.9.8.7/22 dev eth0" in lines
    assert "route add default via 10.9.8.1 dev eth0" in lines
    assert not any("10.9.8.2" in ln for ln in lines)  # the first router that works
    assert (run_dir / "ip").read_text().strip() == "10.9.8.7"


def _inputs(**kw) -> build.GuestInputs:
    base = dict(kernel_package="linux-image-6.1.0-57-amd64", kernel_version="6.1.192-3", busybox_version="1:1.35")
    return build.GuestInputs(**{**base, **kw})


def test_the_key_follows_every_input(monkeypatch):
    key = _inputs().key()
    assert _inputs().key() == key and len(key) == 16
    assert _inputs(kernel_version="6.1.193-1").key() != key
    assert _inputs(busybox_version="1:1.36").key() != key
    assert _inputs(modules=("virtio_pci", "virtio_net")).key() != key
    monkeypatch.setattr(initramfs, "INIT_SCRIPT", initramfs.INIT_SCRIPT + "# changed\n")
    assert _inputs().key() != key
    monkeypatch.setattr(build, "DEFAULT_CMDLINE", build.DEFAULT_CMDLINE + " loglevel=8")
    assert _inputs().key() != key


def test_static_cmdline():
    guest = build.Guest(
        key="k",
        directory=Path("/x"),
        vmlinux=Path("/x/vmlinux"),
        initrd=Path("/x/initrd.img"),
        disk=Path("/x/disk.qcow2"),
        cmdline=build.DEFAULT_CMDLINE,
        marker_port=80,
        kernel_package="p",
        kernel_version="v",
        kernel_release="r",
        busybox_version="b",
        modules=(),
        build_seconds=1.0,
    )
    assert guest.static_cmdline("10.1.2.3/24") == build.DEFAULT_CMDLINE + " vcl.ip=10.1.2.3/24"
    assert guest.static_cmdline("10.1.2.3/24", "10.1.2.1").endswith(" vcl.ip=10.1.2.3/24 vcl.gw=10.1.2.1")
    for bad in ("10.1.2.3", "10.1.2.3/24 init=/bin/sh"):
        with pytest.raises(LabError):
            guest.static_cmdline(bad)
    with pytest.raises(LabError):
        guest.static_cmdline("10.1.2.3/24", "x y")


def test_domain_xml_has_what_a_software_guest_needs():
    xml = domain.domain_xml(
        "t1",
        kernel="/i/vmlinux",
        initrd="/i/initrd.img",
        cmdline="console=ttyS0 a=<b>&",
        serial_log="/i/serial.log",
        bridge="br9",
        mac="52:54:00:00:00:01",
        disk="/i/o.qcow2",
    )
    dom = ET.fromstring(xml)
    assert dom.get("type") == "qemu" and dom.findtext("name") == "t1"
    assert dom.find("features/acpi") is not None
    assert dom.findtext("os/kernel") == "/i/vmlinux" and dom.findtext("os/cmdline") == "console=ttyS0 a=<b>&"
    assert dom.find("devices/interface/source").get("bridge") == "br9"
    assert dom.find("devices/interface/model").get("type") == "virtio"
    assert dom.find("devices/serial").get("type") == "file"
    assert dom.find("devices/serial/source").get("path") == "/i/serial.log"
    assert dom.find("devices/disk/target").get("bus") == "virtio"
    assert dom.find("devices/controller[@type='usb']").get("model") == "none"
    assert (
        ET.fromstring(domain.domain_xml("t2", kernel="k", initrd="i", cmdline="c", serial_log="s")).find("devices/disk")
        is None
    )


# --- the cache -------------------------------------------------------------------------------------


def test_ensure_guest_builds_once_and_points_current(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "GUEST_ROOT", tmp_path)
    monkeypatch.setattr(build, "require_tools", lambda *t: {})
    inputs = [_inputs()]
    monkeypatch.setattr(build, "resolve_inputs", lambda: inputs[0])
    builds: list[str] = []

    def fake_build(inp, final, progress):
        builds.append(inp.key())
        out = tmp_path / f".build-{len(builds)}"
        out.mkdir()
        for name in ("vmlinux", "initrd.img", "disk.qcow2"):
            (out / name).write_bytes(b"x")
        manifest = dict(
            key=inp.key(),
            cmdline=build.DEFAULT_CMDLINE,
            marker_port=80,
            kernel_package=inp.kernel_package,
            kernel_version=inp.kernel_version,
            kernel_release="r",
            busybox_version=inp.busybox_version,
            modules=[],
            build_seconds=0.1,
        )
        (out / "manifest.json").write_text(json.dumps(manifest))
        if final.exists():
            shutil.rmtree(final)
        out.rename(final)

    monkeypatch.setattr(build, "_build", fake_build)
    first = build.ensure_guest(progress=lambda m: None)
    assert first.built and builds == [first.key]
    again = build.ensure_guest(progress=lambda m: None)
    assert not again.built and builds == [first.key] and again == build.Guest.load(first.directory)
    assert (tmp_path / "current").resolve() == first.directory and build.current_guest().key == first.key
    build.ensure_guest(rebuild=True, progress=lambda m: None)
    assert builds == [first.key, first.key]
    inputs[0] = _inputs(kernel_version="6.1.200-1")  # a new kernel on the mirror: a new guest
    newer = build.ensure_guest(progress=lambda m: None)
    assert newer.key != first.key and newer.built and build.current_guest().key == newer.key
    assert first.directory.is_dir()  # the old build stays until pruned

    def no_apt():
        raise LabError("no lists")

    monkeypatch.setattr(build, "resolve_inputs", no_apt)  # offline: the current guest is used
    assert build.ensure_guest(progress=lambda m: None).key == newer.key
    assert build.prune_guests() == [first.directory]
    assert not first.directory.exists() and build.current_guest().key == newer.key


def test_an_incomplete_guest_directory_is_not_loaded(tmp_path):
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(LabError, match="no complete guest"):
        build.Guest.load(tmp_path)


def _disk_note_block() -> str:
    """The init script's disk-note part, from its comment to its `fi`."""
    script = initramfs.INIT_SCRIPT
    start = script.index("# The disk's note")
    end = script.index("\nfi\n", start) + 4
    return script[start:end]


def test_the_disk_note_counts_boots_and_keeps_the_first_mac(tmp_path):
    """The guest's disk note, run by sh against a file standing for /dev/vda (nc and say stubbed): the first boot
    writes its own MAC and 1, each later boot adds one and keeps the first MAC; the rest of the disk is untouched;
    a note that is not one (garbage, a bad MAC) starts again at the booting VM."""
    disk = tmp_path / "vda"
    disk.write_bytes(b"\0" * 4096 + b"DATA")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "nc").write_text("#!/bin/sh\nexit 0\n")
    (bindir / "nc").chmod(0o755)
    (bindir / "usleep").write_text("#!/bin/sh\nexit 0\n")
    (bindir / "usleep").chmod(0o755)
    block = (_disk_note_block().replace("[ -b /dev/vda ]", f"[ -f {disk} ]").replace("/dev/vda", str(disk))
             .replace("/run/vcl/", f"{run_dir}/").replace("(while :; do nc", "(for _ in 1; do nc"))

    def boot(mac: str) -> str:
        script = tmp_path / "boot.sh"
        script.write_text(f'say() {{ echo "vcl-guest: $*"; }}\nMAC={mac}\n{block}')
        proc = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=20,
                              env={"PATH": f"{bindir}:/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stderr
        return (run_dir / "disk").read_text().strip()

    assert boot("52:54:00:aa:bb:01") == "vcl-disk 52:54:00:aa:bb:01 1"
    assert boot("52:54:00:aa:bb:02") == "vcl-disk 52:54:00:aa:bb:01 2"
    assert boot("52:54:00:aa:bb:03") == "vcl-disk 52:54:00:aa:bb:01 3"
    data = disk.read_bytes()
    assert len(data) == 4100 and data[4096:] == b"DATA" and data[:64].rstrip(b" \n") == b"vcl-disk 52:54:00:aa:bb:01 3"
    m = initramfs.DISK_RE.search(data[:64].decode())
    assert m and m.groups() == ("52:54:00:aa:bb:01", "3")
    disk.write_bytes(b"vcl-disk zz:54:00:aa:bb:01 7".ljust(64) + b"\0" * 64)
    assert boot("52:54:00:aa:bb:04") == "vcl-disk 52:54:00:aa:bb:04 1"
    assert "-p 81 " in initramfs.INIT_SCRIPT and initramfs.DISK_PORT == 81
