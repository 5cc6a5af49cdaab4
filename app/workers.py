"""Running runs in this process: the queue handler (with an app context), the clock's tick,
and, in the embedded default, both as threads of the web process."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask

from app.services import executions, runs, schedules

log = logging.getLogger(__name__)


def handler_for(app: Flask):
    def handle(execution_id: str) -> None:
        with app.app_context():
            runs.run_execution(execution_id)

    return handle


@dataclass(frozen=True)
class PeriodicJob:
    """One kind of the clock's periodic work: ``run()`` returns how much it did; it runs on
    every tick, or at most every ``every_s`` seconds."""

    name: str
    run: Callable[[], int]
    every_s: float = 0.0


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


# The clock's work, declared as data. Retention jobs (old executions, AI history, audit logs)
# join here with their own period, e.g. PeriodicJob("retention", retention.purge, 3600).
CLOCK_JOBS: tuple[PeriodicJob, ...] = (
    PeriodicJob("reaper", _reap),
    PeriodicJob("schedules", _fire_schedules),
)


class Clock:
    """Runs the due jobs on each tick, each in its own transaction: one failing does not
    stop the others (nor the next tick)."""

    def __init__(self, app: Flask, jobs: tuple[PeriodicJob, ...] = CLOCK_JOBS) -> None:
        self.app = app
        self.jobs = jobs
        self.last_run: dict[str, float] = {}

    def tick(self) -> dict[str, int]:
        """One pass; returns how much each job that ran (and did not fail) did."""
        from app.db import db

        done = {}
        with self.app.app_context():
            for job in self.jobs:
                now = time.monotonic()
                last = self.last_run.get(job.name)
                if job.every_s and last is not None and now - last < job.every_s:
                    continue
                self.last_run[job.name] = now
                try:
                    done[job.name] = job.run()
                except Exception:  # noqa: BLE001 - the other jobs and later ticks go on
                    log.exception("clock job %s failed", job.name)
                finally:
                    db.remove()
        return done


def clock_tick(app: Flask) -> dict[str, int]:
    """One pass of every clock job (tests, and anything that wants to run the clock once)."""
    return Clock(app).tick()


def clock_loop(app: Flask, stop: threading.Event) -> None:
    interval = app.config["SETTINGS"].clock_interval_s
    clock = Clock(app)
    while not stop.wait(interval):
        try:
            clock.tick()
        except Exception:  # noqa: BLE001 - the clock must outlive a failing tick
            log.exception("clock tick failed")


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
