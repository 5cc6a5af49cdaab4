"""Publishing execution events. Subscribers (the WebSocket routes) listen on
``events:{user_id}``; every event is published only after the state it reports is committed.
A store outage loses live updates, never state: a client that reconnects reads the database.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

log = logging.getLogger(__name__)


def channel(user_id: Any) -> str:
    return f"events:{user_id}"


def queue_many(pipe, user_id: Any, events: list[dict]) -> None:
    """Add the publishes of ``events`` to a pipeline the caller executes."""
    for event in events:
        pipe.publish(channel(user_id), json.dumps(event, separators=(",", ":"), default=str))


def publish_many(store: redis.Redis, user_id: Any, events: list[dict]) -> None:
    if not events:
        return
    try:
        pipe = store.pipeline(transaction=False)
        queue_many(pipe, user_id, events)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("could not publish %d events: %s", len(events), exc)
