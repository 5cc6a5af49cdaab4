"""Waiting for one run to finish (a webhook with ``respond: when_finished``).

The waiter subscribes to the owner's event channel and waits for the subscription to be
confirmed *before* it reads the run's state once from the database, so a run that finishes
between the two is seen either way. Events are a hint, the database is the truth: a final
event is confirmed by the caller's read, and silence (a lost event, a store hiccup) makes the
waiter look at the database again every ``recheck_s``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable

import redis

from app.live import events
from app.models import FINAL_STATES

log = logging.getLogger(__name__)


def wait_for_run(store: redis.Redis, user_id, execution_id, timeout_s: float,
                 read_status: Callable[[], str | None], *, recheck_s: float = 2.0) -> str | None:
    """The run's final status, or None if it is still going after ``timeout_s``.

    ``read_status`` reads the run's status from the database (and releases its session)."""
    deadline = time.monotonic() + timeout_s
    wanted = str(execution_id)
    pubsub = store.pubsub()
    try:
        try:
            pubsub.subscribe(events.channel(user_id))
            _await_subscription(pubsub, deadline)
        except redis.RedisError as exc:
            log.warning("cannot subscribe to run events (%s); polling the database", exc)
            pubsub = None
        status = read_status()
        next_check = time.monotonic() + recheck_s
        while status not in FINAL_STATES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if pubsub is not None:
                try:
                    if _final_event(pubsub, wanted, min(remaining, recheck_s)):
                        status = read_status()
                        continue
                except redis.RedisError as exc:
                    log.warning("lost the run event subscription (%s); polling the database",
                                exc)
                    pubsub = None
            if pubsub is None:
                time.sleep(min(remaining, 0.2))
            if time.monotonic() >= next_check or pubsub is None:
                status = read_status()
                next_check = time.monotonic() + recheck_s
        return status
    finally:
        if pubsub is not None:
            with contextlib.suppress(redis.RedisError):
                pubsub.close()


def _await_subscription(pubsub, deadline: float) -> None:
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=max(0.01, min(1.0, deadline - time.monotonic())))
        if message and message.get("type") == "subscribe":
            return


def _final_event(pubsub, execution_id: str, timeout_s: float) -> bool:
    """True once an event says ``execution_id`` reached a final state within ``timeout_s``."""
    until = time.monotonic() + timeout_s
    while (left := until - time.monotonic()) > 0:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if not message or message.get("type") != "message":
            continue
        try:
            data = json.loads(message["data"])
        except (TypeError, ValueError):
            continue
        if (isinstance(data, dict) and data.get("type") == "run"
                and data.get("execution_id") == execution_id
                and data.get("status") in FINAL_STATES):
            return True
    return False
