"""The database actions (plugins/action/vcl_instance.py, vcl_reserve, vcl_image, vcl_slave, vcl_db, vcl_lab_info)
on the controller alone: their documentation (plugins/modules/<name>.py) states exactly the arguments they take,
bad arguments fail naming the field, values reach vcl_sched as plain data and come back as data, never as
templates. The playbooks run for real (ansible-playbook against a fresh SQLite database).
"""

from __future__ import annotations

import ast
import importlib
import json

import pytest
import yaml
from ansible.template import trust_as_template

from vcl_lab.playbook import run_playbook
from vcl_lab.testing import REPO
from vcl_sched import service

ACTIONS = ("vcl_instance", "vcl_reserve", "vcl_image", "vcl_slave", "vcl_db", "vcl_lab_info")
PACKAGE = "ansible_collections.vcl.lab.plugins"


def _shape(options: dict) -> dict:
    """What the argument validation and ansible-doc must agree on, per option."""
    return {name: {"type": o.get("type", "str"), "required": o.get("required", False), "choices": o.get("choices"),
                   "default": o.get("default"), "elements": o.get("elements")} for name, o in options.items()}


@pytest.mark.parametrize("name", ACTIONS)
def test_the_documentation_states_the_actions_arguments_exactly(name):
    action = importlib.import_module(f"{PACKAGE}.action.{name}")
    docs = importlib.import_module(f"{PACKAGE}.modules.{name}")
    documented = yaml.safe_load(docs.DOCUMENTATION)
    assert documented["module"] == name
    assert _shape(documented.get("options") or {}) == _shape(action.ActionModule.ARGUMENT_SPEC)
    texts = [documented["description"], *(o["description"] for o in (documented.get("options") or {}).values())]
    for text in texts:  # a stray "word: " in YAML makes a mapping of a sentence
        assert all(isinstance(line, str) for line in ([text] if isinstance(text, str) else text)), text
    support = documented["attributes"]["check_mode"]["support"]
    assert (support == "full") == action.ActionModule._supports_check_mode
    for key in ("EXAMPLES", "RETURN"):
        assert yaml.safe_load(getattr(docs, key)), key
    # Documentation only (docstring, __future__ import, the three strings): ansible-test's validate-modules
    # then reads it as the documentation of an action, as it reads ansible.builtin.template's.
    tree = ast.parse((REPO / "plugins" / "modules" / f"{name}.py").read_text())
    kinds = [type(node).__name__ for node in tree.body]
    assert kinds == ["Expr", "ImportFrom", "Assign", "Assign", "Assign"], kinds


def test_task_values_reach_vcl_sched_as_plain_python_data():
    from ansible_collections.vcl.lab.plugins.plugin_utils.vcl_controller import plain

    value = {"id": trust_as_template("42"), "exclude": [trust_as_template("s1")], "observed": {"s1": {"n": 1}}}
    out = plain(value)
    assert out == {"id": "42", "exclude": ["s1"], "observed": {"s1": {"n": 1}}}
    assert type(out["id"]) is str and type(out["exclude"][0]) is str and type(out["observed"]) is dict


@pytest.fixture
def lab_db(tmp_path):
    url = f"sqlite:///{tmp_path}/vcl.sqlite"
    service.init(url)
    service.configure({"private_pool": "10.77.1.16-10.77.1.20", "public_pool": "10.77.0.160-10.77.0.164"}, url)
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts: {}\n")  # the implicit localhost only
    return url, inventory, tmp_path


def tasks(lab_db, *task_list: dict, check: bool = False) -> list[dict]:
    """One play on localhost with these tasks; each one's registered result is written to a JSON file, read back."""
    url, inventory, tmp_path = lab_db
    body = []
    for n, task in enumerate(task_list):
        body += [{**task, "register": "out", "ignore_errors": True},
                 {"name": "Keep the result", "check_mode": False,
                  "ansible.builtin.copy": {"content": "{{ out | to_json }}", "dest": str(tmp_path / f"out-{n}.json"),
                                           "mode": "0600"}}]  # fmt: skip
    book = tmp_path / "book.yml"
    book.write_text(yaml.safe_dump([{"name": "Actions", "hosts": "localhost", "gather_facts": False, "tasks": body}]))
    recap = run_playbook(inventory, book, *(["--check"] if check else []), cwd=REPO, env={"VCL_DB_URL": url})
    assert recap.rc == 0, recap.stdout[-4000:]
    outs = [json.loads((tmp_path / f"out-{n}.json").read_text()) for n in range(len(task_list))]
    for n in range(len(task_list)):
        (tmp_path / f"out-{n}.json").unlink()
    return outs


