"""The portal's parts on their own: its configuration file (``config.load``, each bad key named), ``vcl-portal
--check``, the timeline picture (``timeline.svg``), the console's token files and password files (``console``),
and the jobs that run playbooks (``jobs.Jobs``), with a job's page for its owner only."""

from __future__ import annotations

import os
import stat
import threading
import time
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from starlette.testclient import TestClient

from tests.portal.conftest import login, post, running_vm, submitted
from vcl_sched.acting import Actor
from vcl_sched.errors import ConflictError, ValidationError, VclError
from vcl_sched.portal import config, console, jobs, server, timeline
from vcl_sched.portal.queries import Profile
from vcl_sched.runner import Failure, RunResult

SVG = "{http://www.w3.org/2000/svg}"


# --- config.load ------------------------------------------------------------------------------------------------

def private_file(path: Path, content: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(content)
    path.chmod(mode)
    return path


@pytest.fixture
def write_config(tmp_path):
    """``write_config(**keys)``: a configuration file with a good secret file and the given keys (None: left
    out); its path."""
    secret = private_file(tmp_path / "secret", os.urandom(32))

    def write(**keys):
        data = {"db_url": "sqlite:////var/lib/vcl/vcl.sqlite", "secret_file": str(secret), **keys}
        path = tmp_path / "portal.yml"
        path.write_text(yaml.safe_dump({k: v for k, v in data.items() if v is not None}))
        return path

    write.secret = secret
    return write


def test_a_good_configuration_loads_with_its_defaults(write_config, tmp_path):
    cfg = config.load(write_config())
    assert cfg.db_url == "sqlite:////var/lib/vcl/vcl.sqlite" and cfg.secret == write_config.secret.read_bytes()
    assert (cfg.listen, cfg.port, cfg.console_port, cfg.https, cfg.login_per_minute, cfg.run_playbooks) == (
        "0.0.0.0", 443, 6080, False, 10, True)
    assert cfg.secret.hex() not in repr(cfg)  # the secret is never shown
    cert = private_file(tmp_path / "cert.pem", b"cert", 0o644)
    key = private_file(tmp_path / "key.pem", b"key")
    cfg = config.load(write_config(certfile=str(cert), keyfile=str(key), port=8443, listen="::",
                                   login_per_minute=3, run_playbooks=False, project="/srv/vcl"))
    assert (cfg.https, cfg.port, cfg.listen, cfg.login_per_minute, cfg.run_playbooks, cfg.project) == (
        True, 8443, "::", 3, False, "/srv/vcl")


@pytest.mark.parametrize(("key", "value"), [
    ("db_url", ""), ("db_url", 42), ("db_url", "x" * 5000), ("db_url", "sqlite:///a\x00b"),
    ("listen", "portal.example"), ("listen", "10.0.0.300"), ("listen", ""),
    ("port", 0), ("port", 65536), ("port", "443"), ("port", True), ("port", 44.3),
    ("console_port", -1), ("console_port", "6080"),
    ("https", "yes"), ("https", 1),
    ("login_per_minute", 0), ("login_per_minute", 1001), ("login_per_minute", True), ("login_per_minute", "10"),
    ("run_playbooks", "no"), ("run_playbooks", 0),
    ("project", ""), ("inventory", ["a"]), ("console_tokens", " "), ("console_passwords", {"a": 1}),
    ("novnc_dir", 7),
    ("certfile", "/nonexistent/cert.pem"),
    ("secret", "a" * 64), ("bogus", 1), ("Port", 443),
])
def test_each_bad_key_is_named(write_config, key, value):
    path = write_config(**{key: value})
    if key == "certfile":
        data = yaml.safe_load(path.read_text())
        data["keyfile"] = str(write_config.secret)
        path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValidationError) as err:
        config.load(path)
    assert err.value.field == key, str(err.value)
    assert write_config.secret.read_bytes().hex() not in str(err.value)


def test_a_missing_db_url_is_named(write_config):
    path = write_config(db_url=None)
    with pytest.raises(ValidationError) as err:
        config.load(path)
    assert err.value.field == "db_url"


