"""A class ready at the bell (issue 13), end to end on the simulated lab (master, 2 slaves, client).

A teacher owns a group of 4 students and books a session of 4 seats with prelaunch. ``prelaunch_lead_minutes``
before the window opens, one dispatch run (through ansible-runner, as `vcl dispatch` submits it) turns the
reservation into 4 seats handed to the members in name order and launches them in lanes (two per slave by
default), side by side. At the window's start all 4 VMs run, each held by a different member and reachable by
the client through its public address on the master (DNAT); the teacher's view of the session shows the 4
seats and their holders. At the window's end a dispatch run stops them all and nothing is left: no domain on
the slaves, no DHCP host entry, DNAT chain or alias on the master, no claim in the database, no console
password.

The clock of the playbook runs is moved with VCL_NOW, as in test_lifecycle.py; the lab database is a file in
the test's temporary directory. Run with VCL_TEST_LAB=vclsess (the lab's own subnet).
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from vcl_lab.playbook import Recap, run_playbook
from vcl_lab.testing import REPO, Lab
from vcl_sched import acting, bookings, config, db, people, runner, service, sessions
from vcl_sched.models import AddressPair, Instance, Reservation, Slave, User

pytestmark = pytest.mark.lab

CONSOLES = Path(os.environ.get("HOME", "/root")) / ".vcl" / "consoles"
TEACHER, GROUP = "tara", "cs13"
STUDENTS = ["ada", "ben", "cyd", "dee"]  # name order: the order seats are handed out


def play(lab: Lab, db_url: str, name: str, now: str | None = None) -> Recap:
    env = {"VCL_DB_URL": db_url, "HOME": os.environ.get("HOME", "/root")}
    if now:
        env["VCL_NOW"] = now
    path = REPO / "site.yml" if name == "site" else f"vcl.lab.{name}"
    return run_playbook(lab.inventory, path, cwd=REPO, env=env)


def must(recap: Recap, what: str) -> Recap:
    assert recap.ok, f"{what} failed:\n{recap.summary()}\n{recap.stdout[-7000:]}\n{recap.stderr[-2000:]}"
    return recap




def seats_in_db(db_url: str, rid: int) -> list[dict]:
    with db.read(db_url) as s:
        rows = s.execute(select(Instance, User.name, Slave.name).outerjoin(User, User.id == Instance.user_id)
                         .outerjoin(Slave, Slave.id == Instance.slave_id)
                         .where(Instance.reservation_id == rid).order_by(Instance.seat)).all()
        return [{"id": i.id, "seat": i.seat, "state": str(i.state), "user_id": i.user_id, "user": user,
                 "slave": slave, "public_ip": i.public_ip, "private_ip": i.private_ip, "mac": i.mac}
                for i, user, slave in rows]


@pytest.fixture(scope="module")
def session_db(lab, tmp_path_factory):
    """The lab bootstrapped by site.yml with this module's database; a teacher, their group of 4 students."""
    url = f"sqlite:///{tmp_path_factory.mktemp('class_session') / 'vcl.sqlite'}"
    must(play(lab, url, "site"), "site.yml")
    people.add_user(TEACHER, role="teacher", password="a teacher's long password", url=url)
    people.add_group(GROUP, owner=TEACHER, url=url)
    for name in STUDENTS:
        people.add_user(name, role="student", password=f"{name}'s long password", url=url)
    people.add_members(GROUP, STUDENTS, url=url)
    yield url
    left = [str(i["id"]) for i in service.list_instances(url)]
    if left:  # whatever a failed test left running is stopped, so later modules get a clean lab
        run_playbook(lab.inventory, "vcl.lab.stop", "-e", f"ids={','.join(left)}", cwd=REPO,
                     env={"VCL_DB_URL": url, "HOME": os.environ.get("HOME", "/root")})


