"""The catalogue against a real database (SQLite and PostgreSQL): slaves, groups, images, settings and pools."""

from __future__ import annotations

import json

import pytest

from vcl_sched import audit, bookings, catalogue
from vcl_sched.errors import ConflictError, NotFoundError, ValidationError

BE = {"owner": "cs", "platform_value": 5, "register_as_slave": 1, "member": 1}


# --- slaves, groups, images ----------------------------------------------------------------------

def test_slave_add_list_and_status(lab_db):
    names = [s["name"] for s in catalogue.list_slaves(lab_db)]
    assert names == ["s1", "s2"]
    row = catalogue.set_slave_status("s2", "draining", lab_db)
    assert row["status"] == "draining" and row["generation"] == 1
    assert bookings.list_reservations(lab_db)["cores"] == 8  # draining slaves take no new work


@pytest.mark.parametrize(("args", "field"), [
    (("bad name!", "10.0.0.9", 4, 1024, 10), "name"),
    (("s9", "10.0.0.300", 4, 1024, 10), "address"),
    (("s9", "10.0.0.9", 0, 1024, 10), "cores"),
    (("s9", "10.0.0.9", "four", 1024, 10), "cores"),
    (("s9", "10.0.0.9", 4, -1, 10), "ram_mb"),
    (("s9", "10.0.0.9", 4, 1024, 2.5), "disk_gb"),
])
def test_bad_slave_input_names_the_field_and_writes_nothing(lab_db, args, field, db_state):
    before = db_state(lab_db)
    with pytest.raises(ValidationError) as err:
        catalogue.add_slave(*args, url=lab_db)
    assert err.value.field == field
    assert db_state(lab_db) == before


def test_duplicate_slave_name_or_address_is_refused(lab_db):
    with pytest.raises(ConflictError, match="name"):
        catalogue.add_slave("s1", "10.77.0.99", 4, 1024, 10, url=lab_db)
    with pytest.raises(ConflictError, match="address"):
        catalogue.add_slave("s9", "10.77.0.21", 4, 1024, 10, url=lab_db)
    with pytest.raises(NotFoundError):
        catalogue.set_slave_status("nope", "up", lab_db)
    with pytest.raises(ValidationError) as err:
        catalogue.set_slave_status("s1", "sleeping", lab_db)
    assert err.value.field == "status"


def test_groups_and_images(lab_db):
    with pytest.raises(ConflictError):
        catalogue.add_group("cs", url=lab_db)
    image = catalogue.add_image("tiny", "/var/lib/vcl/images/t/t.qcow2", kernel="/var/lib/vcl/images/t/vmlinux",
                                cores=1, ram_mb=128, disk_gb=1, url=lab_db)
    assert image["ram_mb"] == 128
    with pytest.raises(ValidationError) as err:
        catalogue.add_image("rel", "images/tiny.qcow2", url=lab_db)
    assert err.value.field == "disk_file"
    assert [i["name"] for i in catalogue.list_images(lab_db)] == ["tiny"]


def test_pools_cannot_drop_a_held_pair(lab_db):
    bookings.request(cores=1, ram_mb=256, hours=1, **BE, url=lab_db)
    with pytest.raises(ConflictError, match="held by instance"):
        catalogue.configure({"private_pool": "10.77.1.100-10.77.1.110"}, lab_db)
    with pytest.raises(ValidationError) as err:
        catalogue.configure({"public_pool": "10.77.1.16-10.77.1.20"}, lab_db)
    assert err.value.field == "public_pool"



def test_ensure_image_adds_then_changes_only_what_differs(lab_db):
    args = {"description": "tiny", "kernel": "/var/lib/vcl/images/t/vmlinux", "cores": 1, "ram_mb": 128, "disk_gb": 1}
    row, changed = catalogue.ensure_image("tiny", "/var/lib/vcl/images/t/t.qcow2", **args, url=lab_db)
    assert changed and (row["kernel"], row["ram_mb"], row["ramdisk"]) == ("/var/lib/vcl/images/t/vmlinux", 128, None)
    again, changed = catalogue.ensure_image("tiny", "/var/lib/vcl/images/t/t.qcow2", **args, url=lab_db)
    assert (again, changed) == (row, False)
    bigger, changed = catalogue.ensure_image("tiny", "/var/lib/vcl/images/t/t.qcow2", **{**args, "ram_mb": 256},
                                             url=lab_db)
    assert changed and bigger == {**row, "ram_mb": 256}
    update = audit.audit_log(lab_db, limit=1)[0]
    assert (update["action"], json.loads(update["before"]), json.loads(update["after"])) == (
        "update", {"default_ram_mb": 128}, {"default_ram_mb": 256})


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"disk_file": "tiny.qcow2"}, "disk_file"),
    ({"disk_file": ""}, "disk_file"),
    ({"kernel": "vmlinux"}, "kernel"),
    ({"cmdline": "a\nb"}, "cmdline"),
    ({"ram_mb": 8}, "ram_mb"),
    ({"name": "no good"}, "name"),
])
def test_bad_image_input_names_the_field_and_writes_nothing(lab_db, db_state, kwargs, field):
    before = db_state(lab_db)
    with pytest.raises(ValidationError) as err:
        catalogue.ensure_image(**{"name": "tiny", "disk_file": "/var/lib/vcl/images/t/t.qcow2", **kwargs}, url=lab_db)
    assert err.value.field == field
    assert db_state(lab_db) == before and catalogue.list_images(lab_db) == []


def test_an_unknown_setting_is_named_and_nothing_changes(lab_db, db_state):
    before = (db_state(lab_db), catalogue.get_settings(lab_db))
    with pytest.raises(ValidationError) as err:
        catalogue.configure({"placement_policy": "pack", "booking.max_hourz": "3"}, lab_db)
    assert err.value.field == "booking.max_hourz"
    assert (db_state(lab_db), catalogue.get_settings(lab_db)) == before
