# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""The ``vcl_nat`` module: the master's nat table for VCL (MASQUERADE and one DNAT chain per VM).

Reads the table with ``iptables-save -t nat``, plans the few ``iptables`` commands (argv lists) that
bring it to the wanted state, runs them, and saves the whole ruleset for netfilter-persistent.
Planning is a pure function of the parsed table, so re-running plans nothing and reports no change.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vcl_nat
short_description: VCL's NAT rules on the master (MASQUERADE, one DNAT chain per VM)
description:
  - Keeps the C(nat) table of the master holding the rules VCL needs, and nothing twice.
  - With O(masquerade), the chain C(VCL-POSTROUTING) holds exactly one rule,
    C(-s SUBNET ! -d SUBNET -o OUT_INTERFACE -j MASQUERADE), so the VMs reach the outside through the
    master while traffic that stays inside the VM network keeps its addresses.
  - Every VM gets a chain C(VCL-VM-<id>) holding exactly C(-d PUBLIC/32 -j DNAT --to-destination PRIVATE),
    jumped to from C(VCL-PREROUTING) (traffic arriving at the master) and C(VCL-OUTPUT) (traffic from the
    master itself). The built-in chains C(PREROUTING), C(OUTPUT) and C(POSTROUTING) each get exactly one
    jump to their C(VCL-) chain, inserted first.
  - With O(state=present) the listed VMs' chains are created or corrected; with O(exclusive=true) the
    chains of VMs not listed are removed too (the jumps to them first, then the chain is flushed and
    deleted). With O(state=absent) the listed VMs' chains are removed; other VMs are left alone.
  - Every input is checked before the table is read; a bad entry fails naming the field and nothing
    changes. A public or private address already used by another VM's chain is refused the same way.
  - After a change (or when the saved file is out of date) the whole ruleset (C(iptables-save)) is
    checked with C(iptables-restore --test) and written atomically to O(rules_file), the file
    netfilter-persistent loads at boot.
  - Runs are serialised with a lock file, so two launches at once never race on the same chains.
