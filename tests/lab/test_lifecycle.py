"""The product's main path on the simulated lab, with a real guest under QEMU.

reserve.yml → launch → the guest boots on a slave, takes its private address from the master's dhcpd,
and the client reads its marker through the master's DNAT → suspend (managedsave frees the slave's
RAM) → resume → stop leaves nothing behind, checked on the hosts with their own tools. Also: an advance
reservation that starts while best-effort VMs fill the pool suspends the lowest-priority one; two
reserve.yml runs at once never share cores or addresses; a slave dead in the middle of a launch leaks
nothing and the VM lands on the other slave; reconcile marks the dead slave down and its VMs lost.

The lab database is the controller's, a file in the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest

from vcl_lab import machines
from vcl_lab.playbook import Recap, run_playbook
from vcl_lab.testing import REPO, Lab, lab_up
from vcl_sched import config, db, lifecycle, service
from vcl_sched.models import AddressPair, Slave

pytestmark = pytest.mark.lab

PLAYBOOKS = REPO / "playbooks"
CONSOLES = Path(os.environ.get("HOME", "/root")) / ".vcl" / "consoles"
GROUP = "cs101"


def play(lab: Lab, db_url: str, name: str, *extra: str, now: str | None = None, fqcn: bool = True) -> Recap:
    """``ansible-playbook vcl.lab.NAME`` (by FQCN, as `vcl` submits them), or with ``fqcn=False`` by its path
    (playbooks/NAME.yml, as an admin types it); site is the checkout's site.yml."""
    env = {"VCL_DB_URL": db_url, "HOME": os.environ.get("HOME", "/root")}
    if now:
        env["VCL_NOW"] = now
    if name == "site":
        path: str | Path = REPO / "site.yml"
    else:
        path = f"vcl.lab.{name}" if fqcn else PLAYBOOKS / f"{name}.yml"
    return run_playbook(lab.inventory, path, *extra, cwd=REPO, env=env)


def must(recap: Recap, what: str) -> Recap:
    assert recap.ok, f"{what} failed:\n{recap.summary()}\n{recap.stdout[-7000:]}\n{recap.stderr[-2000:]}"
    return recap


def reserve(lab: Lab, db_url: str, *extra: str, now: str | None = None, launch: bool = True) -> Recap:
    args = ["-e", f"owner={GROUP}", "-e", "ram_mb=128", "-e", "image=vcl-guest", *extra]
    if not launch:
        args += ["-e", "reserve_no_launch=true"]
    return play(lab, db_url, "reserve", *args, now=now, fqcn=False)  # by path; it imports launch.yml


def newest(db_url: str) -> dict:
    return max(service.list_instances(db_url, include_all=True), key=lambda r: r["id"])




def master_state(lab: Lab, vm_id: int) -> dict:
    conf = lab.ssh("master", "cat", "/etc/dhcp/dhcpd.vcl-vms.conf").stdout  # the host entries dhcpd.conf includes
    nat = lab.ssh("master", "iptables", "-t", "nat", "-S").stdout
    addrs = lab.ssh("master", "ip", "-4", "-o", "address", "show").stdout
    return {"dhcp": re.findall(rf"host vm-{vm_id} \{{[^}}]*\}}", conf),
            "chain": [line for line in nat.splitlines() if f"VCL-VM-{vm_id}" in line.split()],
            "addresses": addrs}


def slave_state(lab: Lab, slave: str, vm_id: int) -> dict:
    listing = lab.ssh(slave, "virsh", "list", "--all", "--name").stdout.split()
    files = lab.ssh(slave, "ls", "/var/lib/vcl/instances").stdout.split()
    qemu = lab.ssh(slave, "pgrep", "-f", f"qemu-system[-]x86.*guest=vcl-{vm_id},").stdout.split()
    return {"defined": f"vcl-{vm_id}" in listing, "files": [f for f in files if f.startswith(f"vcl-{vm_id}.")],
            "qemu": qemu}


def held(db_url: str) -> list:
    with db.read(db_url) as s:
        return s.query(AddressPair.instance_id).filter(AddressPair.instance_id.is_not(None)).all()


def cores_used(db_url: str) -> dict:
    with db.read(db_url) as s:
        return dict(s.query(Slave.name, Slave.cores_used).all())


