"""The lab database learns the lab's networks from the inventory (issue 12 item 4): vcl.lab.vcl_db applies
lab_subnet, vm_subnet, the gateways, master_address and the pools as one batch, in any order, reports changed
only when something was written (a second run: changed=false), and refuses a batch that breaks the lab naming
the setting, writing nothing. ansible-playbook runs for real against a fresh SQLite database."""

from __future__ import annotations

import json

import pytest
import yaml

from vcl_lab.playbook import run_playbook
from vcl_lab.testing import REPO
from vcl_sched import service

# What site.yml's "Create or upgrade the lab database" task passes, from the sample inventory's variables.
INVENTORY = {"lab_subnet": "10.9.0.0/24", "lab_vm_subnet": "10.9.1.0/24", "lab_gateway": "10.9.0.1",
             "lab_vm_gateway": "10.9.1.1", "lab_private_pool": "10.9.1.16-10.9.1.254",
             "lab_public_pool": "10.9.0.160-10.9.0.223"}  # fmt: skip
SETTINGS = {
    "private_pool": "{{ lab_private_pool }}",
    "public_pool": "{{ lab_public_pool }}",
    "mac_prefix": "{{ lab_mac_prefix | default('52:54:00') }}",
    "lab_subnet": "{{ lab_subnet }}",
    "vm_subnet": "{{ lab_vm_subnet }}",
    "lab_gateway": "{{ lab_gateway | default('') }}",
    "vm_gateway": "{{ lab_vm_gateway | default('') }}",
    "master_address": "{{ hostvars[groups['vcl_master'][0]].lab_address | default('') | split('/') | first }}",
}


@pytest.fixture
def lab(tmp_path):
    """A database that already has other pools (an older site.yml) and a slave inside the new lab subnet."""
    url = f"sqlite:///{tmp_path}/vcl.sqlite"
    service.init(url)
    service.configure({"private_pool": "10.77.1.16-10.77.1.20", "public_pool": "10.77.0.160-10.77.0.164"}, url)
    service.add_slave("s1", "10.9.0.21", 4, 4096, 50, url=url)
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "vars": INVENTORY,
                    "children": {
                        "vcl_master": {
                            "hosts": {
                                "master": {
                                    "lab_address": "10.9.0.10/24",
                                    "ansible_connection": "local",
                                    "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                                }
                            }
                        }
                    },
                }
            }
        )
    )
    return url, inventory, tmp_path


def apply(lab, settings: dict, extra: dict | None = None, check: bool = False) -> dict:
    url, inventory, tmp_path = lab
    out = tmp_path / "out.json"
    book = tmp_path / "book.yml"
    book.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Database",
                    "hosts": "vcl_master",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": "Create or upgrade the lab database",
                            "vcl.lab.vcl_db": {"settings": settings},
                            "register": "out",
                            "ignore_errors": True,
                            "vars": extra or {},
                        },
                        {
                            "name": "Keep the result",
                            "check_mode": False,
                            "ansible.builtin.copy": {
                                "content": "{{ out | to_json }}",
                                "dest": str(out),
                                "mode": "0600",
                            },
                        },
                    ],
                }
            ]
        )
    )
    recap = run_playbook(inventory, book, *(["--check"] if check else []), cwd=REPO, env={"VCL_DB_URL": url})
    assert recap.rc == 0, recap.stdout[-4000:]
    return json.loads(out.read_text())


def test_site_settings_are_applied_once_as_a_batch_then_change_nothing(lab):
    url = lab[0]
    audit_before = len(service.audit_log(url, limit=1000))
    checked = apply(lab, SETTINGS, check=True)
    assert checked["changed"] and "lab_subnet" in checked["updated"]
    assert service.get_settings(url).lab_subnet == ""  # check mode wrote nothing
    first = apply(lab, SETTINGS)
    assert first["changed"], first
    assert sorted(first["updated"]) == sorted(
        ["private_pool", "public_pool", "lab_subnet", "vm_subnet", "lab_gateway", "vm_gateway", "master_address"]
    )
    s = service.get_settings(url)
    assert (s.lab_subnet, s.vm_subnet, s.lab_gateway, s.vm_gateway, s.master_address) == (
        "10.9.0.0/24",
        "10.9.1.0/24",
        "10.9.0.1",
        "10.9.1.1",
        "10.9.0.10",
    )
    assert len(service.audit_log(url, limit=1000)) == audit_before + 1  # one batch, one audit row
    second = apply(lab, dict(reversed(list(SETTINGS.items()))))
    assert not second["changed"] and second["updated"] == [], second
    assert len(service.audit_log(url, limit=1000)) == audit_before + 1


def test_optional_gateways_may_be_left_unset(lab):
    first = apply(lab, SETTINGS, extra={"lab_gateway": None, "lab_vm_gateway": None})
    assert first["changed"] and first["settings"]["lab_gateway"] == "" and first["settings"]["vm_gateway"] == ""


@pytest.mark.parametrize(("extra", "field"), [
    ({"lab_public_pool": "10.9.0.1-10.9.0.20"}, "public_pool"),  # holds the gateway and the master
    ({"lab_vm_subnet": "10.9.0.0/23"}, "vm_subnet"),
    ({"lab_gateway": "10.9.0.21"}, "lab_gateway"),  # slave s1's address
    ({"lab_subnet": "10.9.0.0/25"}, "public_pool"),  # the public pool 10.9.0.160-223 is outside it
    ({"lab_subnet": "10.9.0.128/25", "lab_public_pool": "10.9.0.160-10.9.0.223", "lab_gateway": "10.9.0.129"},
     "master_address"),
])  # fmt: skip
def test_a_batch_that_breaks_the_lab_fails_naming_the_setting_and_writes_nothing(lab, extra, field):
    url = lab[0]
    before = (service.get_settings(url).to_json(), len(service.audit_log(url, limit=1000)))
    out = apply(lab, SETTINGS, extra=extra)
    assert out["failed"] and out["field"] == field and out["msg"].startswith(f"{field}: "), out
    assert "\n" not in out["msg"]
    assert (service.get_settings(url).to_json(), len(service.audit_log(url, limit=1000))) == before
