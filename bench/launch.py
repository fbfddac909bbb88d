"""launch.yml against the floor: one VM launched by the playbook, by direct commands, and by a full image copy.

Measured side by side on one lab (master + 2 slaves + client), ``--rounds`` rounds, the three ways
interleaved (their order rotates every round), after ``--warmup`` untimed rounds:

- ``playbook``: wall time of ``ansible-playbook playbooks/launch.yml -e id=N``, from start to exit (the domain
  running, its DHCP host entry, public alias and DNAT chain in place). Before it, untimed:
  ``playbooks/reserve.yml ... -e reserve_no_launch=true`` (the DB claim). After it, untimed: ``stop.yml``,
  then a check that nothing of the VM is left (DHCP entry in the file and in the running dhcpd, alias, chain,
  aliases/rules files, domain, overlay, serial log, DB claim). dhcpd's pid is read before the reserve and after
  launch.yml and stop.yml: neither may restart it (OMAPI). A callback written to a temporary directory times
  every task (start to the next task's start, so the controller's own work between tasks is counted too).
- ``floor``: the same steps done by direct commands over ssh, each host through ONE persistent ssh
  ControlMaster opened before the rounds (so no ssh connection set-up is counted; Ansible's own
  ControlPersist of 60 s is left as configured, and a cold ssh connect is measured for reference). The DB
  claim is ``service.request`` (untimed, like reserve.yml); timed: ``lifecycle.place`` (kept claim),
  rendering roles/vm/templates/domain.xml.j2 with Jinja2, then one ssh command on the master
  (host entry into a candidate copy of the VMs' hosts file, ``dhcpd -t -4 -cf`` the config that includes it,
  install it, then the same no-restart path vcl_vm_net takes: the host object ``vm-N`` created in the running
  dhcpd over OMAPI, with ``omshell`` and the key read from the master's key file on the master; the alias's
  interfaces.d file, ``ip addr add PUB/32 dev eth0``, ``iptables -t nat -N/-A`` the chain VCL-VM-N and
  its jumps from VCL-PREROUTING and VCL-OUTPUT), one on the slave (``qemu-img create -f qcow2 -b base
  -F qcow2``, the domain XML on stdin, with the slave's network filter ``vcl-vm`` and the VM's address as
  launch.yml renders it, ``virsh define --validate``, ``virsh start``) and
  ``lifecycle.mark_running``. Not in the floor (reported apart): the image rsync the playbook runs only
  when the slave's cache lacks the image (it is copied to both slaves before the rounds, so launch.yml
  skips it; a no-op rsync is timed for reference) and persisting the alias and the iptables ruleset,
  which vcl_vm_net also does. Cleaned up after every round (untimed).
- ``boot``: for playbook launches, from the end of launch.yml to the ``vcl-guest: lease`` line in the
  slave's serial log (polled over the ControlMaster every 0.2 s), and to the marker ``vcl-guest ready
  PRIVATE MAC`` read from the client machine through the public address (python3 on the client, polled
  every 0.2 s). Also taken for the floor and full-copy VMs, to show that they really work. The master's ARP
  entry for the private address is read as the domain starts: the pools hand the same address out again with
  a new MAC, and a master still holding the old MAC delays the marker (``--forget-arp`` deletes it first).
- ``fullcopy``: the floor, but the image's files (disk, the 65 MB vmlinux, initrd) are copied with ``cp``
  into a per-VM directory on the slave instead of a qcow2 overlay (what the old system did); the copy is
  timed apart, and ``sync`` of the copies after it is reported but not counted.

Usage: .venv/bin/python bench/launch.py [--lab vclbench] [--rounds 5] [--warmup 1] [--reuse] [--keep]
                                        [--db sqlite:////tmp/vclbench-launch.sqlite] [--no-boot-check] [--forget-arp]
Without --reuse it takes the lab down, brings it up, runs site.yml (not timed) and adds the group cs101;
without --keep it takes the lab down at the end. Prints a table and writes
bench/results/launch-<timestamp>.json. Target: playbook <= 1.5x the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shlex
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import jinja2
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vcl_lab.playbook import ansible_tool, parse_recap  # noqa: E402
from vcl_lab.testing import lab_down, lab_up  # noqa: E402
from vcl_sched import lifecycle, service  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TARGET_RATIO = 1.5
OWNER = "cs101"
IMAGE = "vcl-guest"
INSTANCE_DIR = "/var/lib/vcl/instances"
# The VMs' DHCP host entries (included by dhcpd.conf) and, beside them, the candidate being checked and the
# dhcpd.conf that includes the candidate (written by the dhcpd role); one interfaces.d file per public alias.
DHCPD_HOSTS = "/etc/dhcp/dhcpd.vcl-vms.conf"
DHCPD_CANDIDATE = "/etc/dhcp/dhcpd.vcl-vms.candidate.conf"
DHCPD_CHECK = "/etc/dhcp/dhcpd.vcl-vms.check.conf"
# The running dhcpd's OMAPI (the dhcpd role's defaults): the port, and the key file, read on the master only.
OMAPI_PORT = 7911
OMAPI_KEY_FILE = "/etc/dhcp/vcl-omapi.key"
DHCPD_PID_FILE = "/run/dhcpd.pid"
ALIASES_DIR = "/etc/network/interfaces.d"
RULES_FILE = "/etc/iptables/rules.v4"
POLL = 0.2
VM_FILTER = "vcl-vm"  # the kvm role's default kvm__vm_filter

# Run on the client: connect to the VM's public address, port 80, every POLL s until the marker is read.
MARKER_POLLER = """
import socket, sys, time
ip, want, deadline, poll = sys.argv[1], sys.argv[2], time.time() + float(sys.argv[3]), float(sys.argv[4])
while time.time() < deadline:
    t0 = time.time()
    try:
        with socket.create_connection((ip, 80), timeout=1) as s:
            s.settimeout(2)
            if want in s.recv(200).decode(errors="replace"):
                print(time.time())
                sys.exit(0)
    except OSError:
        pass
    time.sleep(max(0.0, poll - (time.time() - t0)))
