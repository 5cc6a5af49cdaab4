"""Waiting for one run to finish (a webhook with ``respond: when_finished``).

The waiter is an inbox on the process's hub (one Redis subscription for the whole process, not
one per waiting request) that keeps only the final event of its run. It registers *before* it
reads the run's state once from the database, so a run that finishes between the two is seen
either way. Events are a hint, the database is the truth: a final event is confirmed by the
caller's read, and silence (a lost event, a store outage: the hub then asks every inbox to
resync once it is back) makes the waiter look at the database again every ``recheck_s``, or
every ``poll_s`` while the hub is not subscribed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from app.live.hub import Hub, Subscriber
from app.models import FINAL_STATES


def wait_for_run(hub: Hub, user_id, execution_id, timeout_s: float,
                 read_status: Callable[[], str | None], *, recheck_s: float = 2.0,
                 poll_s: float = 0.2) -> str | None:
    """The run's final status, or None if it is still going after ``timeout_s``.

    ``read_status`` reads the run's status from the database (and releases its session)."""
    deadline = time.monotonic() + timeout_s
    wanted = str(execution_id)
    inbox = Subscriber(user_id, wants=lambda data: (
        data.get("type") == "run" and data.get("execution_id") == wanted
        and data.get("status") in FINAL_STATES))
    hub.register(inbox, wait_s=min(2.0, timeout_s))
    try:
        status = read_status()
        while status not in FINAL_STATES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            pause = recheck_s if hub.ready.is_set() else poll_s
            inbox.wait(min(remaining, pause))
            status = read_status()
        return status
    finally:
        hub.unregister(inbox)
