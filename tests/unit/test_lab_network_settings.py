"""The lab's networks as settings (issue 12 item 4): lab_subnet, vm_subnet, lab_gateway, vm_gateway,
master_address and image_store are checked one by one and as a set with the pools, by the same functions the
inventory pre-flight runs; a refusal names the setting, on one line."""

# ruff: noqa: E501 - one case per line reads best as a table

from __future__ import annotations

import ipaddress

import pytest

from vcl_sched import catalogue, config
from vcl_sched.errors import ValidationError
from vcl_sched.preflight import check_inventory

NET = {"lab_subnet": "10.9.0.0/24", "vm_subnet": "10.9.1.0/24", "lab_gateway": "10.9.0.1",
       "vm_gateway": "10.9.1.1", "master_address": "10.9.0.10", "private_pool": "10.9.1.16-10.9.1.254",
       "public_pool": "10.9.0.160-10.9.0.223"}  # fmt: skip
# The same lab as inventory variables (the pre-flight's names).
INVENTORY_NAMES = {"lab_subnet": "lab_subnet", "vm_subnet": "lab_vm_subnet", "lab_gateway": "lab_gateway",
                   "vm_gateway": "lab_vm_gateway", "private_pool": "lab_private_pool", "public_pool": "lab_public_pool"}  # fmt: skip


def settings(**changes):
    return config.settings_from_json({**NET, **changes})


def test_defaults_are_unknown_and_the_image_store_is_var_lib_vcl_images():
    s = config.Settings()
    assert (s.lab_subnet, s.vm_subnet, s.lab_gateway, s.vm_gateway, s.master_address) == ("",) * 5
    assert s.image_store == "/var/lib/vcl/images"
    config.validate_settings(s)
    # Shown by `vcl config show` (every field of to_json) and settable by `vcl config set`.
    assert (
        set(config.NETWORK_SETTINGS) | {"image_store"} <= set(s.to_json())
        and set(config.NETWORK_SETTINGS) | {"image_store"} <= config.SETTING_KEYS
    )


def test_a_sound_set_passes_and_keeps_its_values():
    s = settings()
    assert {k: getattr(s, k) for k in NET} == NET


BAD = [
    ({"lab_subnet": "10.9.0.1/24"}, "lab_subnet", "is not an IPv4 network"),
    ({"lab_subnet": "nope"}, "lab_subnet", "is not an IPv4 network"),
    ({"lab_subnet": "fe80::/64"}, "lab_subnet", "is not an IPv4 network"),
    ({"lab_subnet": "10.9.0.0/24\n"}, "lab_subnet", "control characters"),
    ({"lab_subnet": " 10.9.0.0/24"}, "lab_subnet", "is not an IPv4 network"),
    ({"lab_gateway": "10.9.0.1 "}, "lab_gateway", "is not an IPv4 address"),
    ({"lab_subnet": "{{ lookup('pipe', 'id') }}"}, "lab_subnet", "is not an IPv4 network"),
    ({"vm_subnet": "10.9.0.128/25"}, "vm_subnet", "overlaps lab_subnet 10.9.0.0/24"),
    ({"vm_subnet": "10.0.0.0/8"}, "vm_subnet", "overlaps lab_subnet"),
    ({"lab_gateway": "10.9.5.1"}, "lab_gateway", "10.9.5.1 is outside lab_subnet 10.9.0.0/24"),
    ({"lab_gateway": "10.9.0.0"}, "lab_gateway", "network or broadcast address"),
    ({"lab_gateway": "10.9.0.255"}, "lab_gateway", "network or broadcast address"),
    ({"lab_gateway": "127.0.0.1"}, "lab_gateway", "loopback"),
    ({"lab_gateway": "10.9.0.1/24"}, "lab_gateway", "is not an IPv4 address"),
    ({"vm_gateway": "10.9.0.1"}, "vm_gateway", "is outside vm_subnet 10.9.1.0/24"),
    ({"master_address": "10.9.1.10"}, "master_address", "is outside lab_subnet"),
    ({"master_address": "10.9.0.1"}, "master_address", "10.9.0.1 is already lab_gateway"),
    ({"master_address": "224.0.0.1"}, "master_address", "multicast"),
    ({"master_address": "0.0.0.0"}, "master_address", "unspecified"),
    ({"private_pool": "10.9.2.16-10.9.2.40"}, "private_pool", "is not inside vm_subnet 10.9.1.0/24"),
    ({"private_pool": "10.9.1.0/24"}, "private_pool", "contains 10.9.1.1 (vm_gateway)"),
    ({"public_pool": "10.9.7.1-10.9.7.9"}, "public_pool", "is not inside lab_subnet 10.9.0.0/24"),
    ({"public_pool": "10.9.0.0/24"}, "public_pool", "contains 10.9.0.1 (lab_gateway)"),
    ({"public_pool": "10.9.0.5-10.9.0.20"}, "public_pool", "contains 10.9.0.10 (master_address)"),
    ({"public_pool": "10.9.1.100-10.9.1.120"}, "public_pool", "overlaps private_pool"),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "field", "needle"), BAD)
def test_each_bad_value_names_its_setting_on_one_line(changes, field, needle):
    with pytest.raises(ValidationError) as err:
        settings(**changes)
    assert err.value.field == field, str(err.value)
    assert needle in err.value.message and "\n" not in str(err.value)


@pytest.mark.parametrize("unknown", ["lab_subnet", "vm_subnet", "lab_gateway", "vm_gateway", "master_address"])
def test_an_unknown_network_skips_only_the_checks_that_need_it(unknown):
    s = settings(**{unknown: ""})
    assert getattr(s, unknown) == ""
    if unknown == "lab_subnet":  # then the public pool and the master may lie anywhere private
        assert config.settings_from_json({**NET, "lab_subnet": "", "lab_gateway": "", "public_pool": "10.50.0.0/28"})


