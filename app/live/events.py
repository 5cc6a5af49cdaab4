"""Publishing execution events. Subscribers (the WebSocket routes) listen on
``events:{user_id}``; every event is published only after the state it reports is committed.
A store outage loses live updates, never state: a client that reconnects reads the database.

A message is one event (a JSON object) or, when one call publishes several events of a user,
all of them in order (a JSON array): a worker's batch of runs sends each user one message, not
four per run, and the hub parses one message instead of dozens.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

log = logging.getLogger(__name__)


def channel(user_id: Any) -> str:
    return f"events:{user_id}"


def queue_each(pipe, published: list[tuple[Any, dict]]) -> None:
    """Add the publishes of (user id, event) pairs to a pipeline the caller executes: one
    message per user, its events in the order given."""
    by_user: dict[str, list[dict]] = {}
    for user_id, event in published:
        by_user.setdefault(str(user_id), []).append(event)
    for user_id, events in by_user.items():
        payload = events[0] if len(events) == 1 else events
        pipe.publish(channel(user_id), json.dumps(payload, separators=(",", ":"), default=str))


def publish_many(store: redis.Redis, user_id: Any, events: list[dict]) -> None:
    publish_each(store, [(user_id, event) for event in events])


def publish_each(store: redis.Redis, published: list[tuple[Any, dict]]) -> None:
    """Publish (user id, event) pairs in one round trip; an outage loses them (logged)."""
    if not published:
        return
    try:
        pipe = store.pipeline(transaction=False)
        queue_each(pipe, published)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("could not publish %d events: %s", len(published), exc)


# A run's final event carries its result and error when they are this small (as JSON), so a
# request waiting for the run (a webhook's ``respond: when_finished``, ``flask jobsprint run``)
# answers from the event instead of reading the run back; a larger result is read.
OUTCOME_INLINE_MAX = 8192


def run_event(execution_id: Any, workflow_id: Any, status: str, *,
              outcome: tuple[Any, Any] | None = None) -> dict:
    """A run's new status (published after it is committed). ``outcome``: the (result, error)
    of a run that reached a final state, carried when small enough."""
    event = {"type": "run", "execution_id": str(execution_id),
             "workflow_id": str(workflow_id), "status": status}
    if outcome is None:
        return event
    carried = {"result": outcome[0], "error": outcome[1]}
    try:
        size = len(json.dumps(carried, separators=(",", ":"), default=str))
    except (TypeError, ValueError):
        return event
    if size <= OUTCOME_INLINE_MAX:
        event["outcome"] = carried
    return event
