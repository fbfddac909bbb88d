#!/usr/bin/python
"""Register an image of the master's image store in the lab database (runs on the controller)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_image
short_description: Declare a VCL image (disk, optional kernel, ramdisk and cmdline) in the lab database
description:
  - Runs where the scheduler runs (the controller, with C(delegate_to=localhost)), with the C(vcl_sched) package.
  - Adds the image, or brings a registered one to the given values; reports changed only when it wrote something.
  - Paths are absolute paths in the master's image store; slaves cache the files at the same paths.
options:
  db_url:
    description: SQLAlchemy URL of the lab database; defaults to C(VCL_DB_URL), then the embedded SQLite file.
    type: str
  name:
    description: The image's name (what reservations ask for).
    type: str
    required: true
  description:
    description: One line for C(vcl image list).
    type: str
    default: ""
  disk:
    description: The base disk (qcow2) that launches put a copy-on-write overlay on.
    type: path
    required: true
  kernel:
    description: A kernel to boot directly (optional).
    type: path
  ramdisk:
    description: Its initramfs (optional).
    type: path
  cmdline:
    description: Its kernel command line (optional).
    type: str
  cores:
    description: Default vCPUs.
    type: int
    default: 1
  ram_mb:
    description: Default RAM in MiB.
    type: int
    default: 512
  disk_gb:
    description: Disk in GiB a VM of this image takes on its slave.
    type: int
    default: 2
author: VCL
"""

EXAMPLES = r"""
- name: Declare the test guest
  vcl_image:
    name: vcl-guest
    disk: /var/lib/vcl/images/vcl-guest/disk.qcow2
    kernel: /var/lib/vcl/images/vcl-guest/vmlinux
    ramdisk: /var/lib/vcl/images/vcl-guest/initrd.img
    cmdline: console=ttyS0 panic=-1
  delegate_to: localhost
"""

RETURN = r"""
image:
  description: The image as registered (id, name, disk_file, kernel, ramdisk, cmdline, cores, ram_mb, disk_gb).
  returned: success
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec={
            "db_url": {"type": "str"},
            "name": {"type": "str", "required": True},
            "description": {"type": "str", "default": ""},
            "disk": {"type": "path", "required": True},
            "kernel": {"type": "path"},
            "ramdisk": {"type": "path"},
            "cmdline": {"type": "str"},
            "cores": {"type": "int", "default": 1},
            "ram_mb": {"type": "int", "default": 512},
            "disk_gb": {"type": "int", "default": 2},
        },
        supports_check_mode=False,
    )
    try:
        from vcl_sched import service
        from vcl_sched.errors import VclError
    except ImportError as err:
        module.fail_json(msg=f"vcl_image needs the vcl_sched package in the controller's Python ({err})")
    p = module.params
    try:
        row, changed = service.ensure_image(
            p["name"], p["disk"], description=p["description"], kernel=p["kernel"], ramdisk=p["ramdisk"],
            cmdline=p["cmdline"], cores=p["cores"], ram_mb=p["ram_mb"], disk_gb=p["disk_gb"],
            url=p["db_url"] or None)
    except VclError as err:
        module.fail_json(msg=str(err), field=getattr(err, "field", None))
    module.exit_json(changed=changed, image=row)


if __name__ == "__main__":
    main()
