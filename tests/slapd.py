"""A real OpenLDAP server for the LDAP login tests (SPEC §7): its own slapd, never the system's.

``running_slapd(tmp)`` writes a slapd.conf (mdb backend) under ``tmp``, loads the directory with slapadd
(base dc=vcl,dc=test, ou=people, the users of ``USERS``: one cleartext and one {SSHA} userPassword), starts
/usr/sbin/slapd in the foreground on 127.0.0.1 at a free port, waits until it accepts connections (about
0.05 s) and, on exit, stops that process (only the pid it started). /etc/ldap is never read for
configuration nor written; the packaged service is never touched.

The server is permissive on purpose (``allow bind_anon_dn``: a bind with a DN and no password succeeds as
anonymous), so a test proves that the lab's code, not the directory, refuses such a login.

Use it from a test module as a session-scoped fixture::

    from slapd import running_slapd

    @pytest.fixture(scope="session")
    def directory(tmp_path_factory):
        with running_slapd(tmp_path_factory.mktemp("slapd")) as server:
            yield server
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
SCHEMA = Path("/etc/ldap/schema")  # read-only: the schema files the package ships
MODULES = Path("/usr/lib/ldap")
SUFFIX = "dc=vcl,dc=test"
PEOPLE = f"ou=people,{SUFFIX}"
USER_DN = f"uid={{user}},{PEOPLE}"
# uid -> (password, how it is stored). The passwords are the directory's: not the lab's password rules.
USERS = {"alice": ("alice-in-ldap-1", "cleartext"), "bob.smith-2": ("bobs ldap pass", "ssha")}
START_TIMEOUT = 5.0


@dataclass(frozen=True)
class Slapd:
    url: str  # ldap://127.0.0.1:PORT
    port: int
    pid: int
    user_dn: str  # the lab's ldap_user_dn setting for this directory
    users: dict[str, str]  # uid -> password


def ssha(password: str, salt: bytes = b"vcl-salt") -> str:
    """An {SSHA} userPassword, as slappasswd makes it: base64(SHA1(password + salt) + salt)."""
    digest = hashlib.sha1(password.encode() + salt).digest()  # OpenLDAP's {SSHA} scheme (test data)
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _ldif() -> str:
    entries = [f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: vcl\ndc: vcl\n",
               f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n"]
    for uid, (password, scheme) in USERS.items():
        stored = ssha(password) if scheme == "ssha" else password
        entries.append(f"dn: uid={uid},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n"
                       f"userPassword: {stored}\n")
    return "\n".join(entries)


def _conf(root: Path) -> str:
    schemas = "".join(f"include {SCHEMA / name}.schema\n" for name in ("core", "cosine", "inetorgperson"))
    return (f"{schemas}modulepath {MODULES}\nmoduleload back_mdb\npidfile {root}/slapd.pid\n"
            f"argsfile {root}/slapd.args\nallow bind_anon_dn\n"
            f'database mdb\nsuffix "{SUFFIX}"\nrootdn "cn=admin,{SUFFIX}"\ndirectory {root}/data\n'
            "maxsize 10485760\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


@contextlib.contextmanager
def running_slapd(root: Path) -> Iterator[Slapd]:
    if not (os.access(SLAPD, os.X_OK) and os.access(SLAPADD, os.X_OK)):
        pytest.skip("slapd is not installed (apt-get install slapd ldap-utils: requirements/apt-base.txt)")
    (root / "data").mkdir(parents=True)
    conf = root / "slapd.conf"
    conf.write_text(_conf(root))
    (root / "data.ldif").write_text(_ldif())
    subprocess.run([SLAPADD, "-q", "-f", str(conf), "-l", str(root / "data.ldif")], check=True,
                   capture_output=True, timeout=30)
    port = free_port()
    url = f"ldap://127.0.0.1:{port}"
    with open(root / "slapd.log", "wb") as log:
        # -d 0: stay in the foreground (the pid is ours to stop), no debug output.
        proc = subprocess.Popen([SLAPD, "-f", str(conf), "-h", f"{url}/", "-d", "0"], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"slapd did not start on {url}: {(root / 'slapd.log').read_text()[-2000:]}")
            time.sleep(0.02)
        yield Slapd(url, port, proc.pid, USER_DN, {uid: pw for uid, (pw, _) in USERS.items()})
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(root / "data", ignore_errors=True)
