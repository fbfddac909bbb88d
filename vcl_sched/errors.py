"""Errors the scheduler raises. Every message names the field or the object at fault."""

from __future__ import annotations


class VclError(Exception):
    """Base class: the `vcl` command prints ``str(err)`` on one line and exits non-zero."""


class ValidationError(VclError):
    """An input value is wrong. ``field`` is the user-facing option name (``ram_mb``, ``start``...)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class NotFoundError(VclError):
    """A named object (slave, image, group, instance...) does not exist."""


class ConflictError(VclError):
    """The request is valid but conflicts with the current state (duplicate name, busy slave...)."""


class CapacityError(VclError):
    """Not enough capacity or addresses; the message says which resource ran out."""


class ForbiddenError(VclError):
    """The acting user's role does not allow this (SPEC §7); the message says what and why, never more than the
    user may know (a student asking for another's VM is told it is not theirs, not what it is)."""


class AuthError(VclError):
    """A login failed. The message never says whether the name or the password was wrong."""
