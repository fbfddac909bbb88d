"""The lab's Ansible inventory, in the project's inventory format (``inventory/lab/hosts.yml``)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import yaml

from vcl_lab._util import write_file
from vcl_lab.state import DEFAULT_NAME, LabState
from vcl_sched.paths import repo_root

PUBLIC_POOL = (160, 223)  # VMs' public addresses: aliases on the master's uplink, in the LAN
PRIVATE_POOL = (16, 254)  # VMs' private addresses, on the VM network
MAC_PREFIX = "52:54:00"


def default_inventory_dir(name: str) -> Path:
    """``<repo>/inventory/lab`` for the default lab; other labs keep theirs in their state directory,
    so two labs never overwrite each other's inventory."""
    root = repo_root()
    if name == DEFAULT_NAME and root is not None:
        return root / "inventory" / "lab"
    from vcl_lab.state import state_dir

    return state_dir(name) / "inventory"


def _images() -> list[str]:
    """``lab_images``: the test guest `vcl lab guest` built (a Debian kernel and a busybox initramfs that
    takes a DHCP lease and answers on port 80), which site.yml copies into the master's image store."""
    from vcl_lab.guest import current_guest

    built = current_guest()
    if built is None:
        return ["    lab_images: []"]
    return [
        "    lab_images:                        # copied into the master's image store by site.yml",
        "      - name: vcl-guest",
        f"        version: {built.key}               # a new build gets its own directory: images in use never change",
        '        description: "test guest: Debian kernel + busybox initramfs, DHCP, marker on port 80"',
        f"        source: {built.directory}",
        f"        disk: {built.disk.name}",
        f"        kernel: {built.vmlinux.name}",
        f"        ramdisk: {built.initrd.name}",
        f'        cmdline: "{built.cmdline}"',
        "        cores: 1",
        "        ram_mb: 128",
        "        disk_gb: 1",
    ]


def render(state: LabState) -> str:
    sub = state.subnets
    groups = {"vcl_master": [], "vcl_slaves": [], "vcl_clients": []}
    for machine in state.machines.values():
        groups[machine.group].append(machine)
    lines = [
        "# Written by `vcl lab up`: the simulated lab. Do not edit; `vcl lab down` removes it.",
        "all:",
        "  vars:",
        f"    lab_name: {state.name}",
        f"    lab_subnet: {sub.lan}          # the lab LAN: hosts' static addresses",
        f"    lab_gateway: {sub.gateway}            # LAN gateway (the host bridge in the simulated lab)",
        f"    lab_vm_subnet: {sub.vm}       # VMs' private network, served by the master's dhcpd",
        f"    lab_vm_gateway: {sub.vm_host(1)}         # the master's address on the VM network (VMs' router)",
        f"    lab_private_pool: {sub.vm_host(PRIVATE_POOL[0])}-{sub.vm_host(PRIVATE_POOL[1])}"
        "   # VM private addresses (inclusive range)",
        f"    lab_public_pool: {sub.host(PUBLIC_POOL[0])}-{sub.host(PUBLIC_POOL[1])}"
        "   # VM public addresses: aliases on the master's uplink",
        f'    lab_mac_prefix: "{MAC_PREFIX}"',
        "    lab_domain_type: qemu              # no VT-x here; a real lab uses kvm",
        "    lab_ntp_upstream: []               # the simulated lab has no internet",
        "    lab_service_manager: systemd       # the nspawn machines run systemd as PID 1",
        "    ansible_user: root",
        f"    ansible_ssh_private_key_file: {state.key_file}",
        '    ansible_ssh_common_args: "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"',
        *_images(),
        "  children:",
    ]
    for group, members in groups.items():
        lines.append(f"    {group}:")
        if not members:
            lines.append("      hosts: {}")
            continue
        lines.append("      hosts:")
        for m in members:
            lines.append(
                f"        {m.host}: {{ansible_host: {m.address}, lab_address: {m.address}/{sub.lan.prefixlen}, "
                f"lab_uplink: {m.uplink}}}"
            )
    text = "\n".join(lines) + "\n"
    yaml.safe_load(text)  # never write a file Ansible cannot read
    return text


PLUGIN_CONFIG = """\
# Written by `vcl lab up`: the slaves registered in the lab database, read by the inventory plugin vcl.lab.vcl_slaves
# (`ansible-inventory -i inventory/lab --graph`). The database is the `vcl` command's ($VCL_DB_URL or the default).
# inventory/sample/vcl_slaves.yml documents every option.
plugin: vcl.lab.vcl_slaves
"""


def write(state: LabState, directory: Path) -> Path:
    path = directory / "hosts.yml"
    write_file(path, render(state))
    write_file(directory / "vcl_slaves.yml", PLUGIN_CONFIG)
    return path


def remove(state: LabState) -> list[str]:
    """Remove the hosts.yml files this lab wrote (only if they still describe this lab)."""
    removed = []
    candidates = [*state.inventories, str(default_inventory_dir(state.name) / "hosts.yml")]
    for name in dict.fromkeys(candidates):
        path = Path(name)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and data.get("all", {}).get("vars", {}).get("lab_name") == state.name:
            path.unlink()
            removed.append(str(path))
            plugin_config = path.with_name("vcl_slaves.yml")
            if plugin_config.is_file() and plugin_config.read_text() == PLUGIN_CONFIG:
                plugin_config.unlink()
                removed.append(str(plugin_config))
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # only if empty
    return removed
