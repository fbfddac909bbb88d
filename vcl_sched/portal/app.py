"""The portal's pages (SPEC §8): Starlette over the service layer, Jinja2 templates, no JavaScript framework.

Every page checks who is logged in and their role; every service call runs on their behalf
(:func:`vcl_sched.acting.acting`), so the service layer's own checks apply as for ``vcl --as``. Every form
carries a CSRF token (asgi-csrf, double-submit cookie); logins are rate-limited per name and per address
(limits); sessions are signed cookies (Starlette's SessionMiddleware, itsdangerous), HTTPS-only behind TLS.
Errors are the service layer's: a bad field is shown next to it, named as the CLI names it.
"""

from __future__ import annotations

import functools
import math
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jinja2
from asgi_csrf import asgi_csrf
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import acting as acting_mod
from .. import config as vcl_config
from .. import db, lifecycle, people, sessions
from ..acting import ADMIN, STUDENT, TEACHER, Actor
from ..bookings import request as be_request
from ..bookings import reserve as be_reserve
from ..errors import (
    AuthError,
    CapacityError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    ValidationError,
    VclError,
)
from ..validate import check_name, id_value
from . import console, jobs, queries, timeline
from .config import PortalConfig

HERE = Path(__file__).parent
SESSION_HOURS = 8
TIMELINE_HOURS = 72
STATUS_REFRESH = 30
FORM_MAX = 64  # fields per form; longer texts are refused by the service layer's checks

Handler = Callable[[Request], Awaitable[Response]]


