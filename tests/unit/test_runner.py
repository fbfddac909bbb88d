"""vcl_sched.runner and the `vcl run` / `--run` commands: real playbooks through ansible-runner.

The playbooks are tests/runner_playbooks/, a stand-in for the collection vcl.lab (localhost only, connection
local, plus one host on a closed port for the unreachable case) with its own module, module_utils and role,
copied into a temporary project with its own ansible.cfg and inventory, so these tests read nothing of the
checkout's playbooks and never reach a lab. The runner runs them by FQCN (vcl.lab.echo), as the real ones;
a last group runs the checkout's own vcl.lab.reserve against a temporary database.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from vcl_sched import runner, service
from vcl_sched.cli import EXIT_ERROR, EXIT_NOT_SERVED, EXIT_OK, EXIT_USAGE, main

REPO = Path(__file__).resolve().parents[2]
COLLECTION = Path(__file__).resolve().parents[1] / "runner_playbooks"
LIFECYCLE = ("reserve", "launch", "suspend", "resume", "stop", "dispatch", "reconcile")

# As the checkout's: the collection under collections/ (a link to the project's root, which is the collection).
ANSIBLE_CFG = """\
[defaults]
inventory = inventory/hosts.yml
collections_path = collections
retry_files_enabled = False
"""

INVENTORY = """\
all:
  children:
    local:
      hosts:
        runner-local: {ansible_connection: local, ansible_python_interpreter: "{{ ansible_playbook_python }}"}
    nowhere:
      hosts:
        closed-port: {ansible_host: 127.0.0.1, ansible_port: 9, ansible_connection: ssh, ansible_user: nobody}
"""

OTHER_INVENTORY = """\
local:
  hosts:
    other-local: {ansible_connection: local, ansible_python_interpreter: "{{ ansible_playbook_python }}"}
"""


def _collection(root: Path) -> None:
    """The test collection at ``root``, echo.yml also under each lifecycle playbook's name."""
    shutil.copytree(COLLECTION, root, dirs_exist_ok=True)
    for name in LIFECYCLE:
        shutil.copy(COLLECTION / "playbooks" / "echo.yml", root / "playbooks" / f"{name}.yml")


@pytest.fixture
def project(tmp_path) -> Path:
    """A VCL-shaped project, as a checkout is: the collection's root with ansible.cfg naming a relative
    inventory and collections/ansible_collections/vcl/lab linking back to the root."""
    root = tmp_path / "project"
    _collection(root)
    (root / "inventory").mkdir()
    (root / "inventory" / "hosts.yml").write_text(INVENTORY)
    (root / "ansible.cfg").write_text(ANSIBLE_CFG)
    (root / "collections" / "ansible_collections" / "vcl").mkdir(parents=True)
    (root / "collections" / "ansible_collections" / "vcl" / "lab").symlink_to(root)
    return root


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Run from an unrelated directory with a hostile ANSIBLE_CONFIG and collections path: only the
    project's must count."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "ansible.cfg").write_text("[defaults]\ninventory = /nonexistent\ncollections_path = /nonexistent\n")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("ANSIBLE_CONFIG", str(cwd / "ansible.cfg"))
    monkeypatch.setenv("ANSIBLE_COLLECTIONS_PATH", "/nonexistent")
    return cwd


def test_success_returns_status_stats_and_the_vcl_result_with_progress(project, elsewhere, monkeypatch):
    monkeypatch.setenv("VCL_DB_URL", "sqlite:////tmp/runner-test.sqlite")
    lines: list[str] = []
    result = runner.run("echo", {"owner": "cs", "cores": 4}, project=project, progress=lines.append)
    assert result.ok and result.status == "successful" and result.rc == 0, (result, lines)
    assert result.playbook == "vcl.lab.echo"
    assert result.failures == []
    # the project's ansible.cfg decided the inventory (runner-local) and the collection (vcl_runner_probe)
    assert result.vcl_result == {
        "received": {"owner": "cs", "cores": 4},
        "state": "accepted",
        "probe": "HELLO",
        "db_url": "sqlite:////tmp/runner-test.sqlite",
        "host": "runner-local",
        "vms": [{"id": 1, "address": "10.0.0.1"}, {"id": 2, "address": "10.0.0.2"}],
    }
    assert result.stats["ok"] == {"runner-local": 4} and result.stats["changed"] == {"runner-local": 1}
    assert lines == [
        "PLAY [Echo the request back as the vcl_result]",
        "TASK [Ask the collection's module (vcl.lab.vcl_runner_probe, found through ansible.cfg)]",
        "  ok: runner-local",
        "TASK [Change something (a changed result)]",
        "  changed: runner-local",
        "TASK [Hand back the vcl_result]",
        "  ok: runner-local",
        "TASK [Print the vcl_result]",
        "  ok: runner-local",
    ]


