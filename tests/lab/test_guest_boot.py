"""The tiny test guest (vcl_lab.guest) boots under libvirt on a lab slave and answers.

The guest is built (or taken from the cache) on the controller, copied to a slave of a lab of its
own (``VCL_TEST_GUEST_LAB``, default ``vclguest``, one slave; ``VCL_TEST_GUEST_KEEP=1`` leaves it
up), and booted as a ``qemu`` domain on a bridge the test makes inside the slave (the slave's own
network namespace: the guest reaches nothing else). Twice:

- with a static address (``vcl.ip=`` / ``vcl.gw=`` on the kernel command line);
- with DHCP, from a busybox udhcpd the test runs on that bridge.

Each time the serial log must show ``vcl-guest: booted`` and exactly one ``vcl-guest: lease <ip>``,
and every connection to port 80 must read ``vcl-guest ready <ip> <mac>``, also from an address
off the guest's subnet (so the guest's default route, vcl.gw or the DHCP router, works). The
timings (start -> booted / lease / marker, measured on the slave) are printed.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import time

import pytest

from vcl_lab import LabError, preflight
from vcl_lab.guest import LEASE_RE, MARKER_RE, Guest, domain_xml, ensure_guest
from vcl_lab.guest.kernel import pvh_entry
from vcl_lab.machines import ssh_argv
from vcl_lab.testing import Lab, lab_down, lab_up

pytestmark = pytest.mark.lab

LAB_NAME = os.environ.get("VCL_TEST_GUEST_LAB", "vclguest")
KEEP = os.environ.get("VCL_TEST_GUEST_KEEP") == "1"
BRIDGE = "vclgtest0"
NET = "192.168.231"  # exists only inside the slave's network namespace
POOL = (100, 120)
REMOTE = "/var/lib/libvirt/images/vcl-guest-test"
BOOT_TIMEOUT = 120.0  # generous: software emulation on a loaded 2-core machine
CONNECTIONS = 25

# Runs on the slave (python3 -c WATCH ARGS...): starts the domain, watches its serial log for the
# lease line, then reads the marker over TCP, once from the bridge address and once from an
# address off the guest's subnet. Prints one JSON document; times are seconds after `virsh start`.
WATCH = r"""
import json, re, socket, sys, time
import subprocess
name, log, port, timeout, conns, src = sys.argv[1:7]
port, timeout, conns = int(port), float(timeout), int(conns)
res = {"start": None, "booted": None, "lease": None, "marker": None, "ip": None, "markers": [], "routed": None}
def text():
    try:
        with open(log, errors="replace") as f:
            return f.read()
    except OSError:
        return ""
def fetch(ip, bind=None):
    s = socket.socket()
    s.settimeout(5)
    try:
        if bind:
            s.bind((bind, 0))
        s.connect((ip, port))
        return s.makefile().readline().strip()
    finally:
        s.close()
t0 = time.monotonic()
proc = subprocess.run(["virsh", "-q", "start", name], capture_output=True, text=True)
res["start"] = time.monotonic() - t0
if proc.returncode != 0:
    res["error"] = proc.stderr
deadline = t0 + timeout
while proc.returncode == 0 and time.monotonic() < deadline:
    t = text()
    if res["booted"] is None and "vcl-guest: booted" in t:
        res["booted"] = time.monotonic() - t0
    m = re.search(r"^vcl-guest: lease (\S+)\s*$", t, re.M)
    if m:
        res["lease"], res["ip"] = time.monotonic() - t0, m.group(1)
        break
    time.sleep(0.05)
while res["ip"] and res["marker"] is None and time.monotonic() < deadline:
    try:
        res["markers"].append(fetch(res["ip"]))
        res["marker"] = time.monotonic() - t0
    except OSError:
        time.sleep(0.1)
if res["marker"] is not None:
    for _ in range(conns - 1):
        try:
            res["markers"].append(fetch(res["ip"]))
        except OSError as err:
            res["markers"].append(f"error: {err}")
    try:
        res["routed"] = fetch(res["ip"], src)
    except OSError as err:
        res["routed"] = f"error: {err}"
