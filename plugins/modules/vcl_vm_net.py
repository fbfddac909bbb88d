# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""The ``vcl_vm_net`` module: put one VM on the master's network at launch, or take it off at release.

One task on the master instead of three (dhcpd, network, nat): the VM's DHCP host entry, its public
alias on the uplink and its DNAT chain, all under the lock vcl_nat takes (/run/vcl/locks/vcl_nat.nat.lock). It reads and
writes only files that module_utils/vcl_vm_files.py renders (the VMs' host entries file that dhcpd.conf
includes, the VM's own interfaces.d file), with the functions the dhcpd and network roles render them with,
so a later ``site.yml`` run reports no change. Everything is read and planned before anything changes; a
step that fails undoes the earlier steps of the run.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_vm_net
short_description: Put one VM on the VCL master's network (DHCP entry, public alias, DNAT), or take it off
description:
  - Runs on the master at a launch (O(state=present)) or a release (O(state=absent)) and does, for one VM,
    what the roles C(vcl.lab.dhcpd), C(vcl.lab.network) and C(vcl.lab.nat) do for all of them, in one task and
    under the lock C(vcl_nat) takes (C(/run/vcl/locks/vcl_nat.nat.lock)), so it never races C(vcl_nat) or another
    launch.
  - It reads and writes only the files the collection's module_utils C(vcl_vm_files) renders, with the same
    functions the roles use, never a role's template output.
  - "DHCP: the entry C(host vm-<id> { hardware ethernet MAC; fixed-address PRIVATE; }) is added (or corrected)
    in, or removed from, O(dhcpd_hosts_file), the VMs' host entries file that dhcpd.conf includes. A MAC or
    address another entry holds is refused, naming the field, and nothing changes. The new file is written
    first to its candidate (C(NAME.candidate.conf) beside it) and C(dhcpd -t -4 -cf NAME.check.conf) (dhcpd.conf
    including the candidate, written by the C(vcl.lab.dhcpd) role) must accept the whole config before the
    live file is atomically replaced. The file is the durable record, what dhcpd loads when it starts."
  - "The running dhcpd then gets the same entry over OMAPI (O(omapi_port), the key in O(omapi_key_file)), without
    a restart: the host object C(vm-<id>) is created with the MAC (hardware type 1) and the fixed address, after
    deleting an object of that name or that MAC that holds other data; with O(state=absent) the object is
    deleted. A run that changes nothing still asks dhcpd (read only), and puts right a running dhcpd that
    differs from the file."
  - "O(dhcpd_restart) runs only as the fallback, when the file changed and OMAPI is not configured (O(omapi_port)
    unset, O(omapi_key_file) absent) or when an OMAPI operation failed; the result then says C(dhcp.omapi=false)
    and why. Before a restart the host records dhcpd copied into its lease file (O(dhcpd_leases_file)) for
    objects made or removed over OMAPI are dropped: dhcpd would read them after the config, and a C(deleted)
    record would hide a VM the file holds, a C(dynamic) one bring back a VM the file no longer has."
  - "Public alias: C(PUBLIC/32) on O(uplink), live (C(ip address add/del)) and as the VM's own ifupdown file
    C(vcl-vm-<id>) in O(aliases_dir), as the C(vcl.lab.network) role writes it. An address another VM's file
    holds is refused."
  - "DNAT: the chain C(VCL-VM-<id>) and its jumps from C(VCL-PREROUTING) and C(VCL-OUTPUT), exactly as
    C(vcl_nat) makes them (an address another VM's chain uses is refused), the ruleset saved to
    O(rules_file) after C(iptables-restore --test) when O(persist)."
  - Order with O(state=present) is DHCP, alias, DNAT; with O(state=absent) the reverse. Everything is read and
    checked before the first change; if a step fails, the steps already done in this run are undone
    (files restored, the OMAPI operations reversed or dhcpd restarted again, alias and chain put back) and the
    module fails saying so.
  - Re-running with the same arguments changes nothing.
version_added: "0.1.0"
author: VCL developers (@vcl-lab)
options:
  id:
    description: The VM's id; its DHCP host is C(vm-<id>), its alias file C(vcl-vm-<id>), its chain C(VCL-VM-<id>).
    type: int
    required: true
  state:
    description: Whether the VM is on the master's network (launch) or not (release).
    type: str
    choices: [present, absent]
    default: present
  mac:
    description:
      - The VM's MAC address (six hex pairs separated by C(:)); written in lower case.
      - Needed for O(state=present).
    type: str
  private:
    description: The VM's private IPv4 address (its DHCP fixed address, the DNAT target). Needed for O(state=present).
    type: str
  public:
    description:
      - The VM's public IPv4 address (the alias on O(uplink), the DNAT destination). Needed for O(state=present).
      - With O(state=absent) it may be left out; the address in the VM's DNAT chain, else in its alias file,
        is then the one removed.
    type: str
  uplink:
    description: The master's interface that carries the public aliases (the inventory's C(lab_uplink)).
    type: str
    required: true
  dhcpd_hosts_file:
    description:
      - The VMs' host entries file that dhcpd.conf includes (the C(vcl.lab.dhcpd) role's C(dhcpd__vm_hosts_file),
        site-wide C(lab_dhcpd_vm_hosts_file)).
      - Its check config C(NAME.check.conf) must exist (the role writes it) whenever the file is to change.
    type: path
    default: /etc/dhcp/dhcpd.vcl-vms.conf
  dhcpd_binary:
    description: The dhcpd that checks the whole config with a candidate (C(dhcpd -t -4 -cf CHECK)).
    type: path
    default: /usr/sbin/dhcpd
  dhcpd_restart:
    description:
      - Commands (argv lists) run in order to make dhcpd load O(dhcpd_hosts_file) when OMAPI could not change the
        running dhcpd (the fallback), for example C([[systemctl, restart, isc-dhcp-server]]). Empty means dhcpd is
        not restarted.
    type: list
    elements: list
    default: []
  dhcpd_leases_file:
    description:
      - dhcpd's lease file; before a restart the host records in it are dropped (leases and the rest are kept).
        Nothing is done when it does not exist.
    type: path
    default: /var/lib/dhcp/dhcpd.leases
  omapi_port:
    description:
      - The TCP port dhcpd answers OMAPI on (C(omapi-port) in dhcpd.conf, written by the C(vcl.lab.dhcpd) role), on
        127.0.0.1. Unset means OMAPI is not configured, and a changed file restarts dhcpd.
      - Needs the Python library pypureomapi where the module runs (the master's C(/opt/vcl/venv)); without it
        the module fails on one line, before any change.
    type: int
  omapi_key_file:
    description:
      - The root-only file with the OMAPI key, C(key "NAME" { algorithm hmac-md5; secret "BASE64"; };), which
        dhcpd.conf includes (the C(vcl.lab.dhcpd) role generates it on the master). Read here, never returned.
      - When it does not exist, OMAPI is taken as not configured.
    type: path
    default: /etc/dhcp/vcl-omapi.key
  aliases_dir:
    description: Where ifupdown reads per-interface files; the VM's alias file C(vcl-vm-<id>) goes there.
    type: path
    default: /etc/network/interfaces.d
  rules_file:
    description: Where the iptables ruleset is saved (netfilter-persistent's IPv4 file).
    type: path
    default: /etc/iptables/rules.v4
  persist:
    description: Save the iptables ruleset to O(rules_file) (as C(vcl_nat) does).
    type: bool
    default: true
notes:
  - Supports check mode; the parts of the result then say what would change (dhcpd -t is not run; OMAPI is
    asked, read only).
  - Needs C(ip), C(iptables), C(iptables-save), C(iptables-restore) and dhcpd on the target, and for OMAPI the
    Python library pypureomapi (HMAC-MD5 keys, the one algorithm it and dhcpd's OMAPI share).
  - A host entries file or an alias file of this VM that is not as VCL writes it (edited by hand) is refused,
    naming O(dhcpd_hosts_file) or O(aliases_dir); the roles rewrite both from the lab database.
seealso:
  - module: vcl.lab.vcl_nat
"""

EXAMPLES = r"""
- name: Put VM 14 on the master's network (launch)
  vcl.lab.vcl_vm_net:
    id: 14
    mac: "52:54:00:12:34:56"
    private: 10.213.1.18
    public: 10.213.0.162
    uplink: eth0
    omapi_port: 7911
    dhcpd_restart:
      - [systemctl, restart, isc-dhcp-server]
  vars:
    ansible_python_interpreter: /opt/vcl/venv/bin/python  # where pypureomapi is

- name: Take VM 14 off the master's network (release)
  vcl.lab.vcl_vm_net:
    id: 14
    state: absent
    uplink: eth0
    omapi_port: 7911
    dhcpd_restart:
      - [systemctl, restart, isc-dhcp-server]
  vars:
    ansible_python_interpreter: /opt/vcl/venv/bin/python
"""

RETURN = r"""
dhcp:
  description: The DHCP part.
  returned: always
  type: dict
  contains:
    changed:
      description: Whether O(dhcpd_hosts_file) was rewritten or the running dhcpd changed over OMAPI (in check mode,
        would be).
      type: bool
    host:
      description: The host entry's name.
      type: str
      sample: vm-14
    entry:
      description: The host entry as written (null with O(state=absent)).
      type: str
      sample: "host vm-14 { hardware ethernet 52:54:00:12:34:56; fixed-address 10.213.1.18; }"
    restarted:
      description: Whether O(dhcpd_restart) ran (in check mode, would run), the fallback when OMAPI did not.
      type: bool
    restart_commands:
      description: The O(dhcpd_restart) commands run (or that would run), in order.
      type: list
      elements: str
    omapi:
      description: Whether the running dhcpd was checked (and changed where needed) over OMAPI in this run.
      type: bool
    omapi_reason:
      description: Why OMAPI was not used, or failed (then dhcpd was restarted instead); null when it worked.
      type: str
      sample: "OMAPI failed: cannot talk to dhcpd's OMAPI on 127.0.0.1:7911: [Errno 111] Connection refused"
    omapi_ops:
      description: The OMAPI operations run (or that would run), in order; empty when dhcpd already held the entry.
      type: list
      elements: str
      sample: ["create host vm-14 (52:54:00:12:34:56, 10.213.1.18)"]
    leases_cleaned:
      description: Whether host records were dropped from O(dhcpd_leases_file) before a restart.
      type: bool
alias:
  description: The public alias part.
  returned: always
  type: dict
  contains:
    changed:
      description: Whether the live alias or the VM's alias file changed (in check mode, would change).
      type: bool
    address:
      description: The alias (null with O(state=absent) when no public address is known).
      type: str
      sample: 10.213.0.162/32
    commands:
      description: The C(ip) commands run (or that would run).
      type: list
      elements: str
    file:
      description: The VM's alias file.
      type: str
      sample: /etc/network/interfaces.d/vcl-vm-14
    file_changed:
      description: Whether the VM's alias file was (or would be) written or removed.
      type: bool
dnat:
  description: The DNAT part (as C(vcl_nat) returns it, plus C(changed)).
  returned: always
  type: dict
  contains:
    changed:
      description: Whether the nat table or O(rules_file) changed (or would change).
      type: bool
    commands:
      description: The iptables commands run (or that would run), in order.
      type: list
      elements: str
    chains:
      description: The C(VCL-VM-*) chains after the run.
      type: list
      elements: str
    saved:
      description: Whether O(rules_file) was (or would be) rewritten.
      type: bool
undone:
  description:
    - When a step failed, the parts of this run that were rolled back, the failed one first (a part whose undo
      itself failed says so). C(dhcp), C(alias) and C(dnat) then tell what had been attempted.
    - Not returned when the run was refused before any change (bad input, a conflict, state that cannot be read).
  returned: when a step failed
  type: list
  elements: str
  sample: ["dnat", "alias", "dhcp"]
"""

# Ansible modules keep DOCUMENTATION first (pyproject.toml ignores E402 under plugins/).
import json
import os
import shlex
import sys
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vcl.lab.plugins.module_utils import vcl_omapi
from ansible_collections.vcl.lab.plugins.module_utils.vcl_nat import (
    VM_CHAIN_PREFIX,
    InputError,
    Iptables,
    NatError,
    Vm,
    addresses_of,
    ipv4,
    nat_lock,
    plan,
    read_text,
    vm_id,
)
from ansible_collections.vcl.lab.plugins.module_utils.vcl_omapi import OmapiConfigError, OmapiFailure
from ansible_collections.vcl.lab.plugins.module_utils.vcl_vm_files import (
    IFNAME_RE,
    MAC_RE,
    VmFileError,
    alias_file_name,
    alias_id,
    dhcp_candidate_path,
    dhcp_check_path,
    dhcp_hosts,
    parse_alias,
    parse_dhcp_hosts,
    render_alias,
    render_dhcp_hosts,
)


class StepError(RuntimeError):
    """A step failed after the run started changing things."""


class VmNet:
    """One run: everything read and planned up front, then the steps, each with its undo."""

    def __init__(self, module: AnsibleModule):
        self.module = module
        params = module.params
        self.params = params
        self.present = params["state"] == "present"
        try:
            self.id = vm_id(params["id"], "id")
            self.mac = self._mac(params["mac"])
            self.private = ipv4(params["private"], "private") if self.present or params["private"] else None
            self.public = ipv4(params["public"], "public") if self.present or params["public"] else None
            if self.present and self.public == self.private:
                raise InputError(f"private: {self.private} is the same as public")
            if not IFNAME_RE.match(params["uplink"] or ""):
                raise InputError(f"uplink: {params['uplink']!r} is not an interface name")
            self.restart = self._restart(params["dhcpd_restart"])
            port = params["omapi_port"]
            if port is not None and not 1 <= port <= 65535:
                raise InputError(f"omapi_port: {port} is not a TCP port (1..65535)")
        except InputError as err:
            module.fail_json(msg=str(err))
        self.name = f"vm-{self.id}"
        self.hosts_file = params["dhcpd_hosts_file"]
        self.candidate_file = dhcp_candidate_path(self.hosts_file)
        self.check_file = dhcp_check_path(self.hosts_file)
        self.alias_file = os.path.join(params["aliases_dir"], alias_file_name(self.id))
        self.omapi: vcl_omapi.Client | None = None
        self.omapi_ops: list[tuple[str, dict]] = []
        self.omapi_done: list[tuple[str, dict]] = []
        self.restart_attempted = False
        self.ip = module.get_bin_path("ip", required=True)
        self.nat = Iptables(module)
        self.result = {
            "dhcp": {"changed": False, "host": self.name, "entry": None, "restarted": False, "restart_commands": [],
                     "omapi": False, "omapi_reason": None, "omapi_ops": [], "leases_cleaned": False},
            "alias": {"changed": False, "address": None, "commands": [], "file": self.alias_file,
                      "file_changed": False},
            "dnat": {"changed": False, "commands": [], "chains": [], "saved": False},
        }  # fmt: skip

    def _mac(self, value) -> str | None:
        if value is None and not self.present:
            return None
        if not isinstance(value, str) or not MAC_RE.match(value):
            raise InputError(f"mac: {value!r} is not a MAC address (six hex pairs separated by ':')")
        return value.lower()

    @staticmethod
    def _restart(commands) -> list[list[str]]:
        for index, argv in enumerate(commands or []):
            if not argv or not all(isinstance(word, str) and word for word in argv):
                raise InputError(f"dhcpd_restart[{index}]: {argv!r} is not a command (a non-empty list of words)")
        return [list(argv) for argv in commands or []]

    # --- reading and planning (nothing changes) ---------------------------------------------------------

    def _run(self, argv: list[str], what: str) -> str:
        rc, out, err = self.module.run_command(argv)
        if rc != 0:
            raise StepError(f"{what}: `{shlex.join(argv)}` failed (exit {rc}): {(err or out).strip()}")
        return out

    def _plan_dhcp(self) -> None:
        self.dhcp_old = read_text(self.hosts_file)
        self.candidate_old = read_text(self.candidate_file)
        try:
            old = [] if self.dhcp_old is None else parse_dhcp_hosts(self.dhcp_old, self.hosts_file)
        except VmFileError as err:
            raise InputError(f"dhcpd_hosts_file: {err}") from None
        others = [entry for entry in old if entry["name"] != self.name]
        wanted = vcl_omapi.entry(self.name, self.mac, self.private) if self.present else None
        if self.present:
            for other in others:
                if other["mac"] == self.mac:
                    raise InputError(f"mac: {self.mac} is already the hardware ethernet of host {other['name']} "
                                     f"in {self.hosts_file}")  # fmt: skip
                if other["ip"] == self.private:
                    raise InputError(f"private: {self.private} is already the fixed-address of host "
                                     f"{other['name']} in {self.hosts_file}")  # fmt: skip
            others.append({"name": self.name, "mac": self.mac, "ip": self.private})
            self.result["dhcp"]["entry"] = (
                f"host {self.name} {{ hardware ethernet {self.mac}; fixed-address {self.private}; }}"
            )
        changed = dhcp_hosts(others) != old
        self.dhcp_new = render_dhcp_hosts(others) if changed else None
        if changed and not os.path.isfile(self.check_file):
            raise InputError(
                f"dhcpd_hosts_file: the check config {self.check_file} does not exist (the vcl.lab.dhcpd role "
                f"writes it, with dhcpd.conf and {self.hosts_file})"
            )
        self.file_changed = changed
        self._plan_omapi(wanted)
        dhcp = self.result["dhcp"]
        dhcp["changed"] = changed or bool(self.omapi_ops)
        dhcp["restarted"] = changed and self.omapi is None and bool(self.restart)
        if dhcp["restarted"]:
            dhcp["restart_commands"] = [shlex.join(argv) for argv in self.restart]

    def _plan_omapi(self, wanted: dict | None) -> None:
        """Read what the running dhcpd holds under the VM's name (and its MAC) over OMAPI, and plan the operations
        that make it hold WANTED. OMAPI not configured, or not answering: self.omapi stays None and the reason is
        in the result (a changed file then restarts dhcpd)."""
        port, key_file, dhcp = self.params["omapi_port"], self.params["omapi_key_file"], self.result["dhcp"]
        if port is None:
            dhcp["omapi_reason"] = "OMAPI is not configured (omapi_port is not set)"
            return
        if not os.path.exists(key_file):
            dhcp["omapi_reason"] = f"OMAPI is not configured (no key file {key_file})"
            return
        if vcl_omapi.pypureomapi is None:
            raise InputError(
                f"omapi_port: OMAPI is asked for, but the Python library pypureomapi is not installed for "
                f"{sys.executable} (the master's /opt/vcl/venv has it: run the module with that interpreter)"
            )
        try:
            key_name, secret = vcl_omapi.parse_key_file(read_text(key_file) or "", key_file)
        except OmapiConfigError as err:
            raise InputError(f"omapi_key_file: {err}") from None
        except OSError as err:
            raise InputError(f"omapi_key_file: cannot read {key_file}: {err.strerror}") from None
        client = None
        try:
            client = vcl_omapi.Client(port, key_name, secret)
            by_name = client.lookup(name=self.name)
            by_mac = client.lookup(mac=self.mac) if wanted else None
        except vcl_omapi.OmapiFailure as err:
            if client is not None:
                client.close()
            dhcp["omapi_reason"] = f"OMAPI failed: {err}"
            return
        self.omapi = client
        self.omapi_ops = vcl_omapi.plan(self.name, wanted, by_name, by_mac)
        dhcp["omapi"] = True
        dhcp["omapi_ops"] = [vcl_omapi.describe(verb, host) for verb, host in self.omapi_ops]

    def close(self) -> None:
        if self.omapi is not None:
            self.omapi.close()

    def _other_aliases(self) -> dict[str, str]:
        """Public address -> alias file, of the other VMs' alias files (those not as VCL writes them skipped)."""
        directory, found = self.params["aliases_dir"], {}
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
            path = os.path.join(directory, name)
            if alias_id(name) is None or path == self.alias_file:
                continue
            try:
                found[parse_alias(read_text(path) or "")["public"]] = path
            except (VmFileError, OSError):
                continue
        return found

    def _plan_alias(self, table: dict[str, list[str]]) -> None:
        uplink, directory = self.params["uplink"], self.params["aliases_dir"]
        if self.present and not os.path.isdir(directory):
            raise InputError(f"aliases_dir: directory {directory} does not exist")
        self.alias_old = read_text(self.alias_file)
        try:
            old = None if self.alias_old is None else parse_alias(self.alias_old, self.alias_file)
        except VmFileError as err:
            raise InputError(f"aliases_dir: {err}") from None
        if not self.present and self.public is None and old is not None:
            self.public = old["public"]
        others = self._other_aliases()
        if self.present and self.public in others:
            raise InputError(f"public: {self.public} is already the alias of another VM ({others[self.public]})")
        self.alias_new = render_alias(self.id, uplink, self.public) if self.present else None

        live: set[str] = set()
        if self.public is not None or old is not None:
            shown = json.loads(self._run([self.ip, "-j", "-4", "address", "show", "dev", uplink], "uplink") or "[]")
            live = {info.get("local") for link in shown for info in link.get("addr_info", [])
                    if info.get("prefixlen") == 32}  # fmt: skip
        self.alias_commands: list[list[str]] = []
        if self.public is not None:
            self.result["alias"]["address"] = f"{self.public}/32"
            if (self.public in live) != self.present:
                verb = "add" if self.present else "del"
                self.alias_commands.append([self.ip, "address", verb, f"{self.public}/32", "dev", uplink])
        # A VM whose public address changed: its former alias goes too, unless another VM holds it.
        former = old["public"] if old is not None and old["public"] != self.public else None
        held = set(others) | {addresses_of(rules)[0] for chain, rules in table.items()
                              if chain.startswith(VM_CHAIN_PREFIX) and chain != VM_CHAIN_PREFIX + self.id}  # fmt: skip
        if former is not None and former in live and former not in held:
            self.alias_commands.append([self.ip, "address", "del", f"{former}/32", "dev", uplink])
        self.result["alias"]["commands"] = [shlex.join(argv) for argv in self.alias_commands]
        self.result["alias"]["file_changed"] = self.alias_new != self.alias_old
        self.result["alias"]["changed"] = bool(self.alias_commands) or self.result["alias"]["file_changed"]

    def plan(self) -> None:
        self._plan_dhcp()
        # DNAT (also tells which public address a release removes, when it was not given)
        table = self.nat.table()
        chain = VM_CHAIN_PREFIX + self.id
        self.dnat_before = addresses_of(table[chain]) if chain in table else None
        if not self.present and self.public is None and self.dnat_before:
            self.public = self.dnat_before[0]
        self._plan_alias(table)
        wanted = Vm(self.id, self.public, self.private)
        try:
            todo = plan(table, [wanted], self.params["state"])
        except InputError as err:
            raise InputError(str(err).removeprefix("vms[0].")) from None
        self.dnat_commands = self.nat.commands(todo)
        self.result["dnat"]["commands"] = [shlex.join(argv) for argv in self.dnat_commands]
        self.result["dnat"]["chains"] = todo.vm_chains()

    # --- the steps and their undos -------------------------------------------------------------------------

    @staticmethod
    def _install(path: str, content: str | None) -> None:
        """PATH gets CONTENT (None: PATH goes) through a temporary file in its directory and a rename."""
        if content is None:
            if os.path.exists(path):
                os.unlink(path)
            return
        directory = os.path.dirname(path) or "."
        try:
            stat = os.stat(path)
            mode, owner = stat.st_mode & 0o7777, (stat.st_uid, stat.st_gid)
        except FileNotFoundError:
            mode, owner = 0o644, None
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, mode)
            if owner is not None:
                os.chown(tmp, *owner)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _restart_dhcpd(self) -> None:
        """The fallback: dhcpd loads the hosts file again. The host records OMAPI left in the lease file go first
        (dhcpd reads them after the config, and they would win over it)."""
        if not self.restart:
            return
        self.restart_attempted = True
        dhcp = self.result["dhcp"]
        dhcp["restarted"] = True
        dhcp["restart_commands"] = [shlex.join(argv) for argv in self.restart]
        leases = self.params["dhcpd_leases_file"]
        text = read_text(leases)
        if text is not None and vcl_omapi.strip_host_records(text) != text:
            self._install(leases, vcl_omapi.strip_host_records(text))
            dhcp["leases_cleaned"] = True
        for argv in self.restart:
            self._run(argv, "dhcpd_restart")

    def _omapi_failed(self, err: OmapiFailure) -> None:
        self.result["dhcp"]["omapi"] = False
        self.result["dhcp"]["omapi_reason"] = f"OMAPI failed: {err}"

    def dhcp_do(self) -> None:
        """The candidate first, then dhcpd -t of the whole config with it, then the live file (the candidate
        stays, equal to it, as the dhcpd role leaves it); then the running dhcpd over OMAPI, else a restart."""
        if self.file_changed:
            self._install(self.candidate_file, self.dhcp_new)
            try:
                refused = f"{self.hosts_file} was left as it was: dhcpd refused the whole config with the candidate"
                self._run([self.params["dhcpd_binary"], "-t", "-4", "-cf", self.check_file], refused)
            except StepError:
                self._install(self.candidate_file, self.candidate_old)
                raise
            self.dhcp_written = True
            self._install(self.hosts_file, self.dhcp_new)
        if self.omapi is not None and self.omapi_ops:
            try:
                self.omapi.apply(self.omapi_ops, self.omapi_done)
                return
            except OmapiFailure as err:  # some operations may have gone through: dhcpd reloads the file
                self._omapi_failed(err)
            self._restart_dhcpd()
        elif self.file_changed and self.omapi is None:
            self._restart_dhcpd()

    def dhcp_undo(self) -> None:
        """The files as they were; the running dhcpd as it was (the OMAPI operations reversed, or a restart when
        this run restarted it or the reversal fails)."""
        if getattr(self, "dhcp_written", False):
            self._install(self.hosts_file, self.dhcp_old)
            self._install(self.candidate_file, self.candidate_old)
        if self.restart_attempted:
            self._restart_dhcpd()
        elif self.omapi_done:
            try:
                self.omapi.apply(vcl_omapi.undo(self.omapi_done), [])
            except OmapiFailure as err:
                self._omapi_failed(err)
                self._restart_dhcpd()

    def alias_do(self) -> None:
        self.alias_done: list[list[str]] = []
        for argv in self.alias_commands:
            self._run(argv, "alias")
            self.alias_done.append(argv)
        if self.result["alias"]["file_changed"]:
            self.alias_file_written = True
            self._install(self.alias_file, self.alias_new)

    def alias_undo(self) -> None:
        if getattr(self, "alias_file_written", False):
            self._install(self.alias_file, self.alias_old)
        for argv in reversed(getattr(self, "alias_done", [])):
            back = list(argv)
            back[2] = "del" if argv[2] == "add" else "add"
            self._run(back, "alias")

    def dnat_do(self) -> None:
        self.dnat_started = True
        self.nat.apply(self.dnat_commands)
        if self.params["persist"]:
            self.result["dnat"]["saved"] = self.nat.persist(self.params["rules_file"], False, bool(self.dnat_commands))

    def dnat_undo(self) -> None:
        if not getattr(self, "dnat_started", False):
            return
        if self.dnat_before is None:
            todo = plan(self.nat.table(), [Vm(self.id)], "absent")
        else:
            public, private = self.dnat_before
            todo = plan(self.nat.table(), [Vm(self.id, public, private)], "present")
        self.nat.apply(self.nat.commands(todo))
        if self.result["dnat"]["saved"]:  # the rules file changed in this run: save the restored table too
            self.nat.persist(self.params["rules_file"], False, True)

    def run(self) -> None:
        steps = [("dhcp", self.dhcp_do, self.dhcp_undo), ("alias", self.alias_do, self.alias_undo),
                 ("dnat", self.dnat_do, self.dnat_undo)]  # fmt: skip
        if not self.present:
            steps.reverse()
        started: list[tuple[str, object]] = []
        for name, do, undo in steps:
            started.append((name, undo))
            try:
                do()
            except (StepError, NatError, OSError) as err:
                failure = f"{name} step failed: {err}"
                undone = []
                for part, back in reversed(started):
                    try:
                        back()
                        undone.append(part)
                    except (StepError, NatError, OSError, InputError) as undo_err:
                        undone.append(f"{part} (undo failed: {undo_err})")
                self.module.fail_json(msg=f"{failure}; undone: {', '.join(undone)}", undone=undone, **self.result)
        self.result["dnat"]["changed"] = bool(self.dnat_commands) or self.result["dnat"]["saved"]
        self.forget_neighbour()

    def forget_neighbour(self) -> None:
        """Drop the master's ARP entry for the private address: it may still name the MAC of the VM that had
        the address before, and the master would send this VM's traffic there until the entry went stale
        (26-44 s in the lab). Not a change of state: the kernel learns the right MAC on the next packet."""
        private = self.private or (self.dnat_before[1] if self.dnat_before else None)
        if private:
            self._run([self.ip, "neigh", "flush", "to", f"{private}/32", "dev", self.params["uplink"]],
                      "forgetting the old ARP entry")  # fmt: skip

    def check_persist(self) -> None:
        """Check mode: would the rules file be rewritten?"""
        if self.params["persist"]:
            saved = self.nat.persist(self.params["rules_file"], True, bool(self.dnat_commands))
            self.result["dnat"]["saved"] = saved
        self.result["dnat"]["changed"] = bool(self.dnat_commands) or self.result["dnat"]["saved"]


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "id": {"type": "int", "required": True},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "mac": {"type": "str"},
            "private": {"type": "str"},
            "public": {"type": "str"},
            "uplink": {"type": "str", "required": True},
            "dhcpd_hosts_file": {"type": "path", "default": "/etc/dhcp/dhcpd.vcl-vms.conf"},
            "dhcpd_binary": {"type": "path", "default": "/usr/sbin/dhcpd"},
            "dhcpd_restart": {"type": "list", "elements": "list", "default": []},
            "dhcpd_leases_file": {"type": "path", "default": "/var/lib/dhcp/dhcpd.leases"},
            "omapi_port": {"type": "int"},
            "omapi_key_file": {"type": "path", "default": "/etc/dhcp/vcl-omapi.key", "no_log": False},
            "aliases_dir": {"type": "path", "default": "/etc/network/interfaces.d"},
            "rules_file": {"type": "path", "default": "/etc/iptables/rules.v4"},
            "persist": {"type": "bool", "default": True},
        },
        required_if=[("state", "present", ("mac", "private", "public"))],
        supports_check_mode=True,
    )
    vm = VmNet(module)
    with nat_lock(module, "vcl_vm_net"):
        try:
            try:
                vm.plan()
            except (InputError, StepError, NatError, VmFileError) as err:  # refused or unreadable: nothing changed
                module.fail_json(msg=str(err))
            if module.check_mode:
                vm.check_persist()
            else:
                vm.run()
        finally:
            vm.close()
    result = vm.result
    module.exit_json(changed=any(result[part]["changed"] for part in ("dhcp", "alias", "dnat")), **result)


if __name__ == "__main__":
    main()