def test_a_class_is_ready_at_the_bell_and_leaves_nothing_behind(lab, session_db):
    url = session_db
    slaves = sorted(lab.of_role("slave"))
    day = (config.now() + timedelta(days=1)).date().isoformat()  # bookable from the next day (the policy)
    with acting.acting(people.actor_for(TEACHER, url)):
        booked = bookings.reserve(owner=GROUP, cores=1, ram_mb=128, start=f"{day} 10:00", hours=1,
                                  image="vcl-guest", seats=4, prelaunch=True, url=url)
    assert booked["state"] == "accepted" and booked["start"] == f"{day} 10:00", booked
    rid = booked["id"]
    lead = service.get_settings(url).prelaunch_lead_minutes
    early = (datetime.fromisoformat(f"{day} 10:00") - timedelta(minutes=lead)).strftime("%Y-%m-%d %H:%M")

    # start - lead: one dispatch run (as `vcl dispatch` submits it) starts the session and launches its 4 seats,
    # in lanes of their slaves (two per slave by default).
    result = runner.run("dispatch", inventory=lab.inventory, progress=lambda _line: None,
                        envvars={"VCL_DB_URL": url, "VCL_NOW": early, "HOME": os.environ.get("HOME", "/root")})
    assert result.ok and result.vcl_result is not None, result.to_json()
    out = result.vcl_result
    assert [s["reservation"] for s in out["started_reservations"]] == [rid], out
    seats = seats_in_db(url, rid)
    ids = [s["id"] for s in seats]
    assert len(ids) == 4 and sorted(out["launched"]) == sorted(ids) and out["not_done"] == [], out
    lanes = out["lanes"]
    assert sorted(lanes) == slaves and sorted(i for lane in lanes.values() for i in lane) == sorted(ids), out
    # Each lane ran on a host of its own, lane-SLAVE-K (the launches' tasks are counted on the host that runs the
    # lane): a slave's planned seats are dealt to up to two lanes.
    lane_hosts = {f"lane-{slave}-{k + 1}" for slave, lane in lanes.items() for k in range(min(2, len(lane)))}
    assert all(result.stats["changed"].get(host, 0) > 0 for host in lane_hosts), result.stats
    # The lanes ran side by side: before the first seat was recorded running, a launch on every slave had its
    # lease (one lane at a time would record each launch running before the next one takes its lease).
    log = sorted((a for a in service.audit_log(url, 500) if a["object"] in {f"instance/{i}" for i in ids}),
                 key=lambda a: a["id"])
    first_running = next(n for n, a in enumerate(log) if a["action"] == "running")
    leased_first = {int(a["object"].split("/")[1]) for a in log[:first_running] if a["action"] == "lease"}
    lane_of = {iid: slave for slave, lane in lanes.items() for iid in lane}
    assert {lane_of[i] for i in leased_first} == set(slaves), log[:first_running + 1]

    # The bell: a dispatch run changes nothing; all 4 run, each held by a different member, each answers the
    # client through its public address.
    again = must(play(lab, url, "dispatch", f"{day} 10:00"), "dispatch.yml at the window's start")
    assert again.changed == 0, again.stdout[-4000:]
    seats = seats_in_db(url, rid)
    assert [s["state"] for s in seats] == ["running"] * 4, seats
    assert [s["user"] for s in seats] == STUDENTS and len({s["user_id"] for s in seats}) == 4, seats
    assert {s["slave"] for s in seats} == set(slaves), seats
    for s in seats:
        assert lab.marker(s["public_ip"], timeout=180) == f"vcl-guest ready {s['private_ip']} {s['mac']}"
        password = CONSOLES / f"vm-{s['id']}-{s['mac'].replace(':', '')}.vnc"  # on the controller, 0600
        assert password.is_file() and (password.stat().st_mode & 0o777) == 0o600, password
    with acting.acting(people.actor_for(TEACHER, url)):
        view = sessions.session_view(rid, url=url)
    assert [(s["seat"], s["user"], s["state"]) for s in view["seats"]] == [
        (n + 1, name, "running") for n, name in enumerate(STUDENTS)], view
    assert view["running"] == 4 and view["members_without_seat"] == [], view
    assert [s["public_ip"] for s in view["seats"]] == [s["public_ip"] for s in seats]

    # The window's end: one dispatch run stops them all, and nothing is left behind.
    must(play(lab, url, "dispatch", f"{day} 11:00"), "dispatch.yml at the window's end")
    assert [s["state"] for s in seats_in_db(url, rid)] == ["stopped"] * 4
    with db.read(url) as s:
        assert str(s.get(Reservation, rid).state) == "done"
    for slave in slaves:
        assert lab.ssh(slave, "virsh", "list", "--all", "--name").stdout.split() == [], slave
        assert lab.ssh(slave, "ls", "/var/lib/vcl/instances").stdout.split() == [], slave
    hosts_file = lab.ssh("master", "cat", "/etc/dhcp/dhcpd.vcl-vms.conf").stdout
    assert re.findall(r"^host ", hosts_file, re.M) == [], hosts_file
    nat = lab.ssh("master", "iptables", "-t", "nat", "-S").stdout
    assert not re.search(r"VCL-VM-\d+", nat), nat
    addresses = lab.ssh("master", "ip", "-4", "-o", "address", "show").stdout
    for s in seats:
        assert f"{s['public_ip']}/32" not in addresses, addresses
        assert not (CONSOLES / f"vm-{s['id']}-{s['mac'].replace(':', '')}.vnc").exists()
    with db.read(url) as s:
        assert s.scalars(select(AddressPair.instance_id).where(AddressPair.instance_id.is_not(None))).all() == []
        assert set(s.scalars(select(Slave.cores_used)).all()) == {0}
        assert set(s.scalars(select(Slave.ram_mb_used)).all()) == {0}
