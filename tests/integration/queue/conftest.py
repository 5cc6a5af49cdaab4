"""Fixtures for the queue backends, run against the real Redis and RabbitMQ on 127.0.0.1.

RQ uses Redis db 14, which belongs to this suite and is flushed after each RQ test. Each test
gets its own queue name (``test.<hex>``) and deletes its RabbitMQ queues and exchange. Nothing
here skips: a backend whose service is down fails its tests.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pika
import pytest
import redis
from rq.job import Job
from rq.registry import FailedJobRegistry

from app.queue import RunQueue, open_queue
from app.queue.inline import InlineQueue
from app.queue.rabbitmq import RabbitQueue
from app.queue.rq import RQQueue

RQ_URL = os.environ.get("TEST_RQ_URL", "redis://127.0.0.1:6379/14")
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
URLS = {"inline": None, "rq": RQ_URL, "rabbitmq": AMQP_URL}


def new_ids(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")
        time.sleep(0.02)


class Recorder:
    """A handler that counts deliveries per id; ``fail(id, delivery)`` says when to raise."""

    def __init__(self, fail: Callable[[str, int], bool] | None = None,
                 sleep_s: float = 0.0) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._fail = fail
        self._sleep_s = sleep_s

    def __call__(self, execution_id: str) -> None:
        with self._lock:
            self.counts[execution_id] += 1
            delivery = self.counts[execution_id]
        if self._sleep_s:
            time.sleep(self._sleep_s)
        if self._fail is not None and self._fail(execution_id, delivery):
            raise RuntimeError(f"test handler fails delivery {delivery} of {execution_id}")

    def handled(self) -> set[str]:
        with self._lock:
            return set(self.counts)


@contextmanager
def consuming(queue: RunQueue, handler, concurrency: int = 1, stop_within_s: float = 5.0,
              batch_handler=None) -> Iterator[threading.Event]:
    """Run ``queue.consume`` on a thread for the ``with`` block; fail if it does not stop."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            queue.consume(handler, stop=stop, concurrency=concurrency,
                          batch_handler=batch_handler)
        except BaseException as exc:  # reported on the test's thread below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True, name="test-consumer")
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(stop_within_s)
    assert not thread.is_alive(), f"consume still running {stop_within_s:g} s after stop"
    if errors:
        raise errors[0]


class Queues:
    """Opens queues of one backend under one fresh name, and cleans up after the test."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.url = URLS[backend]
        self.name = f"test.{uuid.uuid4().hex}"
        self._opened: list[RunQueue] = []

    def open(self, url: str | None = None, **options) -> RunQueue:
        """A queue object; for RQ and RabbitMQ each call is a new client of the same queue (as
        a web process and a worker would be). The inline queue exists once per process."""
        if self.backend == "inline":
            if not self._opened:
                self._opened.append(InlineQueue(**options))
            return self._opened[0]
        queue = open_queue(url or self.url, queue_name=self.name, **options)
        self._opened.append(queue)
        return queue

    def dead_letters(self, queue: RunQueue) -> list[str]:
        if isinstance(queue, InlineQueue):
            return list(queue.dead_letters)
        if isinstance(queue, RQQueue):
            registry = FailedJobRegistry(queue=queue.queue)
            jobs = Job.fetch_many(registry.get_job_ids(), connection=queue.queue.connection,
                                  serializer=queue.queue.serializer)
            return [job.args[0] for job in jobs if job is not None]
        assert isinstance(queue, RabbitQueue)
        with _amqp_channel() as channel:
            bodies = []
            while True:
                method, _, body = channel.basic_get(queue.dead_queue_name, auto_ack=False)
                if method is None:
                    return bodies
                bodies.append(body.decode())

    def cleanup(self) -> None:
        for queue in self._opened:
            queue.close()
        if self.backend == "rq":
            redis.Redis.from_url(RQ_URL).flushdb()
        elif self.backend == "rabbitmq":
            with _amqp_channel() as channel:
                channel.queue_delete(self.name)
                channel.queue_delete(f"{self.name}.dead")
                channel.exchange_delete(f"{self.name}.dead")


@contextmanager
def _amqp_channel():
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        yield connection.channel()
    finally:
        connection.close()


@pytest.fixture
def rabbit_queues() -> Iterator[Queues]:
    opened = Queues("rabbitmq")
    yield opened
    opened.cleanup()


@pytest.fixture(params=["inline", pytest.param("rq", marks=pytest.mark.services),
                        pytest.param("rabbitmq", marks=pytest.mark.services)])
def queues(request) -> Iterator[Queues]:
    opened = Queues(request.param)
    yield opened
    opened.cleanup()


@pytest.fixture(params=[pytest.param("rq", marks=pytest.mark.services),
                        pytest.param("rabbitmq", marks=pytest.mark.services)])
def broker_queues(request) -> Iterator[Queues]:
    """The backends with a broker outside this process."""
    opened = Queues(request.param)
    yield opened
    opened.cleanup()
