"""Audit trail of security-relevant actions, written in the caller's transaction."""

from __future__ import annotations

import uuid
from typing import Any

from app.db import db
from app.models import AuditLog


def record(
    action: str,
    *,
    user_id: uuid.UUID | None = None,
    target_type: str | None = None,
    target_id: Any = None,
    client_addr: str | None = None,
    **details: Any,
) -> AuditLog:
    """Add an audit row to the current session; the calling service commits it."""
    entry = AuditLog(
        user_id=user_id,
        action=action,
        target_type=target_type,
        target_id=str(target_id) if target_id is not None else None,
        client_addr=(client_addr or "")[:64] or None,
        details=details,
    )
    db.session.add(entry)
    return entry