sys.exit(1)
"""

# A callback that writes, per task, its start and its results' times (ANSIBLE_CALLBACK_PLUGINS points here).
CALLBACK = '''
import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "vclbench_tasks"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.doc = {"loaded": time.time(), "tasks": []}

    def v2_playbook_on_start(self, playbook):
        self.doc["playbook_start"] = time.time()

    def _start(self, task):
        self.doc["tasks"].append({"name": task.get_name(), "action": task.action, "start": time.time(),
                                  "results": []})

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._start(task)

    def v2_playbook_on_handler_task_start(self, task):
        self._start(task)

    def _result(self, status, result):
        if self.doc["tasks"]:
            if status == "ok" and result._result.get("changed"):
                status = "changed"
            self.doc["tasks"][-1]["results"].append([status, time.time()])
            if status in ("ok", "changed") and self.doc["tasks"][-1]["action"].endswith("vcl_domain"):
                with open(os.environ["VCLBENCH_TASKS_FILE"] + ".domain", "w") as handle:
                    handle.write(str(time.time()))

    def v2_runner_on_ok(self, result, **kwargs):
        self._result("ok", result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result("failed", result)

    def v2_runner_on_skipped(self, result):
        self._result("skipped", result)

    def v2_runner_on_unreachable(self, result):
        self._result("unreachable", result)

    def v2_playbook_on_stats(self, stats):
        self.doc["stats"] = time.time()
        with open(os.environ["VCLBENCH_TASKS_FILE"], "w") as handle:
            json.dump(self.doc, handle)
'''


# --- the lab -------------------------------------------------------------------------------------------------

class Host:
    """ssh to one lab machine as root through one persistent ControlMaster."""

    def __init__(self, name: str, address: str, key: str, control_dir: str):
        self.name, self.address = name, address
        self.opts = ["-i", key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                     "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]
        self.control = ["-o", f"ControlPath={control_dir}/{name}"]

    def open(self) -> None:
        subprocess.run(["ssh", *self.opts, *self.control, "-o", "ControlMaster=yes", "-o", "ControlPersist=yes",
                        "-N", "-f", f"root@{self.address}"], check=True, stdin=subprocess.DEVNULL)

    def close(self) -> None:
        subprocess.run(["ssh", *self.control, "-O", "exit", f"root@{self.address}"], capture_output=True,
                       stdin=subprocess.DEVNULL)

    def run(self, script: str, stdin: str | None = None, check: bool = True, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["ssh", *self.opts, *self.control, "-o", "ControlMaster=no", f"root@{self.address}",
                               script], input=stdin, text=True, capture_output=True, timeout=timeout,
                              stdin=None if stdin is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{self.name}: exit {proc.returncode}: {script[:200]}\n{proc.stderr}{proc.stdout}")
        return proc

    def popen(self, script: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["ssh", *self.opts, *self.control, "-o", "ControlMaster=no", f"root@{self.address}",
                                 script], text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL)

    def cold_connect(self) -> float:
        """Seconds for `ssh host true` with a new connection (no ControlMaster): what one cold ssh costs."""
        t0 = time.perf_counter()
        subprocess.run(["ssh", *self.opts, "-o", "ControlPath=none", f"root@{self.address}", "true"], check=True,
                       capture_output=True, stdin=subprocess.DEVNULL)
        return time.perf_counter() - t0


def read_inventory(path: Path) -> dict:
    inv = yaml.safe_load(path.read_text())["all"]
    hosts = {}
    for group, data in inv["children"].items():
        for name, hv in (data.get("hosts") or {}).items():
            hosts[name] = {"group": group, "address": hv["ansible_host"], "uplink": hv.get("lab_uplink", "eth0")}
    return {"vars": inv["vars"], "hosts": hosts}


def stepped(output: str) -> dict[str, float]:
    """Durations of the steps a remote script marks with ``T name <epoch>`` lines (between marks)."""
    marks = [(w[1], float(w[2])) for w in (line.split() for line in output.splitlines())
             if len(w) == 3 and w[0] == "T"]
    return {name: round(t - marks[i - 1][1], 3) for i, (name, t) in enumerate(marks) if i}


# --- one launch each way -------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace, inventory_path: Path, tmp: str):
        self.args, self.url, self.tmp = args, args.db, tmp
        self.inventory_path = inventory_path
        self.inv = read_inventory(inventory_path)
        key = self.inv["vars"]["ansible_ssh_private_key_file"]
        self.hosts = {n: Host(n, h["address"], key, tmp) for n, h in self.inv["hosts"].items()}
        self.master = next(n for n, h in self.inv["hosts"].items() if h["group"] == "vcl_master")
        self.client = next(n for n, h in self.inv["hosts"].items() if h["group"] == "vcl_clients")
        self.slaves = [n for n, h in self.inv["hosts"].items() if h["group"] == "vcl_slaves"]
        self.uplink = self.inv["hosts"][self.master]["uplink"]
        self.template = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(ROOT / "roles" / "vm" / "templates")), undefined=jinja2.StrictUndefined,
            trim_blocks=True, autoescape=False,  # the template escapes every value itself (| e)
        ).get_template("domain.xml.j2")
        (Path(tmp) / "callback").mkdir()
        (Path(tmp) / "callback" / "vclbench_tasks.py").write_text(CALLBACK)
        self.last_ansible_end: float | None = None

    # -- ansible --
    def playbook(self, playbook: str, *extra: str, tasks_file: str | None = None, remote: bool = True
                 ) -> tuple[float, str, int]:
        env = {**os.environ, "VCL_DB_URL": self.url, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
               "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default", "ANSIBLE_RETRY_FILES_ENABLED": "False"}
        if tasks_file:
            env.update(ANSIBLE_CALLBACK_PLUGINS=str(Path(self.tmp) / "callback"),
                       ANSIBLE_CALLBACKS_ENABLED="vclbench_tasks", VCLBENCH_TASKS_FILE=tasks_file)
        argv = [ansible_tool("ansible-playbook"), "-i", str(self.inventory_path), playbook, *extra]
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=ROOT, env=env, text=True, capture_output=True, stdin=subprocess.DEVNULL,
                              timeout=900)
        seconds = time.perf_counter() - t0
        if remote:  # a run that used Ansible's ssh connections to the machines (ControlPersist=60s)
            self.last_ansible_end = time.monotonic()
        hosts = parse_recap(proc.stdout)
        failed = sum(h.failed + h.unreachable for h in hosts.values())
        if proc.returncode != 0 or not hosts or failed:
            raise RuntimeError(f"{playbook} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr}")
        return seconds, proc.stdout, proc.returncode

    def pending_ids(self) -> set[int]:
        return {r["id"] for r in service.list_instances(url=self.url) if r["state"] == "pending"}

    # -- remote pieces --
    @staticmethod
    def omshell(commands: str) -> str:
        """A shell snippet (run on the master) that runs omshell with the master's OMAPI key, read there from the
        key file (never printed, never leaves the master), connects to 127.0.0.1 and runs COMMANDS."""
        return f"""{{ sed -n 's/^key "\\(.*\\)" {{$/key \\1/p; s/^  secret "\\(.*\\)";$/\\1/p' {OMAPI_KEY_FILE} \\
    | tr '\\n' ' '; printf '\\nserver 127.0.0.1\\nport {OMAPI_PORT}\\nconnect\\n{commands}'; }} | omshell"""

    def net_present(self, iid: int, mac: str, private: str, public: str) -> str:
        chain = f"VCL-VM-{iid}"
        block = f"host vm-{iid} {{\\n  hardware ethernet {mac};\\n  fixed-address {private};\\n}}\\n"
        create = (f'new host\\nset name = \\"vm-{iid}\\"\\nset hardware-address = {mac}\\n'
                  f"set hardware-type = 1\\nset ip-address = {private}\\ncreate\\n")
        return f"""set -e
