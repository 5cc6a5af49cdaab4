"""Hiding secrets in text that leaves the process: service URLs in settings, log lines and
readiness reports. One place, so the settings page and the logs cannot disagree about what a
password looks like.

- a URL's password: ``amqp://guest:secret@host`` → ``amqp://guest:***@host`` (it may hold
  ``/`` and ``@``, which SQLAlchemy and redis-py accept: it ends at the last ``@`` before the
  host);
- a password, token or key given as a query parameter (libpq and redis-py accept
  ``?password=…``): ``?password=***``.

Over-masking is the safe mistake: ``https://host:443/a@b`` shows as ``https://host:***@b``.
"""

from __future__ import annotations

import re

# the password runs to the last "@" before the host (it may hold "@" and "/" itself)
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)\S+?@(?=[^@\s/?#]*(?:[/?#\s]|$))",
                           re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"([?&](?:password|pass|pwd|token|key)=)[^&#\s]*", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every URL password and query-string secret replaced by ``***``."""
    if "://" in text:
        text = _URL_PASSWORD.sub(r"\1***@", text)
    if "=" in text:
        text = _QUERY_PASSWORD.sub(r"\1***", text)
    return text
