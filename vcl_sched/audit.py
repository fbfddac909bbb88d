"""The audit log: one row per change, written in the transaction that makes the change, and read back.

``audit`` runs in a ``Session`` or a ``db.Direct`` transaction alike (a prepared INSERT), so a rolled
back change leaves no audit row. ``before`` and ``after`` are stored as sorted JSON.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from . import acting, config, db
from .models import AuditLog
from .validate import iso


def actor() -> str:
    """Who the audit log names for a change: the acting user (``acting.acting``), else the controller's."""
    return acting.current().name


_AUDIT = db.Prepared(insert(AuditLog), ("at", "actor", "object_type", "object_id", "action", "before", "after"))


def audit(q: Session | db.Direct, obj_type: str, obj_id: int, action: str, before: dict | None,
          after: dict | None, at: datetime | None = None) -> None:
    _AUDIT.run(q, {"at": at or config.now(), "actor": actor(), "object_type": obj_type, "object_id": obj_id,
                   "action": action,
                   "before": json.dumps(before, default=str, sort_keys=True) if before is not None else None,
                   "after": json.dumps(after, default=str, sort_keys=True) if after is not None else None})


def audit_log(url: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    db.require_schema(url)
    with db.read(url) as session:
        rows = session.scalars(select(AuditLog).order_by(AuditLog.id.desc()).limit(limit))
        return [{"id": a.id, "at": iso(a.at), "actor": a.actor, "object": f"{a.object_type}/{a.object_id}",
                 "action": a.action, "before": a.before, "after": a.after} for a in rows]
