"""``clock``: the periodic work (``app.workers.CLOCK_JOBS``) — the reaper that hands back runs
whose lease passed (lost publishes, dead workers, deferred and parked runs that are due), and
the schedules, which start a run for each due cron slot — and, in a thread of its own, the
retention jobs (``app.workers.RETENTION_JOBS``). Several clocks may run: each pass claims rows
with SKIP LOCKED, a slot is unique in the database, a retention job is claimed once per period,
and a duplicate publish is harmless."""

from __future__ import annotations

import signal
import sys
import threading


def main() -> int:
    from dataclasses import replace

    from app import create_app
    from app.config import ConfigError, load_settings
    from app.workers import clock_loop

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"jobsprint: cannot start the clock: {exc}", file=sys.stderr)
        return 1
    app = create_app(replace(settings, inline_workers=False))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print("jobsprint clock: running", flush=True)
    clock_loop(app, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
