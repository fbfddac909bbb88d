"""Per-VM locks on a slave (plugins/module_utils/vcl_lock.py, taken by vcl_domain): a root-only directory, no
symlink followed, a timeout that names the holder. Real files, real flock, real second processes; the module
runs as its own process the way Ansible's wrapper runs it (libvirt's test driver, no daemon)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from ansible_collections.vcl.lab.plugins.module_utils import vcl_lock
from ansible_collections.vcl.lab.plugins.module_utils.vcl_lock import LockError, vm_lock

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "collections")}
HOLDER = textwrap.dedent("""
    import sys, time
    from ansible_collections.vcl.lab.plugins.module_utils.vcl_lock import vm_lock
    lock_dir, name, prefix, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    with vm_lock(name, "vcl_domain state=absent", 5, lock_dir, prefix=prefix):
        print("held", flush=True)
        time.sleep(seconds)
    print("released", flush=True)
""")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def hold(lock_dir, name: str, seconds: float = 30, prefix: str = "vcl"):
    """A second process that takes the lock and keeps it; returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_dir), name, prefix, str(seconds)],
                            stdout=subprocess.PIPE, text=True, env=ENV)  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def lock_dir(tmp_path) -> Path:
    return tmp_path / "run" / "vcl" / "locks"


def test_the_directory_is_made_0700_and_the_file_0600_naming_its_holder(lock_dir):
    with vm_lock("vcl-1", "vcl_domain state=running", 5, str(lock_dir)):
        lock_file = lock_dir / "vcl.vcl-1.lock"
        assert mode(lock_dir) == 0o700 and mode(lock_file) == 0o600
        holder = json.loads(lock_file.read_text())
        assert holder["pid"] == os.getpid() and holder["action"] == "vcl_domain state=running"
        assert time.strptime(holder["since"], "%Y-%m-%dT%H:%M:%SZ")
    assert lock_file.read_text() == ""  # released: nobody is named any more


def test_an_existing_directory_readable_by_others_is_tightened_and_an_old_file_too(lock_dir):
    lock_dir.mkdir(parents=True, mode=0o755)
    lock_dir.chmod(0o755)
    (lock_dir / "vcl.vcl-2.lock").write_text("")
    (lock_dir / "vcl.vcl-2.lock").chmod(0o644)
    with vm_lock("vcl-2", "test", 5, str(lock_dir)):
        assert mode(lock_dir) == 0o700 and mode(lock_dir / "vcl.vcl-2.lock") == 0o600


@pytest.mark.parametrize("dangling", [True, False], ids=["dangling", "to-a-file"])
def test_a_symlink_planted_where_the_lock_goes_is_refused_and_not_followed(lock_dir, tmp_path, dangling):
    lock_dir.mkdir(parents=True, mode=0o700)
    target = tmp_path / "victim"
    if not dangling:
        target.write_text("precious\n")
        target.chmod(0o644)
    (lock_dir / "vcl.vcl-3.lock").symlink_to(target)
    lock = vm_lock("vcl-3", "test", 5, str(lock_dir))
    with pytest.raises(LockError, match=r"^lock: .*vcl\.vcl-3\.lock is a symlink; refused"), lock:
        pytest.fail("the lock was taken through a symlink")
    if dangling:
        assert not target.exists()  # O_CREAT did not create the symlink's target
    else:
        assert target.read_text() == "precious\n" and mode(target) == 0o644


