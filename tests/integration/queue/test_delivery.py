"""What every backend promises (app/queue/base.py): each id is handled at least once, a raising
handler gets the id again until the delivery limit and then it is dead-lettered, and consume
stops when asked. Run once per backend: inline, rq (Redis db 14) and rabbitmq."""

from __future__ import annotations

import threading
import time

import pytest

from tests.integration.queue.conftest import Recorder, consuming, new_ids, wait_until


@pytest.mark.parametrize("concurrency", [1, 2])
def test_every_published_id_is_handled_and_the_queue_empties(queues, concurrency):
    queue = queues.open()
    ids = new_ids(500)
    for start in range(0, len(ids), 100):
        queue.publish(ids[start:start + 100])
    assert queue.depth() == 500

    handler = Recorder()
    with consuming(queue, handler, concurrency=concurrency):
        wait_until(lambda: handler.handled() == set(ids), timeout=20, what="all 500 ids")
        wait_until(lambda: queue.depth() == 0, what="an empty queue")

    assert sum(handler.counts.values()) >= 500


def test_ids_published_before_the_consumer_starts_are_delivered(queues):
    ids = new_ids(3)
    queues.open().publish(ids)
    time.sleep(0.5)  # nobody is consuming yet

    handler = Recorder()
    with consuming(queues.open(), handler):  # a separate client, as a worker process would be
        wait_until(lambda: handler.handled() == set(ids), what="the early ids")


def test_a_handler_failing_once_gets_the_id_again(queues):
    queue = queues.open(max_deliveries=3)
    [run] = new_ids(1)
    queue.publish([run])

    handler = Recorder(fail=lambda _id, delivery: delivery == 1)
    with consuming(queue, handler):
        wait_until(lambda: handler.counts[run] == 2, what="the second delivery")
        time.sleep(0.3)  # room for a wrong third delivery

    assert handler.counts[run] == 2
    assert queues.dead_letters(queue) == []


def test_runs_published_together_are_each_delivered_again_on_their_own(queues):
    """One message may carry them (RabbitMQ): the run that failed comes again, alone; the
    others are not handled twice."""
    queue = queues.open(max_deliveries=3)
    [flaky, *healthy] = new_ids(4)
    queue.publish([flaky, *healthy], together=True)

    handler = Recorder(fail=lambda execution_id, delivery: execution_id == flaky
                       and delivery == 1)
    with consuming(queue, handler):
        wait_until(lambda: handler.counts[flaky] == 2, what="the second delivery")
        wait_until(lambda: queue.depth() == 0, what="an empty queue")
        time.sleep(0.3)  # room for a wrong delivery

    assert handler.counts == {flaky: 2, **{execution_id: 1 for execution_id in healthy}}
    assert queues.dead_letters(queue) == []


@pytest.mark.parametrize("together", [False, True])
def test_a_handler_always_failing_dead_letters_the_id_after_max_deliveries(queues, caplog,
                                                                            together):
    queue = queues.open(max_deliveries=3)
    [poison, healthy] = new_ids(2)
    queue.publish([poison, healthy], together=together)

    handler = Recorder(fail=lambda execution_id, _delivery: execution_id == poison)
    with consuming(queue, handler):
        wait_until(lambda: queues.dead_letters(queue) == [poison], what="the dead letter")
        wait_until(lambda: queue.depth() == 0, what="an empty queue")
        time.sleep(0.3)  # room for a wrong fourth delivery

    assert handler.counts == {poison: 3, healthy: 1}
    assert any(r.levelname == "ERROR" and poison in r.getMessage() for r in caplog.records)


def test_stop_ends_an_idle_consumer_within_seconds(queues):
    queue = queues.open()
    stop = threading.Event()
    consumer = threading.Thread(target=queue.consume, args=(Recorder(),),
                                kwargs={"stop": stop, "concurrency": 2}, daemon=True)
    consumer.start()
    time.sleep(1.0)  # let it settle into waiting for work
    assert consumer.is_alive()

    stopped_at = time.monotonic()
    stop.set()
    consumer.join(5)
    assert not consumer.is_alive()
    assert time.monotonic() - stopped_at < 3


def test_stop_lets_the_run_in_flight_finish(queues):
    queue = queues.open()
    [run] = new_ids(1)
    queue.publish([run])
    handler = Recorder(sleep_s=1.0)

    with consuming(queue, handler) as stop:
        wait_until(lambda: handler.counts[run] == 1, what="the run to start")
        stop.set()  # while the handler sleeps

    assert handler.counts[run] == 1
    assert queue.depth() == 0  # acknowledged, not handed back


def test_concurrency_runs_handlers_side_by_side(queues):
    queue = queues.open()
    ids = new_ids(2)
    queue.publish(ids)
    both_running = threading.Barrier(2, timeout=5)

    def handler(execution_id: str) -> None:
        both_running.wait()  # breaks (and raises) unless two handlers run at once
        done.append(execution_id)

    done: list[str] = []
    with consuming(queue, handler, concurrency=2):
        wait_until(lambda: sorted(done) == sorted(ids), what="both runs")


def test_publish_is_safe_from_many_threads(queues):
    queue = queues.open()
    batches = [new_ids(25) for _ in range(8)]
    errors: list[BaseException] = []

    def publish(batch: list[str]) -> None:
        try:
            for execution_id in batch:  # one id per call, as request threads do
                queue.publish([execution_id])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    assert queue.depth() == 200
