"""Keyset pagination: an opaque cursor naming the last row seen, never an offset."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime

from sqlalchemy import or_

from app.errors import Problem, ValidationFailed

MAX_LIMIT = 200


def encode_cursor(at: datetime, row_id: uuid.UUID) -> str:
    raw = json.dumps([at.isoformat(), str(row_id)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        at, row_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        return datetime.fromisoformat(at), uuid.UUID(row_id)
    except (ValueError, TypeError, json.JSONDecodeError):
        raise ValidationFailed("invalid cursor",
                               [Problem("cursor", "is not a cursor this API gave")]) from None


def keyset_page(session, stmt, at_column, id_column, cursor: str | None, limit: int):
    """Rows of ``stmt`` newest first by (``at_column``, ``id_column``), ``limit`` after
    ``cursor``; returns the rows and the cursor of the next page (None on the last)."""
    if after := decode_cursor(cursor):
        at, last_id = after
        stmt = stmt.where(or_(at_column < at, (at_column == at) & (id_column < last_id)))
    rows = list(session.scalars(
        stmt.order_by(at_column.desc(), id_column.desc()).limit(limit + 1)))
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last = rows[-1]
    return rows, encode_cursor(getattr(last, at_column.key), getattr(last, id_column.key))


def parse_limit(raw: str | None, default: int = 50) -> int:
    if raw in (None, ""):
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise ValidationFailed("invalid limit", [Problem("limit", "must be an integer")]) from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationFailed("invalid limit",
                               [Problem("limit", f"must be between 1 and {MAX_LIMIT}")])
    return limit
