"""The lifecycle playbooks check their extra variables as data before anything templates them (issue 12, item 1).

Each playbook runs for real (ansible-playbook, as an admin types it, and through vcl_sched.runner, as `vcl` and the
portal submit it) on the controller alone, against a fresh SQLite lab database: for every extra variable of every
playbook, a Jinja expression, a YAML tag (in a -e @file.yml, inline YAML and a JSON string), shell
metacharacters, a huge and a negative number must fail the run with a message naming the field, run nothing (the
marker file the hostile value would create never appears) and write nothing (the database is unchanged). The
check is the first task of each play, so no host is contacted (the inventory's hosts are closed loopback ports).
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.playbooks.test_reserve_local import small_pool
from vcl_lab.playbook import run_playbook
from vcl_lab.testing import REPO
from vcl_sched import runner, service

KNOBS = ["launch_attempts", "vm__launch_attempts", "launch_console_dir", "vm__launch_console_dir",
         "launch_poll_interval", "vm__launch_poll_interval", "vm__launch_net_async", "vm__stop_shutdown_timeout",
         "vm__disk_bwlimit"]  # fmt: skip
# Each playbook's extra variables, and values of the others that pass the check (so the field at fault is named).
PLAYBOOKS = {
    "launch": (["id", "reserve__launch_id", "vm__launch_id", *KNOBS], {"id": "1"}),
    "stop": (["id", "ids", "vm__stop_id", "launch_console_dir", "vm__launch_console_dir", "vm__stop_shutdown_timeout",
              "vm__disk_bwlimit"], {"id": "1"}),
    "suspend": (["id", "ids", "vm__suspend_id"], {"id": "1"}),
    "resume": (["id", "ids", "vm__resume_id"], {"id": "1"}),
    "reserve": (["owner", "user", "cores", "ram_mb", "hours", "start", "platform_value", "register_as_slave", "member",
                 "image", "disk_gb", "seats", "keep_disk", "reserve_no_launch"],
                {"owner": "cs", "cores": "1", "ram_mb": "256", "hours": "2", "reserve_no_launch": "true"}),
    "dispatch": (["vm__stop_id", "vm__suspend_id", "vm__launch_id", "vm__resume_id", *KNOBS,
                  "dispatch_launches_per_slave"], {}),
    "reconcile": (["kvm__instance_dir", "vm__unnet_id", "launch_console_dir", "vm__launch_console_dir"], {}),
    "disk": (["disk", "disk_action", "image", "image_groups", "cores", "ram_mb", "platform_value", "acting_user"],
             {"disk_action": "delete", "disk": "1"}),
    "lend": (["lend_host", "lend_user", "lend_hours", "lend_instance", "acting_user"],
             {"lend_host": "pc", "lend_user": "ann"}),
    "reclaim": (["reclaim_due", "lend_host", "acting_user"], {"lend_host": "pc"}),
}
CASES = [(book, field) for book, (fields, _) in PLAYBOOKS.items() for field in fields]
# Every class of hostile input goes into the first field of each playbook; every other field gets the hand-typed
# Jinja (the one Ansible would render): the check is the same code for every field, and each case is a whole
# ansible-playbook run (seconds each), so the full cross product would take half an hour.
FIRST = {book: fields[0] for book, (fields, _) in PLAYBOOKS.items()}
# Digits are a valid name (a user 18446744073709551616 may exist): not hostile.
NAMES = {"owner", "user", "image", "image_groups", "disk_action", "lend_host", "lend_user"}


@pytest.fixture
def lab(tmp_path):
    url = small_pool(tmp_path)
    # Closed loopback ports: were the check not first, a play would fail to connect, never reach another host.
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(json.dumps({"all": {"vars": {"ansible_host": "127.0.0.1", "ansible_port": 1},
                                             "children": {"vcl_master": {"hosts": {"master": {}}},
                                                          "vcl_slaves": {"hosts": {"s1": {}}}}}}))  # fmt: skip
    return url, inventory, tmp_path


def dump(url: str) -> list[str]:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        return list(conn.iterdump())


def hostile_values(marker: Path) -> dict[str, str | int]:
    touch = f"touch {marker}"
    return {
        "jinja": f"{{{{ lookup('ansible.builtin.pipe', '{touch}') }}}}",
        "jinja_statement": f"{{% set x = lookup('ansible.builtin.pipe', '{touch}') %}}1",
        "semicolon": f"1; {touch}",
        "subshell": f"$({touch})",
        "backticks": f"`{touch}`",
        "huge": 2**64,
        "huge_text": str(2**64),
        "negative": -1,
    }


def hostile_runs(tmp: Path, field: str) -> list[tuple[str, Path, list[str]]]:
    """(case, marker, -e arguments) for every class of hostile input in ``field``."""
    runs = []
    for case in hostile_values(tmp / "marker-json"):
        if field in NAMES and case.startswith("huge"):
            continue
        marker = tmp / f"marker-{field}-{case}"
        value = hostile_values(marker)[case]
        runs.append((case, marker, ["-e", json.dumps({field: value})]))
    marker = tmp / f"marker-{field}-kv"
    jinja = f"{{{{ lookup('ansible.builtin.pipe', 'touch {marker}') }}}}"
    runs.append(("jinja_key_value", marker, ["-e", f"{field}={jinja}"]))
    marker = tmp / f"marker-{field}-tag-file"
    tag_file = tmp / f"tag-{field}.yml"
    tag_file.write_text(f'{field}: !!python/object/apply:os.system ["touch {marker}"]\n')
    runs.append(("yaml_tag_file", marker, ["-e", f"@{tag_file}"]))
    marker = tmp / f"marker-{field}-tag-inline"
    runs.append(("yaml_tag_inline", marker, ["-e", f'{{{field}: !!python/object/apply:os.system ["touch {marker}"]}}']))
    marker = tmp / f"marker-{field}-tag-json"
    runs.append(("yaml_tag_json_string", marker,
                 ["-e", json.dumps({field: f'!!python/object/apply:os.system ["touch {marker}"]'})]))  # fmt: skip
    return runs


def named(field: str, output: str, case: str) -> bool:
    """The failure names the field: vcl_inputs' one line, or (a YAML tag) Ansible's loader, which refuses the tag
    before any play and shows the line of a file (of inline YAML it shows only the column)."""
    if case == "yaml_tag_file":
        return "could not determine a constructor" in output.lower() and f"{field}: !!python" in output
    if case == "yaml_tag_inline":
        return "could not determine a constructor" in output.lower() and "Origin: <CLI option '-e'>" in output
    return f'"field": "{field}"' in output and f'"msg": "{field}: ' in output


@pytest.mark.parametrize(("book", "field"), CASES, ids=[f"{b}-{f}" for b, f in CASES])
def test_hostile_extra_variables_are_refused_naming_the_field_and_run_nothing(lab, book, field):
    url, inventory, tmp = lab
    before = dump(url)
    _, base = PLAYBOOKS[book]
    others = [arg for key, value in base.items() if key != field for arg in ("-e", f"{key}={value}")]
    runs = hostile_runs(tmp, field)
    if field != FIRST[book]:
        runs = [run for run in runs if run[0] == "jinja_key_value"]

    def play(run):
        case, marker, extra = run
        recap = run_playbook(inventory, REPO / "playbooks" / f"{book}.yml", *others, *extra, cwd=REPO,
                             env={"VCL_DB_URL": url, "VCL_NOW": "2026-11-22 10:00"}, timeout=120)  # fmt: skip
        return case, marker, recap

    with ThreadPoolExecutor(max_workers=4) as pool:
        for case, marker, recap in pool.map(play, runs):
            output = recap.stdout + recap.stderr
            assert recap.rc != 0, f"{case}: {output[-2000:]}"
            assert named(field, output, case), f"{case}: {output[-2000:]}"
            assert not marker.exists(), f"{case}: the hostile value ran"
            assert "UNREACHABLE" not in output, f"{case}: a host was contacted"
    assert dump(url) == before


@pytest.mark.parametrize("book", sorted(PLAYBOOKS))
def test_values_submitted_through_the_runner_are_refused_as_well(lab, book, monkeypatch):
    """vcl_sched.runner marks values unsafe: Ansible would not render them anyway; the check still names the field."""
    url, inventory, tmp = lab
    before = dump(url)
    fields, base = PLAYBOOKS[book]
    field = fields[0]
    monkeypatch.setenv("VCL_DB_URL", url)
    for case in ("jinja", "semicolon", "huge"):
        marker = tmp / f"marker-runner-{book}-{case}"
        value = hostile_values(marker)[case]
        result = runner.run(book, {**base, field: value}, project=REPO, inventory=inventory, progress=lambda _: None)
        assert not result.ok, case
        messages = [f.message for f in result.failures]
        assert any(m.startswith(f"{field}: ") for m in messages), (case, messages)
        assert not marker.exists(), case
    assert dump(url) == before


def test_another_extra_variable_carrying_a_template_is_refused(lab):
    url, inventory, tmp = lab
    marker = tmp / "marker-other"
    recap = run_playbook(inventory, REPO / "playbooks/stop.yml", "-e", "id=1",
                         "-e", f"anything={{{{ lookup('ansible.builtin.pipe', 'touch {marker}') }}}}", cwd=REPO,
                         env={"VCL_DB_URL": url})  # fmt: skip
    assert recap.rc != 0 and '"msg": "anything: a Jinja template is not allowed' in recap.stdout
    assert not marker.exists()


def test_a_valid_request_still_goes_through(lab):
    url, inventory, _ = lab
    extra = [f"-e{key}={value}" for key, value in PLAYBOOKS["reserve"][1].items()]
    recap = run_playbook(inventory, REPO / "playbooks/reserve.yml", *extra, cwd=REPO,
                         env={"VCL_DB_URL": url, "VCL_NOW": "2026-11-22 10:00"})  # fmt: skip
    assert recap.ok, recap.stdout[-3000:]
    assert len(service.list_instances(url, include_all=True)) == 1


def test_the_launch_makes_the_console_directory_0700_and_a_master_that_does_not_answer_undoes_it(lab):
    """An existing directory (0755 here) is made 0700 when the launch writes the VM's password (0600) into it,
    before anything reaches a host. The master does not answer (a closed port stands for it): the attempt is
    undone (claim given back, password forgotten, the address pair quarantined until reconcile sees the master),
    no other slave is tried, and the instance waits, pending, for the next dispatch."""
    url, inventory, tmp = lab
    consoles = tmp / "home" / "consoles"
    consoles.mkdir(parents=True)
    consoles.chmod(0o755)
    now = {"VCL_DB_URL": url, "VCL_NOW": "2026-11-22 10:00"}
    extra = [f"-e{key}={value}" for key, value in PLAYBOOKS["reserve"][1].items()]
    assert run_playbook(inventory, REPO / "playbooks/reserve.yml", *extra, cwd=REPO, env=now).ok
    (iid,) = [vm["id"] for vm in service.list_instances(url)]
    recap = run_playbook(inventory, REPO / "playbooks/launch.yml", "-e", f"id={iid}", "-e",
                         f"launch_console_dir={consoles}", cwd=REPO, env=now)  # fmt: skip
    assert not recap.ok and f"instance {iid} waits: " in recap.stdout and "master did not answer" in recap.stdout, \
        recap.stdout[-3000:]
    assert stat.S_IMODE(os.stat(consoles).st_mode) == 0o700, recap.stdout[-2000:]
    assert list(consoles.iterdir()) == [], recap.stdout[-2000:]  # written (0600), then forgotten by the undo
    (vm,) = service.list_instances(url)
    assert vm["state"] == "pending" and vm["slave"] is None and vm["mac"] is None, vm
    assert service.list_slaves(url)[0]["cores_used"] == 0
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        assert conn.execute("SELECT count(*) FROM address_pairs WHERE stale_instance = ?", (iid,)).fetchone() == (1,)
        assert conn.execute("SELECT lease_owner FROM instances WHERE id = ?", (iid,)).fetchone() == (None,)
