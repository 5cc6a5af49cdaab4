"""Running runs in this process: the queue handler (with an app context), the clock's tick,
and, in the embedded default, both as threads of the web process."""

from __future__ import annotations

import logging
import threading

from flask import Flask

from app.services import executions, runs

log = logging.getLogger(__name__)


def handler_for(app: Flask):
    def handle(execution_id: str) -> None:
        with app.app_context():
            runs.run_execution(execution_id)

    return handle


def clock_tick(app: Flask) -> int:
    """One pass of the clock: hand back runs whose lease passed. Returns how many."""
    with app.app_context():
        try:
            ids = runs.reap()
            if ids:
                log.info("reaper: re-publishing %d runs", len(ids))
                executions.publish(ids)
            return len(ids)
        finally:
            from app.db import db

            db.remove()


def clock_loop(app: Flask, stop: threading.Event) -> None:
    interval = app.config["SETTINGS"].clock_interval_s
    while not stop.wait(interval):
        try:
            clock_tick(app)
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
