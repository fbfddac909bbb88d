"""The kvm role's choice of domain type: from the CPU flags, never from /dev/kvm or libvirt.

The first test runs the role's own `domain_type` tasks on the controller (local connection, one
inventory host per case, each with a sample cpuinfo), so every branch is exercised on a machine
without VT-x. The second asks for `kvm` on a lab slave, whose CPU shows no vmx/svm, and expects
the role to stop before changing anything, naming the host and the fix.
"""

from __future__ import annotations

import json

import pytest
import yaml

from vcl_lab.playbook import run_playbook as run_local_playbook
from vcl_lab.testing import REPO, run_playbook

FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht nx"
INTEL_VT = f"processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: {FLAGS} vmx ssse3\nvmx flags\t: vnmi\n"
AMD_V = f"processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: {FLAGS} svm extapic\n"
NO_VT = f"processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: {FLAGS} hypervisor ssse3\n"
# vmx and svm only as parts of other words or outside the flags line: no VT-x/AMD-V.
LOOKALIKE = f"processor\t: 0\nmodel name\t: vmx svm demo\nflags\t\t: {FLAGS} svm_lock vmxon_x\n"

# host: (cpuinfo, host vars, expected domain type or None for "the role stops")
CASES: dict[str, tuple[str, dict[str, str], str | None]] = {
    "auto_intel": (INTEL_VT, {"kvm__domain_type": "auto"}, "kvm"),
    "auto_amd": (AMD_V, {"kvm__domain_type": "auto"}, "kvm"),
    "auto_no_vt": (NO_VT, {"kvm__domain_type": "auto"}, "qemu"),
    "auto_lookalike": (LOOKALIKE, {"kvm__domain_type": "auto"}, "qemu"),
    "unset_defaults_to_auto": (INTEL_VT, {}, "kvm"),
    "lab_says_qemu": (INTEL_VT, {"lab_domain_type": "qemu"}, "qemu"),
    "forced_qemu": (AMD_V, {"kvm__domain_type": "qemu"}, "qemu"),
    "forced_kvm": (INTEL_VT, {"kvm__domain_type": "kvm"}, "kvm"),
    "forced_kvm_no_vt": (NO_VT, {"kvm__domain_type": "kvm"}, None),
    "lab_says_kvm_no_vt": (LOOKALIKE, {"lab_domain_type": "kvm"}, None),
}

CHOOSE = [
    {
        "name": "Choose the domain type from a sample cpuinfo",
        "hosts": "all",
        "gather_facts": False,
        "tasks": [
            {
                "name": "Choose the domain type",
                "ansible.builtin.include_role": {"name": "vcl.lab.kvm", "tasks_from": "domain_type"},
            },
            {
                "name": "Record the choice",
                "ansible.builtin.copy": {
                    "content": "{{ kvm__resolved_domain_type }}",
                    "dest": "{{ out_dir }}/{{ inventory_hostname }}",
                    "mode": "0644",
                },
            },
        ],
    }
]


def test_domain_type_follows_the_cpu_flags(tmp_path):
    out_dir = tmp_path / "chosen"
    out_dir.mkdir()
    hosts = {}
    for host, (cpuinfo, host_vars, _) in CASES.items():
        sample = tmp_path / f"{host}.cpuinfo"
        sample.write_text(cpuinfo)
        hosts[host] = {"kvm__cpuinfo": str(sample), **host_vars}
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "vars": {
                        "ansible_connection": "local",
                        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                        "out_dir": str(out_dir),
                    },
                    "hosts": hosts,
                }
            }
        )
    )
    playbook = tmp_path / "choose.yml"
    playbook.write_text(yaml.safe_dump(CHOOSE, sort_keys=False))

    recap = run_local_playbook(inventory, playbook, cwd=REPO)

    assert set(recap.hosts) == set(CASES), f"{recap.summary()}\n{recap.stdout}\n{recap.stderr}"
    for host, (_, _, expected) in CASES.items():
        chosen = out_dir / host
        if expected is None:
            assert recap[host].failed == 1, f"{host} should stop the role:\n{recap.stdout}"
            assert not chosen.exists()
            assert (
                f"{host}: domain type kvm was asked for" in recap.stdout and "lab_domain_type: qemu" in recap.stdout
            ), recap.stdout
        else:
            assert recap[host].failed == 0, f"{host} failed:\n{recap.stdout}"
            assert chosen.read_text() == expected, f"{host}: chose {chosen.read_text()}, expected {expected}"


@pytest.mark.lab
def test_forced_kvm_on_a_slave_without_vt_stops_with_the_fix(lab, tmp_path):
    slave = lab.of_role("slave")[0]
    facts_before = lab.ssh(slave, "cat", "/etc/ansible/facts.d/vcl_kvm.fact")
    playbook = tmp_path / "kvm.yml"
    playbook.write_text(
        yaml.safe_dump(
            [{"name": "Apply the kvm role", "hosts": "vcl_slaves", "gather_facts": False, "roles": ["vcl.lab.kvm"]}],
            sort_keys=False,
        )
    )

    recap = run_playbook(lab, playbook, "-e", "lab_domain_type=kvm", "--limit", slave)

    assert recap.rc != 0, recap.stdout
    assert recap[slave].failed == 1 and recap[slave].changed == 0, recap.summary()
    message = " ".join(recap.stdout.split())
    for part in (
        f"{slave}: domain type kvm was asked for",
        "no vmx or svm flag in /proc/cpuinfo",
        "firmware (BIOS/UEFI) setup",
        "set lab_domain_type: qemu",
    ):
        assert part in message, f"missing {part!r} in:\n{recap.stdout}"
    # Stopped before anything was installed or written.
    facts_after = lab.ssh(slave, "cat", "/etc/ansible/facts.d/vcl_kvm.fact")
    assert (facts_after.returncode, facts_after.stdout) == (facts_before.returncode, facts_before.stdout)
    if facts_after.returncode == 0:
        assert json.loads(facts_after.stdout)["domain_type"] != "kvm"
