"""Waiting for one run to finish (a webhook with ``respond: when_finished``).

A ``RunWaiter`` is an inbox on the process's hub (one pub/sub connection for the whole
process, not one per waiting request) that keeps only the final event of its run. The webhook
route opens it *before* the run is stored, with the run's id chosen in advance: when the
user's channel was subscribed at that moment, no event of the run can be missed. Otherwise
(the hub is down, or the run already existed, as for a replayed delivery) it reads the run's
state first.

A final event is published only after the run's final state is committed, and a final state
never changes: when the event carries the run's result and error (``outcome``: a small
result, see ``events.OUTCOME_INLINE_MAX``) the waiter answers from it; otherwise the final
event makes it read the run once. Silence (a lost event) makes the waiter read again every
``recheck_s``, or every ``poll_s`` while the hub is not subscribed; the hub's resync after an
outage wakes it to read at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from app.live.hub import Hub, Subscriber
from app.models import FINAL_STATES

Outcome = tuple[str, Any, Any]  # (status, result, error)


class RunWaiter:
    def __init__(self, hub: Hub, user_id, execution_id, *, wait_s: float = 2.0) -> None:
        self.hub = hub
        self.execution_id = str(execution_id)
        self.inbox = Subscriber(user_id, execution_id=execution_id, wants=self._final)
        self.listening = hub.register(self.inbox, wait_s=wait_s)

    @staticmethod
    def _final(data: dict) -> bool:
        return data.get("type") == "run" and data.get("status") in FINAL_STATES

    def wait(self, timeout_s: float, read: Callable[[], Outcome | None], *,
             before_run: bool, recheck_s: float = 2.0, poll_s: float = 0.2) -> Outcome | None:
        """The run's final (status, result, error), or None if it is still going after
        ``timeout_s``. ``before_run``: this waiter was opened before the run was stored.
        ``read`` reads the run from the database (and releases its session)."""
        deadline = time.monotonic() + timeout_s
        outcome = None if before_run and self.listening else read()
        while outcome is None or outcome[0] not in FINAL_STATES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            pause = recheck_s if self.hub.ready.is_set() else poll_s
            heard, _resync = self.inbox.wait(min(remaining, pause))
            carried = next((e.data for e in heard if "outcome" in e.data), None)
            if carried is not None:  # published after the commit, final: no need to read
                return carried["status"], carried["outcome"]["result"], carried["outcome"][
                    "error"]
            outcome = read()
        return outcome

    def close(self) -> None:
        self.hub.unregister(self.inbox)

    def __enter__(self) -> RunWaiter:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()