@pytest.fixture(scope="module")
def lifecycle_db(lab, tmp_path_factory):
    """The session lab bootstrapped by site.yml with this module's database, the test guest registered."""
    url = f"sqlite:///{tmp_path_factory.mktemp('lifecycle') / 'vcl.sqlite'}"
    must(play(lab, url, "site"), "site.yml")
    service.add_group(GROUP, url=url)
    assert [i["name"] for i in service.list_images(url)] == ["vcl-guest"]
    yield url
    # Whatever a failed test left running is stopped, so later modules get a clean lab.
    left = [str(i["id"]) for i in service.list_instances(url)]
    if left:
        play(lab, url, "stop", "-e", f"ids={','.join(left)}")


def test_reserve_launch_reach_suspend_resume_stop(lab, lifecycle_db):
    recap = must(reserve(lab, lifecycle_db, "-e", "cores=1", "-e", "hours=2"), "reserve.yml (start=now)")
    vm = newest(lifecycle_db)
    assert vm["state"] == "running" and vm["slave"] in lab.of_role("slave"), vm
    assert f"vnc://{lab.addresses[vm['slave']]}:" in recap.stdout and "console_password_file" in recap.stdout
    vid, slave = vm["id"], vm["slave"]

    # The guest took its address from the master's dhcpd and answers through the DNAT.
    assert lab.marker(vm["public_ip"]) == f"vcl-guest ready {vm['private_ip']} {vm['mac']}"
    # dhcpd keeps no lease record for fixed-address hosts: the guest's own log says it got its address by
    # DHCP (its kernel command line names no address), and dhcpd's log shows the answer to its MAC.
    serial = lab.ssh(slave, "cat", f"/var/lib/vcl/instances/vcl-{vid}.log").stdout
    assert f"vcl-guest: lease {vm['private_ip']}" in serial, serial
    assert "vcl.ip=" not in lab.ssh(slave, "virsh", "dumpxml", f"vcl-{vid}").stdout
    dhcpd_log = lab.ssh("master", "journalctl", "--no-pager", "-o", "cat", "-t", "dhcpd").stdout
    assert f"DHCPACK on {vm['private_ip']} to {vm['mac']}" in dhcpd_log, dhcpd_log[-2000:]
    on_master = master_state(lab, vid)
    assert len(on_master["dhcp"]) == 1 and vm["mac"] in on_master["dhcp"][0]
    assert len(on_master["chain"]) >= 3 and f"{vm['public_ip']}/32" in on_master["addresses"]
    # The console's password: in the domain (VNC on the slave's address), in a 0600 file, never in the output.
    secure_xml = lab.ssh(slave, "virsh", "dumpxml", "--security-info", f"vcl-{vid}").stdout
    password = re.search(r"passwd='([^']+)'", secure_xml).group(1)
    console_file = CONSOLES / f"vm-{vid}-{vm['mac'].replace(':', '')}.vnc"
    assert console_file.read_text().strip() == password and (console_file.stat().st_mode & 0o777) == 0o600
    assert password not in recap.stdout and f"listen='{lab.addresses[slave]}'" in secure_xml

    # Suspend: managedsave, the QEMU process (and its RAM) gone, cores back in the database.
    must(play(lab, lifecycle_db, "suspend", "-e", f"id={vid}"), "suspend.yml")
    state = slave_state(lab, slave, vid)
    assert state["defined"] and state["qemu"] == [], state
    assert "Managed save:   yes" in lab.ssh(slave, "virsh", "dominfo", f"vcl-{vid}").stdout
    assert service.list_instances(lifecycle_db)[0]["state"] == "suspended"
    assert cores_used(lifecycle_db)[slave] == 0

    # Resume restores the saved memory: the guest answers again, without booting a second time.
    must(play(lab, lifecycle_db, "resume", "-e", f"id={vid}"), "resume.yml")
    assert lab.marker(vm["public_ip"]) == f"vcl-guest ready {vm['private_ip']} {vm['mac']}"
    serial = lab.ssh(slave, "cat", f"/var/lib/vcl/instances/vcl-{vid}.log").stdout
    assert serial.count("vcl-guest: booted") == 1, serial
    assert cores_used(lifecycle_db)[slave] == 1

    # site.yml after a launch changes nothing: the master's files are what its roles render from the database.
    again = must(play(lab, lifecycle_db, "site"), "site.yml with a VM running")
    changed = {host: c.changed for host, c in again.hosts.items() if c.changed}
    assert not changed, f"site.yml after a launch changed {changed}:\n{again.stdout[-6000:]}"

    # Stop leaves nothing: no domain, overlay, log, DHCP entry, DNAT chain, alias, claim.
    must(play(lab, lifecycle_db, "stop", "-e", f"id={vid}"), "stop.yml")
    assert slave_state(lab, slave, vid) == {"defined": False, "files": [], "qemu": []}
    assert not console_file.exists()
    on_master = master_state(lab, vid)
    assert on_master["dhcp"] == [] and on_master["chain"] == []
    assert f"{vm['public_ip']}/32" not in on_master["addresses"]
    assert held(lifecycle_db) == [] and set(cores_used(lifecycle_db).values()) == {0}
    assert service.list_instances(lifecycle_db, include_all=True)[-1]["state"] == "stopped"
    must(play(lab, lifecycle_db, "stop", "-e", f"id={vid}"), "stop.yml again")  # repeating is harmless