def test_a_symlink_planted_as_the_lock_directory_is_refused(lock_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    lock_dir.parent.mkdir(parents=True)
    lock_dir.symlink_to(elsewhere)
    lock = vm_lock("vcl-4", "test", 5, str(lock_dir))
    with pytest.raises(LockError, match="is a symlink or not a directory; refused"), lock:
        pytest.fail("the lock was taken in a symlinked directory")
    assert list(elsewhere.iterdir()) == []


def test_a_hard_link_planted_as_the_lock_file_is_refused(lock_dir, tmp_path):
    lock_dir.mkdir(parents=True, mode=0o700)
    other = tmp_path / "other"
    other.write_text("x")
    os.link(other, lock_dir / "vcl.vcl-5.lock")
    with pytest.raises(LockError, match="not a plain lock file"), vm_lock("vcl-5", "test", 5, str(lock_dir)):
        pytest.fail("the lock was taken on a hard link")
    assert other.read_text() == "x"


@pytest.mark.parametrize("bad_mode", [0o777, 0o1777, 0o770, 0o702])
def test_a_lock_directory_writable_by_group_or_others_is_refused(lock_dir, bad_mode):
    lock_dir.mkdir(parents=True)
    lock_dir.chmod(bad_mode)
    lock = vm_lock("vcl-6", "test", 5, str(lock_dir))
    with pytest.raises(LockError, match=rf"writable by group or others \(mode {bad_mode:04o}\); refused"), lock:
        pytest.fail("the lock was taken in a writable directory")
    assert list(lock_dir.iterdir()) == [] and mode(lock_dir) == bad_mode  # nothing created, nothing "fixed"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory to another user")
def test_a_lock_directory_of_another_user_is_refused(lock_dir):
    lock_dir.mkdir(parents=True, mode=0o700)
    os.chown(lock_dir, 65534, 65534)
    lock = vm_lock("vcl-7", "test", 5, str(lock_dir))
    with pytest.raises(LockError, match="owned by uid 65534, not root; refused"), lock:
        pytest.fail("the lock was taken in another user's directory")


def test_a_held_lock_times_out_naming_the_holder(lock_dir):
    holder = hold(lock_dir, "vcl-8")
    try:
        started = time.monotonic()
        with pytest.raises(LockError) as caught, vm_lock("vcl-8", "test", 1, str(lock_dir)):
            pytest.fail("two holders at once")
        waited = time.monotonic() - started
        assert 1 <= waited < 5
        message = str(caught.value)
        assert message.startswith("lock: vcl-8 is busy: held by ")
        assert f"pid {holder.pid} (vcl_domain state=absent) since 20" in message and "gave up after 1 s" in message
    finally:
        holder.kill()
        holder.wait()


def test_a_waiter_gets_the_lock_when_the_holder_ends(lock_dir):
    holder = hold(lock_dir, "vcl-9", seconds=1)
    try:
        with vm_lock("vcl-9", "waiter", 20, str(lock_dir)):
            assert holder.stdout.readline().strip() == "released"  # the holder had left its block
            assert json.loads((lock_dir / "vcl.vcl-9.lock").read_text())["action"] == "waiter"
    finally:
        holder.wait()


def test_bad_arguments_are_refused_before_any_file_is_made(lock_dir):
    with pytest.raises(LockError, match="is not a VM name"), vm_lock("../x", "t", 5, str(lock_dir)):
        pass
    with pytest.raises(LockError, match="lock_timeout: -1 is not in"), vm_lock("vcl-1", "t", -1, str(lock_dir)):
        pass
    assert not lock_dir.exists()


# -- the module, as Ansible runs it, against the real lock directory -----------------------------------------------
def run_module(tmp_path, **args) -> dict:
    args_file = tmp_path / f"args-{uuid.uuid4().hex[:6]}.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"uri": "test:///default", **args}}))
    proc = subprocess.run([sys.executable, "-m", "ansible_collections.vcl.lab.plugins.modules.vcl_domain",
                           str(args_file)], text=True, capture_output=True, env=ENV)  # fmt: skip
    return json.loads(proc.stdout)


@pytest.mark.libvirt
@pytest.mark.skipif(os.geteuid() != 0, reason="the module's lock directory, /run/vcl/locks, is root's")
def test_vcl_domain_waits_for_the_holder_then_fails_naming_it(tmp_path):
    pytest.importorskip("libvirt")
    name = f"vcl-lk{uuid.uuid4().hex[:8]}"
    holder = hold(vcl_lock.LOCK_DIR, name, prefix="vcl_domain")
    try:
        result = run_module(tmp_path, name=name, state="absent", lock_timeout=1)
        assert result["failed"]
        assert result["msg"].startswith(f"lock: {name} is busy: held by pid {holder.pid} (vcl_domain state=absent)")
    finally:
        holder.kill()
        holder.wait()
    assert mode(Path(vcl_lock.LOCK_DIR)) == 0o700
    result = run_module(tmp_path, name=name, state="absent", lock_timeout=1)  # free again: runs (nothing to remove)
    assert not result.get("failed") and result["domain_state"] == "absent", result
    lock_file = Path(vcl_lock.LOCK_DIR) / f"vcl_domain.{name}.lock"
    assert mode(lock_file) == 0o600 and lock_file.read_text() == ""
    lock_file.unlink()


@pytest.mark.libvirt
@pytest.mark.parametrize("timeout", [-1, 86401])
def test_vcl_domain_refuses_a_bad_lock_timeout(tmp_path, timeout):
    pytest.importorskip("libvirt")
    result = run_module(tmp_path, name="vcl-1", state="absent", lock_timeout=timeout)
    assert result["failed"] and result["msg"].startswith(f"lock_timeout: {timeout} is not a number of seconds")
