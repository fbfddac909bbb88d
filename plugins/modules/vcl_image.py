# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""Documentation of the vcl_image action plugin (plugins/action/vcl_image.py does the work, on the controller)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_image
short_description: Declare a VCL image (disk, optional kernel, ramdisk and cmdline) in the lab database
description:
  - An action plugin (plugins/action/vcl_image.py) that runs on the controller, in the Python of ansible-playbook
    itself, where the C(vcl_sched) package must be installed; no C(delegate_to) or interpreter is needed.
  - Adds the image, or brings a registered one to the given values; reports changed only when it wrote something.
  - Paths are absolute paths in the master's image store (the lab database's C(image_store) setting, default
    C(/var/lib/vcl/images)); slaves cache the files at the same paths. A launch copies the disk's directory, so
    every file is in an image directory of its own, C(STORE/NAME/FILE) or C(STORE/NAME/VERSION/FILE), and the
    kernel and ramdisk are in the disk's directory.
  - Paths are normalised (no C(..), C(.), C(//) or trailing C(/)), of ASCII letters, digits and C(._+-/) only, each
    name below the store starting with a letter or digit; where they exist on the controller, they are regular
    files reached without a symlink out of their image directory. Anything else fails naming the option.
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
    description: The base disk (qcow2) launches put a copy-on-write overlay on, in its image directory of the store.
    type: str
    required: true
  kernel:
    description: A kernel to boot directly (optional), in the disk's directory.
    type: str
  ramdisk:
    description: Its initramfs (optional), in the disk's directory.
    type: str
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
  platform_value:
    description:
      - The image's platform value PfV (0..10), used by the requests of people who are not admins (SPEC §3),
        within the lab's C(platform_value_max).
    type: raw
    default: 5
  disk_gb:
    description: Disk in GiB a VM of this image takes on its slave.
    type: int
    default: 2
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.conn
  - ansible.builtin.action_common_attributes.flow
  - vcl.lab.controller
attributes:
  check_mode:
    support: none
author: VCL developers (@vcl-lab)
"""

EXAMPLES = r"""
- name: Declare the test guest
  vcl.lab.vcl_image:
    name: vcl-guest
    disk: /var/lib/vcl/images/vcl-guest/disk.qcow2
    kernel: /var/lib/vcl/images/vcl-guest/vmlinux
    ramdisk: /var/lib/vcl/images/vcl-guest/initrd.img
    cmdline: console=ttyS0 panic=-1
"""

RETURN = r"""
image:
  description: The image as registered (id, name, disk_file, kernel, ramdisk, cmdline, cores, ram_mb, disk_gb).
  returned: success
  type: dict
"""
