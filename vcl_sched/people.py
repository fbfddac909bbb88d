"""People (SPEC §7): users and their passwords, LDAP login, roles, groups with an owner and members.

Passwords are stored as Argon2id hashes (argon2-cffi's ``PasswordHasher``: RFC 9106's second recommended
profile, t=3 passes over m=64 MiB with p=4 lanes, a 16-byte random salt, a 32-byte tag) and checked with it;
a hash made with older parameters is replaced at the next good login. A password or a hash is never printed,
logged or audited: the audit row of a change says ``{"password": "set"}``.

A user whose ``auth`` is ``ldap`` (or a name the lab does not know, or a user without a password, when the
``ldap_url`` setting is set) logs in by a simple bind to the directory as ``ldap_user_dn`` with ``{user}``
replaced by the escaped name; a first LDAP login creates the user as a student. Whatever failed, a login
that fails says ``name or password is wrong``; only a directory that does not answer says so.

Permissions: an admin does everything; a teacher creates groups (and owns them), and lists and changes the
members of the groups they own; a student manages nothing. The acting user is ``acting.current()``; their
role is read again in the transaction, so a demoted or removed user loses their rights at once.

``user_info``, ``is_member``, ``group_owner`` and ``members_of`` run inside other writers' transactions
(bookings, seats), on a ``Session`` or a ``db.Direct`` cursor alike.
"""

from __future__ import annotations

import contextlib
import ssl
import warnings
from collections.abc import Iterable
from functools import cache
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from . import acting, config, db
from .acting import ADMIN, ROLES, STUDENT, TEACHER, Actor
from .audit import audit
from .errors import AuthError, ConflictError, ForbiddenError, NotFoundError, ValidationError
from .models import AuthSource, Group, Instance, InstanceState, Membership, Reservation, Series, User, UserRole
from .validate import check_name, shown, text_value

PASSWORD_MIN, PASSWORD_MAX = 8, 256
SET = "set"  # what the audit log says of a password: never the password nor its hash
AUTH_SOURCES = tuple(a.value for a in AuthSource)
WRONG = "name or password is wrong"
LDAP_TIMEOUT = 5  # seconds to connect to the directory, and to wait for its answer
LIVE_STATES = (InstanceState.PENDING, InstanceState.RUNNING, InstanceState.SUSPENDED)



@cache
def hasher() -> Any:
    """argon2-cffi's ``PasswordHasher`` with its defaults: Argon2id, RFC 9106's second recommendation (3 passes
    over 64 MiB, 4 lanes, 16-byte salt, 32-byte hash). Imported on first use: most `vcl` commands never hash."""
    from argon2 import PasswordHasher

    return PasswordHasher()


# --- passwords ---------------------------------------------------------------------------------------

def check_password(password: Any) -> str:
    """A new password: 8..256 printable characters. The message never shows the password."""
    if not isinstance(password, str):
        raise ValidationError("password", "is not text")
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise ValidationError("password", f"must be {PASSWORD_MIN} to {PASSWORD_MAX} characters long"
                                          f" (it has {len(password)})")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("password", "is not valid UTF-8") from None
    if not password.isprintable():
        raise ValidationError("password", "must be printable characters only (no tabs, newlines or control"
                                          " characters)")
    return password


def hash_password(password: str) -> str:
    """The Argon2id hash of a new password (checked first: ``check_password``)."""
    return hasher().hash(check_password(password))


def verify_password(hash_: str, password: str) -> bool:
    """Whether ``password`` matches the Argon2 hash; a malformed hash or a non-text value is False."""
    from argon2.exceptions import InvalidHashError, VerificationError

    if not isinstance(hash_, str) or not isinstance(password, str):
        return False
    try:
        return hasher().verify(hash_, password)
    except (VerificationError, InvalidHashError):  # VerifyMismatchError is a VerificationError
        return False


def needs_rehash(hash_: str) -> bool:
    """Whether the hash was made with other parameters than today's (it is replaced at the next good login)."""
    from argon2.exceptions import InvalidHashError

    try:
        return hasher().check_needs_rehash(hash_)
    except (InvalidHashError, ValueError):
        return True


@cache
def _decoy_hash() -> str:
    import secrets

    return hasher().hash(secrets.token_hex(16))


