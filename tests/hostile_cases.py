"""The hostile-input matrix of issue 12 (item 1, "requests are data"): every entry point x every class of hostile
input, run for real, with what happened.

Shared by tests/unit/test_hostile_matrix.py (the `vcl` commands), tests/playbooks/test_hostile_matrix_modules.py
(the collection's database actions through ansible-playbook, and the vcl_slaves inventory plugin reading rows
planted with SQL) and scripts/hostile_matrix.py (which runs all of it and prints the table). Tests import it as
``hostile_cases`` (tests/ is on sys.path: tests/conftest.py's directory, pytest's rootdir conftest).

A case is one hostile value in one field of one entry point. Its outcome is judged the same way everywhere:

* ``refused``: exit 1 (or the task failed), one line naming the field, no traceback, the case's MARKER file
  was not created, and a dump of every table of the SQLite database is the same before and after;
* ``data``: a free-text field (a description, a kernel command line, a reason) kept the value verbatim as data
  (accepted, the stored value is exactly the input, no MARKER): SPEC §11 asks that such values never become
  code, not that they be refused;
* anything else is a failure, with what went wrong (``verdict`` starts with ``FAIL``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NOW = "2026-11-22 10:00"

# --- the classes of hostile input -----------------------------------------------------------------
# "MARKER" is replaced by a file path unique to the case: if any layer ran the value, the file appears.
CLASSES = ("jinja", "yaml_tag", "shell", "path", "huge", "reserved", "pool")
CLASS_TITLES = {"jinja": "Jinja", "yaml_tag": "YAML tag", "shell": "shell metacharacters", "path": "path traversal",
                "huge": "huge numbers", "reserved": "reserved names", "pool": "bad pools / addresses"}
PAYLOADS: dict[str, list[str]] = {
    "jinja": ["{{ lookup('pipe', 'touch MARKER') }}", "{% set x = lookup('pipe', 'touch MARKER') %}x{{ x }}"],
    "yaml_tag": ["!!python/object/apply:os.system ['touch MARKER']", "!unsafe {{ lookup('pipe', 'touch MARKER') }}"],
    "shell": ["x; touch MARKER", "$(touch MARKER)", "`touch MARKER`", "x\ntouch MARKER"],
    "huge": [str(2**64), "1e309", "nan", "-1"],
}
# Path traversal: STORE is the lab's image store (a setting), LINK a symlink inside it that points out of it.
PATHS = ["../../etc/shadow", "/", "/dev/sda", "STORE/../../../etc/shadow", "STORE/evil/disk.qcow2",
         "STORE/escape/etc/shadow"]
# Names: the inventory's own words, then names no host can have (space, control and format characters).
KEYWORDS = ["localhost", "all", "ungrouped", "vcl_registered"]
MALFORMED_NAMES = ["two words", "esc\x1b[31m", "rlo\u202eexe", "nel\u0085x", "zero\u200bwidth"]
# Pools: public, loopback, multicast, link-local, too big, overlapping the other pool, holding the slave's address.
POOLS = ["8.8.8.0/24", "127.0.0.0/24", "224.0.0.0/24", "169.254.0.0/24", "10.0.0.0/8", "OTHER_POOL", "10.9.3.0/24",
         "10.9.3.254-10.9.3.254"]
# Addresses a slave must never have: unspecified, loopback, multicast, broadcast, link-local, in a VM pool, public.
ADDRESSES = ["0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255", "169.254.1.1", "10.9.2.5", "10.9.1.5",
             "8.8.8.8"]
# Huge values where a field is not a plain number.
HUGE_BY_KIND = {"address": ["4294967296", str(2**64)], "pool": ["4294967296", "10.9.1.0-10.9.1.4294967296"],
                "time": ["99999-11-23 10:00", str(2**64), "nan"]}
# run -e keys Ansible gives a meaning.
VAR_KEYWORDS = ["hostvars", "ansible_connection", "groups", "omit", "two words", "all"]

# Which classes can be typed into which kind of field (the rest are "n/a").
KIND_CLASSES: dict[str, tuple[str, ...]] = {
    "number": ("jinja", "yaml_tag", "shell", "huge"),
    "id": ("jinja", "yaml_tag", "shell", "huge"),
    "name": ("jinja", "yaml_tag", "shell", "path", "reserved"),   # group, image, user names
    "host": ("jinja", "yaml_tag", "shell", "path", "reserved"),   # slave names: inventory host names
    "text": ("jinja", "yaml_tag", "shell"),                        # free text: kept as data or refused
    "path": ("jinja", "yaml_tag", "shell", "path"),                # image files
    "store": ("jinja", "yaml_tag", "shell", "path"),               # the image store setting
    "address": ("jinja", "yaml_tag", "shell", "huge", "pool"),     # a slave's address
    "pool": ("jinja", "yaml_tag", "shell", "huge", "pool"),        # an address pool setting
    "choice": ("jinja", "yaml_tag", "shell", "reserved"),          # up/down/draining, spread/pack...
    "time": ("jinja", "yaml_tag", "shell", "huge"),                # 'YYYY-MM-DD HH:MM'
    "token": ("jinja", "yaml_tag", "shell"),                       # mac prefix, lease token
    "key": ("jinja", "yaml_tag", "shell", "path", "reserved"),     # an extra var's or a setting's name
    "playbook": ("jinja", "yaml_tag", "shell", "path"),            # vcl run PLAYBOOK
}


def payloads(kind: str, cls: str) -> list[str]:
    """The values of class ``cls`` that fit a field of ``kind`` (templates: MARKER, STORE, OTHER_POOL)."""
    if cls not in KIND_CLASSES[kind]:
        return []
    if cls == "path":
        return PATHS
    if cls == "reserved":
        if kind == "host":
            return KEYWORDS + MALFORMED_NAMES
        if kind == "key":
            return VAR_KEYWORDS
        return MALFORMED_NAMES
    if cls == "pool":
        return ADDRESSES if kind == "address" else POOLS
    if cls == "huge" and kind in HUGE_BY_KIND:
        return HUGE_BY_KIND[kind]
    return PAYLOADS[cls]


# --- outcomes ---------------------------------------------------------------------------------------

@dataclass
class Outcome:
    entry: str          # the entry point: `vcl slave add`, vcl.lab.vcl_slave, the vcl_slaves inventory...
    field: str
    cls: str
    value: str          # repr of the hostile value (MARKER and friends filled in)
    code: int | None    # exit code (CLI) or None
    failed: bool        # the command exited 1 / the task failed / the row was left out
    message: str        # the error line (or the warning)
    named: bool         # the message names the field
    one_line: bool
    traceback: bool
    marker: bool        # the case's MARKER file exists afterwards
    db_unchanged: bool
    stored_verbatim: bool = False  # accepted free text that the database holds exactly as given
    text_field: bool = False
    verdict: str = ""
    notes: list[str] = field(default_factory=list)

    def judge(self) -> Outcome:
        problems = []
        if self.traceback:
            problems.append("traceback")
        if self.marker:
            problems.append("MARKER created: the value ran")
        if self.failed:
            if not self.one_line:
                problems.append("message is not one line")
            if not self.named:
                problems.append("message does not name the field")
            if not self.db_unchanged:
                problems.append("database changed")
            self.verdict = "refused" if not problems else "FAIL: " + "; ".join(problems)
        elif self.text_field and self.stored_verbatim and not problems:
            self.verdict = "data"
        else:
            problems.insert(0, f"accepted (exit {self.code})" if self.code is not None else "accepted")
            if not self.db_unchanged:
                problems.append("database changed")
            self.verdict = "FAIL: " + "; ".join(problems)
        return self

    @property
    def ok(self) -> bool:
        return not self.verdict.startswith("FAIL")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --- the database -------------------------------------------------------------------------------------

def dump(path: Path) -> list[str]:
    """Every table of the SQLite file, schema and rows, as SQL text (sqlite3's iterdump: a full dump; the WAL
    may be checkpointed at any moment, so the file's bytes are not the measure, its rows are)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def dump_hash(path: Path) -> str:
    return hashlib.sha256("\n".join(dump(path)).encode("utf-8", "surrogatepass")).hexdigest()


def rows(path: Path) -> set[tuple[str, tuple[Any, ...]]]:
    """Every row of every table, as (table, row)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {(t, tuple(r)) for t in tables for r in con.execute(f'SELECT * FROM "{t}"')}
    finally:
        con.close()


def holds_verbatim(before: set, after: set, value: str) -> bool:
    """Whether a row written by the case holds ``value`` exactly (a column, or a JSON text holding it)."""
    for _table, row in after - before:
        for cell in row:
            if cell == value:
                return True
            if isinstance(cell, str) and value in _json_strings(cell):
                return True
    return False


def _json_strings(text: str) -> list[str]:
    try:
        data = json.loads(text)
    except ValueError:
        return []
    out: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(data)
    return out


# --- the lab the cases run against ------------------------------------------------------------------

@dataclass
class Lab:
    root: Path
    db: Path
    store: Path
    markers: Path
    counter: Iterator[int]
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"sqlite:///{self.db}"

    def marker(self) -> Path:
        with self.lock:
            return self.markers / f"m{next(self.counter):05d}"

    def clone(self, n: int) -> Lab:
        """A copy of the database for worker ``n`` (same image store; its own markers)."""
        import itertools

        root = self.root / f"worker-{n}"
        (root / "markers").mkdir(parents=True)
        src, dst = sqlite3.connect(self.db), sqlite3.connect(root / "vcl.sqlite")
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=WAL")
        finally:
            src.close()
            dst.close()
        return Lab(root, root / "vcl.sqlite", self.store, root / "markers", itertools.count(1))

    def fill(self, template: str, marker: Path, other_pool: str = "10.9.2.0/24") -> str:
        return (template.replace("MARKER", str(marker)).replace("STORE", str(self.store))
                .replace("OTHER_POOL", other_pool))


def make_lab(root: Path, instances: int = 0) -> Lab:
    """A lab database at ROOT/vcl.sqlite: group cs, user ana, slave s1 (10.9.3.254, 64 cores), image img in an
    image store ROOT/store (with symlinks that point out of it: evil/disk.qcow2 -> /etc/shadow, escape -> /), pools
    10.9.1.0/24 (private) and 10.9.2.0/24 (public) in the lab's networks; and ``instances`` best-effort requests
    placed on s1."""
    import itertools

    from vcl_sched import service

    root.mkdir(parents=True, exist_ok=True)
    store, markers = root / "store", root / "markers"
    (store / "img").mkdir(parents=True)
    (store / "img" / "disk.qcow2").write_bytes(b"QFI\xfb")
    (store / "evil").mkdir()
    (store / "evil" / "disk.qcow2").symlink_to("/etc/shadow")
    (store / "escape").symlink_to("/")
    markers.mkdir()
    url = f"sqlite:///{root / 'vcl.sqlite'}"
    with _env(VCL_NOW=NOW, VCL_ACTOR="hostile-matrix"):
        service.init(url)
        # The lab's networks as site.yml records them: the slaves' LAN 10.9.2.0/23 (public pool 10.9.2.0/24,
        # slaves in 10.9.3.0/24), the VMs' network 10.9.1.0/24.
        settings = {"private_pool": "10.9.1.0/24", "public_pool": "10.9.2.0/24", "image_store": str(store),
                    "lab_subnet": "10.9.2.0/23", "vm_subnet": "10.9.1.0/24"}
        try:
            service.configure(settings, url)
        except Exception:  # an older checkout without image_store: the store is then only where the image lives
            settings.pop("image_store")
            service.configure(settings, url)
        service.add_group("cs", url=url)
        service.add_slave("s1", "10.9.3.254", 64, 65536, 500, url=url)
        service.add_image("img", str(store / "img" / "disk.qcow2"), url=url)
        for _ in range(instances):
            service.request(owner="cs", cores=1, ram_mb=256, hours=1, platform_value=5, register_as_slave=0,
                            member=0, image="img", user=None, url=url)
    return Lab(root, root / "vcl.sqlite", store, markers, itertools.count(1))


_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in (*values, "VCL_NOW", "VCL_DB_URL")}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --- the `vcl` command --------------------------------------------------------------------------------

KEY_ITSELF = "<the key>"  # a name list holding this accepts an error line naming the KEY of KEY=VALUE itself


@dataclass(frozen=True)
class CliField:
    kind: str
    names: tuple[str, ...]  # what the error line may name


@dataclass(frozen=True)
class CliEntry:
    title: str
    build: Callable[[dict[str, str], int], list[str]]  # (values for some fields, a serial) -> argv
    fields: dict[str, CliField]
    process: bool = False      # run as a real `vcl` process (it runs a playbook, or may): progress lines on stderr
    one_per_class: bool = False  # each field gets the first value of each class only (each case is a playbook run)


def _opts(values: dict[str, str], good: dict[str, str], spelling: dict[str, str]) -> list[str]:
    out = []
    for name, default in good.items():
        out.append(f"{spelling.get(name, '--' + name.replace('_', '-'))}={values.get(name, default)}")
    return out


REQUEST_GOOD = {"owner": "cs", "cores": "1", "ram_mb": "256", "platform_value": "5", "register_as_slave": "0",
                "member": "0", "image": "img", "user": "ana"}
REQUEST_FIELDS = {"owner": CliField("name", ("owner",)), "cores": CliField("number", ("cores",)),
                  "ram_mb": CliField("number", ("ram_mb",)), "platform_value": CliField("number", ("platform_value",)),
                  "register_as_slave": CliField("number", ("register_as_slave",)),
                  "member": CliField("number", ("member",)), "image": CliField("name", ("image",)),
                  "user": CliField("name", ("user",))}


def _reserve(values: dict[str, str], n: int, run: bool = False) -> list[str]:
    good = {**REQUEST_GOOD, "seats": "1", "start": "2026-11-23 10:00", "hours": "2"}
    return ["reserve", *(["--run"] if run else []), *_opts(values, good, {})]


def _request(values: dict[str, str], n: int) -> list[str]:
    good = {**REQUEST_GOOD, "hours": "1", "disk_gb": "1"}
    return ["request", *_opts(values, good, {})]


def _slave_add(values: dict[str, str], n: int) -> list[str]:
    good = {"address": f"10.9.3.{10 + n % 200}", "cores": "4", "ram_mb": "4096", "disk_gb": "20", "status": "down"}
    return ["slave", "add", *_opts(values, good, {}), "--", values.get("name", f"h{n}")]


def _image_add(values: dict[str, str], n: int, store: Path) -> list[str]:
    good = {"disk_file": str(store / "img" / "disk.qcow2"), "cmdline": "console=ttyS0", "description": "an image",
            "cores": "1", "ram_mb": "512", "disk_gb": "2"}
    good.update({k: str(store / "img" / "disk.qcow2") for k in ("kernel", "ramdisk") if k in values})
    return ["image", "add", *_opts(values, good, {}), "--", values.get("name", f"im{n}")]


SETTINGS_FIELDS: dict[str, CliField] = {
    # An overlap of the two pools is a fault of both: either may be named.
    "private_pool": CliField("pool", ("private_pool", "public_pool")),
    "public_pool": CliField("pool", ("public_pool", "private_pool")),
    "mac_prefix": CliField("token", ("mac_prefix",)), "placement_policy": CliField("choice", ("placement_policy",)),
    "priority_coefficient": CliField("number", ("priority_coefficient",)),
    "platform_value_max": CliField("number", ("platform_value_max",)),
    "decline_limit": CliField("number", ("decline_limit",)),
    "launch_lease_minutes": CliField("number", ("launch_lease_minutes",)),
    "booking.max_hours": CliField("number", ("booking.max_hours", "booking")),
    "booking.day_start": CliField("time", ("booking.day_start", "booking")),
    "image_store": CliField("store", ("image_store",)),
    "disk_store": CliField("store", ("disk_store",)),
    "disk_quota_user_gb": CliField("number", ("disk_quota_user_gb",)),
    "KEY": CliField("key", ("settings", KEY_ITSELF)),
}


def _config_set(values: dict[str, str], n: int) -> list[str]:
    (key, value), = values.items()
    if key == "KEY":
        return ["config", "set", "--", f"{value}=1"]
    return ["config", "set", "--", f"{key}={value}"]


def _id_command(name: str) -> Callable[[dict[str, str], int], list[str]]:
    return lambda values, n: [name, "--", values["id"]]


def _run_e(values: dict[str, str], n: int) -> list[str]:
    if "KEY" in values:
        return ["run", "reserve", "-e", f"{values['KEY']}=1", "-e", "owner=cs", "-e", "cores=1", "-e", "ram_mb=256",
                "-e", "hours=1", "-e", "reserve_no_launch=true"]
    if "PLAYBOOK" in values:
        return ["run", "--", values["PLAYBOOK"]]
    return ["run", "reserve", "-e", f"owner={values['owner']}", "-e", "cores=1", "-e", "ram_mb=256", "-e", "hours=1",
            "-e", "reserve_no_launch=true"]


def cli_entries(lab: Lab) -> list[CliEntry]:
    reserve_fields = {**REQUEST_FIELDS, "seats": CliField("number", ("seats",)),
                      "start": CliField("time", ("start",)), "hours": CliField("number", ("hours",))}
    return [
        CliEntry("vcl reserve", _reserve, reserve_fields),
        CliEntry("vcl reserve --run", lambda v, n: _reserve(v, n, run=True), reserve_fields, process=True,
                 one_per_class=True),
        CliEntry("vcl request", _request, {**REQUEST_FIELDS, "hours": CliField("number", ("hours",)),
                                           "disk_gb": CliField("number", ("disk_gb",))}),
        CliEntry("vcl slave add", _slave_add, {
            "name": CliField("host", ("name",)), "address": CliField("address", ("address",)),
            "cores": CliField("number", ("cores",)), "ram_mb": CliField("number", ("ram_mb",)),
            "disk_gb": CliField("number", ("disk_gb",)), "status": CliField("choice", ("status",))}),
        CliEntry("vcl slave set-status", lambda v, n: ["slave", "set-status", "--", v.get("name", "s1"),
                                                       v.get("status", "up")],
                 {"name": CliField("host", ("name",)), "status": CliField("choice", ("status",))}),
        CliEntry("vcl slave remove", lambda v, n: ["slave", "remove", "--", v["name"]],
                 {"name": CliField("host", ("name",))}),
        CliEntry("vcl image add", lambda v, n: _image_add(v, n, lab.store), {
            "name": CliField("name", ("name",)), "disk_file": CliField("path", ("disk_file",)),
            "kernel": CliField("path", ("kernel",)), "ramdisk": CliField("path", ("ramdisk",)),
            "cmdline": CliField("text", ("cmdline",)), "description": CliField("text", ("description",)),
            "cores": CliField("number", ("cores",)), "ram_mb": CliField("number", ("ram_mb",)),
            "disk_gb": CliField("number", ("disk_gb",))}),
        CliEntry("vcl group add", lambda v, n: ["group", "add", f"--description={v.get('description', 'g')}", "--",
                                                v.get("name", f"g{n}")],
                 {"name": CliField("name", ("name",)), "description": CliField("text", ("description",))}),
        CliEntry("vcl config set", _config_set, SETTINGS_FIELDS),
        *(CliEntry(f"vcl {name}", _id_command(name), {"id": CliField("id", ("id",))}, process=False)
          for name in ("release", "launch", "suspend", "resume", "stop")),
        CliEntry("vcl run -e", _run_e, {"KEY": CliField("key", ("extra_vars",)),
                                        "owner": CliField("name", ("owner",)),
                                        "PLAYBOOK": CliField("playbook", ("playbook",))},
                 process=True, one_per_class=True),
        CliEntry("vcl disk list", lambda v, n: ["disk", "list", f"--user={v['user']}"],
                 {"user": CliField("name", ("user",))}),
        CliEntry("vcl disk usage", lambda v, n: ["disk", "usage", *_opts(v, {"user": "ana", "group": "cs"}, {})],
                 {"user": CliField("name", ("user",)), "group": CliField("name", ("group",))}),
        CliEntry("vcl disk quota", lambda v, n: ["disk", "quota", *_opts({k: x for k, x in v.items() if k != "gb"},
                                                                         {"user": "ana"}, {}), "--", v.get("gb", "5")],
                 {"gb": CliField("number", ("gb",)), "user": CliField("name", ("user",))}),
        CliEntry("vcl disk keep", lambda v, n: ["disk", "keep", "--", v["id"]], {"id": CliField("id", ("id",))}),
        CliEntry("vcl disk delete", lambda v, n: ["disk", "delete", "--", v["id"]], {"id": CliField("id", ("disk",))},
                 process=True, one_per_class=True),
        CliEntry("vcl disk capture", lambda v, n: ["disk", "capture", *_opts(
            {k: x for k, x in v.items() if k != "id"},
            {"image": "mine", "groups": "cs", "cores": "1", "ram_mb": "512", "platform_value": "5"}, {}),
            "--", v.get("id", "1")],
                 {"id": CliField("id", ("disk",)), "image": CliField("name", ("image",)),
                  "groups": CliField("name", ("groups", "image_groups")), "cores": CliField("number", ("cores",)),
                  "ram_mb": CliField("number", ("ram_mb",)),
                  "platform_value": CliField("number", ("platform_value",))},
                 process=True, one_per_class=True),
        CliEntry("vcl extend", lambda v, n: ["extend", f"--hours={v.get('hours', '1')}", "--", v.get("id", "1")],
                 {"id": CliField("id", ("id",)), "hours": CliField("number", ("hours",))}),
        CliEntry("vcl lend decline", lambda v, n: ["lend", "decline", "--", v["id"]], {"id": CliField("id", ("id",))}),
        CliEntry("vcl lend enrol", lambda v, n: ["lend", "enrol", *_opts(
            {k: x for k, x in v.items() if k != "host"}, {"user": "ana", "hours": "8", "request": "1"}, {}),
            "--", v.get("host", "pc")],
                 {"host": CliField("host", ("host", "lend_host")), "user": CliField("name", ("user", "lend_user")),
                  "hours": CliField("number", ("hours", "lend_hours")),
                  "request": CliField("id", ("request", "lend_instance"))},
                 process=True, one_per_class=True),
        CliEntry("vcl lend reclaim", lambda v, n: ["lend", "reclaim", "--", v["host"]],
                 {"host": CliField("host", ("host", "lend_host", "name"))}, process=True, one_per_class=True),
        CliEntry("vcl audit", lambda v, n: ["audit", f"--limit={v['limit']}"],
                 {"limit": CliField("number", ("limit",))}),
        CliEntry("vcl --now", lambda v, n: [f"--now={v['now']}", "slave", "list"],
                 {"now": CliField("time", ("now", "VCL_NOW"))}),
    ]


@dataclass(frozen=True)
class CliCase:
    entry: CliEntry
    field: str
    cls: str
    template: str

    @property
    def id(self) -> str:
        return f"{self.entry.title[4:]}|{self.field}|{self.cls}|{self.template!r}"


def cli_cases(lab: Lab, process: bool | None = None) -> list[CliCase]:
    """Every (entry, field, class, value); ``process`` selects the entries run as processes (True), in-process
    (False) or both (None)."""
    out = []
    for entry in cli_entries(lab):
        if process is not None and entry.process != process:
            continue
        for name, spec in entry.fields.items():
            for cls in CLASSES:
                values = payloads(spec.kind, cls)
                for template in values[:1] if entry.one_per_class else values:
                    out.append(CliCase(entry, name, cls, template))
    return out


def _vcl_in_process(lab: Lab, argv: list[str]) -> tuple[int, str, str]:
    from vcl_sched.cli import main

    out, err = io.StringIO(), io.StringIO()
    with _ENV_LOCK, _env(VCL_DB_URL=lab.url, VCL_NOW=NOW), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def _vcl_process(lab: Lab, argv: list[str]) -> tuple[int, str, str]:
    vcl = Path(sys.executable).parent / "vcl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(VCL_DB_URL=lab.url, VCL_NOW=NOW, ANSIBLE_LOCAL_TEMP=str(lab.root / "ansible-tmp"))
    args: list[Any] = [str(vcl), *(a.encode("utf-8", "surrogateescape") for a in argv)]
    proc = subprocess.run(args, env=env, capture_output=True, timeout=300, check=False, cwd=REPO,
                          stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


def run_cli_case(lab: Lab, case: CliCase, serial: int) -> Outcome:
    marker = lab.marker()
    other = "10.9.1.0/24" if case.field == "public_pool" else "10.9.2.0/24"
    value = lab.fill(case.template, marker, other_pool=other)
    spec = case.entry.fields[case.field]
    names = tuple(value.partition("=")[0].strip() if n == KEY_ITSELF else n for n in spec.names)
    argv = case.entry.build({case.field: value}, serial)
    before, before_rows = dump(lab.db), rows(lab.db)
    code, out, err = (_vcl_process if case.entry.process else _vcl_in_process)(lab, argv)
    after, after_rows = dump(lab.db), rows(lab.db)
    lines = [line for line in err.splitlines() if line.startswith("vcl: ")] if case.entry.process else \
        err.splitlines()
    message = lines[-1] if lines else err.strip()[-300:]
    if case.entry.process:
        one_line = len(lines) == 1
        named = bool(lines) and any(f" {n}: " in lines[0] or lines[0].startswith((f"vcl: {n}:", f"vcl: {n} "))
                                    for n in names)
    else:
        one_line = len(lines) == 1 and err.endswith("\n") and (code != 1 or out == "")
        named = bool(lines) and (any(lines[0].startswith(f"vcl: {n}:") for n in names) or (
            spec.kind == "key" and KEY_ITSELF in spec.names and ": unknown setting" in lines[0]))
    outcome = Outcome(
        entry=case.entry.title, field=case.field, cls=case.cls, value=repr(value), code=code, failed=code == 1,
        message=message, named=named, one_line=one_line, traceback="Traceback" in err or "Traceback" in out,
        marker=marker.exists(), db_unchanged=before == after,
        stored_verbatim=code == 0 and holds_verbatim(before_rows, after_rows, value), text_field=spec.kind == "text")
    return outcome.judge()


def run_cli(lab: Lab, cases: list[CliCase], workers: int = 1) -> list[Outcome]:
    """Run the cases in order; with ``workers`` > 1 (for cases run as processes), each worker has its own copy of
    the database, so a case's before/after dump sees only its own writes."""
    if workers <= 1:
        return [run_cli_case(lab, case, n) for n, case in enumerate(cases, 1)]
    labs = [lab.clone(i) for i in range(workers)]
    shares = [list(enumerate(cases, 1))[i::workers] for i in range(workers)]
    with ThreadPoolExecutor(workers) as pool:
        done = pool.map(lambda i: [(n, run_cli_case(labs[i], c, n)) for n, c in shares[i]], range(workers))
        return [o for _, o in sorted((pair for share in done for pair in share), key=lambda p: p[0])]


# --- the markdown table -------------------------------------------------------------------------------

def table(outcomes: list[Outcome]) -> str:
    """Entry point x class: per cell, how many cases, and their verdicts ("n/a" where no field takes the class)."""
    entries = list(dict.fromkeys(o.entry for o in outcomes))
    head = "| entry point | " + " | ".join(CLASS_TITLES[c] for c in CLASSES) + " |"
    lines = [head, "|" + "---|" * (len(CLASSES) + 1)]
    for entry in entries:
        cells = []
        for cls in CLASSES:
            mine = [o for o in outcomes if o.entry == entry and o.cls == cls]
            if not mine:
                cells.append("n/a")
                continue
            refused = sum(o.verdict == "refused" for o in mine)
            data = sum(o.verdict == "data" for o in mine)
            failed = [o for o in mine if not o.ok]
            parts = [f"{refused}/{len(mine)} refused"]
            if data:
                parts.append(f"{data} kept as data")
            if failed:
                parts.append(f"**{len(failed)} FAIL** ({', '.join(sorted({o.field for o in failed}))})")
            written = sum(not o.db_unchanged for o in mine if o.verdict != "data")
            parts.append("nothing written" if not written else f"**{written} wrote**")
            if any(o.marker for o in mine):
                parts.append("**RAN**")
            cells.append(", ".join(parts))
        lines.append(f"| {entry} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def failures(outcomes: list[Outcome]) -> list[str]:
    return [f"{o.entry} {o.field} [{o.cls}] {o.value[:80]}: {o.verdict} — {o.message[:160]}"
            for o in outcomes if not o.ok]


# --- the collection's database actions, through ansible-playbook ----------------------------------------

@dataclass(frozen=True)
class ModField:
    kind: str
    shape: str = "scalar"  # scalar | list | setting | key | observed_slave | observed_facts
    names: tuple[str, ...] = ()  # what the message may name besides the field itself
    base: tuple[tuple[str, Any], ...] = ()  # arguments that differ from the entry's base for this field


@dataclass(frozen=True)
class ModEntry:
    module: str
    base: dict[str, Any]
    fields: dict[str, ModField]


def _instance_fields() -> dict[str, ModField]:
    return {
        "id": ModField("id", base=(("action", "stopped"),)),
        "action": ModField("choice"),
        "console_port": ModField("number", base=(("action", "running"), ("id", 1))),
        "reason": ModField("text", base=(("action", "failed"), ("id", "NEXT_INSTANCE"))),
        "exclude": ModField("host", "list", base=(("action", "place"), ("id", 2))),
        "lease": ModField("token", base=(("action", "place"), ("id", 2))),
        "net_clean": ModField("choice", base=(("action", "unplace"), ("id", 2))),
        "observed": ModField("host", "observed_slave", names=("slave",), base=(("action", "reconcile"),)),
        "observed.facts": ModField("number", "observed_facts", names=("observed",), base=(("action", "reconcile"),)),
    }


def module_entries() -> list[ModEntry]:
    store_disk = "STORE/img/disk.qcow2"
    return [
        ModEntry("vcl.lab.vcl_reserve",
                 {"owner": "cs", "user": "ana", "cores": 1, "ram_mb": 256, "hours": 1, "start": "now", "image": "img",
                  "platform_value": 5, "register_as_slave": 0, "member": 0},
                 {**{k: ModField(v.kind) for k, v in REQUEST_FIELDS.items()},
                  "hours": ModField("number"), "start": ModField("time"), "disk_gb": ModField("number"),
                  "seats": ModField("number", base=(("start", "2026-11-23 10:00"),))}),
        ModEntry("vcl.lab.vcl_instance", {"action": "describe", "id": 1}, _instance_fields()),
        ModEntry("vcl.lab.vcl_slave", {"name": "hN", "address": "10.9.3.N", "cores": 4, "ram_mb": 4096, "disk_gb": 20},
                 {"name": ModField("host"), "address": ModField("address"), "cores": ModField("number"),
                  "ram_mb": ModField("number"), "disk_gb": ModField("number"), "state": ModField("choice"),
                  "inventory": ModField("host", "list", base=(("state", "drained_unless_listed"), ("name", None),
                                                              ("address", None), ("cores", None), ("ram_mb", None),
                                                              ("disk_gb", None)))}),
        ModEntry("vcl.lab.vcl_image",
                 {"name": "imN", "disk": store_disk, "cmdline": "console=ttyS0", "description": "an image"},
                 {"name": ModField("name"), "disk": ModField("path", names=("disk_file",)),
                  "kernel": ModField("path"), "ramdisk": ModField("path"), "cmdline": ModField("text"),
                  "description": ModField("text"), "cores": ModField("number"), "ram_mb": ModField("number"),
                  "disk_gb": ModField("number")}),
        ModEntry("vcl.lab.vcl_disk", {"action": "usage"},
                 {"user": ModField("name"), "group": ModField("name"), "action": ModField("choice"),
                  "id": ModField("id", base=(("action", "keep_begin"), ("size_bytes", 1))),
                  "size_bytes": ModField("number", base=(("action", "keep_begin"), ("id", 1))),
                  "disk": ModField("id", base=(("action", "delete"),)),
                  "sha256": ModField("token", base=(("action", "keep_commit"), ("id", 1), ("disk", 1),
                                                    ("size_bytes", 1), ("info", "{}"))),
                  "image": ModField("name", base=(("action", "capture_begin"), ("disk", 1)))}),
        ModEntry("vcl.lab.vcl_lend", {"action": "list"},
                 {"action": ModField("choice"),
                  "id": ModField("id", base=(("action", "decline"),)),
                  "name": ModField("host", base=(("action", "reclaim"),)),
                  "user": ModField("name", base=(("action", "enrol"), ("name", "pcN"), ("address", "10.9.3.N"),
                                                 ("cores", 2), ("ram_mb", 2048), ("disk_gb", 20), ("hours", 8))),
                  "address": ModField("address", base=(("action", "enrol"), ("name", "pcN"), ("user", "ana"),
                                                       ("cores", 2), ("ram_mb", 2048), ("disk_gb", 20),
                                                       ("hours", 8))),
                  "hours": ModField("number", base=(("action", "enrol"), ("name", "pcN"), ("user", "ana"),
                                                    ("address", "10.9.3.N"), ("cores", 2), ("ram_mb", 2048),
                                                    ("disk_gb", 20)))}),
        ModEntry("vcl.lab.vcl_db", {},
                 {**{k: ModField(v.kind, "setting", names=tuple(n for n in v.names if n != k))
                     for k, v in SETTINGS_FIELDS.items() if k != "KEY"},
                  "settings (key)": ModField("key", "key", names=("settings",))}),
    ]


@dataclass(frozen=True)
class ModCase:
    entry: ModEntry
    field: str
    cls: str
    template: str


def module_cases() -> list[ModCase]:
    return [ModCase(entry, name, cls, template)
            for entry in module_entries() for name, spec in entry.fields.items()
            for cls in CLASSES for template in payloads(spec.kind, cls)]


# A test-only action beside the generated playbook: the database's dump hash (and the case's marker), in the
# controller, between every two cases: a command task per case would cost ~1 s each.
DBHASH_ACTION = '''
import hashlib
import os
import sqlite3

from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        con = sqlite3.connect("file:%s?mode=ro" % self._task.args["db"], uri=True)
        try:
            text = "\\n".join(con.iterdump())
        finally:
            con.close()
        result.update(changed=False, sha256=hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest())
        return result
'''


def _task_args(lab: Lab, case: ModCase, n: int, var: str,
               next_instance: Iterator[int]) -> tuple[dict[str, Any], Any]:
    """The task's arguments (the hostile value as ``{{ var }}``) and the variable's value (marked unsafe)."""
    spec = case.entry.fields[case.field]
    args: dict[str, Any] = {}
    for key, value in {**case.entry.base, **dict(spec.base)}.items():
        if value is None:
            continue
        if value == "NEXT_INSTANCE":
            value = next(next_instance)
        if isinstance(value, str):
            value = lab.fill(value, Path("/nonexistent")).replace("hN", f"h{n}").replace("imN", f"im{n}")
            value = value.replace("pcN", f"pc{n}")
            value = value.replace("10.9.3.N", f"10.9.3.{10 + n % 200}")
        args[key] = value
    marker = lab.markers / f"mod{n:05d}"
    other = "10.9.1.0/24" if case.field == "public_pool" else "10.9.2.0/24"
    hostile = lab.fill(case.template, marker, other_pool=other)
    ref = "{{ " + var + " }}"
    unsafe = {"__ansible_unsafe": hostile}
    if spec.shape == "scalar":
        args[case.field] = ref
    elif spec.shape == "list":
        args[case.field] = ["s1", ref] if case.field == "inventory" else [ref]
    elif spec.shape == "setting":
        args["settings"] = {case.field: ref}
    elif spec.shape == "key":
        args["settings"] = ref
        unsafe = {hostile: {"__ansible_unsafe": "1"}}
    elif spec.shape == "observed_slave":
        args["observed"] = ref
        unsafe = {hostile: {"reachable": True, "domains": {}}}
    elif spec.shape == "observed_facts":
        args["observed"] = ref
        unsafe = {"s1": {"reachable": True, "domains": {}, "facts": {"cores": {"__ansible_unsafe": hostile},
                                                                      "ram_mb": 65536, "disk_gb": 500}}}
    return args, (hostile, marker, unsafe)


def run_modules(lab: Lab, cases: list[ModCase], first_instance: int = 3) -> list[Outcome]:
    """One ansible-playbook run on localhost: per case a hash of the database, the task (ignore_errors, registered),
    then at the end the hash again; every result is written to one JSON file and judged here."""
    import itertools

    import yaml

    work = lab.root / "play"
    (work / "action_plugins").mkdir(parents=True, exist_ok=True)
    (work / "action_plugins" / "hm_dbhash.py").write_text(DBHASH_ACTION)
    next_instance = itertools.count(first_instance)
    tasks: list[dict[str, Any]] = []
    variables: dict[str, Any] = {}
    meta = []
    for n, case in enumerate(cases):
        args, (hostile, marker, unsafe) = _task_args(lab, case, n, f"hv{n}", next_instance)
        variables[f"hv{n}"] = unsafe
        meta.append((hostile, marker))
        tasks += [{"name": f"hash {n}", "hm_dbhash": {"db": str(lab.db)}, "register": f"h{n}"},
                  {"name": f"case {n}", case.entry.module: args, "register": f"c{n}", "ignore_errors": True}]
    tasks.append({"name": "hash end", "hm_dbhash": {"db": str(lab.db)}, "register": f"h{len(cases)}"})
    collect = {f"c{n}": "{{ c" + str(n) + " }}" for n in range(len(cases))}
    collect.update({f"h{n}": "{{ h" + str(n) + ".sha256 }}" for n in range(len(cases) + 1)})
    out_file = work / "results.json"
    tasks.append({"name": "Keep the results", "ansible.builtin.copy": {
        "content": "{{ hm_results | to_json }}", "dest": str(out_file), "mode": "0600"},
        "vars": {"hm_results": collect}})
    book = work / "book.yml"
    book.write_text(yaml.safe_dump([{"name": "Hostile matrix", "hosts": "localhost", "gather_facts": False,
                                     "tasks": tasks}], sort_keys=False))
    values = work / "values.json"
    values.write_text(json.dumps(variables))
    inventory = work / "hosts.yml"
    inventory.write_text("all:\n  hosts: {}\n")
    before_rows = rows(lab.db)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(VCL_DB_URL=lab.url, VCL_NOW=NOW, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(work / "tmp"), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), str(book),
                           "-e", f"@{values}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
                          check=False, stdin=subprocess.DEVNULL)
    if not out_file.is_file():
        raise RuntimeError(f"the matrix playbook did not finish (rc {proc.returncode}):\n{proc.stdout[-3000:]}"
                           f"\n{proc.stderr[-2000:]}")
    results = json.loads(out_file.read_text())
    after_rows = rows(lab.db)
    outcomes = []
    for n, case in enumerate(cases):
        res, (hostile, marker) = results[f"c{n}"], meta[n]
        spec = case.entry.fields[case.field]
        msg = str(res.get("msg", ""))
        names = (case.field.split(" ")[0], *spec.names)
        named = (res.get("field") in names or any(msg.startswith((f"{x}:", f"{x}.")) for x in names)
                 or any(f"'{x}'" in msg or f"value of {x} must" in msg for x in names)
                 # a bad setting name: the line names that key (shown cut, as the CLI does) as the field
                 or (spec.shape == "key" and ": unknown setting" in msg.splitlines()[0]))
        outcome = Outcome(
            entry=case.entry.module, field=case.field, cls=case.cls, value=repr(hostile), code=None,
            failed=bool(res.get("failed")), message=msg.splitlines()[0][:300] if msg else "", named=named,
            one_line="\n" not in msg.strip(),
            traceback="Traceback" in msg or "Traceback" in str(res.get("exception", "")),
            marker=marker.exists(), db_unchanged=results[f"h{n}"] == results[f"h{n + 1}"],
            stored_verbatim=not res.get("failed") and holds_verbatim(before_rows, after_rows, hostile),
            text_field=spec.kind == "text")
        outcomes.append(outcome.judge())
    return outcomes


# --- the vcl_slaves inventory plugin reading rows planted with SQL ------------------------------------------

def inventory_cases() -> list[tuple[str, str, str]]:
    """(column, class, template) of the rows to plant: every class that fits a slave's name or address."""
    out = [("name", cls, t) for cls in CLASSES for t in payloads("host", cls)]
    out += [("address", cls, t) for cls in CLASSES for t in payloads("address", cls)]
    return out


def run_inventory(lab: Lab) -> list[Outcome]:
    """Plant one slave row per case with SQL (around `vcl slave add`), run ansible-inventory --list once over the
    vcl_slaves plugin, and judge each row: left out of the inventory, reported in a warning, nothing ran, nothing
    was written (the plugin only reads)."""
    cases = inventory_cases()
    con = sqlite3.connect(lab.db)
    planted = []
    try:
        for n, (column, cls, template) in enumerate(cases):
            marker = lab.markers / f"inv{n:05d}"
            value = lab.fill(template, marker)
            name, address = (value, f"10.9.3.{n % 250 + 1}") if column == "name" else (f"bad{n}", value)
            con.execute("INSERT INTO slaves (name, address, cores_total, cores_used, ram_mb_total, ram_mb_used,"
                        " disk_gb_total, disk_gb_used, status, generation, joined_at, updated_at) VALUES"
                        " (?, ?, 4, 0, 4096, 0, 20, 0, 'up', 0, '2026-11-22 10:00:00', '2026-11-22 10:00:00')",
                        (name, address))
            planted.append((column, cls, value, name, marker))
        con.commit()
    finally:
        con.close()
    config = lab.root / "inv" / "vcl_slaves.yml"
    config.parent.mkdir(exist_ok=True)
    config.write_text(f"plugin: vcl.lab.vcl_slaves\ndb_url: {lab.url}\n")
    before = dump(lab.db)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_LOCAL_TEMP=str(lab.root / "t"))
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(config), "--list"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    after = dump(lab.db)
    hosts = set(json.loads(proc.stdout).get("_meta", {}).get("hostvars", {})) if proc.returncode == 0 else set()
    warnings = " ".join(proc.stderr.split())
    outcomes = []
    for column, cls, value, name, marker in planted:
        shown_name = repr(name)[1:-1][:30]
        reported = f"slave {name!r} is left out: {column}:" in warnings or (
            shown_name in warnings and f"left out: {column}:" in warnings)
        outcomes.append(Outcome(
            entry="vcl_slaves inventory plugin", field=column, cls=cls, value=repr(value), code=proc.returncode,
            failed=proc.returncode == 0 and name not in hosts, message="left out, warned" if reported else
            "not reported", named=reported, one_line=True, traceback="Traceback" in proc.stderr,
            marker=marker.exists(), db_unchanged=before == after).judge())
    if proc.returncode != 0 or "s1" not in hosts:
        for o in outcomes:
            o.verdict = f"FAIL: ansible-inventory rc {proc.returncode}, s1 {'kept' if 's1' in hosts else 'missing'}"
    return outcomes
