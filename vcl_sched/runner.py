"""Run one of the collection's playbooks through ansible-runner, as AWX would, and read its outcome.

The playbooks are the source of truth (``vcl.lab.reserve``, ``vcl.lab.launch``, ``vcl.lab.dispatch``...:
playbooks/<name>.yml of the collection vcl.lab); the `vcl` command only submits them. Each lifecycle playbook
ends with ``ansible.builtin.set_stats: {data: {vcl_result: {...}}, per_host: false}``: ansible-runner hands
that back in the ``artifact_data`` of the ``playbook_on_stats`` event, and ``run()`` returns it as
``RunResult.vcl_result``.

The project is the directory ansible-playbook runs in: it holds the ``ansible.cfg`` that counts (the
checkout's root, or for example the master's /etc/vcl). ansible-runner starts ``ansible-playbook``
there and ``ANSIBLE_CONFIG`` is set to ``<project>/ansible.cfg`` as well (so an ``ANSIBLE_CONFIG`` in the
caller's environment cannot replace it); Ansible resolves the relative paths in that file (``inventory``,
``collections_path``...) against the file's directory. No ``-i`` is passed unless an inventory is named.

A playbook is named by FQCN, ``vcl.lab.<name>``, and ansible-playbook finds the collection through
``ANSIBLE_COLLECTIONS_PATH``, which ``run()`` sets to the project's ``collections_path`` (Ansible's default
paths when its ansible.cfg names none), then, when this vcl runs from a checkout, the checkout's
``collections/`` (where ``ansible_collections/vcl/lab`` links to the checkout): the installed collection
and the checkout both work, the project's own first. A playbook file inside the project
(``playbooks/x.yml``) is run by its path.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import VclError

# The environment variables a playbook run inherits explicitly (besides the caller's whole environment,
# which ansible-runner copies): where the lab database is and the simulated clock.
PASSED_ENV = ("VCL_DB_URL", "VCL_NOW", "VCL_ACTOR")
_PLAYBOOK_NAME = re.compile(r"^[A-Za-z0-9_]+$")


class RunnerError(VclError):
    """The run could not start: no project, unknown playbook, ansible-runner missing."""


@dataclass
class Failure:
    host: str
    task: str
    message: str
    unreachable: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "task": self.task, "message": self.message, "unreachable": self.unreachable}


@dataclass
class RunResult:
    """The outcome of one playbook run."""

    playbook: str
    status: str  # ansible-runner's: successful, failed, timeout, canceled
    rc: int
    stats: dict[str, Any] = field(default_factory=dict)
    vcl_result: dict[str, Any] | None = None
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "successful" and self.rc == 0

    def to_json(self) -> dict[str, Any]:
        return {"playbook": self.playbook, "status": self.status, "rc": self.rc, "stats": self.stats,
                "failures": [f.to_json() for f in self.failures], "vcl_result": self.vcl_result}


# --- the project and the collection ---------------------------------------------------------------

COLLECTION = "vcl.lab"
# Where Ansible looks for collections when ansible.cfg names no collections_path.
DEFAULT_COLLECTIONS_PATH = ("~/.ansible/collections", "/usr/share/ansible/collections")


def project_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The project to run from: ``explicit`` (``--project``), else the checkout vcl runs from."""
    if explicit is not None:
        path = Path(explicit).expanduser().resolve()
    else:
        from .paths import repo_root

        root = repo_root()
        if root is None:
            raise RunnerError("no project: this vcl is not running from a checkout; pass --project DIR"
                              " (a directory with the ansible.cfg to run the collection vcl.lab's playbooks with)")
        path = root.resolve()
    if not path.is_dir():
        raise RunnerError(f"project {path}: no such directory")
    if not (path / "ansible.cfg").is_file():
        raise RunnerError(f"project {path}: not a VCL project (no ansible.cfg)")
    return path


