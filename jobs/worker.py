"""``worker``: runs executions from the queue named by QUEUE_URL (RQ or RabbitMQ).

Any number of workers on any number of machines share the work. SIGTERM or SIGINT stops taking
new runs; runs in flight finish (or, if the process is killed, are handed on by the reaper).
"""

from __future__ import annotations

import signal
import sys
import threading


def main() -> int:
    from dataclasses import replace

    from app import create_app
    from app.config import ConfigError, load_settings
    from app.workers import batch_handler_for, handler_for

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"jobsprint: cannot start a worker: {exc}", file=sys.stderr)
        return 1
    if settings.queue_url is None:
        print("jobsprint: cannot start a worker: QUEUE_URL is not set (the embedded default "
              "runs its workers inside the web process)", file=sys.stderr)
        return 1
    app = create_app(replace(settings, inline_workers=False))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    queue = app.extensions["jobsprint.queue"]
    print(f"jobsprint worker: {queue.name}, {settings.worker_threads} threads", flush=True)
    queue.consume(handler_for(app), stop=stop, concurrency=settings.worker_threads,
                  batch_handler=batch_handler_for(app))
    queue.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
