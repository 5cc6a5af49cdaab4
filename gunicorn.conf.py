"""gunicorn's settings for the web process (the Procfile's ``web`` line; gunicorn also reads
this file by itself when started from the repository root, as ``scripts/run`` does).

- Worker class: gunicorn's gthread, whose thread waits a few ms for a keep-alive
  connection's next request before handing it back to the poller (``app.web.keepalive``).
- Logs: gunicorn's own lines (start-up, worker boots and exits, the access log when enabled)
  come out in ``LOG_FORMAT`` like the app's, access lines with the request's id.
- Metrics (``PROMETHEUS_MULTIPROC_DIR`` set): every process of the machine — these web
  workers, ``jobs.worker``, ``jobs.scheduler`` — writes its metrics to files in that directory
  and ``/metrics`` adds them up. At start the master creates the directory and deletes the
  files of processes no longer alive (what an earlier start left behind; the files of workers
  started before the web stay); a web worker that exits is marked dead, so its live gauges
  go.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

from gunicorn.glogging import Logger

from app import logs
from app.config import ConfigError, load_settings

try:
    _settings = load_settings()
except ConfigError as exc:
    sys.exit(f"jobsprint: cannot start: {exc}")

_MULTIPROC_FILE = re.compile(r".*_(\d+)\.db")


class JobsprintLogger(Logger):
    """gunicorn's logger, formatted as the app's logs are."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        logs.adopt(self.error_log, _settings.log_format)
        logs.adopt(self.access_log, _settings.log_format)

    def access(self, resp, req, environ, request_time) -> None:
        # Written after the response, outside the request's context: give it the id again.
        token = logs.request_id.set(environ.get(logs.ENVIRON_KEY))
        try:
            super().access(resp, req, environ, request_time)
        finally:
            logs.request_id.reset(token)


logger_class = JobsprintLogger
# gthread, with a keep-alive connection's next request served by the thread that answered the
# last one when it comes within a few ms (app.web.keepalive).
worker_class = "app.web.keepalive.LingeringThreadWorker"
# gunicorn 27's control socket is one per user (~/.gunicorn/gunicorn.ctl): a second web process
# on the machine (honcho -c web=2) would log an error at start. Jobsprint does not use it.
control_socket_disable = True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def on_starting(server) -> None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        if server.cfg.workers > 1:
            logging.getLogger("gunicorn.error").warning(
                "metrics: PROMETHEUS_MULTIPROC_DIR is not set, so /metrics shows only the "
                "web worker that answers it (and no jobs.worker's)")
        return
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    removed = 0
    for file in path.glob("*.db"):
        found = _MULTIPROC_FILE.fullmatch(file.name)
        if found and not _alive(int(found.group(1))):
            file.unlink(missing_ok=True)
            removed += 1
    logging.getLogger("gunicorn.error").info(
        "metrics: multiprocess directory %s ready (%d files of dead processes removed)",
        directory, removed)


def child_exit(server, worker) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