def _spend_a_verify(password: str) -> None:
    """A failed login costs the same whether the user exists or not (no timing oracle for names)."""
    verify_password(_decoy_hash(), password)


# --- lookups inside other writers' transactions -----------------------------------------------------

_USER_INFO = db.Prepared(select(User.id, User.role).where(User.name == bindparam("name")))
_IS_MEMBER = db.Prepared(select(Membership.user_id).where(Membership.user_id == bindparam("uid"),
                                                          Membership.group_id == bindparam("gid")))
_GROUP_OWNER = db.Prepared(select(Group.owner_id).where(Group.id == bindparam("gid")))
_MEMBERS_OF = db.Prepared(select(User.id, User.name).join(Membership, Membership.user_id == User.id)
                          .where(Membership.group_id == bindparam("gid")).order_by(User.name))
_GROUP_ID = db.Prepared(select(Group.id).where(Group.name == bindparam("name")))
_NEW_USER = db.Prepared(insert(User).returning(User.id),
                        ("name", "declines", "registered_slave", "created_at", "role", "auth", "password_hash"))
_NEW_MEMBER = db.Prepared(insert(Membership), ("user_id", "group_id"))


def user_info(q: Session | db.Direct, name: str) -> tuple[int, str] | None:
    """The user's (id, role), or None."""
    row = _USER_INFO.first(q, {"name": name})
    return None if row is None else (row[0], str(row[1]))


def is_member(q: Session | db.Direct, user_id: int, group_id: int) -> bool:
    return _IS_MEMBER.first(q, {"uid": user_id, "gid": group_id}) is not None


def group_owner(q: Session | db.Direct, group_id: int) -> int | None:
    """The id of the group's owner (None: no owner, or no such group)."""
    return _GROUP_OWNER.scalar(q, {"gid": group_id})


def members_of(q: Session | db.Direct, group_id: int) -> list[tuple[int, str]]:
    """The group's members as (id, name), ordered by name."""
    return [(row[0], row[1]) for row in _MEMBERS_OF.all(q, {"gid": group_id})]


def _new_user(q: Session | db.Direct, name: str, role: str, auth: str, password_hash: str | None,
              via: str | None = None) -> int:
    user_id = _NEW_USER.scalar(q, {"name": name, "declines": 0, "registered_slave": 0, "created_at": config.now(),
                                   "role": UserRole(role), "auth": AuthSource(auth), "password_hash": password_hash})
    after: dict[str, Any] = {"name": name, "role": role, "auth": auth}
    if password_hash is not None:
        after["password"] = SET
    if via is not None:
        after["via"] = via
    audit(q, "user", user_id, "create", None, after)
    return user_id


# --- who acts, and what they may do -----------------------------------------------------------------

def fresh(q: Session | db.Direct, actor: Actor) -> Actor:
    """``actor`` with their role as the database has it now (a user demoted or removed since they logged in loses
    the rights at once); the controller's admin stays admin."""
    if actor.is_controller:
        return actor
    info = user_info(q, actor.name)
    if info is None or (actor.user_id is not None and info[0] != actor.user_id):
        raise ForbiddenError(f"acting user: {actor.name!r} is not a user of the lab (any more)")
    return Actor(actor.name, info[1], info[0])


def _acting(q: Session | db.Direct) -> tuple[Actor, str, int | None]:
    """The acting user, their role as the database has it now, and their id (None: the controller)."""
    actor = fresh(q, acting.current())
    return actor, actor.role, actor.user_id


def _admin_only(q: Session | db.Direct, what: str) -> Actor:
    actor, role, _ = _acting(q)
    if role != ADMIN:
        raise ForbiddenError(f"{what}: only an admin may do this ({actor.name} is a {role})")
    return actor


def _manages_group(q: Session | db.Direct, group_id: int, group: str) -> None:
    """Admins manage every group; a teacher the groups they own; a student none."""
    actor, role, user_id = _acting(q)
    if role == ADMIN:
        return
    if role == TEACHER:
        if group_owner(q, group_id) != user_id:
            raise ForbiddenError(f"group: {actor.name} is a teacher and does not own group {group!r}")
        return
    raise ForbiddenError(f"group: {actor.name} is a student: students do not manage groups")


