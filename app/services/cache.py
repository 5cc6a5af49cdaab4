"""JSON values cached in the store (Redis, or the in-process store in the embedded default).

Write-through on save, cache-aside on read, a TTL on everything: a stale or lost entry only
costs a database read. A store outage never fails a request; it degrades to the database.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import redis
from flask import current_app

log = logging.getLogger(__name__)
DEFAULT_TTL_S = 3600


def _store():
    return current_app.extensions["jobsprint.store"]


def get(key: str) -> Any | None:
    try:
        raw = _store().get(key)
    except redis.RedisError as exc:
        log.warning("cache read of %s failed: %s", key, exc)
        return None
    return None if raw is None else json.loads(raw)


def put(key: str, value: Any, ttl_s: int = DEFAULT_TTL_S) -> None:
    try:
        _store().set(key, json.dumps(value, separators=(",", ":")), ex=ttl_s)
    except redis.RedisError as exc:
        log.warning("cache write of %s failed: %s", key, exc)


def forget(key: str) -> None:
    try:
        _store().delete(key)
    except redis.RedisError as exc:
        log.warning("cache delete of %s failed: %s", key, exc)


def get_or_load(key: str, load: Callable[[], Any | None], ttl_s: int = DEFAULT_TTL_S) -> Any:
    """Cache-aside: the cached value, else ``load()`` (cached unless it is None)."""
    value = get(key)
    if value is None:
        value = load()
        if value is not None:
            put(key, value, ttl_s)
    return value
