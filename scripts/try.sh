#!/usr/bin/env bash
# The main job on the embedded default: install everything, bring the simulated lab up (a master,
# two slaves running libvirt + QEMU, and a client, as systemd-nspawn machines on a guarded bridge),
# bootstrap it with `ansible-playbook site.yml` (which registers the slaves and the test guest image in
# the lab database), submit a reservation through the collection's `vcl.lab.reserve` (start=now: placed, then
# launched by the vcl.lab.vm role on a slave), and end by showing the VM reachable from the client
# machine through the master's DNAT, and how to reach its console.
# `ansible-playbook vcl.lab.stop -e id=N` stops the VM; `.venv/bin/vcl lab down` removes the lab.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
vcl lab up
vcl lab status
echo
ansible all -m ansible.builtin.ping   # ansible.cfg names inventory/lab/hosts.yml
echo
ansible-playbook site.yml
echo
vcl slave list
vcl image list
ansible-inventory -i inventory/lab --graph
echo

# The reservation of this demonstration belongs to group `try`; the one of an earlier run is stopped first.
vcl group list --json | python3 -c 'import json,sys; sys.exit(0 if any(g["name"] == "try" for g in json.load(sys.stdin)) else 1)' \
    || vcl group add try --description "scripts/try.sh"
earlier=$(vcl instances --json | python3 -c 'import json,sys; print(",".join(str(i["id"]) for i in json.load(sys.stdin) if i["owner"] == "try"))')
if [ -n "$earlier" ]; then
    ansible-playbook vcl.lab.stop -e "ids=$earlier"
fi
ansible-playbook vcl.lab.reserve -e owner=try -e cores=1 -e ram_mb=128 -e hours=1 -e image=vcl-guest \
    -e platform_value=5 -e register_as_slave=0 -e member=1
vm=$(vcl instances --json | python3 -c 'import json,sys; v=[i for i in json.load(sys.stdin) if i["owner"] == "try"][-1]; print(v["id"], v["public_ip"], v["slave"], v["console_port"], v["mac"].replace(":", ""))')
read -r id public slave port mac <<<"$vm"
echo
echo "VM $id runs on $slave; the client machine connects to its public address $public (the master DNATs it):"
ansible client -m ansible.builtin.wait_for -a "host=$public port=80 search_regex=vcl-guest timeout=180" >/dev/null
ansible client -m ansible.builtin.command -a \
    "python3 -c 'import socket,sys; print(socket.create_connection((sys.argv[1], 80), 5).recv(200).decode())' $public"
address=$(vcl slave list --json | python3 -c "import json,sys; print([s['address'] for s in json.load(sys.stdin) if s['name'] == '$slave'][0])")
echo "Console: VNC on $address:$port, password in ~/.vcl/consoles/vm-$id-$mac.vnc (from a host of the lab LAN:"
echo "  vncviewer $address:$port); the guest's serial log is /var/lib/vcl/instances/vcl-$id.log on $slave."
echo "Stop it with: ansible-playbook vcl.lab.stop -e id=$id"
master=$(ansible-inventory --host master | python3 -c 'import json,sys; print(json.load(sys.stdin)["ansible_host"])')
# The client machine reaches the portal over HTTPS, the certificate checked against the master's CA.
mkdir -p build
ansible master -m ansible.builtin.fetch -a "src=/etc/vcl/portal/ca.crt dest=$PWD/build/lab-portal-ca.crt flat=true" >/dev/null
ansible client -m ansible.builtin.copy -a "src=$PWD/build/lab-portal-ca.crt dest=/etc/ssl/vcl-portal-ca.crt mode=0644" >/dev/null
ansible client -m ansible.builtin.command -a \
    "python3 -c 'import ssl,urllib.request,sys; ctx=ssl.create_default_context(cafile=sys.argv[2]); print(\"portal:\", urllib.request.urlopen(sys.argv[1], context=ctx, timeout=20).status)' https://$master/login /etc/ssl/vcl-portal-ca.crt"
echo "The portal (docs/portal.md): https://$master/ from the lab (its certificate is signed by the master's CA,"
echo "  /etc/vcl/portal/ca.crt there). It serves the master's own lab database: on a real lab the controller is the"
echo "  master; here, people are added on the master, e.g. ssh to it and: vcl user add ann --password-stdin"
