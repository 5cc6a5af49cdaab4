"""Log lines: one JSON object per line (``LOG_FORMAT=json``, production's default) or a
readable line (``text``, the embedded default), each carrying the id of the request and of the
run it belongs to.

The ids live in context variables: ``RequestIds`` (WSGI middleware) sets ``request_id`` for the
length of a request, from a sane ``X-Request-ID`` header or a new one, and echoes it in the
response; ``runs.run_execution`` sets ``execution_id`` while a worker runs a run. A filter on
the handler copies both onto every record, so lines from any library (SQLAlchemy, RQ, pika)
carry them too. A new thread starts with neither: a run's lease keeper or the webhook intake
thread serve many requests and runs, not one.

Secrets: nothing here knows which values are secret, so the services never log one; as a last
line of defence the formatters mask the password of any ``scheme://user:password@`` URL.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime

from app.redaction import redact

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
execution_id: ContextVar[str | None] = ContextVar("execution_id", default=None)

# What a caller may choose as a request id: short, and safe to echo in a header and a log.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
ENVIRON_KEY = "jobsprint.request_id"
# Libraries whose INFO lines are transport detail (pika: about 15 per connection, and a
# readiness probe opens one): shown at DEBUG only.
CHATTY = ("pika",)


class ContextFilter(logging.Filter):
    """Puts the current request and execution ids on each record (None when there is none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        if not hasattr(record, "execution_id"):
            record.execution_id = execution_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ms), level, logger, message, process,
    request_id, execution_id, and the exception with its traceback as one string."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "process": record.process,
            "request_id": getattr(record, "request_id", None),
            "execution_id": getattr(record, "execution_id", None),
        }
        if record.exc_info:
            entry["exc_info"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc_info"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack_info"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``2026-05-01 12:00:00,123 INFO app.services.runs [request=… execution=…] message``;
    the brackets only when an id is set."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(ids)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - stdlib's name
        ids = [f"{name}={value}" for name, value in (
            ("request", getattr(record, "request_id", None)),
            ("execution", getattr(record, "execution_id", None))) if value]
        record.ids = f" [{' '.join(ids)}]" if ids else ""
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def formatter(log_format: str) -> logging.Formatter:
    if log_format not in ("json", "text"):
        raise ValueError(f"log format must be json or text, not {log_format!r}")
    return JsonFormatter() if log_format == "json" else TextFormatter()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a test's capture replaces it)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr


def configure(level: str, log_format: str) -> None:
    """Send every logger's records to stderr in ``log_format``, from ``level`` up. Calling it
    again (each ``create_app``) re-formats the one handler it installed, never adds another."""
    ours = next((h for h in logging.root.handlers if isinstance(h, _StderrHandler)), None)
    if ours is None:
        ours = _StderrHandler()
        ours.addFilter(ContextFilter())
        logging.root.addHandler(ours)
    ours.setFormatter(formatter(log_format))
    logging.root.setLevel(level)
    for name in CHATTY:
        logging.getLogger(name).setLevel(
            logging.NOTSET if logging.root.level <= logging.DEBUG else logging.WARNING)


def adopt(logger: logging.Logger, log_format: str) -> None:
    """Format the handlers of a logger that does not propagate (gunicorn's) like ours."""
    for handler in logger.handlers:
        handler.setFormatter(formatter(log_format))
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())


def sane_request_id(raw: str | None) -> str | None:
    return raw if raw and _SANE_REQUEST_ID.fullmatch(raw) else None


class RequestIds:
    """WSGI middleware: the request's id (the caller's ``X-Request-ID`` if sane, else a new
    one) is set for the whole request, error handlers included, and sent back in the
    response's ``X-Request-ID``."""

    def __init__(self, wsgi_app) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        rid = sane_request_id(environ.get("HTTP_X_REQUEST_ID")) or uuid.uuid4().hex
        environ[ENVIRON_KEY] = rid

        def start_with_id(status, headers, exc_info=None):
            headers = [(k, v) for k, v in headers if k.lower() != "x-request-id"]
            headers.append(("X-Request-ID", rid))
            return start_response(status, headers, exc_info)

        token = request_id.set(rid)
        try:
            return self.wsgi_app(environ, start_with_id)
        finally:
            request_id.reset(token)
