"""Running runs in this process: the queue handler (with an app context), the clock's tick,
and, in the embedded default, both as threads of the web process."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from flask import Flask

from app.db import db
from app.models import utcnow
from app.services import executions, maintenance, retention, run_batches, runs, schedules

log = logging.getLogger(__name__)


def handler_for(app: Flask):
    def handle(execution_id: str) -> None:
        with app.app_context():
            runs.run_execution(execution_id)

    return handle


def batch_handler_for(app: Flask):
    def handle(execution_ids: list[str]) -> list[str]:
        with app.app_context():
            return run_batches.run_batch(execution_ids)

    return handle


@dataclass(frozen=True)
class PeriodicJob:
    """One kind of the clock's periodic work: ``run()`` returns how much it did; it runs on
    every tick, or at most every ``every_s`` seconds (in this process's memory).

    ``period_setting`` names the Settings field of a period that holds across every clock and
    every restart (retention's daily, weekly, monthly jobs): a clock runs such a job only when
    it claims it in ``maintenance_runs`` (app.services.maintenance)."""

    name: str
    run: Callable[[], int]
    every_s: float = 0.0
    period_setting: str | None = None


def _reap() -> int:
    ids = runs.reap()
    if ids:
        log.info("reaper: re-publishing %d runs", len(ids))
        executions.publish(ids)
    return len(ids)


def _fire_schedules(batch: int = 100, most: int = 1000) -> int:
    """Due slots in batches of ``batch`` (each its own transaction), at most ``most`` a tick."""
    started = 0
    while started < most:
        ids = schedules.fire_due(limit=batch)
        started += len(ids)
        if len(ids) < batch:
            break
    if started:
        log.info("schedules: started %d runs", started)
    return started


# The clock's work, declared as data.
CLOCK_JOBS: tuple[PeriodicJob, ...] = (
    PeriodicJob("reaper", _reap),
    PeriodicJob("schedules", _fire_schedules),
)

# Retention ticks in a thread of its own (see ``clock_loop``): a weekly VACUUM or the first
# purge of a big table may take minutes, which must not hold back the schedules and the reaper.
# Every RETENTION_CHECK_S each clock claims whichever of these are due across all clocks.
RETENTION_CHECK_S = 60.0
RETENTION_JOBS: tuple[PeriodicJob, ...] = (
    PeriodicJob("retention.executions", retention.soft_delete_executions,
                period_setting="retention_every_s"),
    PeriodicJob("retention.trigger_events", retention.soft_delete_trigger_events,
                period_setting="retention_every_s"),
    PeriodicJob("retention.ai_history", retention.soft_delete_ai_history,
                period_setting="retention_every_s"),
    PeriodicJob("retention.audit_logs", retention.soft_delete_audit_logs,
                period_setting="retention_every_s"),
    PeriodicJob("retention.idempotency_keys", retention.delete_expired_idempotency_keys,
                period_setting="retention_every_s"),
    PeriodicJob("retention.purge", retention.purge, period_setting="purge_every_s"),
    PeriodicJob("retention.vacuum", retention.vacuum, period_setting="vacuum_every_s"),
)


class Clock:
    """Runs the due jobs on each tick, each in its own transaction: one failing does not
    stop the others (nor the next tick)."""

    def __init__(self, app: Flask, jobs: tuple[PeriodicJob, ...] = CLOCK_JOBS) -> None:
        self.app = app
        self.jobs = jobs
        self.last_run: dict[str, float] = {}

    def tick(self, now: datetime | None = None) -> dict[str, int]:
        """One pass; returns how much each job that ran (and did not fail) did. ``now``
        (default: the time) is when the pass claims the jobs with a shared period."""
        done = {}
        with self.app.app_context():
            for job in self.jobs:
                started = time.monotonic()
                last = self.last_run.get(job.name)
                if job.every_s and last is not None and started - last < job.every_s:
                    continue
                self.last_run[job.name] = started
                try:
                    count = self._run(job, now or utcnow())
                except Exception:  # noqa: BLE001 - the other jobs and later ticks go on
                    log.exception("clock job %s failed", job.name)
                else:
                    if count is not None:
                        done[job.name] = count
                finally:
                    db.remove()
        return done

    def _run(self, job: PeriodicJob, now: datetime) -> int | None:
        """The job's count, or None when it is not due (another clock has this period's run)."""
        if job.period_setting is None:
            return job.run()
        period_s = getattr(self.app.config["SETTINGS"], job.period_setting)
        if not maintenance.claim(job.name, period_s, now):
            return None
        try:
            count = job.run()
        except Exception:
            db.remove()  # the failed job's transaction, then free the claim for a retry
            maintenance.release(job.name, now)
            raise
        maintenance.finish(job.name, now)
        return count


def clock_tick(app: Flask) -> dict[str, int]:
    """One pass of every clock job (tests, and anything that wants to run the clock once)."""
    return Clock(app).tick()


def _tick_every(clock: Clock, interval_s: float, stop: threading.Event) -> None:
    while not stop.wait(interval_s):
        try:
            clock.tick()
        except Exception:  # noqa: BLE001 - the clock must outlive a failing tick
            log.exception("clock tick failed")


def clock_loop(app: Flask, stop: threading.Event) -> None:
    """The clock until ``stop`` is set: CLOCK_JOBS every ``clock_interval_s``, and
    RETENTION_JOBS in a thread of their own. A retention batch cut short by the process's end
    is rolled back whole, and its claim expires (``maintenance.LEASE``)."""
    retention_thread = threading.Thread(
        target=_tick_every, args=(Clock(app, RETENTION_JOBS), RETENTION_CHECK_S, stop),
        name="retention", daemon=True)
    retention_thread.start()
    _tick_every(Clock(app), app.config["SETTINGS"].clock_interval_s, stop)
    retention_thread.join(10)


def start_in_process(app: Flask) -> threading.Event:
    """Embedded default: queue workers and the clock as daemon threads; set the returned event
    (or call ``stop_in_process``) to stop them."""
    settings = app.config["SETTINGS"]
    queue = app.extensions["jobsprint.queue"]
    stop = threading.Event()
    threads = [
        threading.Thread(target=queue.consume, args=(handler_for(app),),
                         kwargs={"stop": stop, "concurrency": settings.worker_threads},
                         name="inline-workers", daemon=True),
        threading.Thread(target=clock_loop, args=(app, stop), name="clock", daemon=True),
    ]
    for thread in threads:
        thread.start()
    app.extensions["jobsprint.threads"] = threads
    return stop


def stop_in_process(app: Flask, timeout_s: float = 10.0) -> None:
    """Stop the embedded workers and clock and wait for them (runs in flight finish)."""
    if stop := app.extensions.get("jobsprint.stop"):
        stop.set()
    for thread in app.extensions.get("jobsprint.threads", ()):
        thread.join(timeout_s)
