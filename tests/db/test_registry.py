"""Slaves joining and leaving through the inventory (vcl_sched.registry), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from vcl_sched import db, registry, service
from vcl_sched.errors import ConflictError, ValidationError
from vcl_sched.models import AuditLog, Instance, Slave

BE = {"owner": "cs", "platform_value": 5, "register_as_slave": 1, "member": 1}


def snapshot(url):
    """What a refused call must leave as it was."""
    with db.read(url) as s:
        return (
            tuple(s.execute(select(Slave).with_only_columns(*Slave.__table__.columns).order_by(Slave.id)).all()),
            s.scalar(select(func.count()).select_from(Instance)),
            s.scalar(select(func.count()).select_from(AuditLog)),
        )


def slaves(url):
    return {s["name"]: s for s in service.list_slaves(url)}


def test_a_new_slave_is_registered_up_with_its_capacity(lab_db):
    result = registry.register_slave("s3", "10.77.0.23", 4, 7900, 200, lab_db)
    assert result["changed"] and result["action"] == "create"
    row = slaves(lab_db)["s3"]
    assert (row["status"], row["cores_total"], row["ram_mb_total"], row["disk_gb_total"]) == ("up", 4, 7900, 200)
    assert service.audit_log(lab_db, limit=1)[0]["action"] == "register"


def test_registering_again_changes_nothing_and_refresh_keeps_used_counts(lab_db):
    first = registry.register_slave("s1", "10.77.0.21", 8, 16384, 100, lab_db)
    assert first == {"changed": False, "action": "none", "slave": first["slave"], "before": first["slave"]}
    placed = service.request(cores=2, ram_mb=1024, hours=1, **BE, url=lab_db)
    host = placed["slave"]
    row = slaves(lab_db)[host]
    bigger = registry.register_slave(host, row["address"], row["cores_total"] + 4, row["ram_mb_total"], 120, lab_db)
    assert bigger["changed"] and bigger["action"] == "update"
    after = slaves(lab_db)[host]
    assert after["cores_total"] == row["cores_total"] + 4 and after["disk_gb_total"] == 120
    assert (after["cores_used"], after["ram_mb_used"]) == (row["cores_used"], row["ram_mb_used"]) == (2, 1024)
    assert after["generation"] == row["generation"] + 1, "claims decided on the old capacity must retry"


def test_a_slave_back_in_the_inventory_is_up_again(lab_db):
    registry.drain_absent(["s1"], lab_db)
    assert slaves(lab_db)["s2"]["status"] == "draining"
    back = registry.register_slave("s2", "10.77.0.22", 4, 8192, 100, lab_db)
    assert back["changed"] and slaves(lab_db)["s2"]["status"] == "up"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("s 1", "10.77.0.21", 8, 16384, 100), "name"),
        (("s9", "10.77.0.300", 8, 16384, 100), "address"),
        (("s9", "10.77.0.29", 0, 16384, 100), "cores"),
        (("s9", "10.77.0.29", 8, "lots", 100), "ram_mb"),
        (("s9", "10.77.0.29", 8, 16384, -1), "disk_gb"),
    ],
)
def test_bad_registration_names_the_field_and_writes_nothing(lab_db, args, field):
    before = snapshot(lab_db)
    with pytest.raises(ValidationError) as err:
        registry.register_slave(*args, url=lab_db)
    assert err.value.field == field
    assert snapshot(lab_db) == before


def test_capacity_below_what_vms_use_is_refused(lab_db):
    placed = service.request(cores=4, ram_mb=1024, hours=1, **BE, url=lab_db)
    row = slaves(lab_db)[placed["slave"]]
    before = snapshot(lab_db)
    with pytest.raises(ValidationError) as err:
        registry.register_slave(row["name"], row["address"], 2, row["ram_mb_total"], 100, lab_db)
    assert err.value.field == "cores" and "use 4" in str(err.value)
    assert snapshot(lab_db) == before


def test_an_address_another_slave_holds_is_refused(lab_db):
    before = snapshot(lab_db)
    with pytest.raises(ConflictError, match="address: slave 's1'"):
        registry.register_slave("s3", "10.77.0.21", 4, 4096, 50, lab_db)
    assert snapshot(lab_db) == before


def test_slaves_gone_from_the_inventory_drain_and_keep_their_vms(lab_db):
    placed = service.request(cores=2, ram_mb=1024, hours=1, **BE, url=lab_db)
    result = registry.drain_absent([], lab_db)
    assert result == {"changed": True, "drained": ["s1", "s2"]}
    assert {s["status"] for s in slaves(lab_db).values()} == {"draining"}
    assert registry.drain_absent([], lab_db) == {"changed": False, "drained": []}
    vms = service.list_instances(lab_db)
    assert [(v["id"], v["slave"]) for v in vms] == [(placed["id"], placed["slave"])]
    refused = service.request(cores=1, ram_mb=256, hours=1, **BE, url=lab_db)
    assert refused["decision"] == "wait" and "slave" not in refused, "a draining slave gets no new VMs"


def test_a_slave_is_never_removed_while_it_hosts_vms(lab_db):
    placed = service.request(cores=2, ram_mb=1024, hours=1, **BE, url=lab_db)
    before = snapshot(lab_db)
    with pytest.raises(ConflictError, match="hosts 1 VM"):
        registry.remove_slave(placed["slave"], lab_db)
    assert snapshot(lab_db) == before
    service.release(placed["id"], url=lab_db)
    assert registry.remove_slave(placed["slave"], lab_db) == {"changed": True, "removed": placed["slave"]}
    assert placed["slave"] not in slaves(lab_db)
