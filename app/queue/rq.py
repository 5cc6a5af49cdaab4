"""RQ on Redis: each published id becomes an RQ job ``app.queue.rq.run_execution(id)``.

Publish: one MULTI/EXEC pipeline per batch (``Queue.enqueue_many``); when it returns, Redis holds
the jobs (as durably as Redis is configured to be — AOF ``everysec`` can lose the last second on a
Redis crash; the reaper re-publishes from the database). A connection dropped mid-publish is
re-opened and the pipeline sent again (up to 3 times), which may store a batch twice, never
half of it. Jobs carry ``Retry(max_deliveries - 1)``, JSON-serialized arguments (only an id
travels, so nothing in Redis is ever unpickled) and a short ``result_ttl``: a run's result lives
in the database, not in Redis.

Consume: ``concurrency`` RQ ``SimpleWorker``s, each on a thread of the calling process (the
forking ``Worker`` costs a fork per job: 74 jobs/s against 270/s, DESIGN.md). Running
SimpleWorker off the main thread needs two changes, both in ``_RunWorker``: it must not install
signal handlers (``signal.signal`` only works on the main thread, and the caller owns SIGTERM),
and it must not enforce job timeouts with SIGALRM (same reason; the engine enforces run and node
timeouts itself). ``stop`` is honoured within about a second: the worker waits for jobs in 1 s
slices instead of RQ's ~7 minute blocking pop. A job in flight when ``stop`` is set finishes.

Failure: a handler that raises is re-enqueued at once (RQ's Retry, no interval; backoff is the
engine's business) until it has run ``max_deliveries`` times, then it lands in the queue's
``FailedJobRegistry`` (kept ``failure_ttl_s``): that registry is the dead letter.

A worker killed mid-job (SIGKILL, OOM, lost machine) leaves the job in the
``StartedJobRegistry`` with a lease. RQ renews that lease only in its forking worker's monitor
loop, so ``_RunWorker`` renews it from a side thread while the handler runs. Once the lease has
expired (``abandoned_after_s`` to ``abandoned_after_s + 1`` after the last renewal: RQ counts
whole seconds), the next registry clean-up — run by any live worker of the queue at start and
every ``maintenance_interval_s`` — re-enqueues the job if it has retries left (a kill counts as
a delivery) or moves it to the failed registry. So RQ does redeliver on its own,
``abandoned_after_s + 1 + maintenance_interval_s`` after the kill at worst; the reaper
re-publishing the run from the database covers the case where no worker is alive. (A worker
killed between popping a job and starting it leaves the job in RQ's intermediate queue, which
the clean-up hands back after a minute.)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry as RedisRetry
from rq import Queue, Retry, SimpleWorker
from rq.exceptions import StopRequested
from rq.job import Job, get_current_job
from rq.serializers import JSONSerializer
from rq.timeouts import BaseDeathPenalty

from app.queue.base import BatchHandler, Handler, RunQueue

logger = logging.getLogger(__name__)

# The handler of this process's consumer, per queue name; run_execution looks it up. RQ imports
# job functions by dotted path, so the handler cannot travel with the job.
_handlers: dict[str, Handler] = {}

# Seconds a finished job stays in Redis. Not 0: with result_ttl=0 RQ 2.12 deletes the job on
# success, and deleting a job that was re-enqueued after its worker died fails ("Execution ...
# not found in Redis": the dead execution outlives its hash in the job's ExecutionRegistry by
# 60 s), so RQ counts the success as a failure and runs the job again.
RESULT_TTL_S = 10


def _connect(url: str) -> redis.Redis:
    # Redis.from_url, unlike Redis(), gives connections that never retry (redis-py 8), so one
    # dropped connection would fail a publish. Reconnect and resend, as Redis() does by default.
    return redis.Redis.from_url(url, retry=RedisRetry(ExponentialWithJitterBackoff(0.01, 1), 3))


def run_execution(execution_id: str) -> None:
    """The RQ job function: hand the id to the consumer's handler."""
    job = get_current_job()
    handler = _handlers.get(job.origin) if job is not None else None
    if handler is None:
        raise RuntimeError(f"run {execution_id}: no consumer registered in this process "
                           "(jobs of this queue must run under RQQueue.consume)")
    try:
        handler(execution_id)
    except Exception:
        # RQ logs the traceback under its job id; say which run it was and what happens next.
        if job.retries_left:
            logger.warning("run %s: handler failed; RQ enqueues job %s again (%d retries left "
                           "before this one)", execution_id, job.id, job.retries_left)
        else:
            logger.error("run %s: handler failed on its last delivery; dead-lettered to the "
                         "failed job registry of %s as job %s", execution_id, job.origin, job.id)
        raise


