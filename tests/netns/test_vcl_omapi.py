"""vcl_vm_net against a real dhcpd with OMAPI on: VMs' host entries reach the running dhcpd without a restart.

The master is a network namespace laid out as in test_vcl_vm_net.py (the dhcpd role's dhcpd.conf, here with OMAPI,
its check config, the host entries file), plus the OMAPI key the role's own generator writes, and a real dhcpd
started there on its own pid and lease files. The VM side is a second namespace on the other end of the master's
uplink, where busybox's udhcpc asks for a lease with a VM's MAC. After every launch or release dhcpd's pid must
not change, a launched VM must get its fixed address at once, a released one no lease; and a restart afterwards
(plain, or the module's fallback when OMAPI fails) must leave dhcpd with exactly the hosts of the file: dhcpd
copies OMAPI's host objects into its lease file and reads them back after the config when it starts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ansible_collections.vcl.lab.plugins.module_utils import vcl_omapi
from ansible_collections.vcl.lab.plugins.module_utils.vcl_vm_files import render_dhcp_hosts
from test_vcl_vm_net import DHCPD, MODULE_ENV, REPO, Master, dhcpd_conf, entries, ns_run, vm

pytestmark = pytest.mark.netns

PORT = 7911
KEYGEN = yaml.safe_load((REPO / "roles/dhcpd/vars/main.yml").read_text())["dhcpd__omapi_keygen"]
RESTART_TASKS = yaml.safe_load((REPO / "roles/dhcpd/tasks/restart.yml").read_text())
BUSYBOX = shutil.which("busybox")

# Run inside the master's namespace: what dhcpd holds under each name and MAC given (JSON), over OMAPI.
HELD = """
import json, sys
from ansible_collections.vcl.lab.plugins.module_utils import vcl_omapi
name, secret = vcl_omapi.parse_key_file(open(sys.argv[1]).read())
client = vcl_omapi.Client(int(sys.argv[2]), name, secret)
query = json.loads(sys.argv[3])
if query.get("create"):
    client.create(query["create"])
print(json.dumps({"names": {n: client.lookup(name=n) for n in query["names"]},
                  "macs": {m: client.lookup(mac=m) for m in query["macs"]}}))