t() {{ echo "T $1 $(date +%s.%N)"; }}
t begin
cp -p {DHCPD_HOSTS} {DHCPD_CANDIDATE}
printf '{block}' >> {DHCPD_CANDIDATE}
dhcpd -t -4 -cf {DHCPD_CHECK} >/dev/null 2>&1
t dhcp_write_check
mv {DHCPD_CANDIDATE} {DHCPD_HOSTS}
{self.omshell(create)} | grep -q '^hardware-address = {mac}$'
t dhcp_omapi
printf 'iface {self.uplink} inet static\n    address {public}/32\n' > {ALIASES_DIR}/vcl-vm-{iid}
ip addr add {public}/32 dev {self.uplink}
t alias
iptables -w -t nat -N {chain}
iptables -w -t nat -A {chain} -d {public}/32 -j DNAT --to-destination {private}
iptables -w -t nat -A VCL-PREROUTING -j {chain}
iptables -w -t nat -A VCL-OUTPUT -j {chain}
t dnat
"""

    def net_absent(self, iid: int, public: str) -> str:
        chain = f"VCL-VM-{iid}"
        remove = self.omshell(f'new host\\nset name = \\"vm-{iid}\\"\\nopen\\nremove\\n')
        return f"""
for parent in VCL-PREROUTING VCL-OUTPUT; do
  while iptables -w -t nat -D $parent -j {chain} 2>/dev/null; do :; done