class RQQueue(RunQueue):
    name = "rq"

    def __init__(self, url: str, *, queue_name: str = "jobsprint.runs", max_deliveries: int = 5,
                 abandoned_after_s: int = 90, maintenance_interval_s: int = 60,
                 failure_ttl_s: int = 7 * 24 * 3600) -> None:
        if max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")
        if abandoned_after_s < 1 or maintenance_interval_s < 1:
            raise ValueError("abandoned_after_s and maintenance_interval_s must be at least 1")
        self.url = url
        self.queue_name = queue_name
        self.max_deliveries = max_deliveries
        self.abandoned_after_s = abandoned_after_s
        self.maintenance_interval_s = maintenance_interval_s
        self.failure_ttl_s = failure_ttl_s
        self._redis = _connect(url)
        self.queue = Queue(queue_name, connection=self._redis, serializer=JSONSerializer)

    def publish(self, execution_ids: Sequence[str], *, together: bool = False) -> None:
        if not execution_ids:
            return
        retry = Retry(max=self.max_deliveries - 1) if self.max_deliveries > 1 else None
        jobs = [
            Queue.prepare_data(run_execution, args=(execution_id,), result_ttl=RESULT_TTL_S,
                               failure_ttl=self.failure_ttl_s, retry=retry,
                               # -1: no RQ job timeout; the engine enforces run and node timeouts.
                               timeout=-1)
            for execution_id in execution_ids
        ]
        self.queue.enqueue_many(jobs)

    def consume(self, handler: Handler, *, stop: threading.Event, concurrency: int = 1,
                batch_handler: BatchHandler | None = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        # Workers get their own client: RQ raises the socket timeout of the pool it is given.
        connection = _connect(self.url)
        _handlers[self.queue_name] = handler
        threads = [
            threading.Thread(target=self._serve, args=(connection, stop), daemon=True,
                             name=f"rq-run-{n}")
            for n in range(concurrency)
        ]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                # A timed join keeps the caller's thread responsive to signals (Ctrl+C sets stop).
                while thread.is_alive():
                    thread.join(0.5)
        finally:
            _handlers.pop(self.queue_name, None)
            connection.close()

    def depth(self) -> int:
        return self.queue.count

    def ping(self, timeout_s: float) -> None:
        # Its own client: the queue's has no socket timeouts and retries, so a dead Redis
        # would hold a probe far longer than ``timeout_s``.
        probe = redis.Redis.from_url(self.url, socket_timeout=timeout_s,
                                     socket_connect_timeout=timeout_s)
        try:
            probe.ping()
        finally:
            probe.close()

    def close(self) -> None:
        self._redis.close()

    def _serve(self, connection: redis.Redis, stop: threading.Event) -> None:
        """Run one worker until ``stop``; start a fresh one if RQ's loop gives up (Redis down)."""
        delay = 1.0
        while not stop.is_set():
            worker = _RunWorker(self.queue_name, connection=connection, stop=stop,
                                lease_s=self.abandoned_after_s,
                                maintenance_interval=self.maintenance_interval_s,
                                serializer=JSONSerializer)
            try:
                # RQ logs four INFO lines per job; the handler logs what matters about a run.
                worker.work(logging_level="WARNING")
            except Exception:
                logger.exception("rq worker %s failed", worker.name)
            if stop.is_set():
                return
            # work() returns early only after logging why (lost Redis, an unexpected error).
            logger.warning("rq worker %s stopped; starting another in %.0f s", worker.name, delay)
            stop.wait(delay)
            delay = min(delay * 2, 30.0)


class _NoDeathPenalty(BaseDeathPenalty):
    """RQ's default job timeout uses SIGALRM, which only the main thread may set up."""

    def setup_death_penalty(self) -> None:
        pass

    def cancel_death_penalty(self) -> None:
        pass


class _RunWorker(SimpleWorker):
    """A SimpleWorker that can live on any thread and stops when an Event is set."""

    death_penalty_class = _NoDeathPenalty
    # RQ retries a lost Redis with exponential sleeps up to a minute; keep stop responsive.
    max_connection_wait_time = 5.0

    def __init__(self, *args, stop: threading.Event, lease_s: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.log_result_lifespan = False
        self._stop = stop
        self.lease_s = lease_s
        self._lease: _Lease | None = None

    @property
    def dequeue_timeout(self) -> int:
        return 1

    def _install_signal_handlers(self) -> None:
        # The caller owns SIGTERM/SIGINT (jobs/worker.py turns them into ``stop``), and
        # signal.signal raises off the main thread.
        pass

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        # RQ's own loop returns only with a job; ask in 1 s slices so a set ``stop`` is seen.
        # StopRequested is how RQ's own SIGTERM handler ends work(), between jobs.
        while not self._stop.is_set():
            result = super().dequeue_job_and_maintain_ttl(1, max_idle_time=1)
            if result is not None:
                return result
        raise StopRequested()

    def heartbeat(self, timeout=None, pipeline=None):
        try:
            super().heartbeat(timeout, pipeline)
        except redis.exceptions.ConnectionError:
            # While Redis is down RQ retries forever inside its dequeue loop, heartbeating on
            # each try; once stop is set, give up there so the process can exit.
            if self._stop.is_set():
                raise StopRequested() from None
            raise

    def get_heartbeat_ttl(self, job: Job) -> int:
        # The lease of a job in the StartedJobRegistry: renewed while the handler runs, so it
        # only runs out when this process is gone. RQ scores it in whole seconds (the floor of
        # now + ttl), so a ttl of n s can run out n - 1 s after a renewal: ask for one more.
        return self.lease_s + 1

    def perform_job(self, job: Job, queue: Queue) -> bool:
        self._lease = _Lease(self, job)
        try:
            return super().perform_job(job, queue)
        finally:
            self._lease.end()

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        # The job function has returned or raised: stop renewing before RQ deletes the
        # execution, so a late renewal cannot re-create it.
        if self._lease is not None:
            self._lease.end()
        super().handle_execution_ended(job, queue, heartbeat_ttl)


class _Lease:
    """Renews a running job's StartedJobRegistry entry from a side thread until ``end()``."""

    def __init__(self, worker: _RunWorker, job: Job) -> None:
        self._worker = worker
        self._job = job
        self._ended = threading.Event()
        self._renewing = threading.Lock()
        threading.Thread(target=self._renew, daemon=True,
                         name=f"{threading.current_thread().name}-lease").start()

    def end(self) -> None:
        self._ended.set()
        with self._renewing:  # wait out a renewal in progress
            pass

    def _renew(self) -> None:
        interval = self._worker.lease_s / 3
        while not self._ended.wait(interval):
            with self._renewing:
                if self._ended.is_set():
                    return
                try:
                    self._worker.maintain_heartbeats(self._job)
                except redis.exceptions.RedisError:
                    logger.warning("job %s: could not renew its lease", self._job.id,
                                   exc_info=True)
