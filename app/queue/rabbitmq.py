"""RabbitMQ via pika: a durable quorum queue of execution ids, with a dead-letter queue.

Topology (declared by publishers and consumers alike, so either may start first):
``<queue_name>`` is a durable quorum queue with ``x-delivery-limit = max_deliveries - 1`` (the
broker counts *re*-deliveries: a limit of L allows L + 1 deliveries) that dead-letters, at least
once, through the fanout exchange ``<queue_name>.dead`` into the durable quorum queue
``<queue_name>.dead``. Declaring an existing queue with other arguments fails (406
PRECONDITION_FAILED): change the delivery limit by deleting the queue, or with a policy.

Publish: persistent messages with publisher confirms; ``publish`` returns once the broker has
confirmed every message of the batch, i.e. the quorum queue has written it to a majority.
Confirms are collected per batch, not waited for one by one (≈1,300/s one by one, DESIGN.md):
one ``SelectConnection`` on its own I/O thread serves every thread of the process, writes each
batch at once and wakes each caller when its own batch is confirmed. That thread also keeps the
connection's heartbeats going while the web process is idle (a BlockingConnection would answer
heartbeats only while called, so the broker would drop it between requests). A batch that fails
(connection lost, nack, unroutable, no confirm in ``publish_timeout_s``) is published once more
on a fresh connection, so a message may be stored twice but is never lost silently: the second
failure raises ``PublishError``.

Consume: one BlockingConnection on the calling thread with ``basic_qos(prefetch_count=
concurrency)``; each delivery runs the handler on a pool of ``concurrency`` threads while the
calling thread keeps calling ``process_data_events`` (heartbeats, and the acks the workers hand
back with ``add_callback_threadsafe``). So a handler may run for minutes without losing the
connection — up to the broker's ``consumer_timeout`` (30 min by default), after which it closes
the channel and redelivers. The ack is sent after the handler returns; a handler that raises is
nacked with requeue, and the broker dead-letters it once the delivery limit is reached. A
consumer killed mid-handler never acks, so the broker redelivers when its connection drops. A
lost connection is logged and re-opened with backoff (0.5 s doubling to 30 s); the acks of
handlers still running on the old connection are dropped, and the broker redelivers those runs.
``stop`` cancels the subscription within a quarter second; handlers in flight finish first.
``prefetch`` above ``concurrency`` buffers deliveries in this process: faster for short runs
(≈1,200 no-op runs/s at prefetch 1, ≈10,000 at 50), but a buffered run waits for a thread to
come free, and a stop runs the buffer before returning.

Batches: given a ``batch_handler``, the prefetch defaults to ``BATCH_PREFETCH`` per thread, and a
pool thread coming free takes every delivery waiting (up to ``MAX_BATCH``; a lone one too) to
the batch handler at once; the ids it hands back run through ``handler`` one at a time, on the
pool. A batch that raises is nacked whole (each delivered again, within the delivery limit).

Runs published ``together`` travel up to ``MAX_BATCH`` to a message (one id a line): the broker
stores, delivers and acks one message for them, not one each (RabbitMQ's CPU per run was the
largest share of the queue's cost). The consumer splits a message into its runs and settles it
once all are handled: acked if all were, nacked (redelivered whole, within the limit) if none
was. If only some failed, those are published again, each in a message of its own that carries
its deliveries so far (header ``x-jobsprint-deliveries``), and the message is acked; so every
run keeps its own delivery count, and a run failing on its last delivery is dead-lettered alone
(nacked without requeue). Runs of a message that succeeded and come again (a redelivery after a
worker died) find nothing to claim.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.channel import Channel
from pika.frame import Method
from pika.spec import Basic

from app.queue.base import BatchHandler, Handler, RunQueue

logger = logging.getLogger(__name__)

PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
# Deliveries a run had before it was published again on its own (its message's other runs
# succeeded): added to the broker's own count of this message's deliveries.
EARLIER_DELIVERIES = "x-jobsprint-deliveries"
# How often the consumer's thread services its connection when nothing arrives; it bounds how
# late ``stop`` is noticed.
_PUMP_S = 0.25
_MAX_BACKOFF_S = 30.0
# Failures of the connection, the channel or the socket under them.
_LINK_ERRORS = (pika.exceptions.AMQPError, OSError)
# With a batch handler: at most this many runs to one handler call (and to one message of
# runs published together), and a default prefetch of this many messages per thread, so that
# a thread coming free finds a batch waiting (runs published one by one — API calls, schedules —
# come one to a message). A message may carry up to MAX_BATCH runs, so a worker may hold up to
# concurrency × BATCH_PREFETCH × MAX_BATCH runs that others cannot take.
MAX_BATCH = 32
BATCH_PREFETCH = 8


class PublishError(Exception):
    """The broker did not confirm a batch of runs (twice); they may not be queued."""


class RabbitQueue(RunQueue):
    name = "rabbitmq"

    def __init__(self, url: str, *, queue_name: str = "jobsprint.runs", max_deliveries: int = 5,
                 prefetch: int | None = None, publish_timeout_s: float = 30.0) -> None:
        if max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")
        self.params = pika.URLParameters(url)
        self.queue_name = queue_name
        self.dead_queue_name = f"{queue_name}.dead"
        self.max_deliveries = max_deliveries
        self.prefetch = prefetch
        self._publisher = _Publisher(self.params, self.declarations(), publish_timeout_s)

    def declarations(self) -> list[tuple[str, dict[str, Any]]]:
        """The topology, as (channel method, arguments), for blocking and async channels."""
        dead = self.dead_queue_name
        quorum = {"x-queue-type": "quorum"}
        return [
            ("exchange_declare", {"exchange": dead, "exchange_type": "fanout", "durable": True}),
            ("queue_declare", {"queue": dead, "durable": True, "arguments": quorum}),
            ("queue_bind", {"queue": dead, "exchange": dead}),
            ("queue_declare", {"queue": self.queue_name, "durable": True, "arguments": {
                **quorum,
                "x-delivery-limit": self.max_deliveries - 1,
                "x-dead-letter-exchange": dead,
                # At-least-once dead-lettering needs reject-publish: the broker refuses (nacks)
                # new runs when the queue is full rather than dropping the oldest.
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            }}),
        ]

    def publish(self, execution_ids: Sequence[str], *, together: bool = False) -> None:
        if together:
            bodies = ["\n".join(execution_ids[start:start + MAX_BATCH]).encode()
                      for start in range(0, len(execution_ids), MAX_BATCH)]
        else:
            bodies = [execution_id.encode() for execution_id in execution_ids]
        self._publish(bodies, PERSISTENT)

    def _publish(self, bodies: list[bytes], properties: pika.BasicProperties) -> None:
        if not bodies:
            return
        try:
            self._publisher.publish(self.queue_name, bodies, properties)
        except PublishError as exc:
            logger.warning("publish of %d messages failed (%s); publishing them again on a new "
                           "connection", len(bodies), exc)
            self._publisher.publish(self.queue_name, bodies, properties)

    def publish_again(self, execution_id: str, deliveries: int) -> None:
        """One run of a message whose other runs succeeded: in a message of its own, carrying
        the deliveries it had; to the dead letters if that was its last."""
        if deliveries >= self.max_deliveries:
            self._publisher.publish(self.dead_queue_name, [execution_id.encode()], PERSISTENT)
            return
        self._publish([execution_id.encode()], pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent,
            headers={EARLIER_DELIVERIES: deliveries}))

    def consume(self, handler: Handler, *, stop: threading.Event, concurrency: int = 1,
                batch_handler: BatchHandler | None = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        delay = 0.5
        prefetch = self.prefetch or (concurrency * BATCH_PREFETCH if batch_handler
                                     else concurrency)
        with ThreadPoolExecutor(concurrency, thread_name_prefix="rabbitmq-run") as pool:
            while not stop.is_set():
                session = _Session(self, handler, batch_handler, pool, prefetch)
                try:
                    session.open()
                    delay = 0.5
                    session.serve(stop)
                except _LINK_ERRORS as exc:
                    logger.warning("consumer of %s: connection lost (%r); reconnecting in %.1f s",
                                   self.queue_name, exc, delay)
                    stop.wait(delay)
                    delay = min(delay * 2, _MAX_BACKOFF_S)
                finally:
                    session.close()

    def depth(self) -> int:
        connection = pika.BlockingConnection(self.params)
        try:
            declared = connection.channel().queue_declare(self.queue_name, passive=True)
            return declared.method.message_count
        finally:
            connection.close()

    def ping(self, timeout_s: float) -> None:
        params = copy.copy(self.params)
        params.connection_attempts = 1
        params.socket_timeout = params.stack_timeout = timeout_s
        pika.BlockingConnection(params).close()

    def close(self) -> None:
        self._publisher.close()


@dataclass(slots=True, eq=False)
class _Message:
    """One broker message: the runs it carries, settled together once each is handled."""

    tag: int
    total: int  # runs it carries
    waiting: int  # runs not yet handled
    delivery: int  # 1 for the first (earlier deliveries of a run published again included)
    failed: list[str]


@dataclass(slots=True)
class _Delivery:
    execution_id: str
    message: _Message

    @property
    def delivery(self) -> int:
        return self.message.delivery


class _Session:
    """One consumer connection: deliveries arrive here, handlers run on the pool, and their
    acks come back to this thread, the only one allowed to touch the connection.

    The runs of each message wait in ``arrived``; each message also queues enough ``_take``
    turns on the pool for its runs, and a pool thread taking its turn takes whatever waits then
    (up to ``MAX_BATCH`` with a batch handler, else one). So a thread hands a batch handler
    every run that arrived while all threads were busy, and a lone run at once. A message
    is settled on this thread once each of its runs is handled."""

    def __init__(self, queue: RabbitQueue, handler: Handler, batch_handler: BatchHandler | None,
                 pool: ThreadPoolExecutor, prefetch: int) -> None:
        self.queue = queue
        self.handler = handler
        self.batch_handler = batch_handler
        self.pool = pool
        self.prefetch = prefetch
        self.in_flight = 0
        self.arrived: deque[_Delivery] = deque()
        self.connection: pika.BlockingConnection | None = None

    def open(self) -> None:
        self.connection = pika.BlockingConnection(self.queue.params)
        self.channel = self.connection.channel()
        for method, arguments in self.queue.declarations():
            getattr(self.channel, method)(**arguments)
        self.channel.basic_qos(prefetch_count=self.prefetch)
        self.tag = self.channel.basic_consume(self.queue.queue_name, self._on_delivery)

    def serve(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._pump()
        # Warm stop: no new deliveries; runs in flight finish and are acked.
        self.channel.basic_cancel(self.tag)
        while self.in_flight:
            self.connection.process_data_events(time_limit=_PUMP_S)

    def close(self) -> None:
        # Unacked deliveries go back to the queue when the connection closes.
        if self.connection is not None and self.connection.is_open:
            try:
                self.connection.close()
            except _LINK_ERRORS:
                logger.debug("consumer connection already broken", exc_info=True)

    def _pump(self) -> None:
        self.connection.process_data_events(time_limit=_PUMP_S)
        if self.tag not in self.channel.consumer_tags:
            # The broker cancelled us (queue deleted, leader moved): subscribe again afresh.
            raise pika.exceptions.ConsumerCancelled(self.tag)

    def _on_delivery(self, channel: BlockingChannel, method: Basic.Deliver,
                     properties: pika.BasicProperties, body: bytes) -> None:
        headers = properties.headers or {}
        # The quorum queue counts earlier deliveries of this message in x-delivery-count.
        delivery = headers.get("x-delivery-count", 0) + 1 + headers.get(EARLIER_DELIVERIES, 0)
        execution_ids = body.decode().split()
        if not execution_ids:
            channel.basic_ack(method.delivery_tag)
            return
        self.in_flight += 1
        message = _Message(method.delivery_tag, len(execution_ids), len(execution_ids),
                           delivery, [])
        self.arrived.extend(_Delivery(execution_id, message) for execution_id in execution_ids)
        # Enough turns on the pool for every run of the message (a turn takes up to limit).
        limit = MAX_BATCH if self.batch_handler is not None else 1
        for _ in range(-(-len(execution_ids) // limit)):
            self.pool.submit(self._take)

    def _take(self) -> None:
        """On a pool thread: run what waits (nothing, if other threads took it first)."""
        limit = MAX_BATCH if self.batch_handler is not None else 1
        taken: list[_Delivery] = []
        while len(taken) < limit:
            try:
                taken.append(self.arrived.popleft())
            except IndexError:
                break
        if self.batch_handler is not None and taken:
            self._run_batch(taken)  # a lone run too: the batch handler says if it is one
        elif taken:
            self._run(taken[0])

    def _run_batch(self, taken: list[_Delivery]) -> None:
        try:
            single = set(self.batch_handler([item.execution_id for item in taken]))
        except Exception:  # noqa: BLE001 - the broker delivers them again
            logger.warning("a batch of %d runs failed; each is delivered again (up to %d "
                           "deliveries)", len(taken), self.queue.max_deliveries, exc_info=True)
            self._settle([(item, False) for item in taken])
            return
        self._settle([(item, True) for item in taken if item.execution_id not in single])
        for item in taken:
            if item.execution_id in single:
                self.pool.submit(self._run, item)

    def _run(self, item: _Delivery) -> None:
        """On a pool thread."""
        handled = False
        try:
            self.handler(item.execution_id)
            handled = True
        except Exception:
            if item.delivery >= self.queue.max_deliveries:
                logger.exception("run %s: handler failed on delivery %d of %d; dead-lettered to %s",
                                 item.execution_id, item.delivery, self.queue.max_deliveries,
                                 self.queue.dead_queue_name)
            else:
                logger.warning("run %s: handler failed on delivery %d of %d; requeued",
                               item.execution_id, item.delivery, self.queue.max_deliveries,
                               exc_info=True)
        self._settle([(item, handled)])

    def _settle(self, outcomes: list[tuple[_Delivery, bool]]) -> None:
        """Hand (run, handled) pairs to the connection's thread, which settles each message
        once all its runs are handled."""
        if not outcomes:
            return
        try:
            self.connection.add_callback_threadsafe(partial(self._send_settled, outcomes))
        except pika.exceptions.ConnectionWrongStateError:
            logger.info("%d runs: their connection closed before the ack; the broker will "
                        "deliver them again", len(outcomes))

    def _send_settled(self, outcomes: list[tuple[_Delivery, bool]]) -> None:
        """On the connection's thread: the only one that touches a ``_Message``."""
        complete: list[_Message] = []
        for item, handled in outcomes:
            message = item.message
            message.waiting -= 1
            if not handled:
                message.failed.append(item.execution_id)
            if message.waiting == 0:
                complete.append(message)
        for message in complete:
            if message.failed and len(message.failed) < message.total:
                self.pool.submit(self._split, message)  # settled once that is done
            elif message.failed:
                # None was handled: the message comes again, or is dead-lettered on its last
                # delivery (the broker's limit counts this message's deliveries only, so the
                # requeue decides).
                self._send_settlement(
                    message, acked=False, requeue=message.delivery < self.queue.max_deliveries)
            else:
                self._send_settlement(message, acked=True)

    def _send_settlement(self, message: _Message, *, acked: bool, requeue: bool = True) -> None:
        """On the connection's thread: ack or nack one message."""
        self.in_flight -= 1
        if not self.channel.is_open:
            return  # the broker requeues what this channel held
        if acked:
            self.channel.basic_ack(message.tag)
        else:
            self.channel.basic_nack(message.tag, requeue=requeue)

    def _split(self, message: _Message) -> None:
        """On a pool thread: some runs of the message failed, others succeeded. The failed
        ones go back to the queue on their own (to the dead letters, on their last
        delivery), then the message is acked; if that publish fails, the whole message is
        nacked and comes again (its succeeded runs find nothing to claim)."""
        try:
            for execution_id in message.failed:
                self.queue.publish_again(execution_id, message.delivery)
            acked = True
        except (PublishError, *_LINK_ERRORS):
            logger.warning("%d failed runs of a message could not be published on their own; "
                           "the message comes again", len(message.failed), exc_info=True)
            acked = False
        try:
            self.connection.add_callback_threadsafe(
                partial(self._send_settlement, message, acked=acked))
        except pika.exceptions.ConnectionWrongStateError:
            logger.info("a message's connection closed before its ack; the broker will "
                        "deliver it again")


