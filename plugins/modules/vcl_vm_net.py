# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""The ``vcl_vm_net`` module: put one VM on the master's network at launch, or take it off at release.

One task on the master instead of three (dhcpd, network, nat): the VM's DHCP host entry, its public
alias on the uplink and its DNAT chain, all under the lock vcl_nat takes (/run/vcl_nat.lock). The files it
edits stay byte-identical to what the dhcpd and network roles render for the same set of VMs, so a later
``site.yml`` run reports no change. Everything is read and planned before anything changes; a step that
fails undoes the earlier steps of the run.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_vm_net
short_description: Put one VM on the VCL master's network (DHCP entry, public alias, DNAT), or take it off
description:
  - Runs on the master at a launch (O(state=present)) or a release (O(state=absent)) and does, for one VM,
    what the roles C(dhcpd), C(network) and C(nat) do for all of them, in one task and under the lock
    C(vcl_nat) takes (C(/run/vcl_nat.lock)), so it never races C(vcl_nat) or another launch.
  - "DHCP: the block C(host vm-<id> { hardware ethernet MAC; fixed-address PRIVATE; }) is added (or corrected)
    in, or removed from, O(dhcpd_config), in the format and order (hosts sorted by name) the C(dhcpd) role's
    template renders, so the role renders the same bytes for the same set of VMs. A MAC or address that
    another host block holds is refused, naming the field, and nothing changes. The candidate file is
    checked with C(dhcpd -t -4 -cf CANDIDATE) before it atomically replaces the live one, and
    O(dhcpd_restart) runs only when the file changed."
  - "Public alias: C(PUBLIC/32) on O(uplink), live (C(ip address add/del)) and as one stanza of
    O(aliases_file), byte-identical to what the C(network) role renders there for the same set of aliases."
  - "DNAT: the chain C(VCL-VM-<id>) and its jumps from C(VCL-PREROUTING) and C(VCL-OUTPUT), exactly as
    C(vcl_nat) makes them (an address another VM's chain uses is refused), the ruleset saved to
    O(rules_file) after C(iptables-restore --test) when O(persist)."
  - Order with O(state=present) is DHCP, alias, DNAT; with O(state=absent) the reverse. Everything is read and
    checked before the first change; if a step fails, the steps already done in this run are undone
    (files restored, dhcpd restarted again, alias and chain put back) and the module fails saying so.
  - Re-running with the same arguments changes nothing.
version_added: "0.1.0"
author: VCL project
options:
  id:
    description: The VM's id; its DHCP host is C(vm-<id>) and its chain C(VCL-VM-<id>).
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
      - With O(state=absent) it may be left out; the address in the VM's DNAT chain is then the one removed.
    type: str
  uplink:
    description: The master's interface that carries the public aliases (the inventory's C(lab_uplink)).
    type: str
    required: true
  dhcpd_config:
    description: dhcpd's configuration file, as the C(dhcpd) role writes it. It must exist for O(state=present).
    type: path
    default: /etc/dhcp/dhcpd.conf
  dhcpd_binary:
    description: The dhcpd that checks a candidate configuration (C(dhcpd -t -4 -cf FILE)).
    type: path
    default: /usr/sbin/dhcpd
  dhcpd_restart:
    description:
      - Commands (argv lists) run in order after O(dhcpd_config) changed, to make dhcpd load it, for example
        C([[systemctl, restart, isc-dhcp-server]]). Empty means dhcpd is not restarted.
    type: list
    elements: list
    default: []
  aliases_file:
    description:
      - Where the public aliases persist for ifupdown (the C(network) role's C(network__aliases_file)).
      - Created with the role's header when missing.
    type: path
    default: /etc/network/interfaces.d/vcl-public-aliases
  rules_file:
    description: Where the iptables ruleset is saved (netfilter-persistent's IPv4 file).
    type: path
    default: /etc/iptables/rules.v4
  persist:
    description: Save the iptables ruleset to O(rules_file) (as C(vcl_nat) does).
    type: bool
    default: true
notes:
  - Supports check mode; the parts of the result then say what would change (dhcpd -t is not run).
  - Needs C(ip), C(iptables), C(iptables-save), C(iptables-restore) and dhcpd on the target.
seealso:
  - module: vcl_nat
"""

EXAMPLES = r"""
- name: Put VM 14 on the master's network (launch)
  vcl_vm_net:
    id: 14
    mac: "52:54:00:12:34:56"
    private: 10.213.1.18
    public: 10.213.0.162
    uplink: eth0
    dhcpd_restart:
      - [systemctl, restart, isc-dhcp-server]

- name: Take VM 14 off the master's network (release)
  vcl_vm_net:
    id: 14
    state: absent
    uplink: eth0
    dhcpd_restart:
      - [systemctl, restart, isc-dhcp-server]
"""

RETURN = r"""
dhcp:
  description: The DHCP part.
  returned: always
  type: dict
  contains:
    changed:
      description: Whether O(dhcpd_config) was (in check mode, would be) rewritten.
      type: bool
    host:
      description: The host block's name.
      type: str
      sample: vm-14
    entry:
      description: The host block as written (null with O(state=absent)).
      type: str
      sample: "host vm-14 { hardware ethernet 52:54:00:12:34:56; fixed-address 10.213.1.18; }"
    restarted:
      description: Whether O(dhcpd_restart) ran (in check mode, would run).
      type: bool
    restart_commands:
      description: The O(dhcpd_restart) commands run (or that would run), in order.
      type: list
      elements: str
alias:
  description: The public alias part.
  returned: always
  type: dict
  contains:
    changed:
      description: Whether the live alias or O(aliases_file) changed (in check mode, would change).
      type: bool
    address:
      description: The alias (null with O(state=absent) when no public address is known).
      type: str
      sample: 10.213.0.162/32
    commands:
      description: The C(ip) commands run (or that would run).
      type: list
      elements: str
    file_changed:
      description: Whether O(aliases_file) was (or would be) rewritten.
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

import json  # noqa: E402  (Ansible modules keep DOCUMENTATION first)
import os  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

# Run straight from a checkout (``python plugins/modules/vcl_vm_net.py ARGS.json``, as tests/netns does), the
# shared code is found beside this folder; run by Ansible, it travels with the module (ansible.cfg's module_utils).
_CHECKOUT_UTILS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "module_utils")
if os.path.isfile(os.path.join(_CHECKOUT_UTILS, "vcl_nat.py")):
    sys.modules["ansible.module_utils"].__path__.append(_CHECKOUT_UTILS)

from ansible.module_utils.vcl_nat import (  # noqa: E402
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

MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")  # what the network role accepts

# One host entry exactly as roles/dhcpd/templates/etc/dhcp/dhcpd.conf.j2 renders it.
HOST_BLOCK = re.compile(r"host (?P<name>\S+) \{\n  hardware ethernet (?P<mac>\S+);\n  fixed-address (?P<ip>\S+);\n\}\n")
# One alias exactly as roles/network/templates/etc/network/interfaces.d/vcl-public-aliases.j2 renders it.
ALIAS_COMMENT = "# Public alias of a VM (DNAT to its private address)."
ALIAS_STANZA = re.compile(
    r"\n" + re.escape(ALIAS_COMMENT) + r"\niface (?P<dev>\S+) inet static\n    address (?P<ip>[0-9.]+)/32\n"
)
# The template's lines before its first alias, rendered with Ansible's default ansible_managed
# (used only when the file does not exist yet; an existing header is kept as it is).
ALIASES_HEADER = (
    "#\n# Ansible managed\n#\n"
    "# The VMs' public addresses: /32 aliases on the master's uplink, DNATed to their private addresses.\n"
    "# The network role writes them from the lab database; vcl_vm_net adds or removes one at a launch or release.\n"
)


class StepError(RuntimeError):
    """A step failed after the run started changing things."""


def alias_stanza(dev: str, address: str) -> str:
    return f"\n{ALIAS_COMMENT}\niface {dev} inet static\n    address {address}/32\n"


def host_block(name: str, mac: str, ip: str) -> str:
    return f"host {name} {{\n  hardware ethernet {mac};\n  fixed-address {ip};\n}}\n"


def _trailing_run(text: str, pattern: re.Pattern) -> tuple[str, list[re.Match]]:
    """TEXT split into what comes before the matches of PATTERN that run, back to back, to its end, and those."""
    matches = list(pattern.finditer(text))
    end, run = len(text), []
    for match in reversed(matches):
        if match.end() != end:
            break
        run.insert(0, match)
        end = match.start()
    return text[:end], run


def _jinja_sorted(items: list, key) -> list:
    """What Jinja's ``sort`` does (case-insensitive, stable)."""
    return sorted(items, key=lambda item: key(item).lower())


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def plan_dhcp(text: str, name: str, entry: tuple[str, str] | None, path: str) -> str:
    """The dhcpd.conf that holds ENTRY (mac, ip) as host NAME (or no host NAME when ENTRY is None).

    Raises InputError naming the field when another host holds the MAC or the address."""
    prefix, run = _trailing_run(text, HOST_BLOCK)
    hosts = [(m["name"], m["mac"], m["ip"]) for m in run]
    bare = _strip_comments(prefix)
    if re.search(rf"\bhost\s+{re.escape(name)}\s*\{{", bare):
        raise InputError(
            f"dhcpd_config: {path} declares host {name} outside the host entries the dhcpd role writes "
            "(at the end of the file); refusing to edit it"
        )
    others = [h for h in hosts if h[0] != name]
    if entry is not None:
        mac, ip = entry
        for other, other_mac, other_ip in others:
            if other_mac.lower() == mac:
                raise InputError(f"mac: {mac} is already the hardware ethernet of host {other} in {path}")
            if other_ip == ip:
                raise InputError(f"private: {ip} is already the fixed-address of host {other} in {path}")
        if any(m.lower() == mac for m in re.findall(r"hardware\s+ethernet\s+([0-9A-Fa-f:]+)", bare)):
            raise InputError(f"mac: {mac} is already a hardware ethernet in {path}")
        if any(a.strip() == ip for a in re.findall(r"fixed-address\s+([^;]+);", bare)):
            raise InputError(f"private: {ip} is already a fixed-address in {path}")
        others.append((name, mac, ip))
    return prefix + "".join(host_block(*h) for h in _jinja_sorted(others, key=lambda h: h[0]))


def plan_aliases(text: str | None, dev: str, address: str | None, present: bool) -> str | None:
    """The aliases file that holds (or not) ADDRESS on DEV, the rest as it is; None if it need not exist."""
    if text is None and not present:
        return None
    prefix, run = _trailing_run(ALIASES_HEADER if text is None else text, ALIAS_STANZA)
    stanzas = {m["ip"]: m["dev"] for m in run}
    if address is not None:
        if present:
            stanzas[address] = dev
        else:
            stanzas.pop(address, None)
    return prefix + "".join(alias_stanza(stanzas[ip], ip) for ip in _jinja_sorted(list(stanzas), key=str))


class VmNet:
    """One run: everything read and planned up front, then the steps, each with its undo."""

    def __init__(self, module: AnsibleModule):
        self.module = module
        self.check = module.check_mode
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
        except InputError as err:
            module.fail_json(msg=str(err))
        self.name = f"vm-{self.id}"
        self.ip = module.get_bin_path("ip", required=True)
        self.nat = Iptables(module)
        self.result = {
            "dhcp": {"changed": False, "host": self.name, "entry": None, "restarted": False, "restart_commands": []},
            "alias": {"changed": False, "address": None, "commands": [], "file_changed": False},
            "dnat": {"changed": False, "commands": [], "chains": [], "saved": False},
        }

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

    def plan(self) -> None:
        params = self.params
        # DHCP
        path = params["dhcpd_config"]
        self.dhcp_old = read_text(path)
        if self.dhcp_old is None:
            if self.present:
                raise InputError(f"dhcpd_config: {path} does not exist (the dhcpd role writes it first)")
            self.dhcp_new = None
        else:
            entry = (self.mac, self.private) if self.present else None
            self.dhcp_new = plan_dhcp(self.dhcp_old, self.name, entry, path)
        self.result["dhcp"]["changed"] = self.dhcp_new != self.dhcp_old
        if self.present:
            self.result["dhcp"]["entry"] = (
                f"host {self.name} {{ hardware ethernet {self.mac}; fixed-address {self.private}; }}"
            )
        self.result["dhcp"]["restarted"] = self.result["dhcp"]["changed"] and bool(self.restart)
        if self.result["dhcp"]["restarted"]:
            self.result["dhcp"]["restart_commands"] = [shlex.join(argv) for argv in self.restart]

        # DNAT (also tells which public address a release removes, when it was not given)
        table = self.nat.table()
        chain = VM_CHAIN_PREFIX + self.id
        self.dnat_before = addresses_of(table[chain]) if chain in table else None
        if not self.present and self.public is None and self.dnat_before:
            self.public = self.dnat_before[0]
        wanted = Vm(self.id, self.public, self.private)
        try:
            todo = plan(table, [wanted], params["state"])
        except InputError as err:
            raise InputError(str(err).removeprefix("vms[0].")) from None
        self.dnat_commands = self.nat.commands(todo)
        self.result["dnat"]["commands"] = [shlex.join(argv) for argv in self.dnat_commands]
        self.result["dnat"]["chains"] = todo.vm_chains()

        # Alias
        uplink = params["uplink"]
        self.alias_commands: list[list[str]] = []
        if self.public is not None:
            self.result["alias"]["address"] = f"{self.public}/32"
            shown = json.loads(self._run([self.ip, "-j", "-4", "address", "show", "dev", uplink], "uplink") or "[]")
            live = any(
                info.get("local") == self.public and info.get("prefixlen") == 32
                for link in shown
                for info in link.get("addr_info", [])
            )
            if live != self.present:
                verb = "add" if self.present else "del"
                self.alias_commands.append([self.ip, "address", verb, f"{self.public}/32", "dev", uplink])
        self.result["alias"]["commands"] = [shlex.join(argv) for argv in self.alias_commands]
        aliases_path = params["aliases_file"]
        if self.present and not os.path.isdir(os.path.dirname(aliases_path) or "."):
            raise InputError(f"aliases_file: directory {os.path.dirname(aliases_path)} does not exist")
        self.aliases_old = read_text(aliases_path)
        self.aliases_new = plan_aliases(self.aliases_old, uplink, self.public, self.present)
        self.result["alias"]["file_changed"] = self.aliases_new != self.aliases_old
        self.result["alias"]["changed"] = bool(self.alias_commands) or self.result["alias"]["file_changed"]

    # --- the steps and their undos -------------------------------------------------------------------------

    def _install(self, path: str, content: str | None, check: list[str] | None = None) -> None:
        """PATH gets CONTENT (None: PATH goes) through a checked temporary file and a rename."""
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
            if check is not None:
                self._run([*check, tmp], f"{path} was left as it was: the candidate was refused")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _restart_dhcpd(self) -> None:
        for argv in self.restart:
            self._run(argv, "dhcpd_restart")

    def dhcp_do(self) -> None:
        if not self.result["dhcp"]["changed"]:
            return
        check = [self.params["dhcpd_binary"], "-t", "-4", "-cf"]
        self._install(self.params["dhcpd_config"], self.dhcp_new, check)
        self.dhcp_written = True
        self._restart_dhcpd()

    def dhcp_undo(self) -> None:
        if getattr(self, "dhcp_written", False):
            self._install(self.params["dhcpd_config"], self.dhcp_old)
            self._restart_dhcpd()

    def alias_do(self) -> None:
        self.alias_done: list[list[str]] = []
        for argv in self.alias_commands:
            self._run(argv, "alias")
            self.alias_done.append(argv)
        if self.result["alias"]["file_changed"]:
            self.alias_file_written = True
            self._install(self.params["aliases_file"], self.aliases_new)

    def alias_undo(self) -> None:
        if getattr(self, "alias_file_written", False):
            self._install(self.params["aliases_file"], self.aliases_old)
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
                      "forgetting the old ARP entry")

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
            "dhcpd_config": {"type": "path", "default": "/etc/dhcp/dhcpd.conf"},
            "dhcpd_binary": {"type": "path", "default": "/usr/sbin/dhcpd"},
            "dhcpd_restart": {"type": "list", "elements": "list", "default": []},
            "aliases_file": {"type": "path", "default": "/etc/network/interfaces.d/vcl-public-aliases"},
            "rules_file": {"type": "path", "default": "/etc/iptables/rules.v4"},
            "persist": {"type": "bool", "default": True},
        },
        required_if=[("state", "present", ("mac", "private", "public"))],
        supports_check_mode=True,
    )
    vm = VmNet(module)
    with nat_lock():
        try:
            vm.plan()
        except (InputError, StepError, NatError) as err:  # refused or unreadable: nothing was changed
            module.fail_json(msg=str(err))
        if module.check_mode:
            vm.check_persist()
        else:
            vm.run()
    result = vm.result
    module.exit_json(changed=any(result[part]["changed"] for part in ("dhcp", "alias", "dnat")), **result)


if __name__ == "__main__":
    main()
