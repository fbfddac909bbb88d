"""The lookup vcl.lab.vcl_console_password: a VM's console password generated once into a 0600 file, in a 0700
directory of this user; symlinks, other users' directories and names that are not plain file names refused."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from ansible.errors import AnsibleLookupError
from ansible_collections.vcl.lab.plugins.lookup.vcl_console_password import LookupModule, console_password

REPO = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_first_call_writes_a_0600_file_in_a_0700_directory_and_later_calls_read_it(tmp_path):
    consoles = tmp_path / "home" / ".vcl" / "consoles"
    old = os.umask(0)
    try:
        password = console_password(str(consoles), "vm-14-525400123456.vnc")
    finally:
        os.umask(old)
    assert len(password) == 8 and password.isalnum() and password.isascii()
    file = consoles / "vm-14-525400123456.vnc"
    assert file.read_text() == password + "\n" and mode(file) == 0o600 and mode(consoles) == 0o700
    assert console_password(str(consoles), "vm-14-525400123456.vnc") == password
    assert LookupModule().run([str(consoles), "vm-14-525400123456.vnc"]) == [password]
    # Another VM gets its own password (8 characters of 62: two equal draws are a 1 in 2e14 event).
    assert console_password(str(consoles), "vm-15-525400abcdef.vnc") != password


def test_an_existing_directory_and_file_are_tightened(tmp_path):
    consoles = tmp_path / "consoles"
    consoles.mkdir(mode=0o755)
    consoles.chmod(0o755)
    (consoles / "vm-1-5254000000aa.vnc").write_text("Secret12\n")
    (consoles / "vm-1-5254000000aa.vnc").chmod(0o644)
    assert console_password(str(consoles), "vm-1-5254000000aa.vnc") == "Secret12"
    assert mode(consoles) == 0o700 and mode(consoles / "vm-1-5254000000aa.vnc") == 0o600


@pytest.mark.parametrize("name", ["../x.vnc", "a/b.vnc", ".hidden", "", "..", "x" * 200, "vm 1.vnc", "vm-1\n.vnc"])
def test_a_name_that_is_not_a_plain_file_name_is_refused(tmp_path, name):
    with pytest.raises(AnsibleLookupError, match="name:"):
        console_password(str(tmp_path / "consoles"), name)
    assert not (tmp_path / "consoles").exists()  # nothing made


@pytest.mark.parametrize("directory", ["relative/consoles", "/tmp/../etc", "/tmp/x/", ""])
def test_a_directory_that_is_not_a_normalised_absolute_path_is_refused(directory):
    with pytest.raises(AnsibleLookupError, match="directory:"):
        console_password(directory, "vm-1-5254000000aa.vnc")


def test_symlinks_are_refused_and_nothing_is_written_through_them(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(AnsibleLookupError, match="not a directory"):
        console_password(str(tmp_path / "link"), "vm-1-5254000000aa.vnc")
    consoles = tmp_path / "consoles"
    consoles.mkdir(mode=0o700)
    (consoles / "vm-2-5254000000bb.vnc").symlink_to(target / "stolen")
    with pytest.raises(AnsibleLookupError, match=r"vm-2-5254000000bb\.vnc"):
        console_password(str(consoles), "vm-2-5254000000bb.vnc")
    assert list(target.iterdir()) == []


def test_a_file_where_the_directory_should_be_is_refused(tmp_path):
    (tmp_path / "consoles").write_text("")
    with pytest.raises(AnsibleLookupError, match="consoles"):
        console_password(str(tmp_path / "consoles"), "vm-1-5254000000aa.vnc")


def test_an_empty_password_file_is_refused(tmp_path):
    consoles = tmp_path / "consoles"
    consoles.mkdir(mode=0o700)
    (consoles / "vm-3-5254000000cc.vnc").write_text("\n")
    with pytest.raises(AnsibleLookupError, match="empty"):
        console_password(str(consoles), "vm-3-5254000000cc.vnc")


def test_the_lookup_works_by_fqcn_from_a_playbook_and_the_password_is_not_printed(tmp_path):
    consoles = tmp_path / "consoles"
    playbook = tmp_path / "p.yml"
    playbook.write_text(f"""
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.set_fact:
        pw: "{{{{ lookup('vcl.lab.vcl_console_password', '{consoles}', 'vm-9-5254000000dd.vnc') }}}}"
      no_log: true
    - ansible.builtin.assert:
        that: pw | length == 8
        quiet: true
""")
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), str(playbook)], cwd=REPO,
                          text=True, capture_output=True, stdin=subprocess.DEVNULL)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    password = (consoles / "vm-9-5254000000dd.vnc").read_text().strip()
    assert password not in proc.stdout + proc.stderr and mode(consoles / "vm-9-5254000000dd.vnc") == 0o600
