"""`vcl user ...` and `vcl group ...` (SPEC §7): people, their roles and passwords, groups and their members.

A password is never an argument (it would show in ``ps`` and in shell histories): ``--password-stdin`` reads
one line from standard input (from a terminal: without echo). It is never printed, whatever fails.
``cli.build_parser`` calls :func:`add_commands`.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from typing import Any

from . import people
from .errors import ValidationError
from .tables import EXIT_OK, emit

_Add = Callable[..., argparse.ArgumentParser]
USER_COLUMNS = ("id", "name", "role", "auth", "password_set", "groups")
GROUP_COLUMNS = ("id", "name", "owner", "members", "description")
MEMBER_COLUMNS = ("id", "name", "role", "auth", "password_set")


def _emit(args: argparse.Namespace, data: Any, text: Callable[[Any], str]) -> int:
    emit(args, data, text)
    return EXIT_OK


def read_password() -> str:
    """One line of standard input without its line ending; from a terminal, asked for without echo."""
    if sys.stdin is None:
        raise ValidationError("password", "--password-stdin: there is no standard input")
    if sys.stdin.isatty():
        return getpass.getpass("password: ")
    raw = sys.stdin.buffer.readline(people.PASSWORD_MAX * 4 + 2)  # UTF-8: at most 4 bytes a character
    if not raw:
        raise ValidationError("password", "--password-stdin: standard input is empty (give the password on one"
                                          " line)")
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError("password", "is not valid UTF-8") from None
    return line.removesuffix("\n").removesuffix("\r")


# --- users ------------------------------------------------------------------------------------------

def cmd_user_add(args: argparse.Namespace) -> int:
    if args.ldap and args.password_stdin:
        raise ValidationError("password", "an LDAP user's password is the directory's: drop --password-stdin")
    password = read_password() if args.password_stdin else None
    row = people.add_user(args.name, role=args.role, password=password, auth="ldap" if args.ldap else "local")
    how = "LDAP" if row["auth"] == "ldap" else "a password" if row["password_set"] else "no password yet"
    return _emit(args, row, lambda u: f"user {u['name']} added: {u['role']}, logs in with {how}")


def cmd_user_passwd(args: argparse.Namespace) -> int:
    row = people.set_password(args.name, read_password())
    return _emit(args, row, lambda u: f"password of {u['name']} set")


def cmd_user_set_role(args: argparse.Namespace) -> int:
    return _emit(args, people.set_role(args.name, args.role), lambda u: f"{u['name']} is now a {u['role']}")


def cmd_user_remove(args: argparse.Namespace) -> int:
    return _emit(args, people.remove_user(args.name), lambda r: f"user {r['removed']} removed")


def cmd_user_list(args: argparse.Namespace) -> int:
    from .tables import table

    return _emit(args, people.list_users(), lambda rows: table(rows, USER_COLUMNS))


def cmd_user_login(args: argparse.Namespace) -> int:
    actor = people.authenticate(args.name, read_password())
    data = {"name": actor.name, "role": actor.role, "id": actor.user_id}
    return _emit(args, data, lambda d: d["role"])


# --- groups -----------------------------------------------------------------------------------------

def cmd_group_add(args: argparse.Namespace) -> int:
    row = people.add_group(args.name, args.description, owner=args.owner)
    owned = f", owner {row['owner']}" if row["owner"] else ""
    return _emit(args, row, lambda g: f"group {g['name']} added (id {g['id']}{owned})")


def cmd_group_list(args: argparse.Namespace) -> int:
    from .tables import table

    return _emit(args, people.list_groups(), lambda rows: table(rows, GROUP_COLUMNS))


def cmd_group_members(args: argparse.Namespace) -> int:
    from .tables import table

    return _emit(args, people.group_members(args.group), lambda rows: table(rows, MEMBER_COLUMNS))


def cmd_group_add_member(args: argparse.Namespace) -> int:
    row = people.add_members(args.group, args.users, create=args.create)
    return _emit(args, row, lambda r: f"group {r['group']}: added {', '.join(r['added']) or 'nobody new'}"
                                      f" ({r['members']} members)")


def cmd_group_remove_member(args: argparse.Namespace) -> int:
    row = people.remove_members(args.group, args.users)
    return _emit(args, row, lambda r: f"group {r['group']}: removed {', '.join(r['removed']) or 'nobody'}"
                                      f" ({r['members']} members)")


def cmd_group_set_owner(args: argparse.Namespace) -> int:
    if args.none == (args.user is not None):
        raise ValidationError("user", "name the new owner, or give --none for no owner (not both)")
    row = people.set_owner(args.group, args.user)
    return _emit(args, row, lambda r: f"group {r['group']} is owned by {r['owner'] or 'nobody (admins only)'}")


# --- parser -----------------------------------------------------------------------------------------

def add_commands(sub: argparse._SubParsersAction, add: _Add) -> None:  # type: ignore[type-arg]
    """Add `vcl user ...` and `vcl group ...` to the `vcl` parser; ``add(name, func, help, parent)`` is
    ``cli.build_parser``'s helper (it adds the common options: --json, --db, --now)."""
    roles = ", ".join(people.ROLES)
    usr = sub.add_parser("user", help="people: roles, passwords, LDAP login").add_subparsers(dest="sub",
                                                                                           required=True)
    p = add("add", cmd_user_add, "add a user (a student unless --role says otherwise)", usr)
    p.add_argument("name")
    p.add_argument("--role", default=people.STUDENT, help=f"{roles} (default student)")
    p.add_argument("--ldap", action="store_true", help="logs in through the directory (ldap_url, ldap_user_dn)")
    p.add_argument("--password-stdin", action="store_true", dest="password_stdin",
                   help="read the password from one line of standard input")
    p = add("passwd", cmd_user_passwd, "set a local user's password (read from standard input)", usr)
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true", dest="password_stdin", required=True,
                   help="read the password from one line of standard input")
    p = add("set-role", cmd_user_set_role, f"change a user's role ({roles})", usr)
    p.add_argument("name")
    p.add_argument("role", help=roles)
    p = add("remove", cmd_user_remove, "delete a user (refused while they hold a VM)", usr)
    p.add_argument("name")
    add("list", cmd_user_list, "list users: role, how they log in, whether a password is set, groups", usr)
    p = add("login", cmd_user_login, "check a user's password (local or LDAP) and print their role", usr)
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true", dest="password_stdin", required=True,
                   help="read the password from one line of standard input")

    grp = sub.add_parser("group", help="groups (classes): owner and members").add_subparsers(dest="sub",
                                                                                              required=True)
    p = add("add", cmd_group_add, "add a group", grp)
    p.add_argument("name")
    p.add_argument("--description", default="")
    p.add_argument("--owner", help="the teacher who owns it (a teacher's own groups: themselves)")
    add("list", cmd_group_list, "list groups with their owner and member count", grp)
    p = add("members", cmd_group_members, "list a group's members", grp)
    p.add_argument("group")
    p = add("add-member", cmd_group_add_member, "add users to a group", grp)
    p.add_argument("group")
    p.add_argument("users", nargs="+", metavar="USER")
    p.add_argument("--create", action="store_true", help="add unknown names as students without a password")
    p = add("remove-member", cmd_group_remove_member, "remove users from a group", grp)
    p.add_argument("group")
    p.add_argument("users", nargs="+", metavar="USER")
    p = add("set-owner", cmd_group_set_owner, "give a group to a teacher (or an admin)", grp)
    p.add_argument("group")
    p.add_argument("user", nargs="?", help="the new owner")
    p.add_argument("--none", action="store_true", help="no owner: admins only manage it")
