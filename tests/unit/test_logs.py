"""The log formatters and the request-id middleware, without a server: what one line holds."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from app import logs


def _record(message: str, *args, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    record = logging.LogRecord("app.test", logging.WARNING, __file__, 1, message, args,
                               exc_info)
    logs.ContextFilter().filter(record)
    return record


def test_a_json_line_holds_the_ids_and_the_exception_as_one_string():
    request_token = logs.request_id.set("req-1")
    run_token = logs.execution_id.set("run-1")
    try:
        raise ValueError("bad value")
    except ValueError as exc:
        record = _record("failed %s", "here", exc=exc)
    finally:
        logs.request_id.reset(request_token)
        logs.execution_id.reset(run_token)
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert (entry["level"], entry["logger"], entry["message"]) == (
        "WARNING", "app.test", "failed here")
    assert (entry["request_id"], entry["execution_id"]) == ("req-1", "run-1")
    assert entry["time"].endswith("Z") and "T" in entry["time"]
    assert entry["exc_info"].startswith("Traceback") and "ValueError: bad value" in entry[
        "exc_info"]


def test_without_a_request_or_run_the_ids_are_null():
    entry = json.loads(logs.JsonFormatter().format(_record("plain")))
    assert entry["request_id"] is None and entry["execution_id"] is None
    assert "exc_info" not in entry


def test_the_text_format_shows_the_ids_only_when_set():
    formatter = logs.TextFormatter()
    assert "[" not in formatter.format(_record("plain"))
    token = logs.execution_id.set("run-9")
    try:
        line = formatter.format(_record("ran"))
    finally:
        logs.execution_id.reset(token)
    assert line.endswith("WARNING app.test [execution=run-9] ran")


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_url_passwords_are_masked_in_messages_and_tracebacks(log_format):
    try:
        raise ConnectionError("cannot reach amqp://guest:s3cret@rabbit:5672/%2F")
    except ConnectionError as exc:
        record = _record("lost redis://:s3cret@cache:6379/0 and %s", "postgresql://u:s3cret@db",
                         exc=exc)
    line = logs.formatter(log_format).format(record)
    assert "s3cret" not in line
    assert "redis://:***@cache:6379/0" in line and "amqp://guest:***@rabbit" in line


def test_configure_installs_one_handler_however_often_it_is_called(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    before = list(logging.root.handlers)
    level = logging.root.level
    try:
        logs.configure("INFO", "text")
        logs.configure("INFO", "json")
        ours = [h for h in logging.root.handlers if h not in before]
        assert len([h for h in logging.root.handlers
                    if isinstance(h, logs._StderrHandler)]) == 1
        logging.getLogger("app.test").info("hello")
        assert json.loads(stream.getvalue().splitlines()[-1])["message"] == "hello"
        assert logging.getLogger("pika").getEffectiveLevel() == logging.WARNING
    finally:
        for handler in ours:
            logging.root.removeHandler(handler)
        logging.root.setLevel(level)


def _echo_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [(logs.request_id.get() or "").encode()]


@pytest.mark.parametrize(("sent", "kept"), [
    ("abc-123", True), ("a" * 128, True), ("trace/span:1=2+3", True),
    ("a" * 129, False), ("two words", False), ("<script>", False), (None, False)])
def test_the_middleware_keeps_a_sane_id_and_replaces_any_other(sent, kept):
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}
    if sent is not None:
        environ["HTTP_X_REQUEST_ID"] = sent
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen.update(headers)

    body = b"".join(logs.RequestIds(_echo_app)(environ, start_response)).decode()
    assert body == seen["X-Request-ID"] == environ[logs.ENVIRON_KEY]
    assert (body == sent) is kept
    assert logs.request_id.get() is None  # reset once the request is done