def _group_id(q: Session | db.Direct, group: str) -> int:
    group_id = _GROUP_ID.scalar(q, {"name": group})
    if group_id is None:
        raise NotFoundError(f"group: no group named {group!r}")
    return group_id


def _user(session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFoundError(f"name: no user named {name!r}")
    return user


def check_role(role: Any) -> str:
    if not isinstance(role, str) or role.strip() not in ROLES:
        raise ValidationError("role", f"{shown(role)}: choose one of {', '.join(ROLES)}")
    return role.strip()


def _check_auth(auth: Any) -> str:
    if not isinstance(auth, str) or auth.strip() not in AUTH_SOURCES:
        raise ValidationError("auth", f"{shown(auth)}: choose one of {', '.join(AUTH_SOURCES)}")
    return auth.strip()


# --- users ------------------------------------------------------------------------------------------

def add_user(name: str, role: str = STUDENT, password: str | None = None, auth: str = "local",
             url: str | None = None) -> dict[str, Any]:
    """A new user (admins only). A local user without a password cannot log in until one is set; an LDAP
    user's password is the directory's."""
    name = check_name("name", name)
    role = check_role(role)
    auth = _check_auth(auth)
    if auth == "ldap" and password is not None:
        raise ValidationError("password", "an LDAP user's password is the directory's: give none")
    hashed = hash_password(password) if password is not None else None  # slow: before the transaction
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        _admin_only(session, "user add")
        if user_info(session, name) is not None:
            raise ConflictError(f"name: a user named {name!r} exists already")
        user_id = _new_user(session, name, role, auth, hashed)
        return {"id": user_id, "name": name, "role": role, "auth": auth, "password_set": hashed is not None,
                "groups": []}

    return db.write(apply, url)


def set_password(name: str, password: str, url: str | None = None) -> dict[str, Any]:
    """A local user's new password: set by an admin, or by the user themselves."""
    name = check_name("name", name)
    hashed = hash_password(password)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        actor, role, user_id = _acting(session)
        user = _user(session, name)
        if role != ADMIN and user.id != user_id:
            raise ForbiddenError(f"name: {actor.name} may change only their own password")
        if user.auth == AuthSource.LDAP:
            raise ValidationError("password", f"{name} logs in through LDAP: their password is the directory's")
        before = {"password": "set" if user.password_hash else "none"}
        user.password_hash = hashed
        audit(session, "user", user.id, "password", before, {"password": "set"})
        return {"name": name, "password_set": True}

    return db.write(apply, url)


def set_role(name: str, role: str, url: str | None = None) -> dict[str, Any]:
    """Make a user an admin, a teacher or a student (admins only). A user who owns groups stays a teacher
    or an admin until the groups have another owner."""
    name = check_name("name", name)
    role = check_role(role)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        _admin_only(session, "user set-role")
        user = _user(session, name)
        before = str(user.role)
        if before != role:
            if role == STUDENT:
                owned = list(session.scalars(select(Group.name).where(Group.owner_id == user.id)
                                             .order_by(Group.name)))
                if owned:
                    raise ConflictError(f"role: {name} owns group(s) {', '.join(owned)}: give them another owner"
                                        " first (`vcl group set-owner`)")
            user.role = UserRole(role)
            audit(session, "user", user.id, "role", {"role": before}, {"role": role})
        return {"name": name, "role": role}

    return db.write(apply, url)


def remove_user(name: str, url: str | None = None) -> dict[str, Any]:
    """Delete a user (admins only); refused while they hold a pending, running or suspended VM. Their
    memberships go; the groups they owned have no owner; their past VMs and bookings stay, without them."""
    name = check_name("name", name)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        _admin_only(session, "user remove")
        user = _user(session, name)
        live = session.execute(select(Instance.id, Instance.state).where(Instance.user_id == user.id,
                                                                         Instance.state.in_(LIVE_STATES))
                               .order_by(Instance.id)).first()
        if live is not None:
            raise ConflictError(f"name: {name} holds instance {live[0]} ({live[1]}): stop it first")
        for model in (Instance, Reservation, Series):
            session.execute(update(model).where(model.user_id == user.id).values(user_id=None))
        session.execute(update(Group).where(Group.owner_id == user.id).values(owner_id=None))
        session.execute(delete(Membership).where(Membership.user_id == user.id))
        user_id = user.id
        before = {"name": name, "role": str(user.role), "auth": str(user.auth)}
        session.delete(user)
        session.flush()
        audit(session, "user", user_id, "remove", before, None)
        return {"removed": name, "id": user_id}

    return db.write(apply, url)


def _user_rows(session: Session, users: Iterable[User]) -> list[dict[str, Any]]:
    groups: dict[int, list[str]] = {}
    for user_id, group in session.execute(select(Membership.user_id, Group.name)
                                          .join(Group, Group.id == Membership.group_id).order_by(Group.name)):
        groups.setdefault(user_id, []).append(group)
    return [{"id": u.id, "name": u.name, "role": str(u.role), "auth": str(u.auth),
             "password_set": u.password_hash is not None, "groups": groups.get(u.id, [])} for u in users]


def list_users(url: str | None = None) -> list[dict[str, Any]]:
    """Users with their role, how they log in, whether a password is set and their groups (never a hash).
    An admin sees everyone; a teacher themselves and the members of the groups they own; a student
    themselves."""
    db.require_schema(url)
    with db.read(url) as session:
        _, role, user_id = _acting(session)
        query = select(User).order_by(User.name)
        if role == TEACHER:
            owned = select(Membership.user_id).join(Group, Group.id == Membership.group_id) \
                .where(Group.owner_id == user_id)
            query = query.where((User.id == user_id) | User.id.in_(owned))
        elif role != ADMIN:
            query = query.where(User.id == user_id)
        return _user_rows(session, session.scalars(query))


def actor_for(name: str, url: str | None = None) -> Actor:
    """The Actor of an existing user, without a password check: for the controller's side (the portal, the
    CLI) once the user has logged in."""
    name = check_name("name", name)
    db.require_schema(url)
    with db.read(url) as session:
        info = user_info(session, name)
    if info is None:
        raise NotFoundError(f"name: no user named {name!r}")
    return Actor(name, info[1], info[0])


# --- login ------------------------------------------------------------------------------------------

_LOGIN = db.Prepared(select(User.id, User.role, User.auth, User.password_hash).where(User.name == bindparam("name")))


def authenticate(name: str, password: str, url: str | None = None) -> Actor:
    """Who logs in with this name and password, or ``AuthError``: a local user's Argon2 hash; an LDAP user (or,
    when ``ldap_url`` is set, a name the lab does not know or a user without a password) by a bind to the
    directory. A first LDAP login creates the user as a student. An empty password never logs anyone in."""
    name = check_name("name", name)
    if not isinstance(password, str) or not password or len(password) > PASSWORD_MAX:
        raise AuthError(WRONG)
    db.require_schema(url)
    with db.read(url) as session:
        row = _LOGIN.first(session, {"name": name})
        settings = db.load_settings(session)
    if row is not None and row[2] == AuthSource.LOCAL and row[3] is not None:
        user_id, role, _, hashed = row
        if not verify_password(hashed, password):
            raise AuthError(WRONG)
        if needs_rehash(hashed):
            _rehash(user_id, hashed, password, url)
        return Actor(name, str(role), user_id)
    if not settings.ldap_url:
        _spend_a_verify(password)
        raise AuthError(WRONG)
    _ldap_bind(settings.ldap_url, settings.ldap_user_dn, name, password)
    return _after_ldap_login(name, url)


def _rehash(user_id: int, old: str, password: str, url: str | None) -> None:
    new = hasher().hash(password)

    def apply(session: Session) -> None:
        done = session.execute(update(User).where(User.id == user_id, User.password_hash == old)
                               .values(password_hash=new)).rowcount
        if done:  # else a concurrent change of the password won: keep it
            audit(session, "user", user_id, "rehash", None, {"password": "set"})

    db.write(apply, url)


def _after_ldap_login(name: str, url: str | None) -> Actor:
    """The user the directory vouched for: created on a first login (a student), marked as an LDAP user when
    they had no password of the lab's."""

    def apply(session: Session) -> Actor:
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            user_id = _new_user(session, name, STUDENT, "ldap", None, via="ldap login")
            return Actor(name, STUDENT, user_id)
        if user.auth != AuthSource.LDAP:
            if user.password_hash is not None:  # given a password in the meantime: the lab's password rules
                raise AuthError(WRONG)
            user.auth = AuthSource.LDAP
            audit(session, "user", user.id, "auth", {"auth": "local"}, {"auth": "ldap"})
        return Actor(name, str(user.role), user.id)

    return db.write(apply, url)


def _ldap_bind(ldap_url: str, user_dn: str, name: str, password: str) -> None:
    """A simple bind as the user's DN; AuthError unless the directory says the password is right."""
    with warnings.catch_warnings():  # ldap3 2.9.1 imports names pyasn1 deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        import ldap3
        from ldap3.core.exceptions import LDAPException
        from ldap3.utils.dn import escape_rdn

    if not password:  # never an unauthenticated bind (RFC 4513 5.1.2): some directories call it a success
        raise AuthError(WRONG)
    dn = user_dn.replace("{user}", escape_rdn(name))
    use_ssl = ldap_url.lower().startswith("ldaps://")
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED) if use_ssl else None
    server = ldap3.Server(ldap_url, use_ssl=use_ssl, tls=tls, get_info=ldap3.NONE, connect_timeout=LDAP_TIMEOUT)
    conn = ldap3.Connection(server, user=dn, password=password, authentication=ldap3.SIMPLE, read_only=True,
                            auto_referrals=False, raise_exceptions=False, receive_timeout=LDAP_TIMEOUT)
    try:
        bound = conn.bind()
        result = (conn.result or {}).get("result")
    except LDAPException:
        raise AuthError("the directory (ldap_url) did not answer: try again later") from None
    finally:
        with contextlib.suppress(LDAPException):
            conn.unbind()
    if result in (51, 52):  # busy, unavailable
        raise AuthError("the directory (ldap_url) did not answer: try again later")
    if not bound or result != 0:
        raise AuthError(WRONG)


