"""Server-side records of browser sessions, so that logout and a password change revoke them.

``session:{user_id}`` is a hash of session id → expiry (unix seconds); the key lives as long as
its newest session. The signed cookie only carries ``{user_id}:{session_id}``.
"""

from __future__ import annotations

import secrets
import time
import uuid

from flask import current_app


def _store():
    return current_app.extensions["jobsprint.store"]


def _key(user_id: uuid.UUID | str) -> str:
    return f"session:{user_id}"


def open_session(user_id: uuid.UUID) -> str:
    ttl = current_app.config["SETTINGS"].session_ttl_s
    session_id = secrets.token_urlsafe(18)
    pipe = _store().pipeline()
    pipe.hset(_key(user_id), session_id, int(time.time()) + ttl)
    pipe.expire(_key(user_id), ttl)
    pipe.execute()
    return session_id


def is_open(user_id: uuid.UUID | str, session_id: str) -> bool:
    expires = _store().hget(_key(user_id), session_id)
    return expires is not None and int(expires) > time.time()


def close_session(user_id: uuid.UUID | str, session_id: str) -> None:
    _store().hdel(_key(user_id), session_id)


def close_all(user_id: uuid.UUID | str) -> None:
    _store().delete(_key(user_id))
