"""Keyset pagination: an opaque cursor naming the last row seen, never an offset."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime

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