# --- groups -----------------------------------------------------------------------------------------

def _owner_id(q: Session | db.Direct, owner: str) -> int:
    info = user_info(q, owner)
    if info is None:
        raise ValidationError("owner", f"no user named {owner!r} (add them with `vcl user add {owner} --role"
                                       " teacher`)")
    if info[1] not in (TEACHER, ADMIN):
        raise ValidationError("owner", f"{owner} is a {info[1]}: a group's owner is a teacher or an admin")
    return info[0]


def add_group(name: str, description: str = "", owner: str | None = None, url: str | None = None) -> dict[str, Any]:
    """A new group. An admin may give it any teacher (or admin) as owner, or none; a teacher's group is
    theirs; a student may not create groups."""
    name = check_name("name", name)
    description = text_value("description", description)
    owner = check_name("owner", owner) if owner is not None else None
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        nonlocal owner
        actor, role, _ = _acting(session)
        if role == STUDENT:
            raise ForbiddenError(f"group: {actor.name} is a student: students do not create groups")
        if role == TEACHER:
            if owner is not None and owner != actor.name:
                raise ForbiddenError(f"owner: {actor.name} is a teacher: the groups they create are their own")
            owner = actor.name
        owner_id = _owner_id(session, owner) if owner is not None else None
        if _GROUP_ID.scalar(session, {"name": name}) is not None:
            raise ConflictError(f"name: a group named {name!r} exists already")
        group = Group(name=name, description=description, owner_id=owner_id, created_at=config.now())
        session.add(group)
        session.flush()
        audit(session, "group", group.id, "create", None, {"name": name, "owner": owner})
        return {"id": group.id, "name": name, "description": description, "owner": owner}

    return db.write(apply, url)