version_added: "0.1.0"
author: VCL project
options:
  vms:
    description:
      - The VMs whose DNAT chains this run manages.
      - With O(state=absent) only O(vms[].id) is needed.
    type: list
    elements: dict
    default: []
    suboptions:
      id:
        description:
          - The VM's id (an integer, or letters, digits and C(_), at most 21 characters), so the chain
            C(VCL-VM-<id>) fits iptables' 28-character limit.
        type: raw
        required: true
      public:
        description: The VM's public IPv4 address (an alias on the master's uplink).
        type: str
      private:
        description: The VM's private IPv4 address (on the VM network).
        type: str
  state:
    description: Whether the chains of the listed VMs must exist or not.
    type: str
    choices: [present, absent]
    default: present
  exclusive:
    description:
      - With O(state=present), remove every C(VCL-VM-*) chain whose VM is not in O(vms).
    type: bool
    default: false
  masquerade:
    description:
      - The MASQUERADE rule for the VM network; left alone when not given.
    type: dict
    suboptions:
      subnet:
        description: The VMs' private network (CIDR); traffic from it to elsewhere is masqueraded.
        type: str
        required: true
      out_interface:
        description: Masquerade only traffic leaving through this interface (the master's uplink).
        type: str
  persist:
    description: Save the ruleset to O(rules_file) for netfilter-persistent.
    type: bool
    default: true
  rules_file:
    description: Where the ruleset is saved (netfilter-persistent's IPv4 file).
    type: path
    default: /etc/iptables/rules.v4
notes:
  - Supports check mode; C(changed) and RV(commands) then say what would be run.
  - Needs C(iptables), C(iptables-save) and C(iptables-restore) on the target.
"""

EXAMPLES = r"""
- name: Make the nat table hold exactly the running VMs
  vcl_nat:
    masquerade:
      subnet: 10.213.1.0/24
      out_interface: eth0
    vms:
      - {id: 12, public: 10.213.0.160, private: 10.213.1.16}
      - {id: 13, public: 10.213.0.161, private: 10.213.1.17}
    exclusive: true

- name: Add one VM's DNAT at launch
  vcl_nat:
    vms:
      - {id: 14, public: 10.213.0.162, private: 10.213.1.18}

- name: Remove one VM's DNAT at release
  vcl_nat:
    vms:
      - id: 14
    state: absent
"""

RETURN = r"""
commands:
  description: The iptables commands run (or, in check mode, that would run), in order.
  returned: always
  type: list
  elements: str
  sample:
    - /usr/sbin/iptables -w -t nat -N VCL-VM-14
    - /usr/sbin/iptables -w -t nat -A VCL-VM-14 -d 10.213.0.162/32 -j DNAT --to-destination 10.213.1.18
chains:
  description: The C(VCL-VM-*) chains in the nat table after the run (predicted in check mode).
  returned: always
  type: list
  elements: str
  sample: ["VCL-VM-12", "VCL-VM-13", "VCL-VM-14"]
saved:
  description: Whether O(rules_file) was (or, in check mode, would be) rewritten.
  returned: always
  type: bool
"""

import fcntl  # noqa: E402  (Ansible modules keep DOCUMENTATION first)
import ipaddress  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

VM_CHAIN_PREFIX = "VCL-VM-"
MAX_CHAIN_LEN = 28  # iptables' limit (XT_EXTENSION_MAXNAMELEN - 1)
ID_RE = re.compile(rf"^[A-Za-z0-9_]{{1,{MAX_CHAIN_LEN - len(VM_CHAIN_PREFIX)}}}$")
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
# Built-in chain -> the VCL chain it jumps to (exactly once, as its first rule).
DNAT_PARENTS = {"PREROUTING": "VCL-PREROUTING", "OUTPUT": "VCL-OUTPUT"}
MASQ_BUILTIN = "POSTROUTING"
MASQ_CHAIN = "VCL-POSTROUTING"
LOCK_FILE = "/run/vcl_nat.lock"


class InputError(ValueError):
    """A bad parameter; the message names the field."""


@dataclass(frozen=True)
class Vm:
    id: str
    public: str | None = None
    private: str | None = None

    @property
    def chain(self) -> str:
        return VM_CHAIN_PREFIX + self.id

    @property
    def dnat(self) -> str:
        """The chain's one rule, exactly as iptables-save prints it."""
        return f"-d {self.public}/32 -j DNAT --to-destination {self.private}"


@dataclass(frozen=True)
class Masquerade:
    subnet: str
    out_interface: str | None = None

    @property
    def rule(self) -> str:
        out = f" -o {self.out_interface}" if self.out_interface else ""
        return f"-s {self.subnet} ! -d {self.subnet}{out} -j MASQUERADE"


def _ipv4(value, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise InputError(f"{field}: required, an IPv4 address (got {value!r})")
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise InputError(f"{field}: {value!r} is not an IPv4 address") from None


def _vm_id(value, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InputError(f"{field}: {value!r} is not a VM id (an integer or a string)")
    text = str(value)
    if isinstance(value, int) and value < 0:
        raise InputError(f"{field}: {value!r} is negative")
    if not ID_RE.match(text):
        raise InputError(
            f"{field}: {text!r} is not a safe VM id (letters, digits and _, 1 to "
            f"{MAX_CHAIN_LEN - len(VM_CHAIN_PREFIX)} characters, so {VM_CHAIN_PREFIX}<id> fits iptables)"
        )
    return text


def parse_vms(items, state: str) -> list[Vm]:
    """Check the ``vms`` parameter; raise InputError naming the first bad field."""
    vms: list[Vm] = []
    seen: dict[str, dict[str, str]] = {"id": {}, "public": {}, "private": {}}
    for index, item in enumerate(items or []):
        where = f"vms[{index}]"
        if not isinstance(item, dict):
            raise InputError(f"{where}: {item!r} is not a dict with id, public and private")
        vm_id = _vm_id(item.get("id"), f"{where}.id")
        if state == "present":
            public = _ipv4(item.get("public"), f"{where}.public")
            private = _ipv4(item.get("private"), f"{where}.private")
            if public == private:
                raise InputError(f"{where}.private: {private} is the same as {where}.public")
            vm = Vm(vm_id, public, private)
        else:
            vm = Vm(vm_id)
        for key in ("id", "public", "private"):
            value = getattr(vm, key)
            if value is None:
                continue
            if value in seen[key]:
                raise InputError(f"{where}.{key}: {value} is also {seen[key][value]}.{key}")
            seen[key][value] = where
        vms.append(vm)
    return vms


def parse_masquerade(spec) -> Masquerade | None:
    if not spec:
        return None
    subnet = spec.get("subnet")
    try:
        network = ipaddress.IPv4Network(subnet, strict=False)
    except (ValueError, TypeError):
        raise InputError(f"masquerade.subnet: {subnet!r} is not an IPv4 network (CIDR)") from None
    out = spec.get("out_interface")
    if out is not None and not IFNAME_RE.match(out):
        raise InputError(f"masquerade.out_interface: {out!r} is not an interface name")
    return Masquerade(str(network), out or None)


def parse_nat(text: str) -> dict[str, list[str]]:
    """``iptables-save -t nat`` output -> {chain: [rule spec, ...]} in table order.

    A rule spec is the rule as printed after ``-A CHAIN ``. An absent nat table is empty built-ins."""
    chains: dict[str, list[str]] = {name: [] for name in ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")}
    for line in text.splitlines():
        if line.startswith(":"):
            chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            _, chain, *rest = line.split(" ", 2)
            chains.setdefault(chain, []).append(rest[0] if rest else "")
    return chains


def _jump_target(spec: str) -> str | None:
    words = shlex.split(spec)
    for flag in ("-j", "-g"):
        if flag in words and words.index(flag) + 1 < len(words):
            return words[words.index(flag) + 1]
    return None


def _addresses_of(rules: list[str]) -> tuple[str | None, str | None]:
    """(public, private) of a VM chain's DNAT rule, as far as it holds one."""
    words = shlex.split(rules[0]) if rules else []
    public = words[1].removesuffix("/32") if len(words) > 1 and words[0] == "-d" else None
    private = words[words.index("--to-destination") + 1] if "--to-destination" in words[:-1] else None
    return public, private


class Plan:
    """The iptables argv lists (after ``iptables -w -t nat``) that bring a parsed table to a wanted state.

    Applies every step to its own copy of the table as well, so later steps see earlier ones."""

    def __init__(self, table: dict[str, list[str]]):
        self.table = {chain: list(rules) for chain, rules in table.items()}
        self.commands: list[list[str]] = []

    def _run(self, *argv: str) -> None:
        self.commands.append(list(argv))

    def chain(self, name: str) -> None:
        if name not in self.table:
            self._run("-N", name)
            self.table[name] = []

    def exactly(self, chain: str, rules: list[str]) -> None:
        """CHAIN holds these rules and nothing else."""
        if self.table[chain] == rules:
            return
        if self.table[chain]:
            self._run("-F", chain)
        for rule in rules:
            self._run("-A", chain, *shlex.split(rule))
        self.table[chain] = list(rules)

    def once(self, chain: str, rule: str, first: bool = False) -> None:
        """CHAIN holds RULE exactly once (inserted first, or appended)."""
        count = self.table[chain].count(rule)
        if count == 0:
            if first:
                self._run("-I", chain, "1", *shlex.split(rule))
                self.table[chain].insert(0, rule)
            else:
                self._run("-A", chain, *shlex.split(rule))
                self.table[chain].append(rule)
        for _ in range(count - 1):
            self._run("-D", chain, *shlex.split(rule))
            self.table[chain].remove(rule)

    def remove_chain(self, name: str) -> None:
        """Delete every jump to NAME, then flush and delete it."""
        if name not in self.table:
            return
        for chain, rules in self.table.items():
            for rule in [r for r in rules if _jump_target(r) == name]:
                self._run("-D", chain, *shlex.split(rule))
                rules.remove(rule)
        if self.table[name]:
            self._run("-F", name)
        self._run("-X", name)
        del self.table[name]

    def vm_chains(self) -> list[str]:
        return sorted(c for c in self.table if c.startswith(VM_CHAIN_PREFIX))


def plan(
    table: dict[str, list[str]],
    vms: list[Vm],
    state: str = "present",
    exclusive: bool = False,
    masquerade: Masquerade | None = None,
) -> Plan:
    """What to run so TABLE holds the wanted rules; raise InputError on an address another VM uses."""
    p = Plan(table)
    listed = {vm.chain for vm in vms}
    if state == "absent":
        for vm in vms:
            p.remove_chain(vm.chain)
    else:
        doomed = [c for c in p.vm_chains() if c not in listed] if exclusive else []
        _check_conflicts(p.table, vms, kept=[c for c in p.vm_chains() if c not in listed and c not in doomed])
        for chain in doomed:
            p.remove_chain(chain)
        for builtin, parent in DNAT_PARENTS.items():
            p.chain(parent)
            p.once(builtin, f"-j {parent}", first=True)
        for vm in vms:
            p.chain(vm.chain)
            p.exactly(vm.chain, [vm.dnat])
            for parent in DNAT_PARENTS.values():
                p.once(parent, f"-j {vm.chain}")
    if masquerade is not None:
        p.chain(MASQ_CHAIN)
        p.exactly(MASQ_CHAIN, [masquerade.rule])
        p.once(MASQ_BUILTIN, f"-j {MASQ_CHAIN}", first=True)
    return p


def _check_conflicts(table: dict[str, list[str]], vms: list[Vm], kept: list[str]) -> None:
    """An address used by a chain that stays (another VM's) cannot be given to a listed VM."""
    taken: dict[str, dict[str, str]] = {"public": {}, "private": {}}
    for chain in kept:
        public, private = _addresses_of(table[chain])
        taken["public"][public] = taken["private"][private] = chain
    for index, vm in enumerate(vms):
        for key in ("public", "private"):
            value = getattr(vm, key)
            if value in taken[key]:
                raise InputError(f"vms[{index}].{key}: {value} is already used by chain {taken[key][value]}")


def normalise_save(text: str) -> str:
    """iptables-save output without its comment lines and packet counters, for comparison."""
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return "\n".join(re.sub(r"\[\d+:\d+\]$", "[0:0]", line) for line in lines)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def write_atomically(module: AnsibleModule, path: str, content: str) -> None:
    """Write PATH through a temporary file in its directory and a rename."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        module.fail_json(msg=f"rules_file: directory {directory} does not exist (is netfilter-persistent installed?)")
    fd, tmp = tempfile.mkstemp(prefix=".rules.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o640)  # what netfilter-persistent's own `save` leaves
        os.replace(tmp, path)  # same directory, so readers see the old file or the new one, never half
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "vms": {
                "type": "list",
                "elements": "dict",
                "default": [],
                "options": {
                    "id": {"type": "raw", "required": True},
                    "public": {"type": "str"},
                    "private": {"type": "str"},
                },
            },
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "exclusive": {"type": "bool", "default": False},
            "masquerade": {
                "type": "dict",
                "options": {"subnet": {"type": "str", "required": True}, "out_interface": {"type": "str"}},
            },
            "persist": {"type": "bool", "default": True},
            "rules_file": {"type": "path", "default": "/etc/iptables/rules.v4"},
        },
        supports_check_mode=True,
    )
    params = module.params
    try:
        if params["exclusive"] and params["state"] == "absent":
            raise InputError("exclusive: only with state=present (it removes the chains of VMs not listed)")
        vms = parse_vms(params["vms"], params["state"])
        masquerade = parse_masquerade(params["masquerade"])
    except InputError as err:
        module.fail_json(msg=str(err))

    iptables = module.get_bin_path("iptables", required=True)
    iptables_save = module.get_bin_path("iptables-save", required=True)
    iptables_restore = module.get_bin_path("iptables-restore", required=True)

    done: list[str] = []

    def run(argv: list[str], data: str | None = None) -> str:
        rc, out, err = module.run_command(argv, data=data, binary_data=data is not None)
        if rc != 0:
            module.fail_json(msg=f"`{shlex.join(argv)}` failed (exit {rc}): {err.strip()}", commands=done)
        return out

    with open(LOCK_FILE, "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            todo = plan(
                parse_nat(run([iptables_save, "-t", "nat"])), vms, params["state"], params["exclusive"], masquerade
            )
        except InputError as err:
            module.fail_json(msg=str(err))
        commands = [[iptables, "-w", "-t", "nat", *argv] for argv in todo.commands]
        if not module.check_mode:
            for argv in commands:
                run(argv)
                done.append(shlex.join(argv))

        saved = False
        if params["persist"]:
            path = params["rules_file"]
            current = run([iptables_save])
            stored = _read(path)
            stale = stored is None or normalise_save(current) != normalise_save(stored)
            if module.check_mode:
                saved = stale or bool(commands)
            elif stale:
                run([iptables_restore, "--test"], data=current)  # never save what could not be loaded at boot
                write_atomically(module, path, current)
                saved = True

    module.exit_json(
        changed=bool(commands) or saved,
        commands=[shlex.join(argv) for argv in commands],
        chains=todo.vm_chains(),
        saved=saved,
    )


if __name__ == "__main__":
    main()
