#!/usr/bin/env bash
# The main job on the embedded default: install everything, bring the simulated lab up (a master,
# two slaves running libvirt + QEMU, and a client, as systemd-nspawn machines on a guarded bridge),
# show it, reach every machine with Ansible, bootstrap it with `ansible-playbook site.yml` (which registers
# the slaves in the lab database), list the slaves as the inventory plugin sees them, then run the
# scheduler demonstration.
# `.venv/bin/vcl lab down` removes the lab again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/vcl lab up
.venv/bin/vcl lab status
echo
export PATH="$PWD/.venv/bin:$PATH"
ansible all -m ansible.builtin.ping   # ansible.cfg names inventory/lab/hosts.yml
echo
ansible-playbook site.yml
echo
vcl slave list
ansible-inventory -i inventory/lab --graph
echo
exec .venv/bin/vcl demo