"""


class LiveMaster(Master):
    """The master with OMAPI on and a real dhcpd (its restart: start-stop-daemon stop, then start)."""

    def __init__(self, ns: str, client_ns: str, root: Path):
        super().__init__(ns, root)
        self.client_ns = client_ns
        self.key_file = root / "dhcp/vcl-omapi.key"
        self.pid_file, self.leases = root / "dhcpd.pid", root / "dhcpd.leases"
        ns_run(ns, "ip", "link", "set", "lan0", "netns", client_ns, check=True)
        ns_run(client_ns, "ip", "link", "set", "lan0", "up", check=True)
        proc = subprocess.run(["python3", "-c", KEYGEN, str(self.key_file), "vcl-omapi"], text=True,
                              capture_output=True, check=True)  # fmt: skip
        assert proc.stdout == "written\n" and "secret" not in proc.stdout + proc.stderr
        self.leases.touch()
        self.start_argv = ["start-stop-daemon", "--start", "--oknodo", "--pidfile", str(self.pid_file), "--exec",
                           DHCPD, "--", "-4", "-q", "-cf", str(self.dhcpd_config), "-pf", str(self.pid_file),
                           "-lf", str(self.leases), "eth0"]  # fmt: skip
        self.stop_argv = ["start-stop-daemon", "--stop", "--retry", "TERM/10", "--oknodo", "--pidfile",
                          str(self.pid_file), "--exec", DHCPD]  # fmt: skip

    def omapi_vars(self) -> dict:
        return {"dhcpd__omapi_port": PORT, "dhcpd__omapi_key_file": str(self.key_file)}

    def args(self, **args) -> dict:
        # The fallback restart the vm role's net entry point uses in plain mode (this machine's PID 1 reaps late:
        # the stopped dhcpd's pid file goes before the start, as in test_vcl_vm_net.py).
        restart = [self.stop_argv, ["rm", "-f", str(self.pid_file)], self.start_argv]
        wanted = {"omapi_port": PORT, "omapi_key_file": str(self.key_file), "dhcpd_restart": restart, **args}
        return super().args(**{k: v for k, v in wanted.items() if v is not None})

    def start(self) -> None:
        ns_run(self.ns, *self.start_argv, check=True)
        self.wait_for_omapi()

    def wait_for_omapi(self) -> None:
        deadline = time.monotonic() + 10
        while ns_run(self.ns, "bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{PORT}").returncode:
            assert time.monotonic() < deadline, "dhcpd's OMAPI port did not open"
            time.sleep(0.05)

    def stop(self) -> None:
        ns_run(self.ns, *self.stop_argv)
        self.pid_file.unlink(missing_ok=True)

    def restart(self) -> None:
        """A restart that is not the module's (a reboot, an admin): no lease file clean-up first."""
        self.stop()
        self.start()

    def pid(self) -> int:
        return int(self.pid_file.read_text())

    def held(self, vms: list[dict], create: dict | None = None) -> dict:
        """What the running dhcpd holds under the names and MACs of VMS: {name or MAC: {name, mac, ip} or None}."""
        query = {"names": [f"vm-{v['id']}" for v in vms], "macs": [v["mac"] for v in vms], "create": create}
        proc = ns_run(self.ns, sys.executable, "-c", HELD, str(self.key_file), str(PORT), json.dumps(query),
                      env=MODULE_ENV, timeout=30)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        found = json.loads(proc.stdout)
        return {**found["names"], **found["macs"]}

    def assert_serves_exactly(self, everyone: list[dict], served: list[dict]) -> None:
        """dhcpd holds a host for each VM of SERVED (as the file says) and none for the others of EVERYONE."""
        assert self.hosts_file.read_text() == render_dhcp_hosts(entries(served))
        expected = {key: None for v in everyone for key in (f"vm-{v['id']}", v["mac"])}
        for v in served:
            expected[f"vm-{v['id']}"] = expected[v["mac"]] = vcl_omapi.entry(f"vm-{v['id']}", v["mac"], v["private"])
        assert self.held(everyone) == expected

    def lease(self, mac: str) -> str | None:
        """The address udhcpc gets with MAC from the VM side of the uplink, or None."""
        ns_run(self.client_ns, "ip", "link", "set", "lan0", "address", mac, check=True)
        proc = ns_run(self.client_ns, BUSYBOX, "udhcpc", "-n", "-q", "-f", "-s", "/bin/true", "-t", "2", "-T", "1",
                      "-i", "lan0", timeout=30)  # fmt: skip
        found = re.search(r"lease of (\S+) obtained from ([0-9.]+)", proc.stdout + proc.stderr)
        if found:
            assert found.group(2) == "10.77.2.1", proc.stderr
        return found.group(1) if found else None


@pytest.fixture
def live(netns, client_netns, tmp_path):
    if not os.access(DHCPD, os.X_OK) or not BUSYBOX:
        pytest.fail("these tests need dhcpd and busybox (udhcpc): apt-get install isc-dhcp-server busybox",
                    pytrace=False)  # fmt: skip
    master = LiveMaster(netns, client_netns, tmp_path)
    master.setup([vm(1), vm(2)], **master.omapi_vars())  # dhcpd is not running yet: OMAPI fails, nothing changes
    master.start()
    try:
        yield master
    finally:
        master.stop()