def test_failure_keeps_the_vcl_result_and_names_host_task_and_message(project, elsewhere):
    lines: list[str] = []
    result = runner.run("fail", {"reason": "slave s1 is down"}, project=project, progress=lines.append)
    assert not result.ok and result.status == "failed" and result.rc == 2
    assert result.vcl_result == {"id": 42, "state": "failed", "reason": "slave s1 is down"}
    assert [f.to_json() for f in result.failures] == [
        {"host": "runner-local", "task": "Refuse the launch", "message": "launch refused: slave s1 is down",
         "unreachable": False}
    ]
    assert "  failed (ignored): runner-local: non-zero return code" in lines
    assert "  failed: runner-local: launch refused: slave s1 is down" in lines
    assert "TASK [Never reached]" not in lines
    assert result.stats["failures"] == {"runner-local": 1}


def test_unreachable_host_is_a_failure_with_the_ssh_message(project, elsewhere):
    lines: list[str] = []
    result = runner.run("unreachable", project=project, progress=lines.append)
    assert not result.ok and result.vcl_result is None
    assert [(f.host, f.task, f.unreachable) for f in result.failures] == [("closed-port", "Ping it", True)]
    assert "Connection refused" in result.failures[0].message or "port 9" in result.failures[0].message
    assert any(line.startswith("  unreachable: closed-port: ") for line in lines), lines


def test_an_ignored_unreachable_host_is_not_a_failure_of_the_run(project, elsewhere):
    lines: list[str] = []
    result = runner.run("unreachable_ignored", project=project, progress=lines.append)
    assert result.ok and result.failures == [], result.failures
    assert any(line.startswith("  unreachable: ") for line in lines), lines  # still shown as it happens


def test_the_collections_roles_modules_and_module_utils_are_used(project, elsewhere):
    result = runner.run("paths", project=project, progress=lambda _: None)
    assert result.ok, result.failures
    assert result.vcl_result == {"role": "runner_echo", "probe": "PATHS"}


def test_explicit_inventory_replaces_the_configured_one(project, elsewhere, tmp_path):
    other = tmp_path / "other.yml"
    other.write_text(OTHER_INVENTORY)
    result = runner.run("echo", project=project, inventory=other, progress=lambda _: None)
    assert result.ok and result.vcl_result["host"] == "other-local"


def test_a_playbook_that_cannot_start_reports_ansibles_error(project, elsewhere):
    (project / "playbooks" / "broken.yml").write_text(
        "- name: Broken\n  hosts: local\n  tasks:\n    - name: No such module\n      vcl_no_such_module: {}\n")
    result = runner.run("broken", project=project, progress=lambda _: None)
    assert result.status == "failed" and result.rc != 0 and result.vcl_result is None
    assert len(result.failures) == 1 and "vcl_no_such_module" in result.failures[0].message


@pytest.mark.parametrize(("name", "resolved"), [
    ("echo", "vcl.lab.echo"), ("echo.yml", "vcl.lab.echo"), ("vcl.lab.fail", "vcl.lab.fail"),
    ("playbooks/fail.yml", "playbooks/fail.yml"),
])
def test_playbook_names(project, name, resolved):
    assert runner.resolve_playbook(project, name) == resolved


@pytest.mark.parametrize("name", ["nope", "../../etc/passwd", "/etc/hostname", "modules", "vcl.lab.nope"])
def test_unknown_playbook_is_a_clear_error(project, name):
    with pytest.raises(runner.RunnerError, match=r"no vcl\.lab\..* in .*available: .*dispatch.*echo"):
        runner.resolve_playbook(project, name)


