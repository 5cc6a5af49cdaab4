"""Faults the broker-backed queues must survive: long handlers, a consumer killed in the middle
of a run, and connections dropped under the consumer and the publisher."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pika
import pika.exceptions
import pytest
from rq.registry import StartedJobRegistry

from tests.integration.queue.conftest import Recorder, consuming, new_ids, wait_until
from tests.integration.queue.proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[3]
PORTS = {"rq": 6379, "rabbitmq": 5672}
# RQ: a short lease on running jobs, and registry clean-ups every second, so that what RQ does
# about a dead worker happens within the test.
SHORT_LEASE = {"rq": {"abandoned_after_s": 1, "maintenance_interval_s": 1}, "rabbitmq": {}}


def test_a_long_handler_keeps_its_delivery(broker_queues, caplog):
    """RabbitMQ: with a 1 s heartbeat, a connection left alone dies within 4 s (checked below
    on a bare connection), yet a 5 s handler keeps its consumer's connection and is acked once.
    RQ: with a 1 s lease and a second worker cleaning the registry every second, the job would
    be handed out again if its lease were not renewed while the handler runs."""
    url = broker_queues.url + ("?heartbeat=1" if broker_queues.backend == "rabbitmq" else "")
    queue = broker_queues.open(url, **SHORT_LEASE[broker_queues.backend])
    [run] = new_ids(1)
    queue.publish([run])
    bare = pika.BlockingConnection(pika.URLParameters(url)) if url.startswith("amqp") else None

    handler = Recorder(sleep_s=5)
    lapses = []
    with consuming(queue, handler, concurrency=2):
        wait_until(lambda: handler.counts[run] == 1, what="the run to start")
        wait_until(lambda: _lease_checked(queue, lapses) and queue.depth() == 0
                   and not _running(queue), timeout=15, what="the run to be acknowledged")
        time.sleep(0.5)  # room for a wrong second delivery

    assert not lapses, "the running job's lease ran out (a clean-up then would hand it out)"
    assert handler.counts[run] == 1
    assert queue.depth() == 0  # acked on the connection it came on, not handed back
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    if bare is not None:
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            bare.process_data_events(0.1)
            bare.channel()


def test_a_run_in_flight_when_its_consumer_is_killed_is_delivered_again(broker_queues, tmp_path):
    options = {"queue_name": broker_queues.name, **SHORT_LEASE[broker_queues.backend]}
    queue = broker_queues.open(**SHORT_LEASE[broker_queues.backend])
    [run] = new_ids(1)
    queue.publish([run])

    log = tmp_path / "handled.log"
    with open(tmp_path / "consumer.out", "w") as out:
        consumer = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.queue.consumer_process", broker_queues.url,
             json.dumps(options), str(log)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: log.exists() and run in log.read_text(), timeout=20,
                   what="the consumer process to take the run")
    finally:
        consumer.kill()  # SIGKILL, in the middle of the handler's minute
        consumer.wait(10)

    if broker_queues.backend == "rq":
        # What RQ does: the job stays in the StartedJobRegistry until its lease runs out; a
        # live worker's registry clean-up then re-enqueues it (a kill counts as a delivery).
        registry = StartedJobRegistry(queue=queue.queue)
        assert len(registry.get_job_ids(cleanup=False)) == 1

    handler = Recorder()
    with consuming(broker_queues.open(**SHORT_LEASE[broker_queues.backend]), handler):
        wait_until(lambda: handler.counts[run] == 1, timeout=10, what="the run again")


def test_consume_goes_on_after_its_connection_drops(broker_queues, caplog):
    proxy = TcpProxy(PORTS[broker_queues.backend])
    try:
        publisher = broker_queues.open()
        consumer = broker_queues.open(proxy.url(broker_queues.url))
        first, second = new_ids(2)
        handler = Recorder()
        with consuming(consumer, handler):
            publisher.publish([first])
            wait_until(lambda: handler.counts[first] == 1, what="the first run")
            proxy.cut()
            publisher.publish([second])
            wait_until(lambda: handler.counts[second] == 1, timeout=15, what="the second run")
    finally:
        proxy.close()
    if broker_queues.backend == "rabbitmq":
        assert any("connection lost" in r.getMessage() for r in caplog.records)


def test_publish_loses_nothing_when_connections_drop(broker_queues):
    proxy = TcpProxy(PORTS[broker_queues.backend])
    batches = [new_ids(10) for _ in range(20)]
    try:
        publisher = broker_queues.open(proxy.url(broker_queues.url))
        publisher.publish(new_ids(1))  # connect before the faults begin

        def cut_three_times() -> None:
            # Far enough apart that one publish (and its one retry) meets at most one cut.
            for _ in range(3):
                time.sleep(0.2)
                proxy.cut()

        cutter = threading.Thread(target=cut_three_times)
        cutter.start()
        for batch in batches:
            publisher.publish(batch)  # raises if a batch could not be stored
            time.sleep(0.04)
        cutter.join()
    finally:
        proxy.close()

    handler = Recorder()
    expected = {execution_id for batch in batches for execution_id in batch}
    with consuming(broker_queues.open(), handler, concurrency=2):
        wait_until(lambda: expected <= handler.handled(), timeout=15, what="every published id")


def _lease_checked(queue, lapses: list[float]) -> bool:
    """RQ: note when a running job's StartedJobRegistry entry counts as expired (RQ's clean-up
    takes scores up to the current whole second; one running at that instant would re-enqueue
    the job). Always true, so it can sit inside a wait_until."""
    registry = getattr(queue, "queue", None)
    if registry is not None:
        key = StartedJobRegistry(queue=registry).key
        now = time.time()
        for _entry, score in registry.connection.zrange(key, 0, -1, withscores=True):
            if score <= int(now):
                lapses.append(now - score)
    return True


def _running(queue) -> bool:
    """RQ: a job is still in the StartedJobRegistry (RabbitMQ's depth already excludes it)."""
    registry = getattr(queue, "queue", None)
    return bool(registry and StartedJobRegistry(queue=registry).get_job_ids(cleanup=False))