def test_bad_input_fails_naming_the_field_and_writes_nothing(lab, lifecycle_db):
    before = service.list_instances(lifecycle_db, include_all=True)
    recap = reserve(lab, lifecycle_db, "-e", "cores=many", "-e", "hours=1")
    assert not recap.ok and "cores" in recap.stdout
    recap = reserve(lab, lifecycle_db, "-e", "cores=1", "-e", "hours=1", "-e", "image=nope")
    assert not recap.ok and "image: no image named 'nope'" in recap.stdout
    assert service.list_instances(lifecycle_db, include_all=True) == before


def test_two_reserve_runs_at_once_never_share_cores_or_addresses(lab, lifecycle_db):
    with ThreadPoolExecutor(2) as pool:
        recaps = list(pool.map(lambda _: reserve(lab, lifecycle_db, "-e", "cores=1", "-e", "hours=1"), range(2)))
    for recap in recaps:
        must(recap, "concurrent reserve.yml")
    vms = [i for i in service.list_instances(lifecycle_db) if i["state"] == "running"]
    assert len(vms) == 2
    for key in ("mac", "private_ip", "public_ip"):
        assert len({v[key] for v in vms}) == 2, vms
    slaves = {s["name"]: s for s in service.list_slaves(lifecycle_db)}
    for name, s in slaves.items():
        assert s["cores_used"] == sum(v["cores"] for v in vms if v["slave"] == name) <= s["cores_total"]
    for vm in vms:
        assert lab.marker(vm["public_ip"]) == f"vcl-guest ready {vm['private_ip']} {vm['mac']}"
        assert len(master_state(lab, vm["id"])["dhcp"]) == 1
    must(play(lab, lifecycle_db, "stop", "-e", "ids=" + ",".join(str(v["id"]) for v in vms)), "stop.yml")
    assert held(lifecycle_db) == []


def test_a_due_reservation_suspends_the_lowest_best_effort_vm(lab, lifecycle_db):
    slaves = service.list_slaves(lifecycle_db)
    # Best-effort VMs fill every slave at 09:30; then (bookable the same day) a reservation of one slave's cores
    # from 10:00 is accepted: at its start the best-effort VM on the seat's slave makes way, whatever its priority.
    tomorrow = (config.now() + timedelta(days=1)).date().isoformat()
    service.configure({"booking.lead_days": "0"}, lifecycle_db)
    try:
        filled = []
        for s in slaves:
            must(reserve(lab, lifecycle_db, "-e", f"cores={s['cores_total']}", "-e", "hours=1",
                         now=f"{tomorrow} 09:30"), "reserve.yml (filling best effort)")
            filled.append(newest(lifecycle_db))
        assert {v["slave"] for v in filled} == {s["name"] for s in slaves}
        assert all(v["state"] == "running" for v in filled)
        cores = max(s["cores_total"] for s in slaves)
        start = json.dumps({"start": f"{tomorrow} 10:00"})
        must(reserve(lab, lifecycle_db, "-e", f"cores={cores}", "-e", "hours=2", "-e", start, "-e", "member=1",
                     "-e", "register_as_slave=1", now=f"{tomorrow} 09:31"), "reserve.yml (advance)")
    finally:
        service.configure({"booking.lead_days": "1"}, lifecycle_db)
    res = service.list_reservations(lifecycle_db)["reservations"][-1]
    assert res["state"] == "accepted" and res["start"] == f"{tomorrow} 10:00"

    recap = must(play(lab, lifecycle_db, "dispatch", now=f"{tomorrow} 10:00"), "dispatch.yml")
    rows = {i["id"]: i for i in service.list_instances(lifecycle_db)}
    ar = [i for i in rows.values() if i["kind"] == "AR"]
    assert len(ar) == 1 and ar[0]["state"] == "running", recap.stdout[-4000:]
    victims = [v for v in filled if rows[v["id"]]["state"] == "suspended"]
    assert len(victims) == 1 and victims[0]["slave"] == ar[0]["slave"]
    victim = victims[0]
    assert slave_state(lab, victim["slave"], victim["id"])["qemu"] == []
    assert "Managed save:   yes" in lab.ssh(victim["slave"], "virsh", "dominfo", f"vcl-{victim['id']}").stdout
    assert slave_state(lab, ar[0]["slave"], ar[0]["id"])["qemu"]

    # The seat is given back early: its cores stay the block's until 12:00, after the suspended VM's end (10:30),
    # so it stays suspended; at 10:31 the best-effort VMs' hour is over and dispatch ends them all.
    must(play(lab, lifecycle_db, "stop", "-e", f"id={ar[0]['id']}"), "stop.yml (reservation)")
    must(play(lab, lifecycle_db, "dispatch", now=f"{tomorrow} 10:25"), "dispatch.yml (no resume)")
    assert {i["id"]: i["state"] for i in service.list_instances(lifecycle_db)}[victim["id"]] == "suspended"
    must(play(lab, lifecycle_db, "dispatch", now=f"{tomorrow} 10:31"), "dispatch.yml (expiry)")
    assert service.list_instances(lifecycle_db) == []
    assert held(lifecycle_db) == [] and set(cores_used(lifecycle_db).values()) == {0}
    for v in filled:
        assert slave_state(lab, v["slave"], v["id"]) == {"defined": False, "files": [], "qemu": []}


