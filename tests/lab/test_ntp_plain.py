"""The ntp role's `plain` service management (hosts without systemd as PID 1), on a lab machine.

The lab's machines run systemd, so the client's chrony unit is stopped first and the role then runs
chronyd itself with start-stop-daemon: it must start it once, leave it alone on a second run, and
restart it (new pid, new options) when chronyd's options change. The master serves as usual
(systemd); the client must select it. The client's chronyd is stopped again at the end, so the role
scenarios that follow find the unit's usual state.
"""

from __future__ import annotations

import json
import time

import pytest
import yaml

from vcl_lab.testing import run_playbook

pytestmark = pytest.mark.lab

PIDFILE = "/run/chrony/chronyd.pid"
# -x: the lab's machines share the host's clock; chronyd must not try to steer it.
FIRST_OPTIONS = ["-F", "1", "-x", "-L", "0"]
SECOND_OPTIONS = ["-F", "1", "-x"]


def write_playbook(path, client: str) -> None:
    plays = [
        {"name": "The master serves the lab", "hosts": "vcl_master", "gather_facts": False, "roles": ["vcl.lab.ntp"]},
        {
            "name": "The client runs chronyd without systemd",
            "hosts": client,
            "gather_facts": False,
            "vars": {"ntp__service_manager": "plain", "ntp__daemon_options": "{{ options }}"},
            "roles": ["vcl.lab.ntp"],
        },
    ]
    path.write_text(yaml.safe_dump(plays, sort_keys=False))


def chronyd(lab, host: str) -> tuple[int, list[str]]:
    """The pid in chronyd's pid file and that process's argv (which must be chronyd's)."""
    pid = lab.ssh(host, "cat", PIDFILE)
    assert pid.returncode == 0, f"{host}: no {PIDFILE}: {pid.stderr}"
    cmdline = lab.ssh(host, "cat", f"/proc/{pid.stdout.strip()}/cmdline")
    assert cmdline.returncode == 0, f"{host}: pid {pid.stdout.strip()} from {PIDFILE} is not running"
    argv = cmdline.stdout.split("\0")[:-1]
    assert argv[0] == "/usr/sbin/chronyd", argv
    return int(pid.stdout), argv[1:]


def wait_for_selected_source(lab, host: str, address: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while True:
        sources = lab.ssh(host, "chronyc", "-n", "sources").stdout
        if any(line.startswith(f"^* {address} ") for line in sources.splitlines()):
            return sources
        if time.monotonic() > deadline:
            pytest.fail(f"{host} did not select the master {address} within {timeout} s:\n{sources}")
        time.sleep(2)


def test_plain_chronyd_starts_once_restarts_on_change_and_uses_the_master(lab, tmp_path):
    client = lab.of_role("client")[0]
    master = lab.of_role("master")[0]
    playbook = tmp_path / "ntp-plain.yml"
    write_playbook(playbook, client)
    stopped = lab.ssh(client, "systemctl", "stop", "chrony")
    assert stopped.returncode == 0, stopped.stderr
    try:
        first = run_playbook(lab, playbook, "-e", json.dumps({"options": FIRST_OPTIONS}))
        assert first.ok, f"{first.summary()}\n{first.stdout}"
        assert first[client].changed > 0
        assert lab.ssh(client, "systemctl", "is-active", "chrony").stdout.strip() == "inactive"
        pid, argv = chronyd(lab, client)
        assert argv == FIRST_OPTIONS
        wait_for_selected_source(lab, client, lab.addresses[master])

        # The master serves by now: the next runs touch only the client.
        again = run_playbook(lab, playbook, "-e", json.dumps({"options": FIRST_OPTIONS}), "--limit", client)
        assert again.ok and again[client].changed == 0, f"{again.summary()}\n{again.stdout}"
        assert chronyd(lab, client) == (pid, argv)

        changed = run_playbook(lab, playbook, "-e", json.dumps({"options": SECOND_OPTIONS}), "--limit", client)
        assert changed.ok and changed[client].changed > 0, f"{changed.summary()}\n{changed.stdout}"
        new_pid, new_argv = chronyd(lab, client)
        assert new_pid != pid and new_argv == SECOND_OPTIONS
        wait_for_selected_source(lab, client, lab.addresses[master])
    finally:
        lab.ssh(
            client,
            "start-stop-daemon", "--stop", "--retry", "TERM/10", "--oknodo",
            "--pidfile", PIDFILE, "--exec", "/usr/sbin/chronyd",
        )  # fmt: skip