def _configured_collections_path(project: Path) -> list[Path]:
    """The ``collections_path`` of the project's ansible.cfg (relative entries against the project), or
    Ansible's default paths when it names none."""
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
    try:
        parser.read(project / "ansible.cfg", encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as err:
        raise RunnerError(f"project {project}: ansible.cfg cannot be read ({' '.join(str(err).split())})") from None
    value = None
    for key in ("collections_path", "collections_paths"):  # the second is the older spelling
        if parser.has_option("defaults", key):
            value = parser.get("defaults", key)
            break
    entries = value.split(os.pathsep) if value is not None else list(DEFAULT_COLLECTIONS_PATH)
    return [project / Path(os.path.expandvars(entry.strip())).expanduser() for entry in entries if entry.strip()]


def collections_path(project: Path) -> list[Path]:
    """Where ansible-playbook looks for collections in a run from ``project``: the project's own
    collections_path, then this checkout's ``collections/`` when vcl runs from one (no duplicates)."""
    from .paths import repo_root

    paths = _configured_collections_path(project)
    root = repo_root()
    if root is not None:
        paths.append(root / "collections")
    unique: dict[Path, None] = {}
    for path in paths:
        unique.setdefault(Path(os.path.normpath(path)), None)
    return list(unique)


def collection_dir(project: Path) -> Path | None:
    """The collection vcl.lab that a run from ``project`` uses (the first on its collections path)."""
    namespace, name = COLLECTION.split(".")
    for path in collections_path(project):
        base = path if path.name == "ansible_collections" else path / "ansible_collections"
        candidate = base / namespace / name
        if (candidate / "playbooks").is_dir():
            return candidate
    return None


def available_playbooks(project: Path) -> list[str]:
    collection = collection_dir(project)
    if collection is None:
        return []
    return sorted(p.stem for p in (collection / "playbooks").glob("*.yml"))


def resolve_playbook(project: Path, name: str) -> str:
    """``reserve`` (or ``reserve.yml``, ``vcl.lab.reserve``) → ``vcl.lab.reserve`` when the collection has
    playbooks/reserve.yml; a playbook file inside the project (``playbooks/x.yml``) → that path, relative
    to the project, which is the playbook's working directory."""
    stem = name.removeprefix(f"{COLLECTION}.")
    stem = stem[:-4] if stem.endswith(".yml") else stem
    collection = collection_dir(project)
    if collection is not None and _PLAYBOOK_NAME.match(stem) and (collection / "playbooks" / f"{stem}.yml").is_file():
        return f"{COLLECTION}.{stem}"
    if "/" in name:
        path = (project / name).resolve()
        if path.is_file() and path.suffix in (".yml", ".yaml") and path.is_relative_to(project):
            return str(path.relative_to(project))
    if collection is None:
        searched = os.pathsep.join(str(p) for p in collections_path(project))
        raise RunnerError(f"playbook {name!r}: the collection {COLLECTION} is not installed where a run from"
                          f" {project} looks ({searched})")
    known = ", ".join(available_playbooks(project)) or "none"
    raise RunnerError(f"playbook {name!r}: no {COLLECTION}.{stem} in {collection} (available: {known})")


# --- progress -----------------------------------------------------------------------------------

def _failure_message(res: Mapping[str, Any]) -> str:
    """The message of a failed or unreachable result, items' included."""
    parts = []
    if res.get("msg"):
        parts.append(str(res["msg"]))
    for item in res.get("results") or []:
        if isinstance(item, Mapping) and (item.get("failed") or item.get("unreachable")):
            parts.append(f"[{item.get('item', '?')}] {_failure_message(item)}")
    if not parts:
        for key in ("stderr", "stdout", "reason", "exception"):
            if res.get(key):
                parts.append(str(res[key]).strip())
                break
    text = " ".join(" ".join(parts).split()) or "failed without a message"
    return text if len(text) <= 400 else text[:397] + "..."


class Progress:
    """Turns ansible-runner events into progress lines (one per play and task start and per host result)
    and collects the failures and the set_stats data."""

    def __init__(self, write: Callable[[str], None] | None = None) -> None:
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self.failures: list[Failure] = []
        self.artifact_data: dict[str, Any] | None = None

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        host = data.get("host", "?")
        task = data.get("task", "")
        res = data.get("res") or {}
        if kind == "playbook_on_play_start":
            self.write(f"PLAY [{data.get('play') or data.get('name', '')}]")
        elif kind == "playbook_on_task_start":
            self.write(f"TASK [{task}]")
        elif kind == "playbook_on_handler_task_start":
            self.write(f"HANDLER [{task}]")
        elif kind == "runner_on_ok":
            self.write(f"  {'changed' if res.get('changed') else 'ok'}: {host}")
        elif kind == "runner_on_failed":
            message = _failure_message(res)
            if data.get("ignore_errors"):
                self.write(f"  failed (ignored): {host}: {message}")
            else:
                self.failures.append(Failure(host, task, message))
                self.write(f"  failed: {host}: {message}")
        elif kind == "runner_on_unreachable":
            message = _failure_message(res)
            self.failures.append(Failure(host, task, message, unreachable=True))
            self.write(f"  unreachable: {host}: {message}")
        elif kind == "playbook_on_stats":
            self.artifact_data = dict(data.get("artifact_data") or {})
            # An unreachable host whose task said ignore_unreachable is counted ok/ignored, not dark: it is
            # not a failure of the run (stop.yml goes on past a dead slave).
            dark = data.get("dark") or {}
            self.failures = [f for f in self.failures if not f.unreachable or dark.get(f.host)]
        return True


def _output_error(result: Any) -> str:
    try:
        text = result.stdout.read()
    except (OSError, AttributeError, ValueError):
        text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("ERROR", "[ERROR]"))]
    message = " ".join(errors or lines[-3:]) or f"ansible-playbook ended {result.status} (rc {result.rc})"
    return message if len(message) <= 400 else message[:397] + "..."


