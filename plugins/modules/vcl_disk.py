# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""Documentation of the vcl_disk action plugin (plugins/action/vcl_disk.py does the work, on the controller)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_disk
short_description: Persistent disks, their quotas and captured images in the VCL lab database
description:
  - An action plugin (plugins/action/vcl_disk.py) that runs on the controller, in the Python of ansible-playbook
    itself, where the C(vcl_sched) package must be installed (C(vcl_sched.disks)).
  - The playbooks move the files (C(stop.yml) keeps a VM's disk, C(disk.yml) deletes and captures); this module
    records each step and says where the files go. Paths are made by the scheduler from ids, never from input.
  - C(list) and C(usage) read the disks and the quotas the acting user may see.
  - C(keep_begin) checks the user's and the group's quota for O(size_bytes) and reserves it before a stopping
    VM's overlay is copied to the master's disk store; C(keep_commit) records the checked copy (its size,
    sha256 and O(info), qemu-img's JSON of it, which must show a qcow2 backed by the disk's base and nothing else)
    as the disk's next generation; C(keep_abort) gives the reservation back (the previous generation stays the disk).
  - C(delete) forgets a disk (refused while a VM uses it) and returns the files to remove.
  - C(capture_begin) returns where a capture of the disk writes a new image version; C(capture_commit) records it.
  - Every input is checked before anything is written; errors name the field.
options:
  db_url:
    description: SQLAlchemy URL of the lab database; defaults to C(VCL_DB_URL), then the embedded SQLite file.
    type: str
  action:
    description: The step.
    type: str
    required: true
    choices: [list, usage, keep_begin, keep_commit, keep_abort, delete, capture_begin, capture_commit]
  acting_user:
    description: The lab user on whose behalf the playbook runs (the portal, C(vcl --as)); their role is checked.
    type: str
  id:
    description: The instance whose disk is kept (C(keep_begin), C(keep_commit), C(keep_abort)).
    type: raw
  disk:
    description: The disk (every action but C(list), C(usage) and C(keep_begin)).
    type: raw
  user:
    description: With C(list) and C(usage), only this user's.
    type: str
  group:
    description: With C(usage), only this group's.
    type: str
  size_bytes:
    description: With C(keep_begin) and C(keep_commit), the overlay's size in bytes.
    type: raw
  sha256:
    description: With C(keep_commit), the copy's SHA-256 (equal to the slave's overlay's).
    type: str
  info:
    description: With C(keep_commit), C(qemu-img info --output=json) of the copy, parsed.
    type: raw
  taken:
    description:
      - With C(capture_begin), the names of the image's version directories in the master's store (C(v1)...).
    type: list
    elements: str
  image:
    description: With C(capture_begin) and C(capture_commit), the image's name (new, or one the user may change).
    type: str
  files:
    description:
      - With C(capture_commit), the new version's C(disk_file) (and C(kernel), C(ramdisk)), as C(capture_begin)
        named them.
    type: dict
    default: {}
  cmdline:
    description: With C(capture_commit), the kernel command line (default the disk's base's).
    type: str
  groups:
    description: With C(capture_commit), the groups the image is for (a list or comma-separated names).
    type: raw
  cores:
    description: With C(capture_commit), the image's default cores (default the disk's image's).
    type: raw
  ram_mb:
    description: With C(capture_commit), the image's default RAM in MB (default the disk's image's).
    type: raw
  platform_value:
    description: With C(capture_commit), the image's platform value (default the disk's image's).
    type: raw
  description:
    description: With C(capture_commit), the image's description.
    type: str
    default: ""
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.conn
  - ansible.builtin.action_common_attributes.flow
  - vcl.lab.controller
attributes:
  check_mode:
    support: full
author: VCL developers (@vcl-lab)
"""

EXAMPLES = r"""
- name: Reserve the quota for instance 42's overlay of 200 MB
  vcl.lab.vcl_disk:
    action: keep_begin
    id: 42
    size_bytes: 209715200
  register: stop__register_keep
"""

RETURN = r"""
disks:
  description: With C(list), the disks (id, user, image, group, generation, size_bytes, sha256, path, in_use_by...).
  returned: with list
  type: list
  elements: dict
usage:
  description: With C(usage), C(users) and C(groups), each with used_bytes, used_gb, quota_gb and disks.
  returned: with usage
  type: dict
keep:
  description: >-
    With C(keep_begin): C(disk), C(incoming) (the copy's file), C(path) (its name once checked), C(previous)
    (the current generation's file, or null), C(dir) and C(base_file).
  returned: with keep_begin
  type: dict
disk:
  description: >-
    The disk after the step (C(keep_commit) adds C(remove), the previous generation's file; C(delete) adds
    C(files)).
  returned: with keep_commit, keep_abort and delete
  type: dict
capture:
  description: >-
    With C(capture_begin), C(source), C(dir), C(files) of the new version and C(beside) (each file copied beside
    the disk, to its source).
  returned: with capture_begin
  type: dict
image:
  description: With C(capture_commit), the image row and its C(groups).
  returned: with capture_commit
  type: dict
"""
