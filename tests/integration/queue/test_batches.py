"""RabbitMQ hands a batch handler the deliveries that waited while its threads were busy (a
lone one too); what the batch handler leaves goes to the one-at-a-time handler; a failing
batch is delivered again. Against the real broker."""

from __future__ import annotations

import threading
import time

import pytest

from app.queue.rabbitmq import MAX_BATCH
from tests.integration.queue.conftest import Recorder, consuming, new_ids, wait_until

pytestmark = pytest.mark.services


class BatchRecorder:
    """A batch handler that records each batch; ``leave(ids)`` picks the ids it hands back,
    ``fail(ids)`` says when a call raises."""

    def __init__(self, leave=lambda ids: [], fail=lambda ids: False, sleep_s: float = 0.0):
        self.batches: list[list[str]] = []
        self._lock = threading.Lock()
        self._leave = leave
        self._fail = fail
        self._sleep_s = sleep_s

    def __call__(self, ids: list[str]) -> list[str]:
        with self._lock:
            self.batches.append(list(ids))
            call = len(self.batches)
        time.sleep(self._sleep_s)
        if self._fail(ids):
            raise RuntimeError(f"test batch handler fails call {call}")
        return self._leave(ids)

    def seen(self) -> list[str]:
        with self._lock:
            return [execution_id for batch in self.batches for execution_id in batch]


def _settled(queue) -> bool:
    return queue.depth() == 0


def test_deliveries_waiting_for_a_thread_reach_the_batch_handler_together(rabbit_queues):
    queue = rabbit_queues.open()
    ids = new_ids(200)
    queue.publish(ids)
    single, batch = Recorder(), BatchRecorder(sleep_s=0.01)
    with consuming(queue, single, concurrency=2, batch_handler=batch):
        wait_until(lambda: len(batch.seen()) + len(single.handled()) == len(ids), timeout=20,
                   what="every id to be handled")
        wait_until(lambda: _settled(queue), what="the queue to empty")
    handled = batch.seen() + list(single.counts.elements())
    assert sorted(handled) == sorted(ids), "an id was lost or handled twice"
    sizes = [len(b) for b in batch.batches]
    assert max(sizes) > 1, f"no batch held more than one delivery: {sizes}"
    assert max(sizes) <= MAX_BATCH
    # Everything was acked: a new consumer gets nothing.
    again = Recorder()
    with consuming(rabbit_queues.open(), again, batch_handler=BatchRecorder()):
        time.sleep(1.0)
    assert not again.counts


def test_runs_published_together_travel_in_few_messages_and_are_each_handled_once(
        rabbit_queues):
    queue = rabbit_queues.open()
    ids = new_ids(100)
    queue.publish(ids, together=True)
    assert queue.depth() == -(-len(ids) // MAX_BATCH)  # messages, each up to MAX_BATCH runs
    single = Recorder()
    batch = BatchRecorder(leave=lambda got: got[:1])  # one of each batch goes one at a time
    with consuming(queue, single, concurrency=2, batch_handler=batch):
        wait_until(lambda: set(batch.seen()) | single.handled() == set(ids), timeout=20,
                   what="every id to be handled")
        wait_until(lambda: _settled(queue), what="the queue to empty")
    assert sorted(batch.seen()) == sorted(ids), "an id was lost or handed over twice"
    assert all(count == 1 for count in single.counts.values())
    assert max(len(b) for b in batch.batches) > 1


def test_the_ids_a_batch_handler_leaves_are_handled_one_at_a_time(rabbit_queues):
    queue = rabbit_queues.open()
    ids = new_ids(120)
    left = set(ids[::3])
    queue.publish(ids)
    single = Recorder()
    batch = BatchRecorder(leave=lambda got: [i for i in got if i in left], sleep_s=0.01)
    with consuming(queue, single, concurrency=2, batch_handler=batch):
        wait_until(lambda: set(batch.seen()) | single.handled() == set(ids), timeout=20,
                   what="every id to be handled")
        wait_until(lambda: _settled(queue), what="the queue to empty")
    # Every id went to the batch handler first (a lone one too); the single handler got
    # exactly those it left, once each.
    assert sorted(batch.seen()) == sorted(ids)
    assert single.handled() == left
    assert all(count == 1 for count in single.counts.values())


def test_a_batch_that_fails_is_delivered_again(rabbit_queues, caplog):
    queue = rabbit_queues.open()
    ids = new_ids(60)
    queue.publish(ids)
    single = Recorder()
    failing: list[set[str]] = []

    def fail_the_first_of_several(ids: list[str]) -> bool:
        if len(ids) > 1 and not failing:  # a lone first delivery reaches the handler too
            failing.append(set(ids))
            return True
        return False

    batch = BatchRecorder(fail=fail_the_first_of_several, sleep_s=0.01)
    with consuming(queue, single, concurrency=1, batch_handler=batch):
        wait_until(lambda: failing, what="a batch of several")
        failed = failing[0]
        first = next(n for n, b in enumerate(batch.batches) if set(b) == failed)
        wait_until(lambda: failed <= {i for b in batch.batches[first + 1:] for i in b}
                   | single.handled(), timeout=20, what="the failed batch's ids to come again")
        wait_until(lambda: _settled(queue), what="the queue to empty")
    assert len(failed) > 1
    assert set(batch.seen()) | single.handled() == set(ids)
    assert "a batch of" in caplog.text and "failed" in caplog.text
