"""Image files confined to the image store (vcl_sched/imagepath.py, issue 12 item 3): the pure checks, the
checks on a real file system (symlinks out of the store, devices, fifos, directories), and `vcl image add`, which
refuses each bad path in one line naming the field, exit 1, with nothing written."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vcl_sched import imagepath
from vcl_sched.cli import main
from vcl_sched.errors import ValidationError

STORE = "/var/lib/vcl/images"
VCL = Path(sys.executable).parent / "vcl"


def refused(store: str, disk, kernel=None, ramdisk=None) -> ValidationError:
    with pytest.raises(ValidationError) as err:
        imagepath.image_files(store, disk, kernel, ramdisk)
    assert "\n" not in str(err.value)
    return err.value


@pytest.mark.parametrize(("disk", "kernel", "ramdisk"), [
    (f"{STORE}/tiny/disk.qcow2", None, None),
    (f"{STORE}/tiny/v2/disk.qcow2", f"{STORE}/tiny/v2/vmlinux", f"{STORE}/tiny/v2/initrd.img"),
    (f"{STORE}/a-b_c.d+e/1.0/D-1_x+y.qcow2", "", None),
])
def test_a_file_in_an_image_directory_of_the_store_is_accepted(disk, kernel, ramdisk):
    assert imagepath.image_files(STORE, disk, kernel, ramdisk) == (disk, kernel or None, ramdisk or None)
    assert imagepath.image_dir(STORE, disk) == os.path.dirname(disk)


@pytest.mark.parametrize(("disk", "needle"), [
    ("/x.qcow2", "outside the image store"),
    ("/etc/shadow", "outside the image store"),
    ("/", "normalised"),
    (STORE, "outside the image store"),
    ("/var/lib/vcl/imagesX/a/x.qcow2", "outside the image store"),
    (f"{STORE}/x.qcow2", "directory of its own"),  # the launch would copy the whole store
    (f"{STORE}/a/b/c/x.qcow2", "directory of its own"),
    (f"{STORE}/../images/a/x.qcow2", "normalised"),
    (f"{STORE}/a/../../../etc/shadow", "normalised"),
    (f"{STORE}/a/..", "normalised"),
    (f"{STORE}/a/./x.qcow2", "normalised"),
    (f"{STORE}//a/x.qcow2", "normalised"),
    (f"{STORE}/a/x.qcow2/", "normalised"),
    (f"{STORE}/a/.ssh", "letter or digit"),
    (f"{STORE}/-rf/x", "letter or digit"),
    (f"{STORE}/a/x\n.qcow2", "contains '\\n'"),
    (f"{STORE}/a/x\x00", "contains '\\x00'"),
    (f"{STORE}/a/\x1b[31mx", "contains '\\x1b'"),
    (f"{STORE}/a/x\x7f", "contains '\\x7f'"),
    (f"{STORE}/a/x\u2028", "contains"),
    (f"{STORE}/a/my disk", "contains ' '"),
    (f"{STORE}/a/é.qcow2", "contains 'é'"),
    (f"{STORE}/a/$(id)", "contains '$'"),
    (f"{STORE}/a/{{{{ 7 * 7 }}}}", "contains ' '"),
    (f"{STORE}/a/host:x", "contains ':'"),
    (f"{STORE}/a/~", "contains '~'"),
    ("images/a/x.qcow2", "absolute"),
    ("", "required"),
    (None, "required"),
    (42, "not text"),
    (f"{STORE}/a/" + "x" * 1100, "longer than"),
])
def test_a_bad_disk_path_is_refused_naming_disk_file(disk, needle):
    err = refused(STORE, disk)
    assert err.field == "disk_file" and needle in err.message, err


@pytest.mark.parametrize(("kernel", "ramdisk", "field", "needle"), [
    (f"{STORE}/other/vmlinux", None, "kernel", "disk's directory"),
    (f"{STORE}/tiny/v2/vmlinux", None, "kernel", "disk's directory"),
    ("/boot/vmlinuz", None, "kernel", "outside the image store"),
    (None, f"{STORE}/tiny/../initrd", "ramdisk", "normalised"),
    (None, "/etc/shadow", "ramdisk", "outside"),
    (None, f"{STORE}/tiny/init\trd", "ramdisk", "contains"),
])
def test_kernel_and_ramdisk_are_in_the_disks_directory(kernel, ramdisk, field, needle):
    err = refused(STORE, f"{STORE}/tiny/disk.qcow2", kernel, ramdisk)
    assert err.field == field and needle in err.message, err


@pytest.mark.parametrize("store", ["/", "relative", "/srv/images/", "/srv/../images", "/srv//images", "/srv/i\nx"])
def test_a_bad_store_is_refused_naming_image_store(store):
    assert refused(store, "/srv/images/a/disk.qcow2").field == "image_store"


# Random paths, built from the pieces that matter (the store's parts, '..', '.', '', '/', control characters,
# look-alike prefixes) and from any text at all.
_PIECES = st.sampled_from(["var", "lib", "vcl", "images", "imagesX", "a", "b1", "v2", "disk.qcow2", "..", ".", "",
                           "-x", ".hidden", "é", "a b", "x\n", "\x00", "etc", "shadow", "+", "_"])
_PATHS = st.one_of(
    st.lists(_PIECES, max_size=8).map(lambda parts: "/" + "/".join(parts)),
    st.lists(_PIECES, max_size=4).map(lambda parts: STORE + "/" + "/".join(parts)),
    st.lists(_PIECES, max_size=4).map(lambda parts: STORE + "/".join(parts)),
    st.text(max_size=40),
    st.text(max_size=20).map(lambda t: f"{STORE}/{t}"),
)


@settings(max_examples=1500, deadline=None)
@given(_PATHS)
def test_nothing_accepted_is_outside_the_store_or_directly_in_it(path):
    try:
        disk, _, _ = imagepath.image_files(STORE, path)
    except ValidationError as err:
        assert err.field == "disk_file" and "\n" not in str(err)
        return
    directory = os.path.dirname(disk)
    assert os.path.normpath(disk) == disk and disk.isprintable() and disk.isascii()
    assert os.path.commonpath([STORE, disk]) == STORE and os.path.commonpath([STORE, directory]) == STORE
    assert directory != STORE and disk != STORE
    assert ".." not in disk.split("/") and "//" not in disk
    assert 2 <= len(os.path.relpath(disk, STORE).split("/")) <= 3


# --- on a real file system -------------------------------------------------------------------------------------

@pytest.fixture
def store():
    """A fresh image store (its path made of letters, digits and _ only, whatever the test's id)."""
    path = tempfile.mkdtemp(prefix="vclstore")
    yield Path(path)
    shutil.rmtree(path)


def _disk(store: Path, rel: str = "img/disk.qcow2", content: bytes = b"QFI\xfb") -> Path:
    path = store / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_real_files_in_the_store_pass_and_missing_ones_too(store):
    disk = _disk(store)
    (disk.parent / "vmlinux").write_bytes(b"k")
    (disk.parent / "initrd.img").symlink_to("vmlinux")  # a link inside the image's directory
    assert imagepath.image_files(str(store), str(disk), str(disk.parent / "vmlinux"), str(disk.parent / "initrd.img"))
    # The store may be on another host than the controller: a path that does not exist here is checked as text.
    assert imagepath.image_files(str(store), f"{store}/new/disk.qcow2")


def test_a_store_reached_through_a_symlink_is_fine(store):
    real = store / "real"
    real.mkdir()
    link = store / "link"
    link.symlink_to(real)
    _disk(real)
    assert imagepath.image_files(str(link), f"{link}/img/disk.qcow2")


@pytest.mark.parametrize(("make", "needle"), [
    (lambda s: (s / "img").mkdir() or (s / "img" / "disk.qcow2").symlink_to("/etc/passwd"), "outside its image"),
    (lambda s: (s / "img").mkdir() or (s / "img" / "disk.qcow2").symlink_to("/nonexistent/x"), "outside its image"),
    (lambda s: (s / "img").mkdir() or (s / "img" / "disk.qcow2").symlink_to("../other/disk.qcow2"),
     "outside its image"),
    (lambda s: (s / "img").symlink_to("/etc"), "not below the image store"),
    (lambda s: (s / "img").symlink_to("."), "not below the image store"),  # the store itself: it would all be copied
    (lambda s: (s / "img").symlink_to(".."), "not below the image store"),
    (lambda s: (s / "img").mkdir() or (s / "img" / "disk.qcow2").symlink_to("/dev/null"), "outside its image"),
    (lambda s: (s / "img").mkdir() or os.mkfifo(s / "img" / "disk.qcow2"), "is a fifo"),
    (lambda s: (s / "img" / "disk.qcow2").mkdir(parents=True), "is a directory"),
    (lambda s: (s / "img").write_text("a file where the image's directory should be"), "not a directory"),
    (lambda s: (s / "img").mkdir() or (s / "img" / "disk.qcow2").symlink_to("disk.qcow2"), "cannot be read"),
])
def test_what_the_path_leads_to_on_disk_is_checked(store, make, needle):
    make(store)
    err = refused(str(store), f"{store}/img/disk.qcow2")
    assert err.field == "disk_file" and needle in err.message, err


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_a_device_in_the_store_is_refused(store):
    (store / "img").mkdir()
    os.mknod(store / "img" / "disk.qcow2", stat.S_IFCHR | 0o600, os.makedev(1, 3))  # what /dev/null is
    err = refused(str(store), f"{store}/img/disk.qcow2")
    assert err.field == "disk_file" and "is a device" in err.message


def test_dev_null_is_refused_as_an_image_file():
    assert "outside the image store" in refused(STORE, "/dev/null").message
    err = refused("/dev", "/dev/null")
    assert err.field == "image_store" and "system directory" in err.message


def test_a_kernel_symlinked_out_is_refused_naming_kernel(store):
    disk = _disk(store)
    (disk.parent / "vmlinux").symlink_to("/boot")
    err = refused(str(store), str(disk), str(disk.parent / "vmlinux"))
    assert err.field == "kernel"


# --- `vcl image add` ---------------------------------------------------------------------------------------------

@pytest.fixture
def lab(store, tmp_path, monkeypatch, capsys):
    """A lab database whose image_store is ``store``; ``run(*argv)`` runs `vcl` in this process."""
    db = tmp_path / "vcl.sqlite"
    monkeypatch.setenv("VCL_DB_URL", f"sqlite:///{db}")
    monkeypatch.setenv("VCL_NOW", "2026-11-22 10:00")

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    assert run("db", "init")[0] == 0
    assert run("config", "set", f"image_store={store}")[0] == 0
    (store / "outside").mkdir()
    (store / "outside" / "secret").write_text("x")
    return db, run


def _rows(db: Path) -> list[str]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def _bad_cases(store: Path) -> list[tuple[list[str], str]]:
    s = str(store)
    (store / "lnk").mkdir(exist_ok=True)
    if not (store / "lnk" / "disk.qcow2").is_symlink():
        (store / "lnk" / "disk.qcow2").symlink_to("/etc/shadow")
    if not (store / "up").is_symlink():
        (store / "up").symlink_to("/")
    return [
        (["--disk-file", "/x.qcow2"], "disk_file"),
        (["--disk-file", "/etc/shadow"], "disk_file"),
        (["--disk-file", f"{s}/x.qcow2"], "disk_file"),
        (["--disk-file", f"{s}/a/../../etc/shadow"], "disk_file"),
        (["--disk-file", f"{s}/a/x\n.qcow2"], "disk_file"),
        (["--disk-file", f"{s}/a/x\x1b.qcow2"], "disk_file"),
        (["--disk-file", f"{s}/lnk/disk.qcow2"], "disk_file"),
        (["--disk-file", f"{s}/up/etc/shadow"], "disk_file"),
        (["--disk-file", f"{s}/outside"], "disk_file"),
        (["--disk-file", "/dev/null"], "disk_file"),
        (["--disk-file", f"{s}/a/disk.qcow2", "--kernel", "/boot/vmlinuz"], "kernel"),
        (["--disk-file", f"{s}/a/disk.qcow2", "--kernel", f"{s}/b/vmlinux"], "kernel"),
        (["--disk-file", f"{s}/a/disk.qcow2", "--ramdisk", f"{s}/a/../b/initrd"], "ramdisk"),
        (["--disk-file", f"{s}/a/disk.qcow2", "--ramdisk", f"{s}/outside/secret\x00"], "ramdisk"),
    ]


def test_vcl_image_add_refuses_each_bad_path_in_one_line_and_writes_nothing(lab, store):
    db, run = lab
    for options, field in _bad_cases(store):
        before = _rows(db)
        code, out, err = run("image", "add", "img", *options)
        assert code == 1 and out == "", (options, err)
        assert err.count("\n") == 1 and err.startswith(f"vcl: {field}: "), (options, err)
        assert _rows(db) == before, options
    assert run("image", "add", "img", "--disk-file", f"{store}/img/disk.qcow2", "--kernel",
               f"{store}/img/vmlinux")[0] == 0


def test_the_real_vcl_command_exits_1_with_one_line(lab, store):
    db, _ = lab
    env = {**os.environ, "VCL_DB_URL": f"sqlite:///{db}"}
    for options, field in _bad_cases(store)[:8]:
        before = _rows(db)
        proc = subprocess.run([str(VCL), "image", "add", "img", *options], env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        assert proc.returncode == 1 and proc.stdout == "", proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"vcl: {field}: "), proc.stderr
        assert "Traceback" not in proc.stderr and _rows(db) == before


def test_the_store_setting_decides(lab, store):
    _, run = lab
    code, _, err = run("image", "add", "img", "--disk-file", "/var/lib/vcl/images/img/disk.qcow2")
    assert code == 1 and err.startswith("vcl: disk_file: ") and str(store) in err
