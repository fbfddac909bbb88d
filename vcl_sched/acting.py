"""Who is acting (SPEC §7): every service call runs on behalf of one :class:`Actor`.

The controller's own user (root on the master, or whoever runs ``vcl`` and ``ansible-playbook`` with the
lab database) is the lab's admin: it reads and writes the database directly, so no check could stop it.
People who are not admins act through the portal (or ``vcl --as USER`` with their password, or a playbook's
``acting_user`` that the portal or the CLI fills in after a login): the service layer then checks their role.

:func:`acting` sets the actor for the calls inside it (a context variable: safe across threads and asyncio
tasks); :func:`current` is who acts now; the audit log records ``current().name`` with every change.
"""

from __future__ import annotations

import contextlib
import contextvars
import getpass
import os
from collections.abc import Iterator
from dataclasses import dataclass

ADMIN, TEACHER, STUDENT = "admin", "teacher", "student"
ROLES = (ADMIN, TEACHER, STUDENT)


@dataclass(frozen=True, slots=True)
class Actor:
    name: str
    role: str  # admin, teacher or student
    user_id: int | None = None  # None: the controller's own user, not a row of ``users``

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    @property
    def is_controller(self) -> bool:
        return self.user_id is None and self.role == ADMIN


def controller() -> Actor:
    """The controller's user: the admin (``VCL_ACTOR`` names it in the audit log, else the login name)."""
    return Actor(os.environ.get("VCL_ACTOR") or getpass.getuser(), ADMIN, None)


_current: contextvars.ContextVar[Actor | None] = contextvars.ContextVar("vcl_actor", default=None)


def current() -> Actor:
    return _current.get() or controller()


@contextlib.contextmanager
def acting(actor: Actor | None) -> Iterator[Actor]:
    """Run the calls inside on behalf of ``actor`` (None: the controller's admin)."""
    token = _current.set(actor)
    try:
        yield current()
    finally:
        _current.reset(token)
