"""Long actions (a launch, a stop, a seat): the collection's playbook run in a worker thread through
ansible-runner, exactly as ``vcl ... --run`` submits it, with its progress lines kept for the job's page."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..acting import Actor

# The playbooks that take the console passwords' directory (launch writes a VM's, stop removes it): the portal's
# (``console_passwords``), whatever the portal process's HOME is.
CONSOLE_DIR_PLAYBOOKS = frozenset({"launch", "stop"})
KEEP = 200  # finished jobs remembered (the oldest are forgotten first)
LINES = 400  # progress lines kept per job


@dataclass
class Job:
    id: str
    owner: str
    title: str
    playbook: str
    state: str = "queued"  # queued, running, ok, failed
    lines: list[str] = field(default_factory=list)
    tasks: int = 0
    result: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    ended: float | None = None
    back: str = "/vms"

    def add(self, line: str) -> None:
        if line.startswith("TASK ["):
            self.tasks += 1
        self.lines.append(line)
        del self.lines[:-LINES]

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "state": self.state, "tasks": self.tasks,
                "lines": self.lines[-40:], "result": self.result, "errors": self.errors,
                "seconds": round((self.ended or time.time()) - self.started, 1), "back": self.back}


Runner = Callable[..., Any]


class Jobs:
    def __init__(self, run: Runner, *, project: str | None, inventory: str | None, db_url: str,
                 console_dir: str | None = None, workers: int = 4) -> None:
        self._console_dir = console_dir
        self._run = run
        self._project = project
        self._inventory = inventory
        self._db_url = db_url
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vcl-portal-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def submit(self, actor: Actor, title: str, playbook: str, extravars: Mapping[str, Any],
               back: str = "/vms") -> Job:
        """Run ``vcl.lab.<playbook>`` on behalf of ``actor`` (its ``acting_user``)."""
        job = Job(secrets.token_urlsafe(16), actor.name, title, playbook, back=back)
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > KEEP:
                oldest = next(iter(self._jobs))
                if self._jobs[oldest].state in ("queued", "running"):
                    break
                self._jobs.pop(oldest)
        extra = {**extravars, "acting_user": actor.name}
        if self._console_dir and playbook in CONSOLE_DIR_PLAYBOOKS:
            extra["launch_console_dir"] = self._console_dir
        self._pool.submit(self._work, job, extra)
        return job

    def _work(self, job: Job, extravars: dict[str, Any]) -> None:
        job.state = "running"
        try:
            run = self._run(job.playbook, extravars, project=self._project, inventory=self._inventory,
                            progress=job.add, envvars={"VCL_DB_URL": self._db_url})
            job.result = run.vcl_result
            job.errors = [f"{f.host}: {f.task}: {f.message}" if f.host != "-" else f.message for f in run.failures]
            job.state = "ok" if run.ok else "failed"
        except Exception as err:  # the job's page says what went wrong; the portal goes on
            job.errors = [f"{type(err).__name__}: {err}"]
            job.state = "failed"
        finally:
            job.ended = time.time()

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