done
iptables -w -t nat -F {chain} 2>/dev/null; iptables -w -t nat -X {chain} 2>/dev/null
ip addr del {public}/32 dev {self.uplink} 2>/dev/null
rm -f {ALIASES_DIR}/vcl-vm-{iid}
sed -i '/^host vm-{iid} {{$/,/^}}$/d' {DHCPD_HOSTS}
{remove} >/dev/null
true
"""

    def render(self, spec: dict, disk: str, kernel: str, initrd: str) -> str:
        domain = spec["domain"]
        password = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(8))
        return self.template.render(
            vm__domain_name=domain, vm__domain_type=self.inv["vars"].get("lab_domain_type", "kvm"),
            vm__domain_memory_mb=spec["ram_mb"], vm__domain_vcpus=spec["cores"], vm__domain_overlay=disk,
            vm__domain_mac=spec["mac"], vm__domain_bridge="br0", vm__domain_kernel=kernel, vm__domain_initrd=initrd,
            vm__domain_cmdline=spec["image_cmdline"] or "",
            vm__domain_serial_log=f"{INSTANCE_DIR}/{domain}.log", vm__domain_vnc_listen=spec["slave_address"],
            vm__domain_vnc_password=password,
            # The slave's network filter with the VM's address, as launch.yml gives it (the kvm role's vcl-vm):
            # libvirt instantiates its rules at the start, most of what starting the domain costs.
            vm__domain_filter=VM_FILTER, vm__domain_ip=spec["private_ip"])

    def domain_present(self, spec: dict, full_copy: bool) -> tuple[str, str]:
        """The slave's script and its domain XML (sent on stdin)."""
        domain, base = spec["domain"], spec["image_disk"]
        if full_copy:
            vmdir = f"{INSTANCE_DIR}/{domain}"
            files = [base, spec["image_kernel"], spec["image_ramdisk"]]
            copies = [f"{vmdir}/{Path(f).name}" for f in files]
            disk_step = (f"mkdir -p {vmdir}\n" + "".join(f"cp {a} {b}\n" for a, b in zip(files, copies, strict=True))
                         + "t copy\n" + f"sync {' '.join(copies)}\nt copy_sync\n")
            xml = self.render(spec, copies[0], copies[1], copies[2])
        else:
            disk_step = f"qemu-img create -q -f qcow2 -b {base} -F qcow2 {INSTANCE_DIR}/{domain}.qcow2\nt overlay\n"
            xml = self.render(spec, f"{INSTANCE_DIR}/{domain}.qcow2", spec["image_kernel"] or "",
                              spec["image_ramdisk"] or "")
        script = f"""set -e
t() {{ echo "T $1 $(date +%s.%N)"; }}
t begin
{disk_step}cat > /run/vclbench-{domain}.xml
virsh -q define --validate /run/vclbench-{domain}.xml >/dev/null
t define
virsh -q start {domain} >/dev/null
t start
"""
        return script, xml

    def domain_absent(self, domain: str) -> str:
        return f"""
virsh -q destroy {domain} >/dev/null 2>&1
virsh -q undefine {domain} >/dev/null 2>&1
rm -rf {INSTANCE_DIR}/{domain}.qcow2 {INSTANCE_DIR}/{domain}.log {INSTANCE_DIR}/{domain} /run/vclbench-{domain}.xml
true
"""

    def forget_arp(self, private: str) -> None:
        """--forget-arp: drop the master's neighbour entry for the VM's private address (untimed, before the launch)."""
        if self.args.forget_arp:
            self.hosts[self.master].run(f"ip neigh del {private} dev {self.uplink} 2>/dev/null; true")

    def leftovers(self, spec: dict, slave: str) -> list[str]:
        """What is left of a stopped VM on the master, its slave and in the DB (read with plain tools)."""
        iid, domain, public = spec["id"], spec["domain"], spec["public_ip"]
        held = self.omshell(f'new host\\nset name = \\"vm-{iid}\\"\\nopen\\n')
        left = []
        master = self.hosts[self.master].run(f"""
grep -q '^host vm-{iid} ' {DHCPD_HOSTS} && echo 'dhcpd hosts file: host vm-{iid}'
{held} | grep -q '^hardware-address' \\
  && echo 'running dhcpd (OMAPI): host vm-{iid}'
ip -4 -o addr show dev {self.uplink} | grep -qw '{public}/32' && echo 'alias {public}/32'
iptables-save -t nat | grep -q -- '-j VCL-VM-{iid}$\\|^:VCL-VM-{iid} ' && echo 'chain VCL-VM-{iid}'
test -e {ALIASES_DIR}/vcl-vm-{iid} && echo 'alias file: vcl-vm-{iid}'
grep -q -- '-j VCL-VM-{iid}$\\|^:VCL-VM-{iid} ' {RULES_FILE} 2>/dev/null && echo 'rules.v4: VCL-VM-{iid}'
true""").stdout.split("\n")
        on_slave = self.hosts[slave].run(f"""
virsh -q dominfo {domain} >/dev/null 2>&1 && echo 'domain {domain}'
for f in {INSTANCE_DIR}/{domain}.qcow2 {INSTANCE_DIR}/{domain}.log {INSTANCE_DIR}/{domain}; do
  [ -e $f ] && echo "file $f"
done
true""").stdout.split("\n")
        left += [f"{self.master}: {x}" for x in master if x] + [f"{slave}: {x}" for x in on_slave if x]
        row = lifecycle.describe(iid, self.url)
        if row["state"] not in ("stopped", "failed", "lost") or row["slave"] or row["mac"]:
            left.append(f"db: instance {iid} is {row['state']} on {row['slave']} with {row['mac']}")
        return left

    def watch_boot(self, spec: dict, slave: str) -> dict:
        """Start the two boot pollers, as the domain has just started: on the slave a loop that greps the
        serial log for the lease line every 0.2 s, on the client a python3 loop that connects to the public
        address's port 80 every 0.2 s until it reads ``vcl-guest ready PRIVATE MAC``. Each runs on its machine
        (started over the ControlMaster, one process each, so polling loads the launch as little as it can)
        and prints the epoch time it saw the line (the machines are containers on this host: one clock).
        Also reads the master's ARP entry for the private address (a stale one delays the marker)."""
        log = f"{INSTANCE_DIR}/{spec['domain']}.log"
        want = f"vcl-guest ready {spec['private_ip']} {spec['mac']}"
        limit = int(self.args.boot_timeout / POLL)
        lease = (f"i=0; while ! grep -q 'vcl-guest: lease {spec['private_ip']}' {log} 2>/dev/null; do "
                 f"i=$((i+1)); [ $i -gt {limit} ] && exit 1; sleep {POLL}; done; date +%s.%N")
        client = "python3 -c " + shlex.quote(MARKER_POLLER) + " " + shlex.join(
            [spec["public_ip"], want, str(self.args.boot_timeout), str(POLL)])
        t0 = time.time()
        procs = {"lease": self.hosts[slave].popen(lease), "marker": self.hosts[self.client].popen(client)}
        neigh = self.hosts[self.master].run(f"ip neigh show {spec['private_ip']}", check=False).stdout.strip()
        return {"t0": t0, "procs": procs, "master_arp_at_start": neigh, "mac": spec["mac"]}

    @staticmethod
    def boot_result(watch: dict, ends: float) -> dict:
        """Seconds from the domain's start to the lease line and to the marker; and from ENDS (the end of the
        launch; negative: before it ended)."""
        out = {"master_arp_at_start": watch["master_arp_at_start"] or "none",
               "arp_stale": bool(watch["master_arp_at_start"]) and watch["mac"] not in watch["master_arp_at_start"]}
        for key, proc in watch["procs"].items():
            stdout, _ = proc.communicate()
            try:
                seen = float(stdout.split()[-1]) if proc.returncode == 0 else None
            except (ValueError, IndexError):
                seen = None
            out[key] = None if seen is None else round(seen - watch["t0"], 2)
            out[f"{key}_after_end"] = None if seen is None else round(seen - ends, 2)
        return out

    # -- the three ways --
    def dhcpd_pid(self) -> str:
        """The running dhcpd's pid on the master (read over the ControlMaster, untimed)."""
        return self.hosts[self.master].run(f"cat {DHCPD_PID_FILE}", check=False).stdout.strip()

    def run_playbook(self, rnd: int) -> dict:
        pids = [self.dhcpd_pid()]
        before = self.pending_ids()
        reserve_s, _, _ = self.playbook(
            "playbooks/reserve.yml", "-e", f"owner={OWNER}", "-e", "cores=1", "-e", "ram_mb=128", "-e", "hours=2",
            "-e", f"image={IMAGE}", "-e", "reserve_no_launch=true", remote=False)
        (iid,) = self.pending_ids() - before
        claimed = lifecycle.describe(iid, self.url)  # reserve.yml claimed the slave and addresses: launch keeps them
        self.forget_arp(claimed["private_ip"])
        gap = None if self.last_ansible_end is None else round(time.monotonic() - self.last_ansible_end, 1)
        tasks_file = str(Path(self.tmp) / f"tasks-{rnd}-{iid}.json")
        marker = Path(tasks_file + ".domain")
        watch: dict = {}
        done = threading.Event()

        def on_domain_start() -> None:  # the callback writes the file when vcl_domain returned
            while not done.is_set():
                if marker.exists():
                    watch.update(self.watch_boot(claimed, claimed["slave"]))
                    return
                time.sleep(0.02)

        watcher = threading.Thread(target=on_domain_start)
        if self.args.boot_check:
            watcher.start()
        wall0 = time.time()
        try:
            seconds, _, _ = self.playbook("playbooks/launch.yml", "-e", f"id={iid}", tasks_file=tasks_file)
        finally:
            ends = time.time()
            done.set()
            if self.args.boot_check:
                watcher.join()
        spec = lifecycle.describe(iid, self.url)
        boot = self.boot_result(watch, ends) if watch else {}
        pids.append(self.dhcpd_pid())
        stop_s, _, _ = self.playbook("playbooks/stop.yml", "-e", f"id={iid}")
        pids.append(self.dhcpd_pid())
        tasks = json.loads(Path(tasks_file).read_text())
        return {"way": "playbook", "id": iid, "slave": spec["slave"], "private_ip": spec["private_ip"],
                "dhcpd_pids": pids, "dhcpd_restarted": len(set(pids)) != 1,
                "seconds": round(seconds, 3), "reserve_s": round(reserve_s, 2), "stop_s": round(stop_s, 2),
                "since_previous_ansible_on_the_lab_s": gap, "boot": boot,
                "tasks": task_times(tasks, wall0, wall0 + seconds),
                "leftovers": self.leftovers(spec, spec["slave"])}

    def run_direct(self, full_copy: bool) -> dict:
        claim = service.request(owner=OWNER, cores=1, ram_mb=128, hours=2, platform_value=5, register_as_slave=0,
                                member=0, image=IMAGE, explain=False, url=self.url)
        iid = claim["id"]
        spec, slave = None, None
        self.forget_arp(claim.get("private_ip") or lifecycle.describe(iid, self.url)["private_ip"])
        try:
            t0 = time.perf_counter()
            spec = lifecycle.place(iid, None, self.url)
            slave = spec["slave"]
            t_db = time.perf_counter()
            script, xml = self.domain_present(spec, full_copy)
            t_render = time.perf_counter()
            master_out = self.hosts[self.master].run(
                self.net_present(iid, spec["mac"], spec["private_ip"], spec["public_ip"])).stdout
            t_master = time.perf_counter()
            slave_out = self.hosts[slave].run(script, stdin=xml).stdout
            t_slave = time.perf_counter()
            lifecycle.mark_running(iid, None, self.url)
            end = time.perf_counter()
            watch = self.watch_boot(spec, slave) if self.args.boot_check else None
            steps = {"db_place_and_running": round(t_db - t0 + end - t_slave, 3),
                     "render_xml": round(t_render - t_db, 3), "master_ssh": round(t_master - t_render, 3),
                     **{f"master.{k}": v for k, v in stepped(master_out).items()},
                     "slave_ssh": round(t_slave - t_master, 3),
                     **{f"slave.{k}": v for k, v in stepped(slave_out).items()}}
            total = end - t0
            copy_s = steps.get("slave.copy")
            row = {"way": "fullcopy" if full_copy else "floor", "id": iid, "slave": slave,
                   "private_ip": spec["private_ip"], "steps": steps, "seconds": round(total, 3)}
            if copy_s is not None:
                # The sync after the copy is reported, not counted: a launch need not wait for it.
                sync_s = steps.get("slave.copy_sync", 0.0)
                row.update(copy_s=copy_s, copy_sync_s=sync_s, seconds=round(total - sync_s, 3))
            row["boot"] = self.boot_result(watch, time.time()) if watch else {}
            return row
        finally:
            if spec is not None:
                self.hosts[slave].run(self.domain_absent(spec["domain"]), check=False)
                self.hosts[self.master].run(self.net_absent(iid, spec["public_ip"]), check=False)
            lifecycle.stop(iid, url=self.url)
            if spec is not None:
                left = self.leftovers(spec, slave)
                if left:
                    print(f"  leftovers after the {'fullcopy' if full_copy else 'floor'} round: {left}",
                          file=sys.stderr)

    def extras(self) -> dict:
        """Reference costs outside the floor: a cold ssh connect, the rsync no-op, persisting the ruleset, and the
        dhcpd restart that OMAPI saves a launch and a release (the fallback's cost; run after the round's launches,
        so no timed launch meets it)."""
        master = self.hosts[self.master]
        slave_addr = self.inv["hosts"][self.slaves[0]]["address"]
        image_dir = str(Path(lifecycle_image_disk(self.url)).parent)
        out = master.run(f"""t() {{ echo "T $1 $(date +%s.%N)"; }}
t begin
rsync --archive --ignore-existing --itemize-changes -e 'ssh -o BatchMode=yes -o ConnectTimeout=5' \
  {image_dir}/ root@{slave_addr}:{image_dir}/ >/dev/null
t rsync_noop
iptables-save > /run/vclbench-rules.v4 && iptables-restore --test < /run/vclbench-rules.v4 && rm /run/vclbench-rules.v4
t iptables_persist
systemctl restart isc-dhcp-server
t dhcpd_restart
""").stdout
        return {"ssh_cold_connect_master": round(master.cold_connect(), 3),
                "ssh_cold_connect_slave": round(self.hosts[self.slaves[0]].cold_connect(), 3),
                **stepped(out)}