time.sleep(0.3)
res["log"] = text()[-4000:]
print(json.dumps(res))
"""


class Slave:
    """The lab slave the guest boots on, reached over ssh (argv lists; ssh_argv quotes each word)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.host = lab.of_role("slave")[0]
        self.address = lab.addresses[self.host]

    def run(self, *argv: str, check: bool = True, timeout: float = 120, stdin=None) -> subprocess.CompletedProcess:
        state = self.lab.state()
        proc = subprocess.run(
            ssh_argv(state, state.machines[self.host], *argv, timeout=10),
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=stdin is None,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"on {self.host}: {argv[:4]} failed ({proc.returncode}): {proc.stderr!s}", pytrace=False)
        return proc

    def put(self, path: str, source) -> None:
        """Write ``source`` (bytes, str or a local Path) to ``path`` on the slave."""
        argv = ("dd", f"of={path}", "bs=1M", "status=none")
        if isinstance(source, (bytes, str)):
            data = source.encode() if isinstance(source, str) else source
            state = self.lab.state()
            proc = subprocess.run(
                ssh_argv(state, state.machines[self.host], *argv), input=data, capture_output=True, timeout=120
            )
            assert proc.returncode == 0, proc.stderr
            return
        with open(source, "rb") as handle:
            self.run(*argv, stdin=handle)

    def cleanup(self) -> None:
        for name, _mac in DOMAINS.values():
            self.run("virsh", "-q", "destroy", name, check=False)
            self.run("virsh", "-q", "undefine", name, check=False)
        self.run("start-stop-daemon", "--stop", "--oknodo", "--quiet", "--pidfile", f"{REMOTE}/udhcpd.pid", check=False)
        self.run("ip", "link", "del", BRIDGE, check=False)
        self.run("rm", "-rf", REMOTE, check=False)


DOMAINS = {"static": ("vclgtest-static", "52:54:00:e7:00:01"), "dhcp": ("vclgtest-dhcp", "52:54:00:e7:00:02")}


@pytest.fixture(scope="module")
def guest() -> Guest:
    started = time.monotonic()
    try:
        built = ensure_guest(progress=print)
    except LabError as err:
        pytest.fail(f"building the test guest: {err}", pytrace=False)
    print(f"guest {built.key}: {'built' if built.built else 'cached'} in {time.monotonic() - started:.1f} s")
    return built


@pytest.fixture(scope="module")
def slave(guest):
    try:
        preflight()
        lab = lab_up(LAB_NAME, slaves=1)
    except LabError as err:
        pytest.fail(f"the guest's lab {LAB_NAME}: {err}", pytrace=False)
    node = Slave(lab)
    try:
        node.cleanup()
        node.run("ip", "link", "add", BRIDGE, "type", "bridge")
        node.run("ip", "addr", "add", f"{NET}.1/24", "dev", BRIDGE)
        node.run("ip", "link", "set", BRIDGE, "up")
        node.run("mkdir", "-p", REMOTE)
        started = time.monotonic()
        for path in (guest.vmlinux, guest.initrd, guest.disk):
            node.put(f"{REMOTE}/{path.name}", path)
        print(f"copied the guest to {node.host} in {time.monotonic() - started:.1f} s")
        conf = (
            f"start {NET}.{POOL[0]}\nend {NET}.{POOL[1]}\ninterface {BRIDGE}\n"
            f"lease_file {REMOTE}/udhcpd.leases\npidfile {REMOTE}/udhcpd.pid\n"
            f"option subnet 255.255.255.0\noption router {NET}.1\noption lease 600\n"
        )
        node.put(f"{REMOTE}/udhcpd.conf", conf)
        node.run("touch", f"{REMOTE}/udhcpd.leases")
        node.run("busybox", "udhcpd", "-a", "100", f"{REMOTE}/udhcpd.conf")  # ARP check 100 ms, not 2 s
        yield node
    finally:
        node.cleanup()
        if not KEEP:
            result = lab_down(LAB_NAME)
            if not result.get("ok"):
                pytest.fail(f"`vcl lab down --name {LAB_NAME}` left things behind: {result}", pytrace=False)