@pytest.mark.parametrize(("value", "needle"), [
    ("/", "absolute directory other than /"), ("images", "absolute directory"), ("//srv", "absolute directory"),
    ("/srv/../etc", "normalised"), ("/srv/images/", "normalised"), ("/srv/./images", "normalised"),
    ("/srv//images", "normalised"), ("/srv/\x1bimages", "control characters"), ("/srv/\u200bx", "not printable"),
    ("/" + "x" * 256, "longer than 256"), ("/srv/vcl images", "ASCII letters"), ("/srv/$HOME", "ASCII letters"),
    ("/srv/-x", "starting with a letter or digit"),
])  # fmt: skip
def test_image_store_is_an_absolute_normalised_path_of_image_path_names(value, needle):
    with pytest.raises(ValidationError) as err:
        config.settings_from_json({"image_store": value})
    assert err.value.field == "image_store" and needle in err.value.message
    assert config.settings_from_json({"image_store": "/srv/vcl-images_2.0"}).image_store == "/srv/vcl-images_2.0"


def test_an_image_store_that_exists_here_must_be_a_directory(tmp_path):
    from vcl_sched import service

    url = f"sqlite:///{tmp_path}/vcl.sqlite"
    service.init(url)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValidationError) as err:
        service.configure({"image_store": str(tmp_path / "file")}, url)
    assert err.value.field == "image_store" and "not a directory" in err.value.message
    for value in ("/dev/sda", "/dev/null", "/etc", "/proc/self", "/usr/lib/x"):
        with pytest.raises(ValidationError) as err:
            service.configure({"image_store": value}, url)
        assert err.value.field == "image_store" and "system directory" in err.value.message
    assert service.configure({"image_store": str(tmp_path)}, url)["image_store"] == str(tmp_path)


def test_a_batch_is_checked_as_a_whole_whatever_the_order_of_its_keys():
    """New subnets and pools inside them at once: neither half fits the other's old value."""
    old = settings()
    batch = {"lab_subnet": "10.20.0.0/24", "vm_subnet": "10.20.1.0/24", "lab_gateway": "10.20.0.1",
             "vm_gateway": "10.20.1.1", "master_address": "10.20.0.10", "private_pool": "10.20.1.16-10.20.1.99",
             "public_pool": "10.20.0.160-10.20.0.200"}  # fmt: skip
    results = {
        catalogue.merged_settings(old, dict(order)).to_json().__repr__()
        for order in (batch.items(), reversed(batch.items()), sorted(batch.items()))
    }
    assert len(results) == 1
    new = catalogue.merged_settings(old, batch)
    assert (new.lab_subnet, new.public_pool) == ("10.20.0.0/24", "10.20.0.160-10.20.0.200")
    # Half of it alone is refused, naming the setting the rest would have fixed.
    with pytest.raises(ValidationError) as err:
        catalogue.merged_settings(old, {"public_pool": "10.20.0.160-10.20.0.200"})
    assert err.value.field == "public_pool"
    with pytest.raises(ValidationError) as err:
        catalogue.merged_settings(old, {"unknown_key": "1"})
    assert err.value.field == "unknown_key"


@pytest.mark.parametrize(("address", "setting", "needle"), [
    ("10.9.3.4", "lab_subnet", "is outside lab_subnet 10.9.0.0/24"),
    ("10.9.0.0", "lab_subnet", "network or broadcast address"),
    ("10.9.0.255", "lab_subnet", "network or broadcast address"),
    ("10.9.0.1", "lab_gateway", "the lab_gateway setting's address"),
    ("10.9.0.10", "master_address", "the master_address setting's address"),
    ("10.9.0.170", "public_pool", "is in public_pool 10.9.0.160-10.9.0.223: a VM may get it"),
])  # fmt: skip
def test_a_slave_address_must_fit_the_lab(address, setting, needle):
    conflict = config.host_address_conflict(ipaddress.IPv4Address(address), settings())
    assert conflict is not None and conflict[0] == setting and needle in conflict[1]
    assert needle in config.host_address_problem(ipaddress.IPv4Address(address), settings())


def test_slave_addresses_without_a_known_lab_subnet():
    s = config.settings_from_json({"vm_subnet": "10.9.1.0/24", "vm_gateway": "10.9.1.1",
                                   "private_pool": "10.9.1.16-10.9.1.30"})  # fmt: skip
    assert config.host_address_problem(ipaddress.IPv4Address("192.168.4.4"), s) == ""
    assert "inside vm_subnet" in config.host_address_problem(ipaddress.IPv4Address("10.9.1.200"), s)
    assert "loopback" in config.host_address_problem(ipaddress.IPv4Address("127.0.0.1"), s)
    assert config.host_address_problem(ipaddress.IPv4Address("10.9.0.21"), settings()) == ""


def _inventory(s: dict) -> dict:
    return {INVENTORY_NAMES[k]: v for k, v in s.items() if k in INVENTORY_NAMES and v}


@pytest.mark.parametrize(("changes", "field", "_needle"), [case for case in BAD if case[1] in INVENTORY_NAMES])
def test_the_pre_flight_refuses_what_the_settings_refuse(changes, field, _needle):
    """One set of checks: a lab the settings refuse (outside master_address) fails the pre-flight, at the same
    field under its inventory name."""
    lab = _inventory({**NET, **changes})
    found = check_inventory(lab, {"master": {"lab_address": "10.9.0.10/24"}}, ["master"], [])
    assert any(p.field == INVENTORY_NAMES[field] for p in found), (lab, [str(p) for p in found])
    assert check_inventory(_inventory(NET), {"master": {"lab_address": "10.9.0.10/24"}}, ["master"], []) == []