# --- the run ------------------------------------------------------------------------------------

# Extra vars are data (SPEC §11): every string goes to Ansible marked unsafe, so a value such as
# "{{ lookup('pipe', 'touch /tmp/x') }}" stays that text and is never templated. Keys are plain identifiers
# and never one of Ansible's own (magic) variables.
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_RESERVED_KEYS = frozenset({
    "hostvars", "groups", "group_names", "inventory_hostname", "inventory_hostname_short", "inventory_dir",
    "inventory_file", "play_hosts", "ansible_play_hosts", "ansible_play_batch", "environment", "vars", "omit",
    "playbook_dir", "role_name", "role_path", "item", "lookup", "query", "q", "now", "undef", "self",
})


def _unsafe(value: Any) -> Any:
    """Every string, at any depth, as Ansible's JSON form of an unsafe value. (YAML's ``!unsafe`` tag is not
    used: Ansible resolves the tagged scalar's type, so ``!unsafe "0123"`` arrives as the integer 83.)"""
    if isinstance(value, str):
        return {"__ansible_unsafe": value}
    if isinstance(value, Mapping):
        return {str(k): _unsafe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_unsafe(v) for v in value]
    return value


def check_extravar_key(key: Any) -> str:
    """An extra var's name: an identifier, not ``ansible_*`` and not one of Ansible's magic variables."""
    text = str(key)
    if not _KEY_RE.match(text) or text.startswith("ansible_") or text in _RESERVED_KEYS:
        raise RunnerError(f"extra_vars: {text[:64]!r} is not allowed as a variable name (letters, digits and '_',"
                          " not starting with a digit, not ansible_* or one of Ansible's own variables)")
    return text


def unsafe_extravars_json(extravars: Mapping[str, Any]) -> str:
    """The extra vars as a JSON document whose strings are all marked unsafe; keys are checked."""
    checked = {check_extravar_key(k): _unsafe(v) for k, v in extravars.items()}
    return json.dumps(checked, sort_keys=True, allow_nan=False)


def _venv_path() -> str:
    """PATH with this Python's bin directory first, so the ansible-playbook beside this vcl runs."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])


def run(
    playbook: str,
    extravars: Mapping[str, Any] | None = None,
    *,
    project: str | os.PathLike[str] | None = None,
    inventory: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
    timeout: int | None = None,
    envvars: Mapping[str, str] | None = None,
) -> RunResult:
    """Run the playbook ``vcl.lab.<playbook>`` (or a playbook file of the project) from the project through
    ansible-runner; progress lines go to ``progress`` (stderr by default) as events arrive. Never raises on a
    failed play: read the result."""
    try:
        import ansible_runner
    except ImportError as err:  # pragma: no cover - a dependency of vcl-sched
        raise RunnerError(f"ansible-runner is not installed ({err}): pip install vcl-sched's dependencies") from None

    root = project_dir(project)
    path = resolve_playbook(root, playbook)
    env = {"PATH": _venv_path(), "ANSIBLE_CONFIG": str(root / "ansible.cfg"),
           "ANSIBLE_COLLECTIONS_PATH": os.pathsep.join(str(p) for p in collections_path(root)),
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
    env.update({k: os.environ[k] for k in PASSED_ENV if os.environ.get(k)})
    env.update(envvars or {})
    watcher = Progress(progress)
    document = unsafe_extravars_json(extravars or {})
    with tempfile.TemporaryDirectory(prefix="vcl-run-") as private:
        # Not ansible-runner's own extravars (it passes them as plain values, which Ansible templates): a file
        # of this run's private directory (mode 0700), with every string marked unsafe, given to -e @FILE.
        vars_file = Path(private) / "vcl-extravars.json"
        fd = os.open(vars_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(document)
        kwargs: dict[str, Any] = {
            "private_data_dir": private,
            "project_dir": str(root),
            "playbook": path,
            "cmdline": f"-e @{shlex.quote(str(vars_file))}",
            "envvars": env,
            "quiet": True,  # ansible's own output stays in the artifacts; progress lines replace it
            "suppress_env_files": True,  # extra vars and environment are not written to disk
            "event_handler": watcher,
        }
        if inventory is not None:
            kwargs["inventory"] = str(Path(inventory).expanduser().resolve())
        if timeout:
            kwargs["timeout"] = timeout
        result = ansible_runner.run(**kwargs)
        stats = result.stats or {}
        status, rc = result.status, result.rc
        if status != "successful" and not watcher.failures:
            # ansible-playbook stopped before any task failed (a syntax error, a missing inventory...):
            # its own error lines are the message.
            watcher.failures.append(Failure("-", "-", _output_error(result)))
    vcl_result = (watcher.artifact_data or {}).get("vcl_result")
    return RunResult(playbook=path, status=status, rc=rc, stats=stats,
                     vcl_result=vcl_result if isinstance(vcl_result, dict) else None, failures=watcher.failures)
