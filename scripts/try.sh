#!/usr/bin/env bash
# The main job on the embedded default: install everything, bring the simulated lab up (a master,
# two slaves running libvirt + QEMU, and a client, as systemd-nspawn machines on a guarded bridge),
# show it, reach every machine with Ansible, then run the scheduler demonstration.
# `.venv/bin/vcl lab down` removes the lab again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/vcl lab up
.venv/bin/vcl lab status
echo
PATH="$PWD/.venv/bin:$PATH" ansible all -i inventory/lab -m ansible.builtin.ping
echo
exec .venv/bin/vcl demo