def test_launch_and_release_reach_the_running_dhcpd_without_a_restart(live):
    pid = live.pid()
    v3 = vm(3)
    launched = live.run(**v3)
    dhcp = launched["dhcp"]
    assert launched["changed"] and dhcp["changed"] and dhcp["omapi"] and dhcp["omapi_reason"] is None, launched
    assert dhcp["omapi_ops"] == [f"create host vm-3 ({v3['mac']}, {v3['private']})"]
    assert not dhcp["restarted"] and dhcp["restart_commands"] == [] and not dhcp["leases_cleaned"]
    assert live.lease(v3["mac"]) == v3["private"]  # at once, from the same dhcpd
    assert live.pid() == pid

    again = live.run(**v3)  # asks dhcpd, changes nothing
    assert again["changed"] is False and again["dhcp"]["omapi"] and again["dhcp"]["omapi_ops"] == []

    released = live.run(id=1, state="absent")  # vm-1 came from the file when dhcpd started
    assert released["dhcp"]["omapi_ops"] == [f"delete host vm-1 ({vm(1)['mac']}, {vm(1)['private']})"]
    assert not released["dhcp"]["restarted"] and live.pid() == pid
    assert live.lease(vm(1)["mac"]) is None
    assert live.run(id=1, state="absent")["changed"] is False
    live.assert_holds([vm(2), v3])
    live.assert_serves_exactly([vm(1), vm(2), v3], [vm(2), v3])

    # dhcpd copied both into its lease file; a restart reads them after the file and still serves the file's hosts.
    leases = live.leases.read_text()
    assert "host vm-3 {\n  dynamic;" in leases and "host vm-1 {\n  deleted;\n}" in leases
    assert vcl_omapi.strip_host_records(leases).count("host ") == 0 and "server-duid" in leases
    live.restart()
    assert live.pid() != pid
    live.assert_serves_exactly([vm(1), vm(2), v3], [vm(2), v3])
    assert live.lease(v3["mac"]) == v3["private"]


def test_a_moved_vm_and_a_stale_holder_of_its_mac_are_replaced(live):
    pid = live.pid()
    v5 = vm(5)
    stale = {"name": "stale", "mac": v5["mac"], "ip": "10.77.2.250"}
    assert live.held([v5], create=stale)[v5["mac"]] == stale  # a host object no file holds, with vm-5's MAC
    result = live.run(**v5)
    assert result["dhcp"]["omapi_ops"] == [f"delete host stale ({v5['mac']}, 10.77.2.250)",
                                           f"create host vm-5 ({v5['mac']}, {v5['private']})"]  # fmt: skip

    moved = vm(2, mac="52:54:00:00:00:99", private="10.77.2.99")
    result = live.run(**moved)
    assert result["dhcp"]["omapi_ops"] == [f"delete host vm-2 ({vm(2)['mac']}, {vm(2)['private']})",
                                           f"create host vm-2 ({moved['mac']}, {moved['private']})"]  # fmt: skip
    assert live.lease(moved["mac"]) == moved["private"] and live.pid() == pid
    live.assert_serves_exactly([vm(1), vm(2), moved, v5], [vm(1), moved, v5])
    live.restart()
    live.assert_serves_exactly([vm(1), vm(2), moved, v5], [vm(1), moved, v5])


