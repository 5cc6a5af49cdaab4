"""Reading one row a user owns: anything else (a malformed id, another user's row, none) is
the same 404, so ids of other users' rows cannot be probed."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from app.db import db
from app.errors import NotFound

Row = TypeVar("Row")


def get_owned(model: type[Row], user_id: uuid.UUID, row_id: Any, what: str) -> Row:
    try:
        key = row_id if isinstance(row_id, uuid.UUID) else uuid.UUID(str(row_id))
    except ValueError:
        raise NotFound(f"{what} not found") from None
    row = db.session.get(model, key)
    if row is None or row.user_id != user_id:
        raise NotFound(f"{what} not found")
    return row
