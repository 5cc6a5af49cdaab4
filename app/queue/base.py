"""The queue between "a run was created" and "a worker runs it".

Domain-shaped: it carries execution ids only, nothing else. Delivery is at least once; the
worker makes a duplicate harmless (it claims the run in the database with a fencing epoch), so
a backend never has to be exactly-once. Delays (a run deferred because its workflow is busy, a
parked wait) are not the queue's business: the run's row says when it is due and the clock
re-publishes it, so every backend behaves the same.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

# Handles one execution id. Returns when the run's state is committed (the message is then
# acknowledged). Raising means "not handled": the message is delivered again (up to the
# backend's delivery limit, then dead-lettered).
Handler = Callable[[str], None]
# Handles several ids delivered together, for backends that receive deliveries in bursts
# (RabbitMQ); returns the ids it leaves to the Handler, one at a time. Raising means none of
# them was handled.
BatchHandler = Callable[[list[str]], list[str]]


class RunQueue(ABC):
    """One interface, three backends: inline (thread pool), rq (Redis), rabbitmq (pika)."""

    name: str

    @abstractmethod
    def publish(self, execution_ids: Sequence[str], *, together: bool = False) -> None:
        """Hand these runs to the queue; returns once the broker holds them durably.
        ``together``: the backend may carry them in one message (RabbitMQ does), each run
        still handled, retried and dead-lettered on its own."""

    @abstractmethod
    def consume(self, handler: Handler, *, stop: threading.Event, concurrency: int = 1,
                batch_handler: BatchHandler | None = None) -> None:
        """Run ``handler`` for each delivered id until ``stop`` is set; blocks. A backend that
        holds several deliveries at once hands them to ``batch_handler`` (if given) together;
        the others ignore it."""

    @abstractmethod
    def depth(self) -> int:
        """Messages waiting (not yet delivered), for metrics and benchmarks."""

    def ping(self, timeout_s: float) -> None:  # noqa: B027 - in-process backends: no-op
        """Raise if the broker cannot be reached within ``timeout_s`` (readiness probes)."""

    def close(self) -> None:  # noqa: B027 - optional for backends without connections
        """Release connections."""