def test_missing_or_foreign_project_is_a_clear_error(tmp_path):
    with pytest.raises(runner.RunnerError, match="no such directory"):
        runner.project_dir(tmp_path / "absent")
    with pytest.raises(runner.RunnerError, match=r"not a VCL project \(no ansible.cfg\)"):
        runner.project_dir(tmp_path)


@pytest.fixture
def installed(tmp_path) -> Path:
    """A project that only holds ansible.cfg and the inventory (as the master's /etc/vcl): the
    collection is installed elsewhere, in the collections path its ansible.cfg names."""
    _collection(tmp_path / "installed" / "ansible_collections" / "vcl" / "lab")
    root = tmp_path / "etc-vcl"
    (root / "inventory").mkdir(parents=True)
    (root / "inventory" / "hosts.yml").write_text(INVENTORY)
    (root / "ansible.cfg").write_text(ANSIBLE_CFG.replace("= collections", f"= {tmp_path / 'installed'}"))
    return root


def test_the_installed_collection_is_run_from_a_project_without_playbooks(installed, elsewhere):
    assert runner.collection_dir(installed) == installed.parent / "installed" / "ansible_collections" / "vcl" / "lab"
    result = runner.run("paths", project=installed, progress=lambda _: None)
    assert result.ok and result.playbook == "vcl.lab.paths", result.failures
    assert result.vcl_result == {"role": "runner_echo", "probe": "PATHS"}


def test_a_collection_nowhere_is_a_clear_error(installed, tmp_path, monkeypatch):
    # Neither the project's collections path nor a checkout (VCL_REPO names a directory without collections/).
    (installed / "ansible.cfg").write_text(ANSIBLE_CFG.replace("= collections", "= /nonexistent"))
    monkeypatch.setenv("VCL_REPO", str(tmp_path / "no-checkout"))
    with pytest.raises(runner.RunnerError, match=r"collection vcl.lab is not installed where a run from .*nonexistent"):
        runner.resolve_playbook(installed, "dispatch")


def test_the_checkouts_collection_follows_the_projects_own(installed, monkeypatch):
    (installed / "ansible.cfg").write_text("[defaults]\ncollections_path = ~/nowhere:cols ; comment\n")
    monkeypatch.setenv("HOME", "/home/someone")
    assert runner.collections_path(installed) == [
        Path("/home/someone/nowhere"), installed / "cols", REPO / "collections"]
    (installed / "ansible.cfg").write_text("[defaults]\n")  # none named: Ansible's defaults
    assert runner.collections_path(installed) == [
        Path("/home/someone/.ansible/collections"), Path("/usr/share/ansible/collections"), REPO / "collections"]
    assert runner.collection_dir(installed) == REPO / "collections" / "ansible_collections" / "vcl" / "lab"


def test_failure_message_of_loop_items():
    res = {"msg": "One or more items failed", "results": [
        {"item": "a", "failed": False}, {"item": "b", "failed": True, "msg": "non-zero return code"}]}
    assert runner._failure_message(res) == "One or more items failed [b] non-zero return code"
    assert runner._failure_message({"stderr": "  boom\n"}) == "boom"
    assert runner._failure_message({}) == "failed without a message"


# --- the CLI end to end -------------------------------------------------------------------------

@pytest.fixture
def vcl(capsys, elsewhere, tmp_path, monkeypatch):
    monkeypatch.setenv("VCL_DB_URL", f"sqlite:///{tmp_path}/cli.sqlite")

    def run(*argv: str):
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


RESERVE = ("reserve", "--owner", "cs", "--cores", "4", "--ram-mb", "600", "--start", "now", "--hours", "2",
           "--platform-value", "5", "--register-as-slave", "1", "--member", "1", "--image", "debian")


def test_cli_reserve_run_submits_the_fields_as_extra_vars(vcl, project):
    code, out, err = vcl(*RESERVE, "--run", "--project", str(project), "--json")
    assert code == EXIT_OK, err
    data = json.loads(out)
    assert data["playbook"] == "vcl.lab.reserve" and data["status"] == "successful" and data["rc"] == 0
    assert data["vcl_result"]["received"] == {
        "owner": "cs", "cores": "4", "ram_mb": "600", "hours": "2", "start": "now", "platform_value": "5",
        "register_as_slave": "1", "member": "1", "image": "debian"}
    assert "TASK [Hand back the vcl_result]" in err and "  changed: runner-local" in err


