"""What each role may do with bookings, seats and VMs (SPEC §7), and the priority inputs that follow from who
asks (SPEC §3).

- admin: everything; ``platform_value`` and ``member`` given by hand are overrides within their bounds.
- teacher: books sessions for the groups they own, takes seats for those groups' members, sees their seats
  and cancels their sessions.
- student: uses seats of their groups (their own seat only), requests best-effort VMs for a group they belong
  to, sees only their own VMs.

Every function runs inside the caller's transaction or snapshot (a ``Session`` or a ``db.Direct``), so the check
and the write it guards see the same rows. A refusal is a ``ForbiddenError`` whose message names the field.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select

from . import db, people
from .acting import ADMIN, STUDENT, TEACHER, Actor
from .errors import ForbiddenError
from .models import Image

DEFAULT_PLATFORM_VALUE = 5.0  # PfV of a request without an image (the paper's worked examples use 5)

_IMAGE_PFV = db.Prepared(select(Image.platform_value).where(Image.id == bindparam("iid")))
fresh = people.fresh  # the acting user with their role as the database has it now


def owns(q: Any, actor: Actor, group_id: int) -> bool:
    return actor.user_id is not None and people.group_owner(q, group_id) == actor.user_id


def belongs(q: Any, user_id: int | None, group_id: int) -> bool:
    """A member of the group, or its owner."""
    if user_id is None:
        return False
    return people.is_member(q, user_id, group_id) or people.group_owner(q, group_id) == user_id


def members(q: Any, group_id: int) -> list[tuple[int, str]]:
    """The group's members (id, name), by name: who prelaunched seats are handed to."""
    return people.members_of(q, group_id)


def user_id_of(q: Any, name: str) -> int | None:
    info = people.user_info(q, name)
    return info[0] if info is not None else None


def check_book(q: Any, actor: Actor, group_id: int, group: str) -> None:
    """Booking a session (an advance reservation) for ``group``."""
    actor = fresh(q, actor)
    if actor.role == ADMIN or (actor.role == TEACHER and owns(q, actor, group_id)):
        return
    if actor.role == TEACHER:
        raise ForbiddenError(f"owner: {actor.name} does not own group {group}: teachers book sessions for the"
                             " groups they own")
    raise ForbiddenError(f"owner: {actor.name} is a student: sessions are booked by the group's teacher")


def check_request(q: Any, actor: Actor, group_id: int, group: str, user: str | None) -> None:
    """A best-effort request charged to ``group`` on behalf of ``user``."""
    actor = fresh(q, actor)
    if actor.role == ADMIN:
        return
    if user is not None and user != actor.name:
        raise ForbiddenError(f"user: {actor.name} may request VMs only for themselves, not for {user}")
    if not belongs(q, actor.user_id, group_id):
        raise ForbiddenError(f"owner: {actor.name} is not a member of group {group}")


def check_seat(q: Any, actor: Actor, group_id: int, group: str, user_id: int | None, user: str) -> None:
    """Taking a seat of a session of ``group`` for ``user``."""
    actor = fresh(q, actor)
    if user_id is None or not people.is_member(q, user_id, group_id):
        raise ForbiddenError(f"user: {user} is not a member of group {group}")
    if actor.role == ADMIN or (actor.role == TEACHER and owns(q, actor, group_id)):
        return
    if actor.role == STUDENT and actor.user_id == user_id:
        return
    raise ForbiddenError(f"user: {actor.name} may take a seat only for themselves")


def check_session(q: Any, actor: Actor, group_id: int, group: str, *, change: bool = False) -> bool:
    """Seeing (or, with ``change``, cancelling) a session of ``group``. Returns whether the actor sees every
    seat (admins, the group's teacher); a member who is a student sees only their own seat."""
    actor = fresh(q, actor)
    if actor.role == ADMIN or (actor.role == TEACHER and owns(q, actor, group_id)):
        return True
    if not change and belongs(q, actor.user_id, group_id):
        return False
    what = "cancel" if change else "see"
    raise ForbiddenError(f"reservation: {actor.name} may not {what} the sessions of group {group}")


def check_instance(q: Any, actor: Actor, owner_id: int | None, group_id: int) -> None:
    """Acting on (or seeing) one VM: its owner, the teacher of its group, admins."""
    actor = fresh(q, actor)
    if actor.role == ADMIN or (actor.user_id is not None and actor.user_id == owner_id) \
            or (actor.role == TEACHER and owns(q, actor, group_id)):
        return
    raise ForbiddenError(f"id: not a VM of {actor.name}")


def require_admin(q: Any, what: str) -> None:
    """The lab's own settings, slaves and images: admins only (the controller's user is one)."""
    from .acting import current

    actor = fresh(q, current())
    if actor.role != ADMIN:
        raise ForbiddenError(f"{what}: only the lab's admins may do this ({actor.name} is a {actor.role})")


def priority_inputs(q: Any, actor: Actor, group_id: int, image_id: int | None, user_id: int | None,
                    platform_value: Any, member: Any) -> tuple[Any, Any]:
    """(PfV, MON) of a request (SPEC §3): PfV is the image's (bounded later by ``platform_value_max``), MON is
    whether the user belongs to the owning group. Admins may give either by hand (an override within the
    bounds); anybody else giving them is refused, naming the field."""
    actor = fresh(q, actor)
    if actor.role != ADMIN:
        for field, value in (("platform_value", platform_value), ("member", member)):
            if value is not None:
                raise ForbiddenError(f"{field}: set by the lab for {actor.name}'s requests (admins only may"
                                     " override it)")
        user_id = actor.user_id
    if platform_value is None:
        pfv = _IMAGE_PFV.scalar(q, {"iid": image_id}) if image_id is not None else None
        platform_value = DEFAULT_PLATFORM_VALUE if pfv is None else pfv
    if member is None:
        member = 1 if belongs(q, user_id, group_id) else 0
    return platform_value, member
