"""site.yml on the simulated lab: the whole bootstrap, its idempotence, adding a slave, bad inventories.

The lab database is the controller's (VCL_DB_URL): a file in the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vcl_lab.playbook import Recap, run_playbook
from vcl_lab.testing import REPO, Lab, lab_up
from vcl_sched import db, service
from vcl_sched.inventory import plain

pytestmark = pytest.mark.lab

SITE = REPO / "site.yml"


@pytest.fixture(scope="module")
def site_db(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('site') / 'vcl.sqlite'}"


def run_site(lab: Lab, db_url: str, *extra: str, inventory: Path | None = None) -> Recap:
    started = time.monotonic()
    recap = run_playbook(inventory or lab.inventory, SITE, *extra, cwd=REPO, env={"VCL_DB_URL": db_url})
    recap.seconds = time.monotonic() - started
    return recap


@pytest.fixture(scope="module")
def bootstrapped(lab, site_db):
    """site.yml run twice on the session lab (master + 2 slaves); both recaps, in order."""
    first = run_site(lab, site_db)
    assert first.ok, f"first site.yml run failed:\n{first.summary()}\n{first.stdout[-6000:]}\n{first.stderr[-3000:]}"
    second = run_site(lab, site_db)
    print(f"\nsite.yml on master + 2 slaves: first run {first.seconds:.1f} s, second run {second.seconds:.1f} s")
    return first, second


def test_site_converges_then_reports_no_change(bootstrapped):
    first, second = bootstrapped
    assert first.changed > 0
    assert second.ok, second.summary() + second.stdout[-6000:]
    changed = {host: c.changed for host, c in second.hosts.items() if c.changed}
    assert not changed, f"second site.yml run changed {changed}:\n{second.stdout[-8000:]}"
    assert {"master", "slave1", "slave2"} <= set(second.hosts)


def test_site_registers_every_slave_with_its_real_capacity(bootstrapped, site_db, lab):
    slaves = {s["name"]: s for s in service.list_slaves(site_db)}
    assert set(slaves) == set(lab.of_role("slave")), slaves
    nproc = int(subprocess.run(["nproc", "--all"], text=True, capture_output=True, check=True).stdout)
    for name, row in slaves.items():
        assert row["status"] == "up" and row["address"] == lab.addresses[name]
        assert row["cores_total"] == nproc, row  # the machines share this host's CPUs
        assert row["ram_mb_total"] > 1000 and row["disk_gb_total"] > 0, row
        assert row["cores_used"] == 0
    with db.read(site_db) as session:
        settings = db.load_settings(session)
    lab_vars = yaml.safe_load(lab.inventory.read_text())["all"]["vars"]
    assert settings.private_pool == lab_vars["lab_private_pool"]
    assert settings.public_pool == lab_vars["lab_public_pool"]


def _inventory_copy(lab: Lab, tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(lab.inventory.read_text())
    edit(data)
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _two_masters(data):
    data["all"]["children"]["vcl_master"]["hosts"]["slave2"] = data["all"]["children"]["vcl_slaves"]["hosts"]["slave2"]


def _slave_outside(data):
    data["all"]["children"]["vcl_slaves"]["hosts"]["slave2"]["lab_address"] = "192.0.2.22/24"


def _overlapping_pools(data):
    pool = data["all"]["vars"]["lab_private_pool"]
    data["all"]["vars"]["lab_public_pool"] = pool


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_two_masters, "inventory: vcl_master: exactly one master is needed, found 2 (master, slave2)"),
        (_slave_outside, "slave2: lab_address: 192.0.2.22/24 is outside the lab subnet"),
        (_overlapping_pools, "inventory: lab_public_pool: "),
    ],
    ids=["two-masters", "slave-outside-subnet", "overlapping-pools"],
)
def test_bad_inventory_fails_in_preflight_before_any_host_changes(lab, tmp_path, edit, expected):
    inventory = _inventory_copy(lab, tmp_path, edit)
    db_file = tmp_path / "untouched.sqlite"
    marker = lab.ssh("master", "stat", "-c", "%Y", "/etc/network/interfaces.d/eth0").stdout
    recap = run_site(lab, f"sqlite:///{db_file}", inventory=inventory)
    assert recap.rc != 0
    assert expected in recap.stdout, recap.stdout[-4000:]
    assert all(c.changed == 0 for c in recap.hosts.values()), recap.summary()
    tasks = [line for line in recap.stdout.splitlines() if line.startswith("TASK [")]
    assert all("Pre-flight" in t or "Check" in t or "Look for" in t or "Require" in t for t in tasks[:3]), tasks
    assert not any("network" in t.lower() and "Pre-flight" not in t for t in tasks), tasks
    assert not db_file.exists(), "the pre-flight failure must come before the database is touched"
    assert lab.ssh("master", "stat", "-c", "%Y", "/etc/network/interfaces.d/eth0").stdout == marker


def test_adding_a_slave_to_the_inventory_and_limiting_the_run_registers_it(bootstrapped, lab, site_db):
    grown = lab_up(lab.name, slaves=3)  # the lab writes slave3 into its inventory, as an admin adds a line
    assert "slave3" in grown.hosts
    recap = run_site(grown, site_db, "--limit", "slave3")
    assert recap.ok, recap.summary() + recap.stdout[-6000:]
    assert set(recap.hosts) == {"slave3"}
    slaves = {s["name"]: s for s in service.list_slaves(site_db)}
    assert slaves["slave3"]["status"] == "up" and slaves["slave3"]["address"] == grown.addresses["slave3"]
    again = run_site(grown, site_db, "--limit", "slave3")
    assert again.ok and again.hosts["slave3"].changed == 0, again.stdout[-6000:]

    # The inventory plugin reads the database: slave3 is there, with its capacity.
    plugin_cfg = Path(site_db.removeprefix("sqlite:///")).with_name("vcl_slaves.yml")
    plugin_cfg.write_text(yaml.safe_dump({"plugin": "vcl.lab.vcl_slaves", "db_url": site_db}))
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(plugin_cfg), "--list"],
        cwd=REPO, text=True, capture_output=True,
        env={**os.environ, "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "true"},  # a config not parsed fails
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert "slave3" in listed["_meta"]["hostvars"], listed
    assert plain(listed["_meta"]["hostvars"]["slave3"]["ansible_host"]) == grown.addresses["slave3"]

    # Taking slave3 out of the inventory drains it (it is never deleted while it hosts VMs).
    lab_up(lab.name, slaves=2)
    recap = run_site(lab, site_db, "--tags", "register")
    assert recap.ok, recap.stdout[-6000:]
    assert {s["name"]: s["status"] for s in service.list_slaves(site_db)}["slave3"] == "draining"