def test_cli_reserve_run_refuses_dry_run(vcl, project):
    code, out, err = vcl(*RESERVE, "--run", "--dry-run", "--project", str(project))
    assert code == EXIT_USAGE and out == "" and "--dry-run" in err


def test_cli_reserve_without_run_still_records_directly(vcl, project):
    # no playbook: the existing path validates `start` itself ('now' is only for --run)
    code, out, err = vcl(*RESERVE, "--project", str(project))
    assert code == EXIT_ERROR and out == "" and "start:" in err and "PLAY [" not in err


@pytest.mark.parametrize(("argv", "received"), [
    (("launch", "17"), {"id": "17"}), (("suspend", "3"), {"id": "3"}), (("resume", "3"), {"id": "3"}),
    (("stop", "9"), {"id": "9"}), (("dispatch",), {}), (("reconcile",), {}),
])
def test_cli_lifecycle_commands_submit_their_playbook(vcl, project, argv, received):
    code, out, err = vcl(*argv, "--project", str(project), "--json")
    assert code == EXIT_OK, err
    data = json.loads(out)
    assert data["playbook"] == f"vcl.lab.{argv[0]}" and data["vcl_result"]["received"] == received


def test_cli_run_prints_the_vcl_result_as_a_table(vcl, project):
    code, out, err = vcl("run", "echo", "-e", "owner=cs", "-e", "user=ana=b", "--project", str(project))
    assert code == EXIT_OK, err
    assert out.splitlines()[0] == "vcl.lab.echo: successful (rc 0)"
    assert "probe     HELLO" in out and '"user": "ana=b"' in out
    assert "vms:\nID  ADDRESS\n1   10.0.0.1\n2   10.0.0.2" in out


def test_cli_run_passes_the_database_url(vcl, project, tmp_path):
    code, out, _ = vcl("--db", f"sqlite:///{tmp_path}/other.sqlite", "run", "echo", "--project", str(project),
                       "--json")
    assert code == EXIT_OK and json.loads(out)["vcl_result"]["db_url"] == f"sqlite:///{tmp_path}/other.sqlite"


def test_cli_run_refusal_exits_3(vcl, project):
    code, out, _ = vcl("run", "echo", "-e", "state=refused", "--project", str(project), "--json")
    assert code == EXIT_NOT_SERVED and json.loads(out)["vcl_result"]["state"] == "refused"


def test_cli_run_failure_exits_1_with_the_message_on_stderr(vcl, project):
    code, out, err = vcl("run", "fail", "-e", "reason=pool full", "--project", str(project), "--json")
    assert code == EXIT_ERROR
    data = json.loads(out)
    assert data["status"] == "failed" and data["vcl_result"]["reason"] == "pool full"
    assert data["failures"][0]["message"] == "launch refused: pool full"
    assert "vcl: vcl.lab.fail failed: runner-local: Refuse the launch: launch refused: pool full" in err


@pytest.mark.parametrize(("argv", "needle"), [
    (("run", "nope"), "playbook 'nope': no vcl.lab.nope in"),
    (("dispatch", "--project", "/nonexistent/vcl"), "project /nonexistent/vcl: no such directory"),
    (("run", "echo", "-e", "novalue"), "KEY=VALUE"),
])
def test_cli_errors_are_one_line(vcl, project, argv, needle):
    if "--project" not in argv:
        argv = (*argv, "--project", str(project))
    code, out, err = vcl(*argv)
    assert code == EXIT_ERROR and out == "" and needle in err and len(err.strip().splitlines()) == 1, err


def test_cli_prints_a_vcl_result_of_empty_lists(vcl, project):
    # an idle dispatch: every key is an empty list (once a crash of the table printer)
    code, out, err = vcl("run", "idle", "--project", str(project))
    assert code == EXIT_OK, err
    assert out.splitlines()[1:] == ["started_reservations  -", "stopped               -", "launched              -",
                                    "waiting               -", "notes                 -"]


