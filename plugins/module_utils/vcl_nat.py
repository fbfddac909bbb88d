# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""The master's nat table for VCL, shared by the modules ``vcl_nat`` (the whole table) and ``vcl_vm_net``
(one VM's DHCP entry, alias and DNAT in one run).

Parses ``iptables-save -t nat``, plans the few ``iptables`` commands (argv lists) that bring it to the
wanted state, runs them and saves the whole ruleset for netfilter-persistent. Planning is a pure
function of the parsed table, so re-running plans nothing. Every writer of the table holds
:data:`LOCK_FILE` (:func:`nat_lock`), so two runs never race on the same chains.

Modules import it as ``ansible_collections.vcl.lab.plugins.module_utils.vcl_nat``; the files the master keeps for
each VM (DHCP host entries, public aliases) are module_utils/vcl_vm_files.py's.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass

from ansible_collections.vcl.lab.plugins.module_utils.vcl_lock import LOCK_DIR, LockError, vm_lock

VM_CHAIN_PREFIX = "VCL-VM-"
MAX_CHAIN_LEN = 28  # iptables' limit (XT_EXTENSION_MAXNAMELEN - 1)
ID_RE = re.compile(rf"^[A-Za-z0-9_]{{1,{MAX_CHAIN_LEN - len(VM_CHAIN_PREFIX)}}}$")
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
# Built-in chain -> the VCL chain it jumps to (exactly once, as its first rule).
DNAT_PARENTS = {"PREROUTING": "VCL-PREROUTING", "OUTPUT": "VCL-OUTPUT"}
MASQ_BUILTIN = "POSTROUTING"
MASQ_CHAIN = "VCL-POSTROUTING"
LOCK_NAME, LOCK_PREFIX = "nat", "vcl_nat"
LOCK_FILE = f"{LOCK_DIR}/{LOCK_PREFIX}.{LOCK_NAME}.lock"
LOCK_TIMEOUT = 600  # a dhcpd restart and a few iptables commands take seconds; a holder this long is stuck


class InputError(ValueError):
    """A bad parameter; the message names the field."""


class NatError(RuntimeError):
    """A command or the rules file failed; the message says which."""


class RulesFileError(NatError):
    """The rules file cannot be written where it was asked for."""


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


def ipv4(value, field: str) -> str:
    """VALUE as a normalised IPv4 address; InputError naming FIELD otherwise."""
    if not isinstance(value, str) or not value:
        raise InputError(f"{field}: required, an IPv4 address (got {value!r})")
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise InputError(f"{field}: {value!r} is not an IPv4 address") from None


def vm_id(value, field: str) -> str:
    """VALUE as a VM id that keeps ``VCL-VM-<id>`` within iptables' limit; InputError naming FIELD otherwise."""
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
        ident = vm_id(item.get("id"), f"{where}.id")
        if state == "present":
            public = ipv4(item.get("public"), f"{where}.public")
            private = ipv4(item.get("private"), f"{where}.private")
            if public == private:
                raise InputError(f"{where}.private: {private} is the same as {where}.public")
            vm = Vm(ident, public, private)
        else:
            vm = Vm(ident)
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
            _flag, chain, *rest = line.split(" ", 2)
            chains.setdefault(chain, []).append(rest[0] if rest else "")
    return chains


def _jump_target(spec: str) -> str | None:
    words = shlex.split(spec)
    for flag in ("-j", "-g"):
        if flag in words and words.index(flag) + 1 < len(words):
            return words[words.index(flag) + 1]
    return None


def addresses_of(rules: list[str]) -> tuple[str | None, str | None]:
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
        for _extra in range(count - 1):
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
        public, private = addresses_of(table[chain])
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


def read_text(path: str) -> str | None:
    """PATH's text, or None when it does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def write_atomically(path: str, content: str, mode: int = 0o640, prefix: str = ".rules.") -> None:
    """Write PATH through a temporary file in its directory and a rename (readers see old or new, never half).

    Raises RulesFileError when the directory does not exist."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise RulesFileError(f"rules_file: directory {directory} does not exist (is netfilter-persistent installed?)")
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # 0640 is what netfilter-persistent's own `save` leaves
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def nat_lock(module=None, action: str = "vcl_nat", timeout: float = LOCK_TIMEOUT):
    """Hold the lock every writer of the master's tables (nat and filter) and per-VM network state takes: the
    lock file LOCK_FILE in the root-only lock directory, opened without following symlinks, waited for at most
    ``timeout`` seconds (module_utils/vcl_lock.py). A lock that cannot be taken fails MODULE naming the holder
    (without a module, LockError is raised)."""
    try:
        with vm_lock(LOCK_NAME, action, timeout, prefix=LOCK_PREFIX):
            yield
    except LockError as err:  # only taking the lock raises it
        if module is None:
            raise
        module.fail_json(msg=str(err))


class Iptables:
    """The target's iptables tools, run through an AnsibleModule; ``done`` lists the commands run so far."""

    def __init__(self, module):
        self.module = module
        self.iptables = module.get_bin_path("iptables", required=True)
        self.iptables_save = module.get_bin_path("iptables-save", required=True)
        self.iptables_restore = module.get_bin_path("iptables-restore", required=True)
        self.done: list[str] = []

    def run(self, argv: list[str], data: str | None = None) -> str:
        rc, out, err = self.module.run_command(argv, data=data, binary_data=data is not None)
        if rc != 0:
            raise NatError(f"`{shlex.join(argv)}` failed (exit {rc}): {err.strip()}")
        return out

    def table(self) -> dict[str, list[str]]:
        """The nat table as it is now (parse_nat)."""
        return parse_nat(self.run([self.iptables_save, "-t", "nat"]))

    def commands(self, todo: Plan) -> list[list[str]]:
        """The full argv lists of a plan."""
        return [[self.iptables, "-w", "-t", "nat", *argv] for argv in todo.commands]

    def apply(self, commands: list[list[str]]) -> None:
        """Run COMMANDS in order (stops at the first failure, with NatError)."""
        for argv in commands:
            self.run(argv)
            self.done.append(shlex.join(argv))

    def persist(self, path: str, check_mode: bool, changed: bool) -> bool:
        """Save the whole ruleset to PATH when it differs from what PATH holds (checked with
        ``iptables-restore --test`` first, so nothing is saved that could not be loaded at boot).
        Returns whether PATH was (in check mode: would be) rewritten."""
        current = self.run([self.iptables_save])
        stored = read_text(path)
        stale = stored is None or normalise_save(current) != normalise_save(stored)
        if check_mode:
            return stale or changed
        if not stale:
            return False
        self.run([self.iptables_restore, "--test"], data=current)
        write_atomically(path, current)
        return True
