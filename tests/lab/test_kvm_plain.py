"""The kvm role's `plain` service management (hosts without systemd as PID 1), on a lab machine.

The lab's machines run systemd, so the client's libvirt units and sockets are stopped first (the
client has libvirt and QEMU: it may join the pool as a slave). The role must then start
`virtlogd -d` and `libvirtd -d` itself, leave them alone on a second run, restart libvirtd (new pid,
new options) when its options change, and libvirt must answer. The units are started again at the
end, so the machine is as the lab left it.
"""

from __future__ import annotations

import json

import pytest
import yaml

from vcl_lab.testing import run_playbook

pytestmark = pytest.mark.lab

UNITS = [
    "libvirtd.service", "libvirtd.socket", "libvirtd-ro.socket", "libvirtd-admin.socket",
    "virtlogd.service", "virtlogd.socket", "virtlogd-admin.socket",
]  # fmt: skip
DAEMONS = {"libvirtd": "/run/libvirtd.pid", "virtlogd": "/run/virtlogd.pid"}


def daemon(lab, host: str, name: str) -> tuple[int, list[str]]:
    """The pid in the daemon's pid file and that process's argv (which must be the daemon's)."""
    pidfile = DAEMONS[name]
    pid = lab.ssh(host, "cat", pidfile)
    assert pid.returncode == 0, f"{host}: no {pidfile}: {pid.stderr}"
    cmdline = lab.ssh(host, "cat", f"/proc/{pid.stdout.strip()}/cmdline")
    assert cmdline.returncode == 0, f"{host}: pid {pid.stdout.strip()} from {pidfile} is not running"
    argv = cmdline.stdout.split("\0")[:-1]
    assert argv[0] == f"/usr/sbin/{name}", argv
    return int(pid.stdout), argv[1:]


def test_plain_libvirtd_starts_once_restarts_on_change_and_answers(lab, tmp_path):
    client = lab.of_role("client")[0]
    playbook = tmp_path / "kvm-plain.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "libvirt without systemd",
                    "hosts": client,
                    "gather_facts": False,
                    "vars": {"kvm__service_manager": "plain", "kvm__libvirtd_options": "{{ options }}"},
                    "roles": ["vcl.lab.kvm"],
                }
            ],
            sort_keys=False,
        )
    )
    stopped = lab.ssh(client, "systemctl", "stop", *UNITS)
    assert stopped.returncode == 0, stopped.stderr
    try:
        first = run_playbook(lab, playbook, "-e", json.dumps({"options": ["--verbose"]}))
        assert first.ok and first[client].changed > 0, f"{first.summary()}\n{first.stdout}"
        assert lab.ssh(client, "systemctl", "is-active", "libvirtd").stdout.strip() == "inactive"
        virtlogd = daemon(lab, client, "virtlogd")
        libvirtd = daemon(lab, client, "libvirtd")
        assert libvirtd[1] == ["-d", "--pid-file", DAEMONS["libvirtd"], "--verbose"]
        version = lab.ssh(client, "virsh", "-c", "qemu:///system", "version")
        assert version.returncode == 0 and "Running hypervisor: QEMU" in version.stdout, version

        again = run_playbook(lab, playbook, "-e", json.dumps({"options": ["--verbose"]}))
        assert again.ok and again[client].changed == 0, f"{again.summary()}\n{again.stdout}"
        assert daemon(lab, client, "libvirtd") == libvirtd and daemon(lab, client, "virtlogd") == virtlogd

        changed = run_playbook(lab, playbook, "-e", json.dumps({"options": []}))
        assert changed.ok and changed[client].changed > 0, f"{changed.summary()}\n{changed.stdout}"
        new_pid, new_argv = daemon(lab, client, "libvirtd")
        assert new_pid != libvirtd[0] and new_argv == ["-d", "--pid-file", DAEMONS["libvirtd"]]
        opened = lab.ssh(client, "python3", "-c", "import libvirt; print(libvirt.open('qemu:///system').getType())")
        assert opened.stdout.strip() == "QEMU", opened
    finally:
        for name, pidfile in DAEMONS.items():
            lab.ssh(
                client,
                "start-stop-daemon", "--stop", "--retry", "TERM/10", "--oknodo",
                "--pidfile", pidfile, "--exec", f"/usr/sbin/{name}",
            )  # fmt: skip
        lab.ssh(client, "systemctl", "start", *UNITS)