def boot(slave: Slave, guest: Guest, kind: str, cmdline: str) -> dict:
    """Define the domain (with a qcow2 overlay of disk.qcow2), start it and watch it; return the watcher's JSON."""
    name, mac = DOMAINS[kind]
    log = f"{REMOTE}/{name}.serial.log"
    overlay = f"{REMOTE}/{name}.qcow2"
    slave.run("rm", "-f", log, overlay)
    slave.run("qemu-img", "create", "-q", "-f", "qcow2", "-b", f"{REMOTE}/disk.qcow2", "-F", "qcow2", overlay)
    xml = domain_xml(
        name,
        kernel=f"{REMOTE}/vmlinux",
        initrd=f"{REMOTE}/initrd.img",
        cmdline=cmdline,
        serial_log=log,
        bridge=BRIDGE,
        mac=mac,
        disk=overlay,
    )
    slave.put(f"{REMOTE}/{name}.xml", xml)
    slave.run("virsh", "-q", "define", f"{REMOTE}/{name}.xml")
    try:
        proc = slave.run(
            "python3", "-c", WATCH, name, log, str(guest.marker_port), str(BOOT_TIMEOUT), str(CONNECTIONS),
            slave.address, timeout=BOOT_TIMEOUT + 60,
        )  # fmt: skip
        result = json.loads(proc.stdout)
    finally:
        slave.run("virsh", "-q", "destroy", name, check=False)
    timings = ", ".join(f"{k} {result[k]:.2f} s" for k in ("start", "booted", "lease", "marker") if result[k])
    print(f"{kind} guest {result['ip']}: {timings}")
    return result


def check_guest(result: dict, mac: str, ip: str | None = None) -> str:
    log = result["log"]
    assert result.get("error") is None, result["error"]
    leases = LEASE_RE.findall(log)
    assert len(leases) == 1, f"expected exactly one lease line in the serial log:\n{log}"
    if ip is not None:
        assert leases == [ip], log
    ip = leases[0]
    assert "vcl-guest: booted" in log and log.index("vcl-guest: booted") < log.index("vcl-guest: lease"), log
    assert "vcl-guest: error" not in log, log
    assert result["marker"] is not None, f"no marker on port 80 within {BOOT_TIMEOUT} s:\n{log}"
    assert len(result["markers"]) == CONNECTIONS
    for line in [*result["markers"], result["routed"]]:
        match = MARKER_RE.fullmatch(line or "")
        assert match is not None, (line, result["markers"])
        assert match.groups() == (ip, mac), line
    return ip


def test_guest_files_are_cached_and_bootable_as_vmlinux(guest):
    again = ensure_guest(progress=print)
    assert again.key == guest.key and not again.built and again.directory == guest.directory
    elf = guest.vmlinux.read_bytes()
    assert elf[:4] == b"\x7fELF" and pvh_entry(elf) is not None
    cpio = gzip.decompress(guest.initrd.read_bytes())
    assert cpio.startswith(b"070701") and b"TRAILER!!!" in cpio
    for member in (b"init\0", b"bin/busybox\0", b"virtio_net.ko\0", b"net_failover.ko\0", b"virtio_pci.ko\0"):
        assert member in cpio, member
    assert guest.disk.read_bytes()[:4] == b"QFI\xfb"  # qcow2 magic
    assert guest.marker_port == 80 and "console=ttyS0" in guest.cmdline


def test_static_guest_boots_and_answers(slave, guest):
    _name, mac = DOMAINS["static"]
    result = boot(slave, guest, "static", guest.static_cmdline(f"{NET}.10/24", f"{NET}.1"))
    check_guest(result, mac, f"{NET}.10")


def test_dhcp_guest_gets_a_lease_and_answers(slave, guest):
    _name, mac = DOMAINS["dhcp"]
    result = boot(slave, guest, "dhcp", guest.cmdline)
    ip = check_guest(result, mac)
    assert ip.startswith(f"{NET}.") and POOL[0] <= int(ip.rsplit(".", 1)[1]) <= POOL[1], ip
