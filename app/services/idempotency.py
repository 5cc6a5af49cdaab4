"""Idempotency keys: the same request with the same key within 24 h does its work once.

Two halves: Redis ``SET NX`` with a TTL answers the common replay without a database read, and
the ``idempotency_keys`` row — committed in the same transaction as the work — is the truth, so
a Redis restart cannot let a duplicate through. The same key with a different request body is
a 422.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from datetime import timedelta
from typing import Any

import redis
from flask import current_app
from sqlalchemy import delete, select

from app.db import db
from app.errors import Problem, Unprocessable
from app.models import IdempotencyKey, utcnow

TTL = timedelta(hours=24)
MAX_CLIENT_KEY = 200


def request_hash(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                     default=str).encode()).hexdigest()


def scoped_key(user_id: uuid.UUID, resource: str, resource_id: Any, action: str,
               client_key: str) -> str:
    """``{user}:{resource}:{id}:{action}`` plus a digest of the client's own key (the client
    key may be up to ``MAX_CLIENT_KEY`` characters; the stored key always fits its column)."""
    if not client_key or len(client_key) > MAX_CLIENT_KEY:
        raise Unprocessable("invalid Idempotency-Key",
                            [Problem("Idempotency-Key",
                                     f"must be 1 to {MAX_CLIENT_KEY} characters")])
    digest = hashlib.sha256(client_key.encode()).hexdigest()
    return f"{user_id}:{resource}:{resource_id}:{action}:{digest}"


def _store():
    return current_app.extensions["jobsprint.store"]


def _mismatch() -> Unprocessable:
    return Unprocessable("this Idempotency-Key was used with a different request",
                         [Problem("Idempotency-Key", "reused with a different body")])


def previous_execution(key: str, digest: str) -> uuid.UUID | None:
    """The execution an earlier request with this key started, or None if this is the first.

    Raises 422 if the key was used with another request body."""
    try:
        cached = _store().get(f"idem:{key}")
    except redis.RedisError:
        cached = None  # decide from the database alone
    if cached:
        cached_digest, _, execution_id = cached.partition(":")
        if cached_digest != digest:
            raise _mismatch()
        return uuid.UUID(execution_id)
    row = db.session.get(IdempotencyKey, key)
    if row is None:
        return None
    if row.expires_at <= utcnow():
        db.session.execute(delete(IdempotencyKey).where(IdempotencyKey.key == key))
        return None
    if row.request_hash != digest:
        raise _mismatch()
    return row.execution_id


def remember(key: str, digest: str, user_id: uuid.UUID, execution_id: uuid.UUID) -> None:
    """Add the durable record to the caller's transaction (its primary key is the guard)."""
    db.session.add(IdempotencyKey(key=key, user_id=user_id, request_hash=digest,
                                  execution_id=execution_id, expires_at=utcnow() + TTL))


def cache_answer(key: str, digest: str, execution_id: uuid.UUID) -> None:
    """After the commit: let replays be answered from Redis (SET NX, 24 h)."""
    with contextlib.suppress(redis.RedisError):  # the database row still answers
        _store().set(f"idem:{key}", f"{digest}:{execution_id}", nx=True,
                     ex=int(TTL.total_seconds()))


def winner(key: str, digest: str) -> uuid.UUID:
    """After losing an insert race on ``key``: the execution of the request that won."""
    row = db.session.scalar(select(IdempotencyKey).where(IdempotencyKey.key == key))
    if row is None or row.request_hash != digest:
        raise _mismatch()
    return row.execution_id