class _Batch:
    def __init__(self, routing_key: str, bodies: Sequence[bytes],
                 properties: pika.BasicProperties) -> None:
        self.routing_key = routing_key
        self.bodies = bodies
        self.properties = properties
        self.unconfirmed: set[int] = set()
        self.first_tag = 0
        self.error: BaseException | None = None
        self.done = threading.Event()

    def fail(self, error: BaseException) -> None:
        if not self.done.is_set():
            self.error = self.error or error
            self.done.set()


class _Publisher:
    """Publishes batches from any thread through one ``_Link``, replaced when it breaks."""

    def __init__(self, params: pika.URLParameters, declarations: list, timeout_s: float) -> None:
        self._params = params
        self._declarations = declarations
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._link: _Link | None = None
        self._pid = 0

    def publish(self, routing_key: str, bodies: Sequence[bytes],
                properties: pika.BasicProperties = PERSISTENT) -> None:
        link = self._open_link()
        batch = _Batch(routing_key, bodies, properties)
        link.send(batch)
        if not batch.done.wait(self._timeout_s):
            batch.fail(TimeoutError(f"no confirm within {self._timeout_s:g} s"))
        if batch.error is not None:
            link.close()  # the retry, if any, starts from a fresh connection and topology
            raise PublishError(str(batch.error) or type(batch.error).__name__) from batch.error

    def close(self) -> None:
        with self._lock:
            link, self._link = self._link, None
        if link is not None and self._pid == os.getpid():
            link.close(wait=True)

    def _open_link(self) -> _Link:
        with self._lock:
            # A link does not survive fork(): its I/O thread stays in the parent.
            if self._link is None or self._link.closed or self._pid != os.getpid():
                self._link = _Link(self._params, self._declarations)
                self._pid = os.getpid()
            link = self._link
        if not link.ready.wait(self._timeout_s):
            link.close()
            raise PublishError(f"could not connect within {self._timeout_s:g} s")
        if link.closed:
            raise PublishError(f"could not connect: {link.error!r}")
        return link