def test_bad_arguments_fail_in_one_line_naming_the_field(lab_db):
    outs = tasks(
        lab_db,
        {"name": "A number that is not", "vcl.lab.vcl_image": {"name": "g", "disk": "/d.qcow2", "cores": "lots"}},
        {"name": "Not an argument", "vcl.lab.vcl_image": {"name": "g", "disk": "/d.qcow2", "color": "red"}},
        {"name": "A required one missing", "vcl.lab.vcl_reserve": {"owner": "cs", "cores": 1, "hours": 1}},
        {"name": "Outside the choices", "vcl.lab.vcl_instance": {"action": "explode", "id": 1}},
        {"name": "An id missing", "vcl.lab.vcl_instance": {"action": "place"}},
        {"name": "Required with a state", "vcl.lab.vcl_slave": {"state": "absent"}},
        {"name": "The scheduler refuses", "vcl.lab.vcl_instance": {"action": "describe", "id": "{{ '4' ~ '2' }}"}},
    )
    assert all(o["failed"] and "\n" not in o["msg"] for o in outs), outs
    messages = [o["msg"] for o in outs]
    assert "cores" in messages[0] and "int" in messages[0]
    assert "color" in messages[1] and "Unsupported parameters" in messages[1]
    assert "missing required arguments: ram_mb" in messages[2]
    assert "action" in messages[3] and "explode" in messages[3]
    assert messages[4] == "id: action place needs the instance id"
    assert "state is absent" in messages[5] and "name" in messages[5]
    assert messages[6] == "id: no instance 42"


def test_what_the_database_holds_comes_back_as_data_never_as_a_template(lab_db):
    url = lab_db[0]
    outs = tasks(
        lab_db,
        {"name": "Declare an image", "vcl.lab.vcl_image": {"name": "g", "disk": "/var/lib/vcl/images/g/g.qcow2",
                                                           "description": "{{ '{{' }} 6 * 7 }}"}},
        {"name": "Use what came back", "ansible.builtin.set_fact": {"seen": "{{ out.image.description }}"}},
    )
    assert outs[0]["changed"] and outs[0]["image"]["description"] == "{{ 6 * 7 }}"
    assert service.list_images(url)[0]["description"] == "{{ 6 * 7 }}"
    assert outs[1]["ansible_facts"]["seen"] == "{{ 6 * 7 }}", outs[1]


def test_check_mode_writes_nothing_and_skips_what_cannot_predict(lab_db):
    url = lab_db[0]
    service.add_group("cs", url=url)
    service.add_slave("s1", "10.77.0.21", 2, 4096, 50, url=url)
    before = service.list_instances(url, include_all=True)
    outs = tasks(
        lab_db,
        {"name": "Ask", "vcl.lab.vcl_reserve": {"owner": "cs", "cores": 1, "ram_mb": 256, "hours": 1}},
        {"name": "Settings", "vcl.lab.vcl_db": {"settings": {"mac_prefix": "52:54:01"}}},
        {"name": "An image", "vcl.lab.vcl_image": {"name": "g", "disk": "/var/lib/vcl/images/g/g.qcow2"}},
        check=True,
    )
    assert outs[0]["kind"] == "BE" and outs[0]["result"]["decision"] == "place"
    assert outs[1]["changed"] and outs[1]["updated"] == ["mac_prefix"]
    assert outs[2]["skipped"]
    assert service.list_instances(url, include_all=True) == before and service.list_images(url) == []
    outs = tasks(lab_db, {"name": "Settings", "vcl.lab.vcl_db": {}})
    assert outs[0]["settings"]["mac_prefix"] != "52:54:01" and not outs[0]["changed"]