class Portal:
    def __init__(self, cfg: PortalConfig, run: jobs.Runner | None = None) -> None:
        from .. import runner

        self.cfg = cfg
        self.jobs = jobs.Jobs(run or runner.run, project=cfg.project, inventory=cfg.inventory, db_url=cfg.db_url,
                              console_dir=cfg.console_passwords)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.per_name = RateLimitItemPerMinute(cfg.login_per_minute)
        self.per_address = RateLimitItemPerMinute(cfg.login_per_minute * 5)
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                 undefined=jinja2.StrictUndefined)
        env.filters["left"] = _time_left
        self.env = env
        # Who is logged in, by session id: the cookie holds the id only, so logging out (or a restart of the
        # portal) ends the session for good, whatever copy of the cookie is kept.
        self.sessions: dict[str, tuple[str, float]] = {}
        self._sessions_lock = threading.Lock()

    def open_session(self, name: str) -> str:
        sid = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._sessions_lock:
            for old in [k for k, (_, until) in self.sessions.items() if until < now]:
                del self.sessions[old]
            self.sessions[sid] = (name, now + SESSION_HOURS * 3600)
        return sid

    def session_user(self, sid: Any) -> str | None:
        if not isinstance(sid, str):
            return None
        with self._sessions_lock:
            entry = self.sessions.get(sid)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def close_session(self, sid: Any) -> None:
        if isinstance(sid, str):
            with self._sessions_lock:
                self.sessions.pop(sid, None)

    # --- rendering -------------------------------------------------------------------------------

    def page(self, request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        actor: Actor | None = request.scope.get("vcl_actor")
        body = self.env.get_template(template).render(
            request=request, me=actor, csrftoken=request.scope["csrftoken"](), flash=request.session.pop("flash", None),
            now=vcl_config.now(), **context)
        return HTMLResponse(body, status_code=status, headers=_headers())

    def call(self, actor: Actor, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        """A service call in a worker thread, on behalf of ``actor``, against the portal's database."""

        def run() -> Any:
            with acting_mod.acting(actor):
                return fn(*args, **kwargs)

        return run_in_threadpool(run)


def _headers(extra_connect: str = "") -> dict[str, str]:
    connect = "'self'" + (f" {extra_connect}" if extra_connect else "")
    return {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
            "Content-Security-Policy": f"default-src 'self'; connect-src {connect}; img-src 'self' data:;"
                                       " style-src 'self'; script-src 'self'; frame-ancestors 'none';"
                                       " form-action 'self'; base-uri 'none'"}


def _time_left(ends_at: str | None, now: datetime) -> str:
    if not ends_at:
        return "-"
    minutes = math.floor((datetime.fromisoformat(ends_at) - now).total_seconds() / 60)
    if minutes <= 0:
        return "ending"
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _status_of(err: VclError) -> int:
    if isinstance(err, ForbiddenError):
        return 403
    if isinstance(err, NotFoundError):
        return 404
    if isinstance(err, ConflictError | CapacityError):
        return 409
    if isinstance(err, AuthError):
        return 401
    return 400


def _field_errors(err: VclError) -> dict[str, str]:
    if isinstance(err, ValidationError):
        return {err.field: err.message}
    text = str(err)
    head, sep, rest = text.partition(": ")
    if sep and head.replace("_", "").isalnum() and len(head) <= 32:
        return {head: rest}
    return {"_": text}


async def _form(request: Request, known: tuple[str, ...] | None = None) -> dict[str, str]:
    """The form's fields as text (a field given twice, a file, or a field not in ``known`` is refused naming
    it; ``known`` None: the caller checks the names itself)."""
    form = await request.form(max_files=0, max_fields=FORM_MAX)
    out: dict[str, str] = {}
    for key, value in form.multi_items():
        if not isinstance(value, str):
            raise ValidationError(key[:32], "must be text")
        if key in out:
            raise ValidationError(key[:32], "is given twice")
        out[key] = value
    out.pop("csrftoken", None)
    unknown = sorted(set(out) - set(known)) if known is not None else []
    if unknown:
        raise ValidationError(unknown[0][:32], "is not a field of this form")
    return out


def guarded(*roles: str) -> Callable[[Callable[[Portal, Request, Actor], Awaitable[Response]]], Handler]:
    """The page needs a login (and one of ``roles`` when given): a visitor goes to the login page; a role that
    may not is 403. Service errors become the error page with the right status."""

    def wrap(fn: Callable[[Portal, Request, Actor], Awaitable[Response]]) -> Handler:
        @functools.wraps(fn)
        async def handler(request: Request) -> Response:
            portal: Portal = request.app.state.portal
            actor = await _actor(portal, request)
            if actor is None:
                if request.method == "GET":
                    return RedirectResponse(f"/login?next={_safe_next(request.url.path)}", status_code=303)
                return portal.page(request, "error.html", 401, message="log in first")
            request.scope["vcl_actor"] = actor
            if roles and actor.role not in roles:
                return portal.page(request, "error.html", 403,
                                   message=f"{actor.name} is a {actor.role}: this page is for {' and '.join(roles)}s")
            try:
                return await fn(portal, request, actor)
            except VclError as err:
                return portal.page(request, "error.html", _status_of(err), message=str(err),
                                   field=next(iter(_field_errors(err))))

        return handler

    return wrap


def _safe_next(path: str) -> str:
    from urllib.parse import quote

    return quote(path if path.startswith("/") and not path.startswith("//") else "/", safe="/")


async def _actor(portal: Portal, request: Request) -> Actor | None:
    name = portal.session_user(request.session.get("sid"))
    if name is None:
        request.session.pop("sid", None)
        return None
    try:
        actor = await run_in_threadpool(people.actor_for, name, portal.cfg.db_url)
    except (NotFoundError, ValidationError):
        portal.close_session(request.session.get("sid"))
        request.session.clear()
        return None
    if request.session.get("role") != actor.role:  # a changed role takes effect at once
        request.session["role"] = actor.role
    return actor


def _flash(request: Request, text: str) -> None:
    request.session["flash"] = text[:500]


def _home(actor: Actor) -> str:
    return {STUDENT: "/vms", TEACHER: "/sessions", ADMIN: "/status"}.get(actor.role, "/vms")


# --- login ----------------------------------------------------------------------------------------

async def login_page(request: Request) -> Response:
    portal: Portal = request.app.state.portal
    actor = await _actor(portal, request)
    if actor is not None:
        return RedirectResponse(_home(actor), status_code=303)
    return portal.page(request, "login.html", next=_safe_next(request.query_params.get("next", "/")), errors={},
                       values={})


async def login_submit(request: Request) -> Response:
    portal: Portal = request.app.state.portal
    try:
        form = await _form(request, ("name", "password", "next"))
    except ValidationError as err:
        return portal.page(request, "login.html", 400, next="/", errors={err.field: err.message}, values={})
    name, password = form.get("name", ""), form.get("password", "")
    target = _safe_next(form.get("next", "/"))
    address = request.client.host if request.client else "-"
    try:
        name = check_name("name", name.strip())
    except ValidationError as err:
        return portal.page(request, "login.html", 400, next=target, errors={"name": err.message}, values={})
    if not (portal.limiter.hit(portal.per_address, "login-address", address)
            and portal.limiter.hit(portal.per_name, "login-name", name)):
        return portal.page(request, "login.html", 429, next=target, values={"name": name},
                           errors={"_": "too many login attempts: wait a minute and try again"})
    try:
        actor = await run_in_threadpool(people.authenticate, name, password, portal.cfg.db_url)
    except (AuthError, ValidationError):
        return portal.page(request, "login.html", 401, next=target, values={"name": name},
                           errors={"_": "wrong name or password"})
    portal.close_session(request.session.get("sid"))
    request.session.clear()  # a new session at each login (no fixation)
    request.session.update({"sid": portal.open_session(actor.name), "role": actor.role})
    return RedirectResponse(target if target != "/" else _home(actor), status_code=303)


async def logout(request: Request) -> Response:
    request.app.state.portal.close_session(request.session.get("sid"))
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


async def home(request: Request) -> Response:
    portal: Portal = request.app.state.portal
    actor = await _actor(portal, request)
    return RedirectResponse("/login" if actor is None else _home(actor), status_code=303)


# --- VMs ------------------------------------------------------------------------------------------

def _page_number(request: Request) -> int:
    raw = request.query_params.get("page", "0")
    if not raw.isdigit() or len(raw) > 6:
        raise ValidationError("page", "must be a whole number")
    return int(raw)


@guarded()
async def vms(portal: Portal, request: Request, actor: Actor) -> Response:
    page = _page_number(request)
    rows, total = await run_in_threadpool(queries.vms_of, actor, portal.cfg.db_url, page)
    return portal.page(request, "vms.html", vms=rows, total=total, page=page, pages=max(1, -(-total // queries.PAGE)))


async def _vm_for(portal: Portal, actor: Actor, raw: str) -> dict[str, Any]:
    iid = id_value("id", raw)
    return await portal.call(actor, sessions.check_vm, iid, portal.cfg.db_url)


@guarded()
async def vm_page(portal: Portal, request: Request, actor: Actor) -> Response:
    vm = await _vm_for(portal, actor, request.path_params["id"])
    owner, _, _ = await run_in_threadpool(queries.vm_owner, vm["id"], portal.cfg.db_url)
    return portal.page(request, "vm.html", vm=vm, is_owner=owner == actor.user_id, errors={}, values={})


ACTIONS = {"stop": ("stop", "Stopping"), "suspend": ("suspend", "Suspending"), "resume": ("resume", "Resuming"),
           "launch": ("launch", "Launching")}


@guarded()
async def vm_action(portal: Portal, request: Request, actor: Actor) -> Response:
    action = request.path_params["action"]
    if action not in ACTIONS and action != "extend":
        raise NotFoundError(f"action: no action {action!r}")
    form = await _form(request, ("hours",) if action == "extend" else ())
    vm = await _vm_for(portal, actor, request.path_params["id"])
    if action == "extend":
        try:
            result = await portal.call(actor, lifecycle.extend, vm["id"], form.get("hours", ""), portal.cfg.db_url)
        except ValidationError as err:
            owner, _, _ = await run_in_threadpool(queries.vm_owner, vm["id"], portal.cfg.db_url)
            return portal.page(request, "vm.html", 400, vm=vm, is_owner=owner == actor.user_id,
                               errors={err.field: err.message}, values=form)
        _flash(request, f"VM {vm['id']} now ends at {result['ends_at']}")
        return RedirectResponse(f"/vms/{vm['id']}", status_code=303)
    playbook, verb = ACTIONS[action]
    return _submit(portal, request, actor, f"{verb} VM {vm['id']}", playbook, {"id": str(vm["id"])},
                   back=f"/vms/{vm['id']}")


def _submit(portal: Portal, request: Request, actor: Actor, title: str, playbook: str, extravars: dict[str, Any],
            back: str) -> Response:
    if not portal.cfg.run_playbooks:
        raise ConflictError("this portal does not run playbooks (run_playbooks: false)")
    job = portal.jobs.submit(actor, title, playbook, extravars, back=back)
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


@guarded()
async def console_page(portal: Portal, request: Request, actor: Actor) -> Response:
    vm = await _vm_for(portal, actor, request.path_params["id"])
    owner, state, port = await run_in_threadpool(queries.vm_owner, vm["id"], portal.cfg.db_url)
    if owner is None or owner != actor.user_id:
        raise ForbiddenError(f"id: only the owner of VM {vm['id']} opens its console")
    if state != "running" or not port or not vm.get("slave_address"):
        raise ConflictError(f"id: VM {vm['id']} is {state}: its console opens while it runs")
    password = console.password(portal.cfg.console_passwords, vm["id"], vm.get("mac"))
    token = console.new_token(portal.cfg.console_tokens, vm["slave_address"], port)
    host = request.url.hostname or ""
    ws = f"wss://{host}:{portal.cfg.console_port}/?token={token}"
    response = portal.page(request, "console.html", vm=vm, ws_url=ws, vnc_password=password)
    response.headers["Content-Security-Policy"] = _headers(f"wss://{host}:{portal.cfg.console_port}")[
        "Content-Security-Policy"]
    return response


# --- a request (best effort) ----------------------------------------------------------------------

@guarded()
async def request_page(portal: Portal, request: Request, actor: Actor) -> Response:
    return await _request_form(portal, request, actor, {}, {}, 200)


async def _request_form(portal: Portal, request: Request, actor: Actor, errors: dict[str, str],
                        values: dict[str, str], status: int, answer: dict[str, Any] | None = None) -> Response:
    groups = await run_in_threadpool(queries.groups_of, actor, portal.cfg.db_url)
    images = await run_in_threadpool(queries.images_for, groups, portal.cfg.db_url)
    return portal.page(request, "request.html", status, groups=groups, images=images, errors=errors, values=values,
                       answer=answer)


@guarded()
async def request_submit(portal: Portal, request: Request, actor: Actor) -> Response:
    form = await _form(request)
    known = {"owner", "image", "cores", "ram_mb", "hours", "disk_gb", "keep_disk", "register_as_slave"}
    unknown = sorted(set(form) - known)
    if unknown:
        return await _request_form(portal, request, actor, {unknown[0][:32]: "is not a field of a request"}, form, 400)
    kwargs = {"owner": form.get("owner", ""), "image": form.get("image") or None, "cores": form.get("cores", ""),
              "ram_mb": form.get("ram_mb", ""), "hours": form.get("hours", ""),
              "disk_gb": form.get("disk_gb") or None, "keep_disk": form.get("keep_disk", "0"),
              "register_as_slave": form.get("register_as_slave", "0"), "url": portal.cfg.db_url}
    try:
        answer = await portal.call(actor, be_request, **kwargs)
    except VclError as err:
        return await _request_form(portal, request, actor, _field_errors(err), form, _status_of(err))
    if answer.get("decision") == "place" and answer.get("id") and portal.cfg.run_playbooks:
        job = portal.jobs.submit(actor, f"Launching VM {answer['id']}", "launch", {"id": str(answer["id"])},
                                 back=f"/vms/{answer['id']}")
        request.session["answer"] = {"job": job.id, **{k: answer.get(k) for k in (
            "id", "decision", "reason", "hours_granted", "hours_requested", "slave", "warning", "state")}}
        return RedirectResponse(f"/jobs/{job.id}", status_code=303)
    return await _request_form(portal, request, actor, {}, form, 200, answer=answer)


# --- seats (students) -----------------------------------------------------------------------------

@guarded()
async def seats_page(portal: Portal, request: Request, actor: Actor) -> Response:
    rows = await run_in_threadpool(queries.my_seats, actor, portal.cfg.db_url)
    return portal.page(request, "seats.html", sessions=rows)


@guarded()
async def seat_take(portal: Portal, request: Request, actor: Actor) -> Response:
    await _form(request, ())
    rid = id_value("reservation", request.path_params["id"])
    view = await portal.call(actor, sessions.session_view, rid, portal.cfg.db_url)
    if view["reservation"]["state"] != "active":
        raise ConflictError(f"reservation: session {rid} is {view['reservation']['state']}, not running")
    return _submit(portal, request, actor, f"Taking a seat of session {rid}", "seat", {"reservation": str(rid)},
                   back="/seats")


# --- sessions (teachers) --------------------------------------------------------------------------

BOOK_FIELDS = ("owner", "image", "seats", "cores", "ram_mb", "start", "hours", "weekdays", "weeks", "prelaunch")


async def _sessions_page(portal: Portal, request: Request, actor: Actor, errors: dict[str, str],
                         values: dict[str, str], status: int, outcome: dict[str, Any] | None = None) -> Response:
    groups = await run_in_threadpool(queries.owned_groups, actor, portal.cfg.db_url)
    images = await run_in_threadpool(queries.images_for, groups, portal.cfg.db_url)
    now = vcl_config.now()
    rows = await run_in_threadpool(queries.sessions_of, groups, portal.cfg.db_url, now)
    return portal.page(request, "sessions.html", status, groups=groups, images=images, sessions=rows, errors=errors,
                       values=values, outcome=outcome, weeks=_calendar(rows, now))


def _calendar(rows: list[dict[str, Any]], now: datetime, weeks: int = 3) -> list[list[dict[str, Any]]]:
    """The coming weeks, Monday to Sunday, each day with the sessions that start on it (accepted and running)."""
    monday = (now - timedelta(days=now.weekday())).date()
    days: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        if r["state"] in ("accepted", "active") and r["start"]:
            days.setdefault(datetime.fromisoformat(r["start"]).date(), []).append(r)
    return [[{"date": monday + timedelta(days=7 * w + d), "sessions": days.get(monday + timedelta(days=7 * w + d), []),
              "today": monday + timedelta(days=7 * w + d) == now.date()} for d in range(7)] for w in range(weeks)]


@guarded(TEACHER, ADMIN)
async def sessions_list(portal: Portal, request: Request, actor: Actor) -> Response:
    return await _sessions_page(portal, request, actor, {}, {}, 200)


@guarded(TEACHER, ADMIN)
async def sessions_book(portal: Portal, request: Request, actor: Actor) -> Response:
    form = await _form(request)
    unknown = sorted(set(form) - set(BOOK_FIELDS))
    if unknown:
        return await _sessions_page(portal, request, actor, {unknown[0][:32]: "is not a field of a session"}, form, 400)
    start = form.get("start", "").replace("T", " ")
    common = {"owner": form.get("owner", ""), "image": form.get("image") or None, "seats": form.get("seats", ""),
              "cores": form.get("cores", ""), "ram_mb": form.get("ram_mb", ""), "start": start,
              "hours": form.get("hours", ""), "prelaunch": form.get("prelaunch", "0"), "url": portal.cfg.db_url}
    weekdays, weeks = form.get("weekdays", "").strip(), form.get("weeks", "").strip()
    try:
        if weekdays or weeks:
            outcome = await portal.call(actor, sessions.reserve_series, weekdays=weekdays, weeks=weeks or "1", **common)
        else:
            one = await portal.call(actor, be_reserve, **common)
            outcome = {"series": None, "accepted": int(one["state"] == "accepted"), "refused":
                       int(one["state"] != "accepted"), "moved": int(bool(one.get("rescheduled"))),
                       "occurrences": [one]}
    except VclError as err:
        return await _sessions_page(portal, request, actor, _field_errors(err), form, _status_of(err))
    return await _sessions_page(portal, request, actor, {}, {}, 200, outcome=outcome)


@guarded()
async def session_page(portal: Portal, request: Request, actor: Actor) -> Response:
    rid = id_value("reservation", request.path_params["id"])
    view = await portal.call(actor, sessions.session_view, rid, portal.cfg.db_url)
    return portal.page(request, "session.html", view=view)


@guarded(TEACHER, ADMIN)
async def session_cancel(portal: Portal, request: Request, actor: Actor) -> Response:
    await _form(request, ())
    rid = id_value("reservation", request.path_params["id"])
    result = await portal.call(actor, sessions.cancel, reservation=rid, url=portal.cfg.db_url)
    _flash(request, f"cancelled {', '.join(map(str, result['cancelled'])) or 'nothing'}")
    return RedirectResponse("/sessions", status_code=303)


# --- status (everyone) ----------------------------------------------------------------------------

@guarded()
async def status_page(portal: Portal, request: Request, actor: Actor) -> Response:
    page = _page_number(request)
    slaves, totals = await run_in_threadpool(queries.slaves_page, portal.cfg.db_url, page)
    response = portal.page(request, "status.html", slaves=slaves, totals=totals, page=page,
                           pages=max(1, -(-totals["slaves"] // queries.PAGE)), refresh=STATUS_REFRESH,
                           stamp=int(vcl_config.now().timestamp()))
    response.headers["Refresh"] = str(STATUS_REFRESH)
    return response


@guarded()
async def timeline_svg(portal: Portal, request: Request, actor: Actor) -> Response:
    prof = await run_in_threadpool(queries.profile, portal.cfg.db_url, vcl_config.now(), TIMELINE_HOURS)
    return Response(timeline.svg(prof), media_type="image/svg+xml", headers=_headers())


# --- jobs -----------------------------------------------------------------------------------------

def _job_for(portal: Portal, actor: Actor, job_id: str) -> jobs.Job:
    job = portal.jobs.get(job_id)
    if job is None:
        raise NotFoundError("job: no such job (the portal restarted, or it is long finished)")
    if job.owner != actor.name and actor.role != ADMIN:
        raise ForbiddenError("job: not a job of yours")
    return job


@guarded()
async def job_page(portal: Portal, request: Request, actor: Actor) -> Response:
    job = _job_for(portal, actor, request.path_params["id"])
    answer = request.session.get("answer")
    if not isinstance(answer, dict) or answer.get("job") != job.id:
        answer = None
    response = portal.page(request, "job.html", job=job.view(), answer=answer)
    if job.state in ("queued", "running"):
        response.headers["Refresh"] = "2"
    return response


@guarded()
async def job_json(portal: Portal, request: Request, actor: Actor) -> Response:
    job = _job_for(portal, actor, request.path_params["id"])
    return JSONResponse(job.view(), headers=_headers())


async def not_found(request: Request, exc: Exception) -> Response:
    return HTMLResponse("<!doctype html><title>Not found</title><p>Not found.</p>", status_code=404,
                        headers=_headers())


async def csrf_failed(scope: Any, send: Any, message_id: Any) -> None:
    """A form without its CSRF token (or with another browser's): 403, the portal's error page and headers."""
    body = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Refused · VCL</title>"
            "<link rel=\"stylesheet\" href=\"/static/portal.css\"></head><body><main><h1>Refused</h1>"
            "<p class=\"error\" id=\"error\" data-field=\"csrftoken\">csrftoken: this form is not one the portal"
            " gave this browser (it lacks its token, or the token is another's): reload the page and try again</p>"
            "<p><a href=\"/\">Back</a></p></main></body></html>").encode()
    headers = [(b"content-type", b"text/html; charset=utf-8")]
    headers += [(k.lower().encode(), v.encode()) for k, v in _headers().items()]
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(cfg: PortalConfig, run: jobs.Runner | None = None) -> Any:
    """The portal as an ASGI application (``run``: the playbook runner, ``vcl_sched.runner.run`` by default)."""
    db.require_schema(cfg.db_url)
    routes = [
        Route("/", home),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login_submit, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/vms", vms),
        Route("/vms/{id}", vm_page),
        Route("/vms/{id}/console", console_page),
        Route("/vms/{id}/{action}", vm_action, methods=["POST"]),
        Route("/request", request_page, methods=["GET"]),
        Route("/request", request_submit, methods=["POST"]),
        Route("/seats", seats_page),
        Route("/seats/{id}/take", seat_take, methods=["POST"]),
        Route("/sessions", sessions_list, methods=["GET"]),
        Route("/sessions", sessions_book, methods=["POST"]),
        Route("/sessions/{id}", session_page),
        Route("/sessions/{id}/cancel", session_cancel, methods=["POST"]),
        Route("/status", status_page),
        Route("/status/timeline.svg", timeline_svg),
        Route("/jobs/{id}.json", job_json),
        Route("/jobs/{id}", job_page),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    if os.path.isdir(cfg.novnc_dir):
        routes.append(Mount("/novnc", app=StaticFiles(directory=cfg.novnc_dir), name="novnc"))
    app = Starlette(routes=routes, exception_handlers={404: not_found},
                    middleware=[Middleware(SessionMiddleware, secret_key=cfg.secret.hex(), session_cookie="vcl_session",
                                           max_age=SESSION_HOURS * 3600, same_site="lax", https_only=cfg.https)])
    app.state.portal = Portal(cfg, run)
    wrapped = asgi_csrf(app, signing_secret=cfg.secret.hex(), always_protect={"/login", "/logout"},
                        cookie_secure=cfg.https, cookie_samesite="Strict", send_csrf_failed=csrf_failed)
    wrapped.state = app.state  # type: ignore[attr-defined]
    return wrapped
