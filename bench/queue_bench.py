"""Queue backends with a no-op handler, beside the raw speed of the parts under them.

    .venv/bin/python bench/queue_bench.py [--n 5000] [--batch 100] [--backends inline,rq,rabbitmq]

For each backend: publish N ids in batches (published/s), then consume them with concurrency 1,
and again with 2 (consumed/s, from the start of consume to the last id handled). Then the parts,
measured in the same run: Redis round trips on one redis-py connection (PING), and RabbitMQ
persistent publishes into a quorum queue, waiting for each confirm or for a whole batch's.
One line per figure; nothing is asserted. RQ uses Redis db 13 and removes its keys afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from pathlib import Path

import pika
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.queue import RunQueue, open_queue  # noqa: E402

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
URLS = {"inline": None, "rq": REDIS_URL, "rabbitmq": AMQP_URL}


def figure(label: str, name: str, value: float, **context) -> None:
    details = "".join(f" {key}={val}" for key, val in context.items())
    print(f"{label} {name}={value:,.0f}{details}", flush=True)


def bench_backend(backend: str, n: int, batch: int) -> None:
    queue_name = f"bench.{uuid.uuid4().hex}"
    options = {} if backend == "inline" else {"queue_name": queue_name}
    queue = open_queue(URLS[backend], **options)
    try:
        for concurrency in (1, 2):
            ids = [str(uuid.uuid4()) for _ in range(n)]
            started = time.perf_counter()
            for start in range(0, n, batch):
                queue.publish(ids[start:start + batch])
            elapsed = time.perf_counter() - started
            if concurrency == 1:
                figure(f"queue={backend}", "publish_per_s", n / elapsed, n=n, batch=batch)
            figure(f"queue={backend}", "consume_per_s", n / consume_all(queue, n, concurrency),
                   n=n, concurrency=concurrency)
    finally:
        queue.close()
        remove_queue(backend, queue_name)


def consume_all(queue: RunQueue, n: int, concurrency: int) -> float:
    """Seconds from starting consume until ``n`` ids have been handled."""
    handled = 0
    lock = threading.Lock()
    all_handled = threading.Event()

    def handler(_execution_id: str) -> None:
        nonlocal handled
        with lock:
            handled += 1
            if handled == n:
                all_handled.set()

    stop = threading.Event()
    consumer = threading.Thread(target=queue.consume, args=(handler,),
                                kwargs={"stop": stop, "concurrency": concurrency}, daemon=True)
    started = time.perf_counter()
    consumer.start()
    all_handled.wait()
    elapsed = time.perf_counter() - started
    stop.set()
    consumer.join()
    return elapsed


def remove_queue(backend: str, queue_name: str) -> None:
    if backend == "rq":
        client = redis.Redis.from_url(REDIS_URL)
        client.srem("rq:queues", f"rq:queue:{queue_name}")
        keys = list(client.scan_iter(match=f"*{queue_name}*"))
        if keys:
            client.delete(*keys)  # job hashes expire on their own (result_ttl)
    elif backend == "rabbitmq":
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        channel = connection.channel()
        channel.queue_delete(queue_name)
        channel.queue_delete(f"{queue_name}.dead")
        channel.exchange_delete(f"{queue_name}.dead")
        connection.close()


def bench_redis_round_trips(n: int) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()  # connect outside the timing
    started = time.perf_counter()
    for _ in range(n):
        client.ping()
    figure("part=redis", "round_trips_per_s", n / (time.perf_counter() - started),
           n=n, connection="one")
    client.close()


def bench_rabbitmq_confirms(n: int) -> None:
    queue_name = f"bench.raw.{uuid.uuid4().hex}"
    properties = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.queue_declare(queue_name, durable=True, arguments={"x-queue-type": "quorum"})
    channel.confirm_delivery()  # BlockingChannel: basic_publish now waits for its confirm
    count = min(n, 2000)
    started = time.perf_counter()
    for _ in range(count):
        channel.basic_publish("", queue_name, b"x", properties)
    figure("part=rabbitmq", "publish_confirm_each_per_s",
           count / (time.perf_counter() - started), n=count, queue="quorum")

    elapsed = _publish_with_one_wait(queue_name, n, properties)
    figure("part=rabbitmq", "publish_batched_confirms_per_s", n / elapsed, n=n, queue="quorum",
           in_flight=n)
    channel.queue_delete(queue_name)
    connection.close()


def _publish_with_one_wait(queue_name: str, n: int, properties: pika.BasicProperties) -> float:
    """Publish ``n`` messages on a SelectConnection and wait once for all their confirms."""
    state = {"confirmed": 0, "started": 0.0, "elapsed": 0.0}

    def on_confirm(frame) -> None:
        tag = frame.method.delivery_tag
        state["confirmed"] = tag if frame.method.multiple else state["confirmed"] + 1
        if state["confirmed"] >= n:
            state["elapsed"] = time.perf_counter() - state["started"]
            connection.close()

    def on_confirm_mode(channel) -> None:
        state["started"] = time.perf_counter()
        for _ in range(n):
            channel.basic_publish("", queue_name, b"x", properties)

    def on_channel(channel) -> None:
        channel.confirm_delivery(on_confirm, callback=lambda _: on_confirm_mode(channel))

    connection = pika.SelectConnection(
        pika.URLParameters(AMQP_URL),
        on_open_callback=lambda conn: conn.channel(on_open_callback=on_channel),
        on_close_callback=lambda conn, _reason: conn.ioloop.stop())
    connection.ioloop.start()
    return state["elapsed"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--backends", default="inline,rq,rabbitmq")
    args = parser.parse_args()
    for backend in args.backends.split(","):
        bench_backend(backend, args.n, args.batch)
    bench_redis_round_trips(args.n)
    bench_rabbitmq_confirms(args.n)


if __name__ == "__main__":
    main()