class _Link:
    """A SelectConnection with a confirm-mode channel, on its own I/O thread.

    Other threads only call ``send`` and ``close``; everything else runs on the I/O thread.
    """

    def __init__(self, params: pika.URLParameters, declarations: list) -> None:
        self.ready = threading.Event()  # set when the topology is declared, or on failure
        self.closed = False
        self.error: BaseException | None = None
        self._declarations = declarations
        self._lock = threading.Lock()  # guards closed and _handed_over
        self._handed_over: set[_Batch] = set()  # sent to this link, not yet done
        self._channel: Channel | None = None
        self._last_tag = 0
        self._unconfirmed: list[_Batch] = []  # in delivery-tag order
        self._connection = pika.SelectConnection(
            params, on_open_callback=self._on_open, on_open_error_callback=self._on_failure,
            on_close_callback=self._on_failure)
        self._thread = threading.Thread(target=self._run, daemon=True, name="rabbitmq-publish")
        self._thread.start()

    # --- any thread -------------------------------------------------------------------------

    def send(self, batch: _Batch) -> None:
        with self._lock:
            if self.closed:
                batch.fail(self.error or ConnectionError("connection closed"))
                return
            self._handed_over.add(batch)
            self._call(partial(self._write, batch))

    def close(self, wait: bool = False) -> None:
        with self._lock:
            if not self.closed:
                # Refuse new batches now: closing a connection whose peer is silent can take
                # until the heartbeat gives up, and a retry must not wait for that.
                self.closed = True
                self._call(self._close)
        if wait:
            self._thread.join(timeout=10)

    def _call(self, callback: Callable[[], None]) -> None:
        self._connection.ioloop.add_callback_threadsafe(callback)

    # --- the I/O thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._connection.ioloop.start()
        finally:
            with self._lock:
                self.closed = True
                error = self.error or ConnectionError("connection closed")
                for batch in self._handed_over:
                    batch.fail(error)
                self._handed_over.clear()
            self.ready.set()

    def _close(self) -> None:
        if self._connection.is_open:
            self._connection.close()  # _on_failure stops the loop once the broker agrees
        elif not self._connection.is_closing:
            self._connection.ioloop.stop()

    def _on_failure(self, connection: pika.SelectConnection, error: BaseException) -> None:
        if not isinstance(error, pika.exceptions.ConnectionClosedByClient):
            logger.warning("publisher connection to RabbitMQ failed: %r", error)
        self.error = self.error or error
        connection.ioloop.stop()

    def _on_open(self, connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel: Channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(self._on_confirm, callback=lambda _: self._declare(0))

    def _declare(self, step: int) -> None:
        """Declare the topology one step at a time: each waits for the previous one's reply."""
        if step == len(self._declarations):
            self.ready.set()
            return
        method, arguments = self._declarations[step]
        getattr(self._channel, method)(callback=lambda _: self._declare(step + 1), **arguments)

    def _on_channel_closed(self, channel: Channel, error: BaseException) -> None:
        # E.g. 406 when the queue exists with other arguments: give up on this link.
        self.error = self.error or error
        self._close()

    def _write(self, batch: _Batch) -> None:
        if self._channel is None or not self._channel.is_open:
            batch.fail(self.error or ConnectionError("channel closed"))
            return
        for body in batch.bodies:
            self._channel.basic_publish("", batch.routing_key, body, batch.properties,
                                        mandatory=True)
        batch.first_tag = self._last_tag + 1
        self._last_tag += len(batch.bodies)
        batch.unconfirmed = set(range(batch.first_tag, self._last_tag + 1))
        self._unconfirmed.append(batch)

    def _on_return(self, channel: Channel, method: Basic.Return,
                   properties: pika.BasicProperties, body: bytes) -> None:
        # An unroutable message is returned before it is acked: mark its batch failed.
        for batch in self._unconfirmed:
            if body in batch.bodies:
                batch.error = batch.error or LookupError(f"unroutable: {method.reply_text}")
                return

    def _on_confirm(self, frame: Method) -> None:
        tag, multiple = frame.method.delivery_tag, frame.method.multiple
        nacked = isinstance(frame.method, Basic.Nack)
        for batch in list(self._unconfirmed):
            if batch.first_tag > tag:
                break
            settled = {t for t in batch.unconfirmed if t <= tag} if multiple else {tag}
            if not settled & batch.unconfirmed:
                continue
            batch.unconfirmed -= settled
            if nacked:
                batch.error = batch.error or RuntimeError("the broker nacked the message")
            if not batch.unconfirmed:
                self._unconfirmed.remove(batch)
                with self._lock:
                    self._handed_over.discard(batch)
                batch.done.set()