def set_owner(group: str, owner: str | None, url: str | None = None) -> dict[str, Any]:
    """Give a group to a teacher (or an admin), or to nobody with None (admins only)."""
    group = check_name("group", group)
    owner = check_name("owner", owner) if owner is not None else None
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        _admin_only(session, "group set-owner")
        row = session.scalar(select(Group).where(Group.name == group))
        if row is None:
            raise NotFoundError(f"group: no group named {group!r}")
        owner_id = _owner_id(session, owner) if owner is not None else None
        if row.owner_id != owner_id:
            before = session.scalar(select(User.name).where(User.id == row.owner_id)) if row.owner_id else None
            row.owner_id = owner_id
            audit(session, "group", row.id, "owner", {"owner": before}, {"owner": owner})
        return {"group": group, "owner": owner}

    return db.write(apply, url)


def _names(names: Any) -> list[str]:
    if isinstance(names, str | int):
        names = [names]
    if not isinstance(names, list | tuple) or not names:
        raise ValidationError("user", "name at least one user")
    return list(dict.fromkeys(check_name("user", n) for n in names))


def add_members(group: str, names: Any, url: str | None = None, create: bool = False) -> dict[str, Any]:
    """Users join the group (admins, or the teacher who owns it). Unknown names are an error naming them,
    unless ``create``: then they are added as students without a password."""
    group = check_name("group", group)
    wanted = _names(names)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        group_id = _group_id(session, group)
        _manages_group(session, group_id, group)
        infos = {n: user_info(session, n) for n in wanted}
        unknown = [n for n, info in infos.items() if info is None]
        if unknown and not create:
            raise ValidationError("user", f"no user named {', '.join(unknown)} (add them with `vcl user add`)")
        added = []
        for name in wanted:
            info = infos[name]
            user_id = info[0] if info is not None else _new_user(session, name, STUDENT, "local", None,
                                                                 via=f"group {group}")
            if not is_member(session, user_id, group_id):
                _NEW_MEMBER.run(session, {"user_id": user_id, "group_id": group_id})
                audit(session, "group", group_id, "add-member", None, {"user": name})
                added.append(name)
        return {"group": group, "added": added, "created": unknown, "members": len(members_of(session, group_id))}

    return db.write(apply, url)