def test_a_slave_dead_in_the_middle_of_a_launch_leaks_nothing_and_the_vm_lands_elsewhere(lab, lifecycle_db):
    must(reserve(lab, lifecycle_db, "-e", "cores=1", "-e", "hours=1", launch=False), "reserve.yml (claim only)")
    vm = newest(lifecycle_db)
    dead = vm["slave"]
    assert vm["state"] == "pending" and dead
    # The slave dies after the scheduler claimed it: the launch finds out on the way (its master steps done).
    state = lab.state()
    machines.finish_stop(state, state.machines[dead], grace=0)
    try:
        must(play(lab, lifecycle_db, "launch", "-e", f"id={vm['id']}", "-e", "vm__launch_attempts=2"), "launch.yml")
        landed = lifecycle.describe(vm["id"], lifecycle_db)
        assert landed["state"] == "running" and landed["slave"] != dead, landed
        unclaimed = [a for a in service.audit_log(lifecycle_db, 200)
                     if a["object"] == f"instance/{vm['id']}" and a["action"] == "unclaim"]
        assert len(unclaimed) == 1 and dead in unclaimed[0]["before"], unclaimed
        on_master = master_state(lab, vm["id"])
        assert len(on_master["dhcp"]) == 1 and landed["mac"] in on_master["dhcp"][0]
        assert cores_used(lifecycle_db)[dead] == 0 and len(held(lifecycle_db)) == 1
        assert lab.marker(landed["public_ip"]) == f"vcl-guest ready {landed['private_ip']} {landed['mac']}"

        # Reconcile: the dead slave is down (no new VMs); the VM on the live one is fine.
        must(play(lab, lifecycle_db, "reconcile"), "reconcile.yml")
        status = {s["name"]: s["status"] for s in service.list_slaves(lifecycle_db)}
        assert status[dead] == "down" and status[landed["slave"]] == "up"
    finally:
        lab_up(lab.name)  # the machine boots again from its own disk
    must(play(lab, lifecycle_db, "reconcile"), "reconcile.yml after the slave is back")
    assert {s["name"]: s["status"] for s in service.list_slaves(lifecycle_db)}[dead] == "up"
    assert slave_state(lab, dead, vm["id"]) == {"defined": False, "files": [], "qemu": []}

    # A domain that vanishes behind the scheduler's back is found lost and its resources freed.
    assert lab.ssh(landed["slave"], "virsh", "destroy", f"vcl-{vm['id']}").returncode == 0
    assert lab.ssh(landed["slave"], "virsh", "undefine", f"vcl-{vm['id']}").returncode == 0
    must(play(lab, lifecycle_db, "reconcile"), "reconcile.yml (vanished domain)")
    assert lifecycle.describe(vm["id"], lifecycle_db)["state"] == "lost"
    assert held(lifecycle_db) == [] and set(cores_used(lifecycle_db).values()) == {0}
    on_master = master_state(lab, vm["id"])  # reconcile took the lost VM off the master's network too
    assert on_master["dhcp"] == [] and on_master["chain"] == []
    print(json.dumps({"dead": dead, "landed": landed["slave"]}))