def test_certfile_and_keyfile_go_together_and_the_key_is_private(write_config, tmp_path):
    cert = private_file(tmp_path / "cert.pem", b"cert", 0o644)
    key = private_file(tmp_path / "key.pem", b"key")
    for keys, field in (({"certfile": str(cert)}, "keyfile"), ({"keyfile": str(key)}, "certfile"),
                        ({"certfile": str(tmp_path), "keyfile": str(key)}, "certfile")):
        with pytest.raises(ValidationError) as err:
            config.load(write_config(**keys))
        assert err.value.field == field, keys
    key.chmod(0o640)
    with pytest.raises(ValidationError, match="readable by others") as err:
        config.load(write_config(certfile=str(cert), keyfile=str(key)))
    assert err.value.field == "keyfile"


@pytest.mark.parametrize("case", ["short", "world-readable", "group-readable", "missing", "directory", "empty",
                                  "not given"])
def test_the_secret_file_must_be_private_and_long_enough(write_config, tmp_path, case):
    secret = write_config.secret
    if case == "short":
        private_file(secret, os.urandom(config.SECRET_MIN_BYTES - 1))
    elif case == "world-readable":
        secret.chmod(0o644)
    elif case == "group-readable":
        secret.chmod(0o640)
    elif case == "missing":
        secret.unlink()
    elif case == "empty":
        private_file(secret, b"")
    path = write_config(secret_file={"directory": str(tmp_path), "not given": None}.get(case, str(secret)))
    with pytest.raises(ValidationError) as err:
        config.load(path)
    assert err.value.field == "secret_file", str(err.value)


@pytest.mark.parametrize("text", ["db_url: [unclosed", "- a list\n- of things\n", "just text", ""])
def test_a_file_that_is_not_a_mapping_is_named_config(tmp_path, text):
    path = tmp_path / "portal.yml"
    path.write_text(text)
    with pytest.raises(ValidationError) as err:
        config.load(path)
    assert err.value.field == "config"
    with pytest.raises(ValidationError) as err:
        config.load(tmp_path / "absent.yml")
    assert err.value.field == "config"