def lifecycle_image_disk(url: str) -> str:
    image = next(i for i in service.list_images(url=url) if i["name"] == IMAGE)
    return image["disk_file"]


def task_times(doc: dict, wall0: float, wall1: float) -> dict:
    """Per task: seconds from its start to the next task's start (the last one: to the stats), and its status;
    plus the start-up (process start to the first task) and the exit (stats to process exit)."""
    tasks = doc["tasks"]
    rows = []
    for i, task in enumerate(tasks):
        end = tasks[i + 1]["start"] if i + 1 < len(tasks) else doc["stats"]
        statuses = {s for s, _ in task["results"]} or {"none"}
        status = "skipped" if statuses == {"skipped"} else ",".join(sorted(statuses))
        rows.append({"name": task["name"], "status": status, "seconds": round(end - task["start"], 3)})
    first = tasks[0]["start"] if tasks else doc["stats"]
    return {"startup_s": round(first - wall0, 3), "exit_s": round(wall1 - doc["stats"], 3), "tasks": rows}


# --- summary -------------------------------------------------------------------------------------------------

def stats(values: list[float | None]) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": round(statistics.median(vals), 3), "min": round(min(vals), 3), "max": round(max(vals), 3),
            "n": len(vals)}


def breakdown(rows: list[dict]) -> list[dict]:
    """Median seconds per task name (the skipped runs of a task apart), over the playbook launches."""
    per: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    for r in rows:
        sums: dict[str, float] = {"(start-up: Python, inventory, playbook parse)": r["tasks"]["startup_s"],
                                  "(exit after the recap)": r["tasks"]["exit_s"]}
        for t in r["tasks"]["tasks"]:
            key = re.sub(r"\b(vm-|VCL-VM-)[0-9]+", r"\1N", t["name"])  # one name for every VM's run
            key += " [skipped]" if t["status"] == "skipped" else ""
            sums[key] = sums.get(key, 0.0) + t["seconds"]
            counts[key] = counts.get(key, 0) + 1
        for k, v in sums.items():
            per.setdefault(k, []).append(v)
    n = len(rows)
    out = [{"task": k, "median_s": round(statistics.median(v), 3), "runs_per_launch": counts.get(k, n) / n}
           for k, v in per.items()]
    return sorted(out, key=lambda x: -x["median_s"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", default="vclbench")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (pyc caches, image on slaves)")
    parser.add_argument("--db", default=os.environ.get("VCL_DB_URL", "sqlite:////tmp/vclbench-launch.sqlite"))
    parser.add_argument("--reuse", action="store_true", help="use the lab as it is (up, site.yml run, group added)")
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    parser.add_argument("--no-boot-check", dest="boot_check", action="store_false",
                        help="do not wait for the guests' lease and marker")
    parser.add_argument("--forget-arp", action="store_true",
                        help="before each launch (untimed) delete the master's ARP entry for the VM's private address")
    parser.add_argument("--boot-timeout", type=float, default=90)
    args = parser.parse_args()
    os.environ["VCL_DB_URL"] = args.db
    load_start, uptime_start = os.getloadavg(), subprocess.run(["uptime"], capture_output=True, text=True).stdout
    started = time.monotonic()
    setup: dict = {}
    inventory = Path(f"/var/lib/vcl-lab/{args.lab}/inventory/hosts.yml")
    if not args.reuse:
        lab_down(args.lab)
        if args.db.startswith("sqlite:///"):
            Path(args.db.removeprefix("sqlite:///")).unlink(missing_ok=True)
        t0 = time.monotonic()
        inventory = lab_up(args.lab, slaves=2).inventory
        setup["lab_up_s"] = round(time.monotonic() - t0, 1)
    rows: list[dict] = []
    try:
        with tempfile.TemporaryDirectory(prefix="vclbench-launch-") as tmp:
            bench = Bench(args, inventory, tmp)
            if not args.reuse:
                setup["site_yml_s"] = round(bench.playbook("site.yml")[0], 1)
                service.add_group(OWNER, url=args.db)
            for host in bench.hosts.values():
                host.open()
            try:
                # The image on every slave before the rounds (launch.yml then finds it cached and skips its rsync).
                image_dir = str(Path(lifecycle_image_disk(args.db)).parent)
                for s in bench.slaves:
                    addr = bench.inv["hosts"][s]["address"]
                    bench.hosts[bench.master].run(
                        "rsync -a --ignore-existing --mkpath -e 'ssh -o BatchMode=yes'"
                        f" {shlex.quote(image_dir + '/')} {shlex.quote(f'root@{addr}:{image_dir}/')}")
                ways = ["playbook", "floor", "fullcopy"]
                for rnd in range(-args.warmup + 1, args.rounds + 1):
                    order = ways[rnd % 3:] + ways[:rnd % 3]
                    label = f"warm-up {rnd + args.warmup}" if rnd <= 0 else f"round {rnd}"
                    print(f"{label}: {' → '.join(order)}  (load {os.getloadavg()[0]:.2f})", file=sys.stderr)
                    for way in order:
                        r = bench.run_playbook(rnd) if way == "playbook" else bench.run_direct(way == "fullcopy")
                        r.update(round=rnd, load_1min=round(os.getloadavg()[0], 2))
                        print(f"  {way:9} {r['seconds']:7.2f} s  boot {r.get('boot')}", file=sys.stderr)
                        if rnd > 0:
                            rows.append(r)
                    if rnd > 0:
                        rows.append({"way": "extras", "round": rnd, **bench.extras()})
            finally:
                for host in bench.hosts.values():
                    host.close()
    finally:
        if not args.keep:
            down = lab_down(args.lab)
            setup["lab_down_rc"] = down.get("rc")
    report(args, rows, setup, load_start, uptime_start, time.monotonic() - started)
    return 0


def report(args, rows, setup, load_start, uptime_start, elapsed) -> None:
    by = {w: [r for r in rows if r["way"] == w] for w in ("playbook", "floor", "fullcopy", "extras")}
    pb, fl, fc = by["playbook"], by["floor"], by["fullcopy"]
    ratios = [p["seconds"] / f["seconds"] for p, f in zip(pb, fl, strict=False)]
    measures = {
        "playbook: launch.yml wall": stats([r["seconds"] for r in pb]),
        "floor: direct commands": stats([r["seconds"] for r in fl]),
        "  floor: master (DHCP, alias, DNAT)": stats([r["steps"]["master_ssh"] for r in fl]),
        "    of which the OMAPI create (omshell)": stats([r["steps"].get("master.dhcp_omapi") for r in fl]),
        "  floor: slave (overlay, define, start)": stats([r["steps"]["slave_ssh"] for r in fl]),
        "fullcopy: total": stats([r["seconds"] for r in fc]),
        "  fullcopy: cp of the image files": stats([r.get("copy_s") for r in fc]),
        "  fullcopy: sync of the copies (not counted)": stats([r.get("copy_sync_s") for r in fc]),
        "playbook/floor ratio (paired)": stats(ratios),
        "playbook VM: end of launch.yml → lease (<0: before)": stats([r["boot"].get("lease_after_end") for r in pb]),
        "playbook VM: end of launch.yml → marker via client": stats([r["boot"].get("marker_after_end") for r in pb]),
        "playbook VM: domain start → lease": stats([r["boot"].get("lease") for r in pb]),
        "playbook VM: domain start → marker via client": stats([r["boot"].get("marker") for r in pb]),
        "floor VM: domain start → lease": stats([r["boot"].get("lease") for r in fl]),
        "floor VM: domain start → marker via client": stats([r["boot"].get("marker") for r in fl]),
        "fullcopy VM: domain start → lease": stats([r["boot"].get("lease") for r in fc]),
        "fullcopy VM: domain start → marker via client": stats([r["boot"].get("marker") for r in fc]),
        "any VM, master's ARP entry fresh: start → marker": stats(
            [r["boot"].get("marker") for r in pb + fl + fc if r["boot"] and not r["boot"]["arp_stale"]]),
        "any VM, master's ARP entry stale: start → marker": stats(
            [r["boot"].get("marker") for r in pb + fl + fc if r["boot"] and r["boot"]["arp_stale"]]),
        "ref: rsync no-op master → slave": stats([r.get("rsync_noop") for r in by["extras"]]),
        "ref: iptables-save + restore --test": stats([r.get("iptables_persist") for r in by["extras"]]),
        "ref: dhcpd restart (what OMAPI saves)": stats([r.get("dhcpd_restart") for r in by["extras"]]),
        "ref: cold ssh connect (master)": stats([r.get("ssh_cold_connect_master") for r in by["extras"]]),
        "ref: stop.yml (untimed in the launch)": stats([r["stop_s"] for r in pb]),
        "ref: reserve.yml (untimed in the launch)": stats([r["reserve_s"] for r in pb]),
    }
    width = max(len(k) for k in measures)
    print(f"\nlab {args.lab}: {len(pb)} rounds; seconds (ratio: playbook / floor of the same round)")
    print(f"{'measure':<{width}}  {'median':>8}  {'min':>8}  {'max':>8}  {'n':>2}")
    for k, s in measures.items():
        cells = [f"{s[c]:>8.2f}" if s[c] is not None else f"{'-':>8}" for c in ("median", "min", "max")]
        print(f"{k:<{width}}  {'  '.join(cells)}  {s['n']:>2}")
    med_ratio = (measures["playbook: launch.yml wall"]["median"] or 0) / (measures["floor: direct commands"]["median"]
                                                                         or 1)
    print(f"ratio of the medians: {med_ratio:.2f}x   target: <= {TARGET_RATIO:g}x")
    print("floor: every host through one persistent ssh ControlMaster opened before the rounds (no ssh set-up"
          " counted), one ssh command per host; Ansible keeps its own ControlPersist=60s.")
    print("boot: pollers on the slave (grep of the serial log) and on the client (python3 connect to PUBLIC:80),"
          " every 0.2 s, started when the domain started (playbook: when vcl_domain returned); stale ARP: the"
          " master's neighbour entry for the private address still held an earlier VM's MAC at that moment.")
    left = [f"{r['way']} round {r['round']}: {x}" for r in pb for x in r["leftovers"]]
    print(f"after stop.yml: {left or 'nothing left'}")
    restarted = [r["round"] for r in pb if r["dhcpd_restarted"]]
    print(f"dhcpd restarted by launch.yml or stop.yml: {f'rounds {restarted}' if restarted else 'never (same pid)'}")

    tasks = breakdown(pb)
    skipped = stats([sum(t["seconds"] for t in r["tasks"]["tasks"] if t["status"] == "skipped") for r in pb])
    measures["playbook: all skipped tasks together"] = skipped
    print("\nlaunch.yml per task (median over the rounds; start of a task to the start of the next):")
    for t in tasks[:25]:
        runs = f"x{t['runs_per_launch']:g}" if t["runs_per_launch"] != 1 else ""
        print(f"  {t['median_s']:6.2f}  {runs:>4}  {t['task']}")
    print(f"  {skipped['median'] or 0:6.2f}        (all skipped tasks together: attempts 2 and 3 of the loop, guards)")
    floor_steps = stats([])
    if fl:
        keys = list(fl[0]["steps"])
        floor_steps = {k: stats([r["steps"].get(k) for r in fl]) for k in keys}
        print("\nfloor per step (median):")
        for k, s in floor_steps.items():
            print(f"  {s['median']:6.3f}  {k}")
    load_end = os.getloadavg()
    uptime_end = subprocess.run(["uptime"], capture_output=True, text=True).stdout
    print(f"\nload at start: {uptime_start.strip()}\nload at end:   {uptime_end.strip()}   cpus: {os.cpu_count()}"
          f"   bench took {elapsed / 60:.1f} min")
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"launch-{stamp}.json"
    path.write_text(json.dumps({
        "lab": args.lab, "rounds": len(pb), "target_ratio": TARGET_RATIO, "cpus": os.cpu_count(),
        "load_start": [round(x, 2) for x in load_start], "load_end": [round(x, 2) for x in load_end],
        "uptime_start": uptime_start.strip(), "uptime_end": uptime_end.strip(), "setup": setup,
        "summary": measures, "ratio_of_medians": round(med_ratio, 3), "playbook_tasks": tasks,
        "floor_steps": floor_steps, "leftovers_after_stop": left, "dhcpd_restarted_in_rounds": restarted,
        "runs": rows,
    }, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
