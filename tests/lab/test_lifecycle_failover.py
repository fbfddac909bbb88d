"""A slave killed at a random moment inside a running launch, on the simulated lab, and one launch per instance.

Named to run after test_lab.py: it bootstraps the lab with site.yml (slaves bridged), as test_lifecycle does.

The launch runs as the `vcl` command runs it (launch.yml through vcl_sched.runner, ansible-runner), in the
background; after a delay drawn with a printed seed from a launch's measured duration, the slave the launch
uses is killed for real (its systemd-nspawn machine and every process of it get SIGKILL, its veth vanishes).
Afterwards the VM runs on the other slave (the client reaches it through the master's DNAT), or it is cleanly
back in the queue. Reconcile marks the dead slave down (anything lost goes back to the queue), the slave boots
again, reconcile runs again, and then nothing is left anywhere that the database does not account for: no
domain, overlay or serial log on a slave, no DHCP host entry, DNAT chain or public alias on the master, no core
claim or address pair in the database. A third reconcile changes nothing.

Replay one moment with VCL_FAILOVER_SEED=N (the seed is printed; the delay is that seed's fraction of the
measured launch). The lab is the session's (tests/lab/conftest.py); the lab database is a file of this module.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import or_, select

from vcl_lab import machines
from vcl_lab.playbook import Recap, run_playbook
from vcl_lab.testing import REPO, Lab, lab_up
from vcl_sched import db, disks, lending, lifecycle, people, runner, service
from vcl_sched.models import AddressPair, Instance, InstanceState, Slave

pytestmark = pytest.mark.lab

GROUP = "fo"
INSTANCE_DIR = "/var/lib/vcl/instances"  # the kvm role's kvm__instance_dir
SEEDS = [int(seed) for seed in os.environ.get("VCL_FAILOVER_SEED", "11,2").split(",")]
LAUNCH_TIMEOUT = 600.0


def play(lab: Lab, db_url: str, name: str, *extra: str) -> Recap:
    env = {"VCL_DB_URL": db_url, "HOME": os.environ.get("HOME", "/root")}
    path = REPO / "site.yml" if name == "site" else REPO / "playbooks" / f"{name}.yml"
    return run_playbook(lab.inventory, path, *extra, cwd=REPO, env=env)


def must(recap: Recap, what: str) -> Recap:
    assert recap.ok, f"{what} failed:\n{recap.summary()}\n{recap.stdout[-7000:]}\n{recap.stderr[-2000:]}"
    return recap


def through_runner(lab: Lab, db_url: str, name: str, extravars: dict | None = None) -> runner.RunResult:
    """vcl.lab.NAME through vcl_sched.runner (ansible-runner), as the `vcl` command submits it."""
    return runner.run(name, extravars or {}, inventory=lab.inventory, progress=lambda _line: None,
                      envvars={"VCL_DB_URL": db_url})  # fmt: skip


def reconcile(lab: Lab, db_url: str, what: str) -> runner.RunResult:
    result = through_runner(lab, db_url, "reconcile")
    assert result.ok and result.vcl_result is not None, f"reconcile.yml ({what}) failed: {result.to_json()}"
    print(f"reconcile ({what}):", {k: v for k, v in result.vcl_result.items() if v and k != "ok"})
    return result


class Launch(threading.Thread):
    """launch.yml -e id=N through the runner (ansible-runner), in the background."""

    def __init__(self, lab: Lab, db_url: str, vid: int) -> None:
        super().__init__(daemon=True)
        self.lab, self.db_url, self.vid = lab, db_url, vid
        self.result: runner.RunResult | None = None
        self.lines: list[str] = []
        self.started = 0.0
        self.seconds = 0.0

    def run(self) -> None:
        self.started = time.monotonic()
        self.result = runner.run("launch", {"id": self.vid}, inventory=self.lab.inventory, progress=self.progress,
                                 envvars={"VCL_DB_URL": self.db_url})  # fmt: skip
        self.seconds = time.monotonic() - self.started

    def progress(self, line: str) -> None:
        self.lines.append(f"{time.monotonic() - self.started:6.2f} {line}")

    def task_now(self) -> str:
        """The task the launch runs at this moment."""
        return next((line for line in reversed(self.lines) if line.split(None, 1)[1].startswith("TASK [")), "-")

    def finish(self) -> runner.RunResult:
        self.join(LAUNCH_TIMEOUT)
        assert not self.is_alive(), f"launch.yml of {self.vid} still runs after {LAUNCH_TIMEOUT:.0f} s:\n{self.log()}"
        assert self.result is not None
        return self.result

    def log(self) -> str:
        return "\n".join(self.lines[-60:])


def request(lab: Lab, db_url: str) -> dict:
    """A best-effort request, accepted and placed, not launched yet (reserve.yml with reserve_no_launch)."""
    must(play(lab, db_url, "reserve", "-e", f"owner={GROUP}", "-e", "cores=1", "-e", "ram_mb=128", "-e", "hours=1",
              "-e", "image=vcl-guest", "-e", "reserve_no_launch=true"), "reserve.yml")  # fmt: skip
    vm = max(service.list_instances(db_url, include_all=True), key=lambda r: r["id"])
    assert vm["state"] == "pending", vm
    return vm




def reaches(lab: Lab, vm: dict) -> None:
    assert lab.marker(vm["public_ip"]) == f"vcl-guest ready {vm['private_ip']} {vm['mac']}"


def kill(lab: Lab, host: str) -> None:
    """A hard kill of the machine: SIGKILL to its systemd-nspawn and every process of its cgroups."""
    state = lab.state()
    machines.finish_stop(state, state.machines[host], grace=0)


def unaccounted(lab: Lab, db_url: str) -> list[str]:
    """Everything on the hosts and in the database that the database does not account for, and everything
    the database accounts for that the hosts lack; read with the hosts' own tools."""
    problems: list[str] = []
    with db.read(db_url) as s:
        slaves = {sl.name: sl for sl in s.scalars(select(Slave)).all()}
        names = {sl.id: sl.name for sl in slaves.values()}
        insts = s.scalars(select(Instance)).all()
        # Where the database places a domain: running and suspended VMs, and pending ones with a claim.
        placed = {(names[i.slave_id], f"vcl-{i.id}") for i in insts if i.slave_id is not None
                  and i.state in (InstanceState.RUNNING, InstanceState.SUSPENDED)}  # fmt: skip
        on_net = {i.id: i for i in insts if i.state in (InstanceState.RUNNING, InstanceState.SUSPENDED)}
        for i in insts:
            if i.state == InstanceState.PENDING and (i.slave_id is not None or i.mac) and i.lease_owner is None:
                problems.append(f"db: pending instance {i.id} holds a claim ({i.slave_id}, {i.mac}) outside a launch")
            if i.lease_owner is not None:
                problems.append(f"db: instance {i.id} is leased ({i.lease_until}) with no launch running")
        for sl in slaves.values():
            cores = sum(i.cores for i in insts if i.slave_id == sl.id
                        and (i.state == InstanceState.RUNNING or (i.state == InstanceState.PENDING and i.mac)))
            if sl.cores_used != cores:
                problems.append(f"db: {sl.name} counts {sl.cores_used} cores used, its instances hold {cores}")
        pairs = s.scalars(select(AddressPair).where(or_(AddressPair.instance_id.is_not(None),
                                                        AddressPair.stale_instance.is_not(None)))).all()
        holders = {i.id for i in insts if i.state in (InstanceState.RUNNING, InstanceState.SUSPENDED)
                   or (i.state == InstanceState.PENDING and i.mac)}
        for pair in pairs:
            if pair.stale_instance is not None:
                problems.append(f"db: address pair {pair.public_ip} quarantined for instance {pair.stale_instance}")
            if pair.instance_id is not None and pair.instance_id not in holders:
                problems.append(f"db: address pair {pair.public_ip} held by instance {pair.instance_id}, which ended")

    for name in slaves:
        listing = lab.ssh(name, "virsh", "list", "--all", "--name")
        assert listing.returncode == 0, f"{name}: {listing.stderr}"
        domains = {d for d in listing.stdout.split() if d.startswith("vcl-")}
        files = lab.ssh(name, "find", INSTANCE_DIR, "-maxdepth", "1", "-name", "vcl-*").stdout.split()
        for d in sorted(domains):
            if (name, d) not in placed:
                problems.append(f"{name}: domain {d}, which the database does not place there")
        for path in sorted(files):
            stem = Path(path).name.rsplit(".", 1)[0]
            if (name, stem) not in placed:
                problems.append(f"{name}: file {path}, of no VM the database places there")
        for slave, d in sorted(placed):
            if slave == name and d not in domains:
                problems.append(f"{name}: the database places {d} there, libvirt has no such domain")

    conf = lab.ssh("master", "cat", "/etc/dhcp/dhcpd.vcl-vms.conf").stdout
    hosts = {int(m.group(1)): m.group(0) for m in re.finditer(r"host vm-(\d+) \{[^}]*\}", conf)}
    nat = lab.ssh("master", "iptables", "-t", "nat", "-S").stdout
    chains = {int(c) for c in re.findall(r"^-N VCL-VM-(\d+)$", nat, re.MULTILINE)}
    jumps = {int(c) for c in re.findall(r"-j VCL-VM-(\d+)", nat)}
    addrs = lab.ssh("master", "ip", "-4", "-o", "address", "show").stdout
    aliases = set(re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/32", addrs))
    alias_files = lab.ssh("master", "find", "/etc/network/interfaces.d", "-name", "vcl-vm-*").stdout.split()
    for vid, entry in sorted(hosts.items()):
        if vid not in on_net:
            problems.append(f"master: DHCP host vm-{vid}, of no running or suspended VM")
        elif on_net[vid].mac not in entry or on_net[vid].private_ip not in entry:
            problems.append(f"master: DHCP host vm-{vid} is not {on_net[vid].mac} {on_net[vid].private_ip}")
    for vid in sorted(chains | jumps):
        if vid not in on_net:
            problems.append(f"master: DNAT chain VCL-VM-{vid}, of no running or suspended VM")
    for path in alias_files:
        vid = int(path.rsplit("-", 1)[1])
        if vid not in on_net:
            problems.append(f"master: alias file {path}, of no running or suspended VM")
    for ip in sorted(aliases - {i.public_ip for i in on_net.values()}):
        problems.append(f"master: public alias {ip}/32, of no running or suspended VM")
    for vid, inst in sorted(on_net.items()):
        if vid not in hosts or vid not in chains or inst.public_ip not in aliases:
            problems.append(f"master: VM {vid} lacks its DHCP host, DNAT chain or alias")
    return problems


@pytest.fixture(scope="module")
def failover_db(lab, tmp_path_factory):
    """The session lab bootstrapped by site.yml with this module's database, the test guest registered."""
    url = f"sqlite:///{tmp_path_factory.mktemp('failover') / 'vcl.sqlite'}"
    must(play(lab, url, "site"), "site.yml")
    service.add_group(GROUP, url=url)
    yield url
    lab_up(lab.name)  # a machine a failed test left dead boots again
    left = [str(i["id"]) for i in service.list_instances(url)]
    if left:
        play(lab, url, "stop", "-e", f"ids={','.join(left)}")
    play(lab, url, "reconcile")


@pytest.fixture(scope="module")
def launch_seconds(lab, failover_db) -> float:
    """How long one launch takes here (launch.yml through the runner, from start to end), measured on the
    second of two launches: the first also copies the image into the slave's cache."""
    for _ in range(2):
        vm = request(lab, failover_db)
        launch = Launch(lab, failover_db, vm["id"])
        launch.start()
        result = launch.finish()
        assert result.ok and result.vcl_result["state"] == "running", launch.log()
        reaches(lab, lifecycle.describe(vm["id"], failover_db))
        must(play(lab, failover_db, "stop", "-e", f"id={vm['id']}"), "stop.yml")
    print(f"a launch took {launch.seconds:.1f} s:", *(line for line in launch.lines if "TASK [" in line), sep="\n  ")
    return launch.seconds


def test_two_launches_of_one_instance_at_once_launch_it_once(lab, failover_db):
    vm = request(lab, failover_db)
    runs = [Launch(lab, failover_db, vm["id"]) for _ in range(2)]
    for run in runs:
        run.start()
    results = [run.finish() for run in runs]
    launched = [r for r in results if r.vcl_result and r.vcl_result["state"] == "running"]
    refused = [r for r in results if r.vcl_result and r.vcl_result.get("refused")]
    assert len(launched) == 1 and len(refused) == 1, [r.to_json() for r in results]
    assert launched[0].ok, runs[0].log() + "\n----\n" + runs[1].log()
    # The refused run says why, and its playbook fails with that reason (it launched nothing).
    why = refused[0].vcl_result["reason"]
    assert f"instance {vm['id']} is being launched by another run until " in why, why
    assert not refused[0].ok and any(why in f.message for f in refused[0].failures), refused[0].to_json()

    claims = [a for a in service.audit_log(failover_db, 500) if a["object"] == f"instance/{vm['id']}"
              and a["action"] in ("claim", "running")]  # fmt: skip
    assert sorted(a["action"] for a in claims) == ["claim", "running"], claims
    running = lifecycle.describe(vm["id"], failover_db)
    reaches(lab, running)
    must(play(lab, failover_db, "stop", "-e", f"id={vm['id']}"), "stop.yml")
    assert unaccounted(lab, failover_db) == []


@pytest.mark.parametrize("seed", SEEDS)
def test_a_slave_killed_inside_a_launch_leaves_nothing_unaccounted(lab, failover_db, launch_seconds, seed):
    slaves = lab.of_role("slave")
    vm = request(lab, failover_db)
    vid = vm["id"]
    delay = random.Random(seed).uniform(0.0, launch_seconds)
    print(f"seed {seed}: kill after {delay:.2f} s of a {launch_seconds:.1f} s launch (VCL_FAILOVER_SEED={seed})")

    launch = Launch(lab, failover_db, vid)
    launch.start()
    time.sleep(delay)
    dead = lifecycle.describe(vid, failover_db)["slave"] or vm["slave"]  # the slave it is claimed on now
    assert dead in slaves, (vm, dead)
    during = launch.task_now()
    kill(lab, dead)
    killed_at = time.monotonic()
    print(f"seed {seed}: killed {dead} during {during}")
    try:
        result = launch.finish()
        print(f"seed {seed}: the launch ended {result.status} after {launch.seconds:.1f} s:", result.vcl_result)
        after = lifecycle.describe(vid, failover_db)
        if after["state"] == "running" and after["slave"] != dead:
            outcome = "elsewhere"  # the failed attempt was undone, the next slave runs it
            assert result.ok and result.vcl_result["slave"] == after["slave"], launch.log()
            reaches(lab, after)
        elif after["state"] == "running":
            outcome = "on the dead slave"  # it was up before the kill: reconcile finds it lost
            assert result.ok, launch.log()
        else:
            outcome = "back in the queue"
            assert after["state"] == "pending" and not after["slave"] and not after["mac"], (after, launch.log())
        print(f"seed {seed}: outcome: {outcome} ({time.monotonic() - killed_at:.1f} s after the kill)")

        # The dead slave is down; whatever it ran is lost, off the master's network, back in the queue.
        first = reconcile(lab, failover_db, "slave dead").vcl_result
        status = {s["name"]: s["status"] for s in service.list_slaves(failover_db)}
        assert status[dead] == "down" and first["down"] == [dead], (status, first)
        if outcome == "on the dead slave":
            assert lifecycle.describe(vid, failover_db)["state"] == "lost"
            assert first["lost"] == [vid] and vid in first["unnet"], first
            assert [r["lost"] for r in first["requeued"]] == [vid], first
    finally:
        lab_up(lab.name)  # the machine boots again from its own disk

    # What a launch killed between creating the overlay and defining the domain leaves: files with no domain.
    if f"vcl-{vid}" not in lab.ssh(dead, "virsh", "list", "--all", "--name").stdout.split():
        left = [f"{INSTANCE_DIR}/vcl-{vid}.qcow2", f"{INSTANCE_DIR}/vcl-{vid}.log"]
        assert lab.ssh(dead, "touch", *left).returncode == 0
    back = reconcile(lab, failover_db, "slave back").vcl_result
    assert {"slave": dead, "domain": f"vcl-{vid}"} in back["orphans"], back
    assert back["up"] == [dead] and {s["name"]: s["status"] for s in service.list_slaves(failover_db)}[dead] == "up"
    assert all(o["slave"] == dead for o in back["orphans"]), back
    # Whatever waits in the queue (this VM, or its request put back) is launched by the next dispatch.
    must(play(lab, failover_db, "dispatch"), "dispatch.yml")
    live = service.list_instances(failover_db)
    assert len(live) == 1 and live[0]["state"] == "running", live
    reaches(lab, live[0])
    again = play(lab, failover_db, "reconcile")
    assert again.ok and again.changed == 0, f"a clean reconcile changed something:\n{again.stdout[-5000:]}"
    assert unaccounted(lab, failover_db) == []

    must(play(lab, failover_db, "stop", "-e", f"id={live[0]['id']}"), "stop.yml")
    assert service.list_instances(failover_db) == []
    assert unaccounted(lab, failover_db) == []



# --- persistent disks (issue 16): a kept disk follows its user, survives a copy killed in the middle, and becomes
# an image. In this module for its site.yml and its way of killing and booting a slave again.

KEEPER = "dora"
FAST_STOP = ["-e", "vm__stop_shutdown_timeout=1"]  # the test guest ignores ACPI: powered off after 1 s


def keep_request(lab: Lab, db_url: str, image: str = "vcl-guest", keep: bool = True) -> dict:
    """KEEPER's best-effort VM, placed and launched (reserve.yml goes on to launch.yml); returns it running."""
    before = {r["id"] for r in service.list_instances(db_url, include_all=True)}
    must(play(lab, db_url, "reserve", "-e", f"owner={GROUP}", "-e", "cores=1", "-e", "ram_mb=128", "-e", "hours=1",
              "-e", f"image={image}", "-e", f"user={KEEPER}", "-e", f"keep_disk={str(keep).lower()}"),
         "reserve.yml with keep_disk")
    [vm] = [r for r in service.list_instances(db_url) if r["id"] not in before]
    assert vm["state"] == "running", vm
    return vm


def only_up(db_url: str, slave: str, slaves: list[str]) -> None:
    """New VMs go to ``slave`` only: the others drain (they keep their VMs)."""
    for name in slaves:
        service.set_slave_status(name, "up" if name == slave else "draining", db_url)


def master_sha256(lab: Lab, path: str) -> str | None:
    out = lab.ssh("master", "sha256sum", "--", path)
    return out.stdout.split()[0] if out.returncode == 0 else None


def test_a_kept_disk_follows_its_user_survives_a_killed_copy_and_becomes_an_image(lab, failover_db):
    url = failover_db
    slaves = sorted(lab.of_role("slave"))
    first, second = slaves
    people.add_user(KEEPER, role="student", url=url)
    people.add_members(GROUP, [KEEPER], url=url)
    service.configure({"decline_limit": "1000"}, url)  # KEEPER asks 5 times without lending her PC
    try:
        # 1. On the first slave: the guest's first boot writes the note (its own MAC, boot 1) to its disk.
        only_up(url, first, slaves)
        vm1 = keep_request(lab, url)
        assert vm1["slave"] == first
        assert lab.disk_note(vm1["public_ip"]) == (vm1["mac"], 1)

        # 2. Stopped with its disk kept: the overlay is in the master's disk store, checked and recorded.
        began = time.monotonic()
        stopped = must(play(lab, url, "stop", "-e", f"id={vm1['id']}", *FAST_STOP), "stop.yml keeping the disk")
        keep_seconds = time.monotonic() - began
        assert stopped.changed > 0
        [disk] = disks.list_disks(url=url)
        assert (disk["user"], disk["image"], disk["generation"], disk["in_use_by"]) == (KEEPER, "vcl-guest", 1, None)
        assert disk["path"].startswith("/var/lib/vcl/disks/") and master_sha256(lab, disk["path"]) == disk["sha256"]
        mode = lab.ssh("master", "stat", "-c", "%a %U", "--", disk["path"], disk["path"].rsplit("/", 1)[0]).stdout
        assert mode.split("\n")[:2] == ["600 root", "700 root"], mode
        assert disks.usage(user=KEEPER, url=url)["users"][0]["used_bytes"] == disk["size_bytes"] > 0
        assert lab.ssh(first, "test", "-e", f"{INSTANCE_DIR}/vcl-{vm1['id']}.qcow2").returncode == 1

        # 3. The next launch lands on the other slave and starts from the kept disk: the note of the first boot.
        only_up(url, second, slaves)
        vm2 = keep_request(lab, url)
        assert vm2["slave"] == second and vm2["mac"] != vm1["mac"]
        assert lab.disk_note(vm2["public_ip"]) == (vm1["mac"], 2)

        # 4. Its stop is killed at a random moment (the slave dies): before the copy, in the middle of it (slowed to
        # 32 KiB/s, so most moments fall there) or after it. Whatever the moment, the disk is one whole generation,
        # the one the database records (the previous one, or the new one if its record was written), nothing is
        # reserved, and the VM is either running on (its stop not done: reconcile's case) or stopped.
        seed = int(os.environ.get("VCL_DISK_KILL_SEED", random.randrange(10_000)))
        delay = random.Random(seed).uniform(0.0, 2.0 * keep_seconds)
        print(f"disk kill seed {seed}: kill {second} {delay:.2f} s into stop.yml (VCL_DISK_KILL_SEED={seed})")
        stop: dict = {}
        thread = threading.Thread(target=lambda: stop.update(recap=play(
            lab, url, "stop", "-e", f"id={vm2['id']}", "-e", "vm__disk_bwlimit=32", *FAST_STOP)), daemon=True)
        thread.start()
        time.sleep(delay)
        kill(lab, second)
        thread.join(300)
        assert not thread.is_alive()
        recap = stop["recap"]
        [after] = disks.list_disks(url=url)
        generation = after["generation"]
        state = lifecycle.describe(vm2["id"], url)["state"]
        print(f"disk kill seed {seed}: generation {generation}, instance {state}, stop ok {recap.ok}")
        assert after["keeping"] is None and master_sha256(lab, after["path"]) == after["sha256"]
        if generation == 1:  # killed before the new generation was recorded: the previous one is the disk, whole
            assert (after["sha256"], after["size_bytes"], after["path"]) == (disk["sha256"], disk["size_bytes"],
                                                                             disk["path"])
            assert not recap.ok and f"instance {vm2['id']}'s disk was not kept" in recap.stdout, recap.stdout[-5000:]
            assert state == "running"  # nothing was released: reconcile's case
        else:  # recorded before the kill: the stop went on (the slave's domain is reconcile's)
            assert generation == 2 and state == "stopped", (after, state, recap.stdout[-3000:])

        # The dead slave's VM is lost and goes back to the queue; the slave boots again; the VM (the requeued one,
        # or a new one) starts from the kept disk, whole: the note of the first boot, one boot more than it had.
        lost = reconcile(lab, url, "slave dead during the keep").vcl_result
        assert lost["lost"] == ([vm2["id"]] if generation == 1 else []), lost
        lab_up(lab.name)
        reconcile(lab, url, "slave back")
        only_up(url, first, slaves)
        if generation == 1:
            must(play(lab, url, "dispatch"), "dispatch.yml")
            [vm3] = service.list_instances(url)
        else:
            vm3 = keep_request(lab, url)
        assert vm3["state"] == "running" and vm3["slave"] == first
        boots = generation + 1
        assert lab.disk_note(vm3["public_ip"]) == (vm1["mac"], boots)

        # 5. Over quota: the stop (through the runner, as `vcl stop` submits it) keeps nothing and stops nothing:
        # the VM runs again (it boots once more from its own overlay), the step is in not_done, the disk unchanged.
        disks.set_quota("0", user=KEEPER, url=url)
        over = through_runner(lab, url, "stop", {"id": vm3["id"], "vm__stop_shutdown_timeout": 1})
        assert not over.ok and over.vcl_result["stop"] == [], over.to_json()
        [why] = over.vcl_result["not_done"]
        assert why["id"] == vm3["id"] and "quota: user dora would keep" in why["reason"], why
        assert lifecycle.describe(vm3["id"], url)["state"] == "running"
        boots += 1
        assert lab.disk_note(vm3["public_ip"]) == (vm1["mac"], boots)
        assert disks.list_disks(url=url)[0]["generation"] == generation
        disks.set_quota("default", user=KEEPER, url=url)

        # 6. Kept again (the interrupted copy resumes), then captured as an image: a VM of the new image, which
        # keeps nothing, boots with the note in its disk.
        must(play(lab, url, "stop", "-e", f"id={vm3['id']}", *FAST_STOP), "stop.yml keeping the disk again")
        [kept] = disks.list_disks(url=url)
        assert kept["generation"] == generation + 1 and master_sha256(lab, kept["path"]) == kept["sha256"]
        assert lab.ssh("master", "test", "-e", after["path"]).returncode == 1  # the previous generation is gone
        incoming = f"{kept['path'].rsplit('/', 1)[0]}/{kept['id']}.incoming"
        assert lab.ssh("master", "test", "-e", incoming).returncode == 1
        must(play(lab, url, "disk", "-e", "disk_action=capture", "-e", f"disk={kept['id']}", "-e", "image=dora-work"),
             "disk.yml capture")
        [image] = [i for i in service.list_images(url) if i["name"] == "dora-work"]
        assert image["disk_file"] == "/var/lib/vcl/images/dora-work/v1/disk.qcow2" and image["kernel"]
        check = lab.ssh("master", "qemu-img", "info", "--output=json", "--", image["disk_file"])
        assert check.returncode == 0 and "backing-filename" not in check.stdout  # flattened
        vm4 = keep_request(lab, url, image="dora-work", keep=False)
        assert lab.disk_note(vm4["public_ip"]) == (vm1["mac"], boots + 1)
        must(play(lab, url, "stop", "-e", f"id={vm4['id']}", *FAST_STOP), "stop.yml (no keep)")
        assert disks.list_disks(url=url)[0]["generation"] == kept["generation"]  # a VM keeping nothing changes none

        # 7. Deleting the disk frees its quota and its file.
        must(play(lab, url, "disk", "-e", "disk_action=delete", "-e", f"disk={kept['id']}"), "disk.yml delete")
        assert disks.list_disks(url=url) == []
        assert disks.usage(user=KEEPER, url=url)["users"][0]["used_bytes"] == 0
        assert lab.ssh("master", "test", "-e", kept["path"]).returncode == 1
        assert unaccounted(lab, url) == []
    finally:
        lab_up(lab.name)
        for name in slaves:
            service.set_slave_status(name, "up", url)


LENDER = "lena"


def client_network(lab: Lab) -> dict[str, str]:
    """The client machine's network configuration files (ifupdown), to put back once it is no longer lent."""
    names = lab.ssh("client", "find", "/etc/network/interfaces.d", "-maxdepth", "1", "-type", "f").stdout.split()
    return {path: lab.ssh("client", "cat", "--", path).stdout for path in ["/etc/network/interfaces", *names]}


def restore_client_network(lab: Lab, saved: dict[str, str]) -> None:
    """The owner's configuration back (the lab's other tests use the client's plain uplink): the files as they were,
    the uplink out of the bridge with its address, the default route again. Run detached on the client, since the
    address moves under the ssh session."""
    address = lab.state().machines["client"].address
    uplink, gateway = "eth0", lab.state().subnets.gateway
    now = set(lab.ssh("client", "find", "/etc/network/interfaces.d", "-maxdepth", "1", "-type", "f").stdout.split())
    for path in sorted(now - set(saved)):
        lab.ssh("client", "rm", "-f", "--", path)
    for path, text in saved.items():
        lab.ssh("client", "python3", "-c", "import sys; open(sys.argv[1], 'w').write(sys.argv[2])", path, text)
    prefix = lab.state().subnets.lan.prefixlen
    script = (f"ip link set {uplink} nomaster; ip link del br0; ip addr replace {address}/{prefix} dev {uplink};"
              f" ip link set {uplink} up; ip route replace default via {gateway} dev {uplink}")
    lab.ssh("client", "setsid", "-f", "sh", "-c", f"exec </dev/null >/dev/null 2>&1; sleep 1; {script}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = lab.ssh("client", "ip", "-4", "-o", "address", "show", "dev", uplink, timeout=10)
        if out.returncode == 0 and f"{address}/" in out.stdout:
            return
        time.sleep(1)
    raise AssertionError("the client's uplink did not get its address back")


def free_cores(url: str, slave: str) -> int:
    return next(s["cores_free"] for s in service.list_slaves(url) if s["name"] == slave)


def test_a_lent_pc_takes_a_vm_and_its_owner_takes_it_back_without_losing_the_vm(lab, failover_db):
    """Issue 15 end to end: LENDER's request with register_as_slave=1 is served, so her PC (the client machine) is
    enrolled as a lent slave by lend.yml and gets two best-effort VMs; she takes it back with reclaim.yml (through
    the runner, as `vcl lend reclaim` submits it) while the one slave that is up has room for one of them: that one
    moves and answers again from the same boot (its disk note still counts one boot, its serial log shows one), the
    other waits suspended there and, once room returns, resumes from the memory it moved with (still its first
    boot). The PC keeps no VM, domain, file or VCL rule."""
    url = failover_db
    slaves = sorted(lab.of_role("slave"))
    people.add_user(LENDER, role="student", url=url)
    people.add_members(GROUP, [LENDER], url=url)
    network = client_network(lab)
    try:
        # 1. Her request (RAS=1) is served on a slave of the lab: her PC is owed.
        must(play(lab, url, "reserve", "-e", f"owner={GROUP}", "-e", "cores=1", "-e", "ram_mb=128", "-e", "hours=1",
                  "-e", "image=vcl-guest", "-e", f"user={LENDER}", "-e", "register_as_slave=1"), "reserve.yml RAS=1")
        [owed] = lending.owed(url)
        assert owed["user"] == LENDER
        # 2. Enrolled: bootstrapped by the slave roles, registered lent with its real capacity.
        began = time.monotonic()
        enrolled = through_runner(lab, url, "lend", {"lend_host": "client", "lend_user": LENDER,
                                                      "lend_instance": str(owed["id"]), "lend_hours": "2"})
        print(f"enrolment of the client took {time.monotonic() - began:.1f} s")
        assert enrolled.ok, enrolled.to_json()
        [pc] = lending.list_lent(url)
        assert (pc["name"], pc["lent_by"], pc["lend_state"], pc["status"]) == ("client", LENDER, "lent", "up")
        assert pc["cores_total"] >= 1 and lending.owed(url) == []
        assert re.search(r"\svcl-vm$", lab.ssh("client", "virsh", "nwfilter-list").stdout, re.MULTILINE)
        # 3. Two best-effort VMs land on the PC (the lab's slaves take none for now) and answer.
        only_up(url, "client", slaves)
        vm, waiter = keep_request(lab, url, keep=False), keep_request(lab, url, keep=False)
        assert vm["slave"] == waiter["slave"] == "client", (vm, waiter)
        for each in (vm, waiter):
            reaches(lab, each)
            assert lab.disk_note(each["public_ip"]) == (each["mac"], 1)
        # The first slave keeps room for one of them to run: the other will wait there, suspended.
        only_up(url, slaves[0], slaves)
        fillers = []
        while free_cores(url, slaves[0]) > 1:
            fillers.append(keep_request(lab, url, keep=False))
        # 4. Taken back: the first VM moves to the first slave and runs on in the same boot; the second waits there
        # suspended, with its saved memory.
        began = time.monotonic()
        back = through_runner(lab, url, "reclaim", {"lend_host": "client"})
        print(f"taking the client back (two VMs of 128 MB moved) took {time.monotonic() - began:.1f} s")
        assert back.ok, back.to_json()
        assert back.vcl_result["moved"] == [vm["id"], waiter["id"]] and back.vcl_result["returned"] == ["client"]
        moved, waiting = lifecycle.describe(vm["id"], url), lifecycle.describe(waiter["id"], url)
        assert (moved["state"], moved["slave"], moved["mac"], moved["public_ip"]) == (
            "running", slaves[0], vm["mac"], vm["public_ip"])
        assert (waiting["state"], waiting["slave"]) == ("suspended", slaves[0])
        reaches(lab, vm)
        assert lab.disk_note(vm["public_ip"]) == (vm["mac"], 1)  # no second boot
        log = lab.ssh(slaves[0], "cat", f"{INSTANCE_DIR}/vcl-{vm['id']}.log").stdout
        assert log.count("vcl-guest: booted") == 1, log
        # Room returns (the moved VM ends): the waiting VM resumes from the memory it moved with, in its first boot.
        ended = ",".join(str(v["id"]) for v in (vm, *fillers))
        must(play(lab, url, "stop", "-e", f"ids={ended}"), "stop.yml")
        must(play(lab, url, "resume", "-e", f"id={waiter['id']}"), "resume.yml")
        reaches(lab, waiter)
        assert lab.disk_note(waiter["public_ip"]) == (waiter["mac"], 1)
        assert lab.ssh(slaves[0], "test", "-e", f"{INSTANCE_DIR}/vcl-{waiter['id']}.save").returncode == 1
        # 5. The PC left the pool and keeps nothing of VCL's VMs.
        assert lending.list_lent(url) == [] and "client" not in {s["name"] for s in service.list_slaves(url)}
        assert lab.ssh("client", "virsh", "list", "--all", "--name").stdout.strip() == ""
        assert lab.ssh("client", "find", INSTANCE_DIR, "-mindepth", "1").stdout.strip() == ""
        rules = lab.ssh("client", "iptables-save").stdout + lab.ssh("client", "ebtables-save").stdout
        assert not re.search(r"vnet|libvirt-[IOP]-|VCL", rules), rules
        must(play(lab, url, "stop", "-e", f"id={waiter['id']}"), "stop.yml")
        assert unaccounted(lab, url) == []
    finally:
        for name in slaves:
            service.set_slave_status(name, "up", url)
        restore_client_network(lab, network)
