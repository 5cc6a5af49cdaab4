"""One redaction for settings, logs and readiness reports."""

from __future__ import annotations

import logging

import pytest

from app.logs import JsonFormatter, TextFormatter
from app.redaction import redact


@pytest.mark.parametrize(("text", "shown"), [
    ("amqp://guest:secret@host:5672/%2f", "amqp://guest:***@host:5672/%2f"),
    ("redis://:pa/ss@h:6379/0", "redis://:***@h:6379/0"),  # "/" in the password
    ("postgresql://u:p@ss@host/db?x=a@b", "postgresql://u:***@host/db?x=a@b"),  # "@" in it
    ("postgresql://h/db?password=s3cret&sslmode=require",
     "postgresql://h/db?password=***&sslmode=require"),
    ("redis://h:6379/0?password=abc and more", "redis://h:6379/0?password=*** and more"),
    ("connect to amqp://g:x@y failed", "connect to amqp://g:***@y failed"),
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("https://user@h/v1", "https://user@h/v1"),
    ("no url, a=b", "no url, a=b"),
])
def test_passwords_in_urls_and_queries_are_hidden(text, shown):
    assert redact(text) == shown


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()])
def test_log_lines_hide_a_password_with_a_slash(formatter):
    record = logging.LogRecord("x", logging.WARNING, __file__, 1,
                               "broker amqp://guest:se/cret@mq:5672 is down", None, None)
    line = formatter.format(record)
    assert "se/cret" not in line and "cret" not in line and "amqp://guest:***@mq:5672" in line
