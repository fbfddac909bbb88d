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


# --- the lab's networks in the database (lab_subnet, vm_subnet, gateways, master_address) ----------------------

NET = {"lab_subnet": "10.77.0.0/24", "vm_subnet": "10.77.1.0/24", "lab_gateway": "10.77.0.1",
       "vm_gateway": "10.77.1.1", "master_address": "10.77.0.10"}  # fmt: skip


def _state(url):
    """Everything a refused change must leave as it was: settings, slaves, address pairs and the audit log."""
    from sqlalchemy import text

    from vcl_sched import db

    with db.engine(url).connect() as conn:
        pairs = conn.execute(text("SELECT private_ip, public_ip FROM address_pairs ORDER BY id")).all()
        audits = conn.execute(text("SELECT count(*) FROM audit_log")).scalar()
    return service.get_settings(url).to_json(), service.list_slaves(url), pairs, audits


def test_the_networks_are_settings_shown_and_applied_as_one_batch(lab_db):
    """Subnets, gateways, the master and new pools inside them in one batch, in either order; the same batch
    again writes nothing (no audit row)."""
    batch = {**NET, "private_pool": "10.77.1.40-10.77.1.49", "public_pool": "10.77.0.200-10.77.0.209"}
    after = service.configure(dict(reversed(list(batch.items()))), lab_db)
    assert {k: after[k] for k in batch} == batch
    state = _state(lab_db)
    assert service.configure(batch, lab_db) == after
    assert service.configure(dict(sorted(batch.items())), lab_db) == after
    assert _state(lab_db) == state  # nothing written: not even an audit row


@pytest.mark.parametrize(("changes", "field", "needle"), [
    ({"lab_subnet": "10.78.0.0/24", "public_pool": "10.78.0.160-10.78.0.200"}, "lab_subnet",
     "slave s1: 10.77.0.21 is outside lab_subnet 10.78.0.0/24"),
    ({"lab_subnet": "10.78.0.0/24"}, "public_pool", "is not inside lab_subnet 10.78.0.0/24"),
    ({"lab_subnet": "10.77.0.128/25"}, "lab_subnet", "slave s1: 10.77.0.21 is outside lab_subnet 10.77.0.128/25"),
    ({"lab_subnet": "10.77.0.0/24", "public_pool": "10.77.3.1-10.77.3.9"}, "public_pool", "is not inside lab_subnet"),
    ({"vm_subnet": "10.77.0.0/27", "private_pool": "10.77.0.24-10.77.0.29"}, "vm_subnet",
     "slave s1: 10.77.0.21 is inside vm_subnet"),
    ({"vm_subnet": "10.77.2.0/24"}, "private_pool", "is not inside vm_subnet 10.77.2.0/24"),
    ({"lab_gateway": "10.77.0.21"}, "lab_gateway", "slave s1: 10.77.0.21 is the lab_gateway setting's address"),
    ({"master_address": "10.77.0.22"}, "master_address", "slave s2: 10.77.0.22 is the master_address setting"),
    ({"master_address": "10.77.0.170"}, "public_pool", "contains 10.77.0.170 (master_address)"),
    ({"vm_gateway": "10.77.1.20"}, "private_pool", "contains 10.77.1.20 (vm_gateway)"),
    ({"master_address": "127.0.0.1"}, "master_address", "loopback"),
    ({"vm_subnet": "10.77.1.0/24", "lab_subnet": "10.77.0.0/23"}, "vm_subnet", "overlaps lab_subnet"),
    ({"image_store": "/var/lib/vcl/../../etc"}, "image_store", "normalised"),
])  # fmt: skip
def test_network_settings_that_break_the_lab_are_refused_naming_the_field_and_nothing_changes(
        lab_db, changes, field, needle):
    before = _state(lab_db)
    with pytest.raises(ValidationError) as err:
        service.configure(changes, lab_db)
    assert err.value.field == field and needle in err.value.message, str(err.value)
    assert _state(lab_db) == before


@pytest.fixture
def known_lab(lab_db):
    service.configure(NET, lab_db)
    return lab_db


@pytest.mark.parametrize(("address", "needle"), [
    ("10.78.0.40", "is outside lab_subnet 10.77.0.0/24"),
    ("192.168.1.40", "is outside lab_subnet"),
    ("10.77.0.0", "network or broadcast address"), ("10.77.0.255", "network or broadcast address"),
    ("10.77.0.1", "the lab_gateway setting's address"), ("10.77.0.10", "the master_address setting's address"),
    ("10.77.1.1", "is outside lab_subnet"),
    # in the public pool but beyond the (public, private) pairs: no VM has it yet, one may
    ("10.77.0.190", "is in public_pool 10.77.0.160-10.77.0.200: a VM may get it"),
])  # fmt: skip
def test_a_slave_address_must_fit_the_lab_networks(known_lab, address, needle):
    from vcl_sched import registry

    before = _state(known_lab)
    for add in (lambda: service.add_slave("s9", address, 4, 4096, 50, url=known_lab),
                lambda: registry.register_slave("s9", address, 4, 4096, 50, known_lab),
                lambda: registry.register_slave("s2", address, 4, 8192, 100, known_lab)):  # s2 moving there
        with pytest.raises(ValidationError) as err:
            add()
        assert err.value.field == "address" and needle in err.value.message, str(err.value)
    assert _state(known_lab) == before


def test_a_slave_inside_the_lab_subnet_is_added_and_registered(known_lab):
    from vcl_sched import registry

    assert service.add_slave("s3", "10.77.0.23", 4, 4096, 50, url=known_lab)["address"] == "10.77.0.23"
    assert registry.register_slave("s4", "10.77.0.24", 4, 4096, 50, known_lab)["action"] == "create"
    assert registry.register_slave("s4", "10.77.0.24", 4, 4096, 50, known_lab)["changed"] is False


def test_without_a_known_lab_subnet_slaves_are_checked_as_before(lab_db):
    assert service.get_settings(lab_db).lab_subnet == ""
    assert service.add_slave("s5", "192.168.50.5", 4, 4096, 50, url=lab_db)["address"] == "192.168.50.5"
    with pytest.raises(ValidationError) as err:  # the pools are still checked, all of them
        service.add_slave("s6", "10.77.0.199", 4, 4096, 50, url=lab_db)
    assert err.value.field == "address"


def test_vcl_config_set_and_show_and_slave_add_on_the_command_line(known_lab, capsys):
    from vcl_sched.cli import main

    assert main(["config", "show"]) == 0
    shown = capsys.readouterr().out
    for key, value in (*NET.items(), ("image_store", "/var/lib/vcl/images")):
        assert key in shown and value in shown, key
    before = _state(known_lab)
    for argv, prefix in ((["config", "set", "public_pool=10.77.0.5-10.77.0.12"], "public_pool: "),
                         (["config", "set", "lab_gateway=10.77.0.22"], "lab_gateway: slave s2"),
                         (["config", "set", "lab_subnet=10.77.0.1/24"], "lab_subnet: "),
                         (["slave", "add", "s7", "--address", "10.77.0.1", "--cores", "2", "--ram-mb", "512",
                           "--disk-gb", "5"], "address: ")):  # fmt: skip
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 1 and prefix in err and "\n" not in err and "Traceback" not in err, (argv, err)
    assert _state(known_lab) == before
