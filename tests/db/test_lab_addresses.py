"""Addresses checked against the lab (issue 12 item 4, the database's part): pools hold only private unicast
addresses, never a host's, and never overlap; slave names are host names that mean nothing else to Ansible;
slave addresses are one unicast IPv4 host. A refusal names the field and changes nothing."""

from __future__ import annotations

import pytest

from vcl_sched import service
from vcl_sched.errors import ValidationError

POOLS = {"private_pool": "10.77.1.16-10.77.1.30", "public_pool": "10.77.0.160-10.77.0.200"}


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("public_pool", "8.8.8.0/28", "must lie within one private network"),
    ("public_pool", "127.0.0.0/28", "must lie within one private network"),
    ("public_pool", "224.0.0.0/28", "must lie within one private network"),
    ("public_pool", "169.254.0.0/28", "must lie within one private network"),
    ("public_pool", "10.255.255.250-11.0.0.5", "must lie within one private network"),
    ("public_pool", "10.77.0.10-10.77.0.30", "contains 10.77.0.21, the address of slave s1"),
    ("private_pool", "10.77.0.150-10.77.0.170", "overlaps"),
])
def test_bad_pools_are_refused_naming_the_field_and_nothing_changes(lab_db, key, value, needle):
    before = service.get_settings(lab_db).to_json()
    with pytest.raises(ValidationError, match=needle) as err:
        service.configure({key: value}, lab_db)
    assert err.value.field in ("private_pool", "public_pool")
    assert service.get_settings(lab_db).to_json() == before


@pytest.mark.parametrize(("name", "address", "field"), [
    ("localhost", "10.77.0.40", "name"), ("all", "10.77.0.40", "name"), ("ungrouped", "10.77.0.40", "name"),
    ("vcl_registered", "10.77.0.40", "name"), ("vcl_status_up", "10.77.0.40", "name"), ("a_b", "10.77.0.40", "name"),
    ("s9", "0.0.0.0", "address"), ("s9", "127.0.0.1", "address"), ("s9", "255.255.255.255", "address"),
    ("s9", "169.254.3.4", "address"), ("s9", "224.0.0.5", "address"), ("s9", "fe80::1", "address"),
    ("s9", "10.77.0.170", "address"),  # in the public pool: a VM may get it
])
def test_bad_slaves_are_refused_naming_the_field(lab_db, name, address, field):
    before = service.list_slaves(lab_db)
    with pytest.raises(ValidationError) as err:
        service.add_slave(name, address, 4, 4096, 50, url=lab_db)
    assert err.value.field == field
    assert service.list_slaves(lab_db) == before


def test_a_good_slave_and_good_pools_still_pass(lab_db):
    service.add_slave("s-3.lab", "10.77.0.23", 4, 4096, 50, url=lab_db)
    service.configure({"public_pool": "192.168.7.0/28", "private_pool": "172.16.0.0/28"}, lab_db)
    assert service.get_settings(lab_db).public_pool == "192.168.7.0/28"