def remove_members(group: str, names: Any, url: str | None = None) -> dict[str, Any]:
    """Users leave the group (admins, or the teacher who owns it); unknown names are an error naming them."""
    group = check_name("group", group)
    wanted = _names(names)
    db.require_schema(url)

    def apply(session: Session) -> dict[str, Any]:
        group_id = _group_id(session, group)
        _manages_group(session, group_id, group)
        infos = {n: user_info(session, n) for n in wanted}
        unknown = [n for n, info in infos.items() if info is None]
        if unknown:
            raise ValidationError("user", f"no user named {', '.join(unknown)}")
        removed = []
        for name in wanted:
            user_id = infos[name][0]  # type: ignore[index]
            if is_member(session, user_id, group_id):
                session.execute(delete(Membership).where(Membership.user_id == user_id,
                                                         Membership.group_id == group_id))
                audit(session, "group", group_id, "remove-member", {"user": name}, None)
                removed.append(name)
        return {"group": group, "removed": removed, "members": len(members_of(session, group_id))}

    return db.write(apply, url)


def group_members(group: str, url: str | None = None) -> list[dict[str, Any]]:
    """The group's members (admins, or the teacher who owns it), ordered by name."""
    group = check_name("group", group)
    db.require_schema(url)
    with db.read(url) as session:
        group_id = _group_id(session, group)
        _manages_group(session, group_id, group)
        return [{"id": u.id, "name": u.name, "role": str(u.role), "auth": str(u.auth),
                 "password_set": u.password_hash is not None}
                for u in session.scalars(select(User).join(Membership, Membership.user_id == User.id)
                                         .where(Membership.group_id == group_id).order_by(User.name))]


def list_groups(url: str | None = None) -> list[dict[str, Any]]:
    """Groups with their owner and how many members they have: every group for an admin, a teacher's own."""
    db.require_schema(url)
    with db.read(url) as session:
        actor, role, user_id = _acting(session)
        if role == STUDENT:
            raise ForbiddenError(f"group: {actor.name} is a student: students do not manage groups")
        counts = select(Membership.group_id, func.count().label("n")).group_by(Membership.group_id).subquery()
        query = (select(Group.id, Group.name, Group.description, User.name, func.coalesce(counts.c.n, 0))
                 .outerjoin(User, User.id == Group.owner_id).outerjoin(counts, counts.c.group_id == Group.id)
                 .order_by(Group.name))
        if role == TEACHER:
            query = query.where(Group.owner_id == user_id)
        return [{"id": gid, "name": name, "description": description, "owner": owner, "members": n}
                for gid, name, description, owner, n in session.execute(query)]