def test_the_fallback_restart_serves_exactly_the_files_hosts(live):
    """When OMAPI fails the module restarts dhcpd; the host records OMAPI left in the lease file go first, or a
    `deleted` record would hide a VM the file holds and a `dynamic` one bring back a VM the file no longer has."""
    everyone = [vm(1), vm(2), vm(4)]
    closed = {"omapi_port": 1}  # nothing answers there
    assert not live.run(**vm(4))["dhcp"]["restarted"]  # over OMAPI: a `dynamic` record in the lease file
    pid = live.pid()
    gone = live.run(id=4, state="absent", **closed)
    dhcp = gone["dhcp"]
    assert gone["changed"] and not dhcp["omapi"] and dhcp["restarted"] and dhcp["leases_cleaned"], gone
    assert dhcp["omapi_reason"].startswith("OMAPI failed: cannot talk to dhcpd's OMAPI on 127.0.0.1:1")
    live.wait_for_omapi()
    assert live.pid() != pid
    live.assert_serves_exactly(everyone, [vm(1), vm(2)])
    assert live.lease(vm(4)["mac"]) is None

    assert not live.run(id=1, state="absent")["dhcp"]["restarted"]  # over OMAPI: a `deleted` record
    back = live.run(**vm(1), **closed)
    assert back["dhcp"]["restarted"] and back["dhcp"]["leases_cleaned"], back
    live.wait_for_omapi()
    live.assert_serves_exactly(everyone, [vm(1), vm(2)])
    assert live.lease(vm(1)["mac"]) == vm(1)["private"]

    # Not configured: no port, or no key file. A changed file restarts dhcpd, and says why.
    no_key = str(live.root / "none.key")
    for args, reason in (({"omapi_port": None}, "omapi_port is not set"),
                         ({"omapi_key_file": no_key}, f"no key file {no_key}")):  # fmt: skip
        result = live.run(**vm(6), **args)
        assert result["dhcp"]["restarted"] and result["dhcp"]["omapi_reason"] == f"OMAPI is not configured ({reason})"
        live.wait_for_omapi()
        live.run(id=6, state="absent", **args)
        live.wait_for_omapi()
    live.restart()
    live.assert_serves_exactly([*everyone, vm(6)], [vm(1), vm(2)])


def test_a_failed_step_undoes_the_omapi_operations(live):
    pid, before = live.pid(), live.snapshot()
    failing = {"rules_file": str(live.root / "missing/rules.v4")}  # the DNAT step fails after its iptables commands
    result = live.run(**vm(7), **failing)
    assert result["failed"] and result["undone"] == ["dnat", "alias", "dhcp"], result["msg"]
    assert result["dhcp"]["omapi_ops"] == [f"create host vm-7 ({vm(7)['mac']}, {vm(7)['private']})"]
    moved = vm(2, mac="52:54:00:00:00:98", private="10.77.2.98")
    result = live.run(**moved, **failing)
    assert result["failed"] and result["undone"] == ["dnat", "alias", "dhcp"], result["msg"]
    assert live.snapshot()[:4] == before[:4] and live.pid() == pid  # files, aliases, nat table; never restarted
    live.assert_serves_exactly([vm(1), vm(2), vm(7), moved], [vm(1), vm(2)])  # vm-2 as it was before the move


def test_check_mode_asks_dhcpd_and_changes_nothing(live):
    before = live.snapshot()
    result = live.run(check=True, **vm(8))
    assert result["changed"] and result["dhcp"]["omapi"] and not result["dhcp"]["restarted"]
    assert result["dhcp"]["omapi_ops"] == [f"create host vm-8 ({vm(8)['mac']}, {vm(8)['private']})"]
    assert live.snapshot() == before
    live.assert_serves_exactly([vm(1), vm(2), vm(8)], [vm(1), vm(2)])


def test_without_pypureomapi_omapi_fails_on_one_line(netns, client_netns, tmp_path):
    """A Python without pypureomapi (here: an import of it fails, as where it is not installed) and OMAPI asked
    for: one line naming omapi_port, nothing changed."""
    (tmp_path / "master").mkdir()
    master = LiveMaster(netns, client_netns, tmp_path / "master")
    master.setup([vm(1)], **master.omapi_vars())
    before = master.snapshot()
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "pypureomapi.py").write_text("raise ImportError(\"No module named 'pypureomapi'\")\n")
    path = master.root / "args.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": master.args(**vm(3))}))
    env = {**MODULE_ENV, "PYTHONPATH": f"{shadow}:{MODULE_ENV['PYTHONPATH']}"}
    proc = ns_run(netns, sys.executable, "-m", "ansible_collections.vcl.lab.plugins.modules.vcl_vm_net", str(path),
                  env=env, timeout=60)  # fmt: skip
    result = json.loads(proc.stdout)
    assert proc.returncode == 1 and result["failed"] and "Traceback" not in proc.stdout + proc.stderr
    assert result["msg"].startswith("omapi_port: OMAPI is asked for, but the Python library pypureomapi is not "
                                    f"installed for {sys.executable}"), result["msg"]  # fmt: skip
    assert "\n" not in result["msg"] and master.snapshot() == before


