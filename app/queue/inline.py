"""The embedded default: an in-memory queue served by threads of this process.

Guarantees: at least once *while the process lives*. ``publish`` never blocks; ids published
before ``consume`` starts wait in the buffer. A handler that raises re-queues its id at the back
(so one bad run cannot starve the others) until it has been delivered ``max_deliveries`` times;
then the id is dead-lettered: logged at ERROR and appended to ``dead_letters``.

Nothing is durable: ids still queued when the process exits are gone. That is acceptable because
the queue is never the record of a run — the run's row is (DESIGN.md "Execution semantics"), and
the reaper re-publishes runs left queued or running when the process comes back.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence

from app.queue.base import BatchHandler, Handler, RunQueue

logger = logging.getLogger(__name__)

# How long an idle consumer thread sleeps before looking at ``stop`` again.
_POLL_S = 0.2


class InlineQueue(RunQueue):
    name = "inline"

    def __init__(self, *, max_deliveries: int = 5) -> None:
        if max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")
        self.max_deliveries = max_deliveries
        self.dead_letters: list[str] = []
        # (execution id, deliveries so far); one lock guards the deque and wakes consumers.
        self._waiting: deque[tuple[str, int]] = deque()
        self._ready = threading.Condition()

    def publish(self, execution_ids: Sequence[str], *, together: bool = False) -> None:
        with self._ready:
            self._waiting.extend((execution_id, 0) for execution_id in execution_ids)
            self._ready.notify(len(execution_ids))

    def consume(self, handler: Handler, *, stop: threading.Event, concurrency: int = 1,
                batch_handler: BatchHandler | None = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        threads = [
            threading.Thread(target=self._serve, args=(handler, stop), daemon=True,
                             name=f"inline-run-{n}")
            for n in range(concurrency)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            # A timed join keeps the caller's thread responsive to signals (Ctrl+C sets stop).
            while thread.is_alive():
                thread.join(0.5)

    def depth(self) -> int:
        with self._ready:
            return len(self._waiting)

    def _serve(self, handler: Handler, stop: threading.Event) -> None:
        while not stop.is_set():
            with self._ready:
                if not self._waiting:
                    # ``stop`` is a plain Event that cannot notify the condition, so wake up
                    # regularly to look at it.
                    self._ready.wait(_POLL_S)
                    continue
                execution_id, delivered = self._waiting.popleft()
            self._deliver(handler, execution_id, delivered + 1)

    def _deliver(self, handler: Handler, execution_id: str, delivery: int) -> None:
        try:
            handler(execution_id)
        except Exception:
            if delivery >= self.max_deliveries:
                logger.exception("run %s: dead-lettered after %d deliveries", execution_id,
                                 delivery)
                self.dead_letters.append(execution_id)
                return
            logger.warning("run %s: handler failed (delivery %d of %d), re-queued", execution_id,
                           delivery, self.max_deliveries, exc_info=True)
            with self._ready:
                self._waiting.append((execution_id, delivery))
                self._ready.notify()