def test_yaml_tags_are_not_run(write_config, tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "portal.yml"
    path.write_text(f"db_url: !!python/object/apply:os.system ['touch {marker}']\nsecret_file: {write_config.secret}\n")
    with pytest.raises(ValidationError) as err:
        config.load(path)
    assert err.value.field == "config" and not marker.exists()


# --- vcl-portal --check -----------------------------------------------------------------------------------------

def test_vcl_portal_check_exit_codes(db_url, write_config, tmp_path, capsys):
    assert server.main(["--config", str(write_config(db_url=db_url)), "--check"]) == 0
    out, err = capsys.readouterr()
    assert "is good: http (no TLS) on 0.0.0.0:443" in out and err == ""
    cert = private_file(tmp_path / "cert.pem", b"cert", 0o644)
    key = private_file(tmp_path / "key.pem", b"key")
    assert server.main(["--config", str(write_config(db_url=db_url, certfile=str(cert), keyfile=str(key),
                                                     port=8443)), "--check"]) == 0
    assert "is good: https on 0.0.0.0:8443" in capsys.readouterr().out
    for keys, field in (({"db_url": db_url, "port": 0}, "port: "), (None, "config: "),
                        ({"db_url": f"sqlite:///{tmp_path}/never-initialised.sqlite"}, "the lab database ")):
        path = write_config(**keys) if keys is not None else tmp_path / "absent.yml"
        assert server.main(["--config", str(path), "--check"]) == 1, keys
        out, err = capsys.readouterr()
        assert out == "" and err.startswith(f"vcl-portal: {field}") and err.count("\n") == 1, err
        assert "Traceback" not in err and write_config.secret.read_bytes().hex() not in err
    with pytest.raises(SystemExit) as leaving:
        server.main(["--check", "--bogus"])
    assert leaving.value.code == 2


# --- the timeline ---------------------------------------------------------------------------------------------

def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return root


def test_the_timeline_is_an_svg_with_a_bar_per_hour_and_kind():
    start = datetime(2026, 11, 23, 22, 0)  # crosses midnight: a day line
    prof = Profile(start, 4, capacity=[12] * 4, reserved=[0, 4, 4, 0], best_effort=[2, 2, 0, 0])
    root = parse(timeline.svg(prof))
    bars = [r for r in root.iter(f"{SVG}rect") if r.get("class")]
    assert [r.get("class") for r in bars] == [
        "best_effort", "free", "reserved", "best_effort", "free", "reserved", "free", "free"]
    assert len(list(root.iter(f"{SVG}rect"))) == len(bars) + 3  # the legend's three
    titles = [r.find(f"{SVG}title").text for r in bars]
    assert titles[0] == "Mon 22:00: 2 core(s) best effort" and titles[2] == "Mon 23:00: 4 core(s) reserved"
    assert titles[-1] == "Tue 01:00: 12 core(s) free"
    assert any(t.text == "Tue 24 Nov" for t in root.iter(f"{SVG}text"))
    for r in bars:
        assert float(r.get("height")) > 0 and 0 <= float(r.get("y")) <= timeline.HEIGHT
        assert float(r.get("y")) + float(r.get("height")) <= timeline.HEIGHT - timeline.BOTTOM + 0.5
    heights = {r.get("class"): float(r.get("height")) for r in bars[:2]}
    assert heights["free"] == pytest.approx(5 * heights["best_effort"], abs=0.2)  # 10 free, 2 best effort


def test_the_timeline_of_an_overbooked_or_empty_pool_is_still_a_picture():
    start = datetime(2026, 11, 23, 8, 0)
    over = parse(timeline.svg(Profile(start, 2, capacity=[4, 4], reserved=[6, 0], best_effort=[2, 0])))
    bars = [r for r in over.iter(f"{SVG}rect") if r.get("class")]
    assert [r.get("class") for r in bars] == ["reserved", "best_effort", "free"]  # no negative free bar
    assert all(float(r.get("y")) >= 0 for r in bars)
    empty = parse(timeline.svg(Profile(start, 0, capacity=[], reserved=[], best_effort=[])))
    assert not [r for r in empty.iter(f"{SVG}rect") if r.get("class")]
    nothing = parse(timeline.svg(Profile(start, 3, capacity=[0] * 3, reserved=[0] * 3, best_effort=[0] * 3)))
    assert not [r for r in nothing.iter(f"{SVG}rect") if r.get("class")]


class Odd(datetime):
    """A moment whose names are markup (as a locale's day names could hold anything)."""

    def strftime(self, fmt: str) -> str:
        return "<b>&amp;\"'</b>"


def test_the_timeline_escapes_its_text():
    start = Odd(2026, 11, 23, 8, 0)
    svg = timeline.svg(Profile(start, 2, capacity=[4, 4], reserved=[1, 0], best_effort=[0, 1]))
    root = parse(svg)  # still well-formed
    assert "<b>" not in svg
    texts = [t.text for t in root.iter(f"{SVG}title")] + [t.text for t in root.iter(f"{SVG}text")]
    assert any(t and t.startswith("<b>&amp;\"'</b>") for t in texts)


def test_the_timeline_page_serves_the_picture(app, school):
    client = TestClient(app)
    assert login(client, "ann").status_code == 303
    response = client.get("/status/timeline.svg")
    assert response.status_code == 200 and response.headers["content-type"].startswith("image/svg+xml")
    root = parse(response.text)
    bars = [r for r in root.iter(f"{SVG}rect") if r.get("class") == "free"]
    assert len(bars) == 72  # the pool's 12 cores are free every hour of the coming three days
    assert TestClient(app).get("/status/timeline.svg", follow_redirects=False).status_code == 303  # a login first


# --- the console's files ----------------------------------------------------------------------------------------

def test_new_token_writes_a_private_token_file_for_websockify(tmp_path):
    directory = tmp_path / "tokens"
    token = console.new_token(str(directory), "10.77.0.21", 5901)
    assert console._TOKEN_RE.match(token)
    path = directory / token
    assert path.read_text() == f"{token}: 10.77.0.21:5901\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(directory.stat().st_mode) == 0o700
    other = console.new_token(str(directory), "10.77.0.22", "5902")
    assert other != token and (directory / other).read_text() == f"{other}: 10.77.0.22:5902\n"


@pytest.mark.parametrize(("address", "port"), [
    ("not-an-address", 5901), ("10.77.0.21:22", 5901), ("10.77.0.21\n10.0.0.1", 5901), ("10.77.0.21 ", 5901),
    ("", 5901), ("{{ 7*7 }}", 5901), ("10.77.0.21", 0), ("10.77.0.21", 65536), ("10.77.0.21", "59 01"),
    ("10.77.0.21", "x"),
])
def test_new_token_refuses_a_bad_address_or_port(tmp_path, address, port):
    with pytest.raises((ValueError, VclError)):
        console.new_token(str(tmp_path / "tokens"), address, port)
    assert not (tmp_path / "tokens").exists() or not list((tmp_path / "tokens").iterdir())


def test_sweep_removes_old_token_files_only(tmp_path):
    directory = tmp_path / "tokens"
    fresh = console.new_token(str(directory), "10.77.0.21", 5901)
    old = console.new_token(str(directory), "10.77.0.21", 5902)
    past = time.time() - console.TOKEN_SECONDS - 1
    os.utime(directory / old, (past, past))
    keep = {"README": "not a token", "x" * 19: "too short a name"}
    for name, text in keep.items():
        (directory / name).write_text(text)
        os.utime(directory / name, (past, past))
    (directory / ("d" * 30)).mkdir()  # a directory with a token's name
    os.utime(directory / ("d" * 30), (past, past))
    outside = tmp_path / "precious"
    outside.write_text("keep me")
    os.utime(outside, (past, past))
    (directory / ("l" * 30)).symlink_to(outside)
    assert console.sweep(str(directory)) == 1
    assert sorted(p.name for p in directory.iterdir()) == sorted([fresh, "README", "x" * 19, "d" * 30, "l" * 30])
    assert outside.read_text() == "keep me"
    assert console.sweep(str(directory), now=time.time() + console.TOKEN_SECONDS + 5) == 1  # the fresh one, later
    assert console.sweep(str(tmp_path / "absent")) == 0


def test_the_console_password_file_is_read_without_following_links(tmp_path):
    mac = "52:54:00:12:34:56"
    path = private_file(tmp_path / "vm-7-525400123456.vnc", b"Ab3dEf9h\n")
    assert console.password(str(tmp_path), 7, mac) == "Ab3dEf9h"
    for instance, bad_mac in ((7, None), (7, "52:54:00:12:34"), (7, "../../../etc/x"), (8, mac)):
        with pytest.raises(ConflictError, match=r"^id: "):
            console.password(str(tmp_path), instance, bad_mac)
    (tmp_path / "vm-9-525400123456.vnc").symlink_to(path)
    with pytest.raises(ConflictError, match="no console password"):
        console.password(str(tmp_path), 9, mac)
    for content in (b"", b"toolongpassword", b"bad pass", b"{{7*7}}"):
        private_file(path, content)
        with pytest.raises(ConflictError, match="is not one"):
            console.password(str(tmp_path), 7, mac)


# --- jobs ----------------------------------------------------------------------------------------------------

ANN = Actor("ann", "student", 3)


def finished(job: jobs.Job, seconds: float = 10.0) -> jobs.Job:
    deadline = time.monotonic() + seconds
    while job.state in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.state in ("ok", "failed"), job.state
    return job


def test_a_job_runs_its_playbook_on_behalf_of_its_user_and_keeps_its_lines():
    seen = []

    def run(playbook, extravars, **kwargs):
        seen.append((playbook, extravars, kwargs["envvars"], kwargs["project"], kwargs["inventory"]))
        for line in ("PLAY [Stop]", "TASK [vcl.lab.vm : Stop the domain]", "ok: [s1]", "TASK [Record]"):
            kwargs["progress"](line)
        return RunResult(playbook=playbook, status="successful", rc=0, vcl_result={"id": 5, "changed": True})

    pool = jobs.Jobs(run, project="/srv/vcl", inventory="/srv/vcl/inventory", db_url="sqlite:///x.sqlite")
    job = finished(pool.submit(ANN, "Stopping VM 5", "stop", {"id": "5"}, back="/vms/5"))
    assert job.state == "ok" and job.tasks == 2 and job.result == {"id": 5, "changed": True} and job.errors == []
    assert job.lines == ["PLAY [Stop]", "TASK [vcl.lab.vm : Stop the domain]", "ok: [s1]", "TASK [Record]"]
    assert seen == [("stop", {"id": "5", "acting_user": "ann"}, {"VCL_DB_URL": "sqlite:///x.sqlite"}, "/srv/vcl",
                     "/srv/vcl/inventory")]
    view = job.view()
    assert view["state"] == "ok" and view["back"] == "/vms/5" and view["seconds"] >= 0
    assert pool.get(job.id) is job and pool.get("nope") is None
    pool.shutdown()


def test_a_job_keeps_only_its_last_lines():
    def run(playbook, extravars, **kwargs):
        for n in range(jobs.LINES + 50):
            kwargs["progress"](f"line {n}")
        return RunResult(playbook=playbook, status="successful", rc=0)

    pool = jobs.Jobs(run, project=None, inventory=None, db_url="sqlite://")
    job = finished(pool.submit(ANN, "t", "stop", {}))
    assert len(job.lines) == jobs.LINES and job.lines[-1] == f"line {jobs.LINES + 49}"
    assert len(job.view()["lines"]) == 40
    pool.shutdown()


def test_a_failed_run_and_a_crashed_runner_are_recorded():
    def failing(playbook, extravars, **kwargs):
        return RunResult(playbook=playbook, status="failed", rc=2,
                         failures=[Failure("s1", "Start the domain", "no such image"), Failure("-", "-", "gave up")])

    def crashing(playbook, extravars, **kwargs):
        raise RuntimeError("ansible-runner is not installed")

    pool = jobs.Jobs(failing, project=None, inventory=None, db_url="sqlite://")
    job = finished(pool.submit(ANN, "Launching VM 5", "launch", {"id": "5"}))
    assert job.state == "failed" and job.errors == ["s1: Start the domain: no such image", "gave up"]
    assert job.ended is not None
    pool.shutdown()
    pool = jobs.Jobs(crashing, project=None, inventory=None, db_url="sqlite://")
    job = finished(pool.submit(ANN, "Launching VM 5", "launch", {"id": "5"}))
    assert job.state == "failed" and job.errors == ["RuntimeError: ansible-runner is not installed"]
    pool.shutdown()


def test_finished_jobs_are_forgotten_oldest_first(monkeypatch):
    monkeypatch.setattr(jobs, "KEEP", 3)
    pool = jobs.Jobs(lambda p, e, **k: RunResult(playbook=p, status="successful", rc=0), project=None,
                     inventory=None, db_url="sqlite://")
    done = [finished(pool.submit(ANN, f"job {n}", "stop", {})) for n in range(5)]
    assert [pool.get(j.id) is not None for j in done] == [False, False, True, True, True]
    pool.shutdown()


def test_a_running_job_is_not_forgotten(monkeypatch):
    monkeypatch.setattr(jobs, "KEEP", 1)
    gate = threading.Event()

    def slow(playbook, extravars, **kwargs):
        gate.wait(10)
        return RunResult(playbook=playbook, status="successful", rc=0)

    pool = jobs.Jobs(slow, project=None, inventory=None, db_url="sqlite://")
    first = pool.submit(ANN, "slow", "stop", {})
    second = pool.submit(ANN, "slow too", "stop", {})
    assert pool.get(first.id) is first and pool.get(second.id) is second
    gate.set()
    finished(first), finished(second)
    pool.shutdown()


def test_another_users_job_is_forbidden_through_the_app(app, school, runs):
    vm = running_vm(school)
    ann = TestClient(app)
    assert login(ann, "ann").status_code == 303
    job = post(ann, f"/vms/{vm['id']}/stop").headers["location"]
    assert job.startswith("/jobs/") and submitted(runs) == ["stop"]
    assert ann.get(job).status_code == 200 and ann.get(job + ".json").json()["title"] == f"Stopping VM {vm['id']}"
    for name, status in (("bob", 403), ("tina", 403), ("root1", 200)):
        client = TestClient(app)
        assert login(client, name).status_code == 303
        assert client.get(job).status_code == status, name
        assert client.get(job + ".json").status_code == status, name
    assert ann.get("/jobs/nope").status_code == 404 and ann.get("/jobs/nope.json").status_code == 404