# --- the checkout's own collection ----------------------------------------------------------------

def test_the_checkouts_playbooks_are_run_by_fqcn():
    assert set(LIFECYCLE) <= set(runner.available_playbooks(REPO))
    assert runner.collection_dir(REPO) == REPO / "collections" / "ansible_collections" / "vcl" / "lab"
    assert [runner.resolve_playbook(REPO, name) for name in ("reserve", "dispatch.yml", "vcl.lab.launch")] == [
        "vcl.lab.reserve", "vcl.lab.dispatch", "vcl.lab.launch"]


def test_cli_reserve_run_records_through_the_real_collection(vcl, tmp_path, monkeypatch):
    """`vcl reserve --run` from anywhere: the checkout's vcl.lab.reserve, its action plugin on the
    controller, a temporary database (the implicit localhost only: the request stays pending)."""
    url = os.environ["VCL_DB_URL"]
    service.init(url)
    service.configure({"private_pool": "10.77.1.16-10.77.1.20", "public_pool": "10.77.0.160-10.77.0.164"}, url)
    service.add_group("cs", url=url)
    service.add_slave("s1", "10.77.0.21", 2, 4096, 50, url=url)
    hosts = tmp_path / "hosts.yml"
    hosts.write_text("all:\n  hosts: {}\n")
    code, out, err = vcl("reserve", "--owner", "cs", "--cores", "1", "--ram-mb", "256", "--start", "now", "--hours",
                         "2", "--platform-value", "5", "--register-as-slave", "0", "--member", "0", "--run",
                         "-i", str(hosts), "--json")
    data = json.loads(out)
    assert code == EXIT_ERROR and data["playbook"] == "vcl.lab.reserve" and data["status"] == "failed", err[-3000:]
    # Placed; the launch that follows stops before any host is touched: the inventory has no master.
    assert data["vcl_result"]["decision"] == "place" and data["vcl_result"]["slave"] == "s1"
    assert "vcl_master: the inventory must have exactly one host" in err
    assert [(i["state"], i["slave"]) for i in service.list_instances(url)] == [("pending", "s1")]


# --- extra vars are data (SPEC §11) ------------------------------------------------------------------------

HOSTILE = ['{{ lookup("pipe", "touch MARK") }}', "{% for x in range(3) %}{{ x }}{% endfor %}",
           "!!python/object:os.system", "$(touch MARK); `touch MARK`", "0123", "true", "0x10", "2026-11-23 10:00",
           "line\\nbreak"]


@pytest.mark.parametrize("value", HOSTILE)
def test_extra_vars_reach_the_playbook_as_the_text_given_and_run_nothing(vcl, project, tmp_path, value):
    mark = tmp_path / "mark"
    text = value.replace("MARK", str(mark))
    code, out, err = vcl("run", "echo", "-e", f"owner={text}", "-e", "cores=4", "--project", str(project), "--json")
    assert code == EXIT_OK, err
    received = json.loads(out)["vcl_result"]["received"]
    assert received == {"owner": text, "cores": "4"}  # strings stay strings: never templated, never retyped
    assert not mark.exists()


def test_the_extra_vars_file_marks_every_string_unsafe_at_any_depth():
    document = json.loads(runner.unsafe_extravars_json({"owner": "{{ x }}", "ids": [1, "2"], "n": 3,
                                                        "nested": {"a": "b"}}))
    assert document == {"owner": {"__ansible_unsafe": "{{ x }}"}, "ids": [1, {"__ansible_unsafe": "2"}], "n": 3,
                        "nested": {"a": {"__ansible_unsafe": "b"}}}


@pytest.mark.parametrize("key", ["ansible_ssh_common_args", "hostvars", "omit", "1abc", "a-b", "{{ x }}", "a b",
                                 "x" * 65])
def test_extra_var_names_are_identifiers_and_never_ansibles_own(vcl, project, key):
    code, out, err = vcl("run", "echo", "-e", f"{key}=1", "--project", str(project))
    assert code == EXIT_ERROR and out == "" and err.count("\n") == 1 and "extra_vars" in err, err