def test_the_key_the_config_and_the_lease_file_clean_up(tmp_path):
    """The role's generator writes a root-only HMAC-MD5 key once; dhcpd.conf with OMAPI includes it and passes
    dhcpd -t; a bad key file is refused naming it; the role's restart drops the host records with the pattern the
    module uses."""
    key = tmp_path / "vcl-omapi.key"
    assert subprocess.run(["python3", "-c", KEYGEN, str(key), "vcl-omapi"], capture_output=True, text=True,
                          check=True).stdout == "written\n"  # fmt: skip
    text = key.read_text()
    assert os.stat(key).st_mode & 0o777 == 0o600
    assert vcl_omapi.parse_key_file(text)[0] == "vcl-omapi"
    assert subprocess.run(["python3", "-c", KEYGEN, str(key), "vcl-omapi"], capture_output=True, text=True,
                          check=True).stdout == "kept\n" and key.read_text() == text  # fmt: skip
    key.chmod(0o644)  # readable by others: a new key
    assert subprocess.run(["python3", "-c", KEYGEN, str(key), "vcl-omapi"], capture_output=True, text=True,
                          check=True).stdout == "written\n" and key.read_text() != text  # fmt: skip
    assert os.stat(key).st_mode & 0o777 == 0o600

    hosts = tmp_path / "hosts.conf"
    hosts.write_text(render_dhcp_hosts(entries([vm(1)])))
    conf = tmp_path / "dhcpd.conf"
    conf.write_text(dhcpd_conf(hosts, hosts, dhcpd__omapi_port=PORT, dhcpd__omapi_key_file=str(key)))
    text = conf.read_text()
    assert f'include "{key}";\nomapi-port {PORT};\nomapi-key vcl-omapi;\n' in text
    assert text.endswith(f'include "{hosts}";\n')
    proc = subprocess.run([DHCPD, "-t", "-4", "-cf", str(conf)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "omapi" not in dhcpd_conf(hosts, hosts)  # port 0: OMAPI off

    for bad, why in (("key x { algorithm hmac-sha256; secret \"c2VjcmV0c2VjcmV0c2VjcmV0\"; };", "is not hmac-md5"),
                     ("key x { algorithm hmac-md5; secret \"c2hvcnQ=\"; };", "shorter than 16 bytes"),
                     ("omapi-key x;", "is not one dhcpd key statement")):  # fmt: skip
        with pytest.raises(vcl_omapi.OmapiConfigError, match=why) as err:
            vcl_omapi.parse_key_file(bad, "KEYFILE")
        assert str(err.value).startswith("KEYFILE") and "c2Vj" not in str(err.value)

    strip = next(t for t in RESTART_TASKS if "ansible.builtin.replace" in t)["ansible.builtin.replace"]
    assert strip["regexp"] == vcl_omapi.HOST_RECORD_PATTERN and strip["replace"] == ""
    leases = ('authoring-byte-order little-endian;\n\nserver-duid "\\000\\001";\n\n'
              "host vm-3 {\n  dynamic;\n  hardware ethernet 52:54:00:00:00:03;\n  fixed-address 10.77.2.13;\n}\n"
              "lease 10.77.2.50 {\n  starts 3 2024/01/01 00:00:00;\n  binding state active;\n}\n"
              "host vm-1 {\n  deleted;\n}\n")  # fmt: skip
    assert vcl_omapi.strip_host_records(leases) == (
        'authoring-byte-order little-endian;\n\nserver-duid "\\000\\001";\n\n'
        "lease 10.77.2.50 {\n  starts 3 2024/01/01 00:00:00;\n  binding state active;\n}\n"
    )
