"""The engine's HttpPort for workers: http.request sent with requests, behind the SSRF guard.

What a workflow sees:
- a response is ``{"status", "headers" (names lower-cased), "body"}``; the body is the parsed
  JSON when the content type says JSON and it parses, else text;
- 1xx-4xx statuses (other than 429) are results, not errors: a 404 or a 422 is an answer the
  workflow may branch on (logic.if on ``input.status``), as in n8n with "never error";
- 429, 5xx and connection failures are retried (3 attempts in all, exponential backoff with
  jitter, Retry-After honoured) within the node's deadline; still failing after that, they are
  a NodeError, so the node's own ``retry`` / ``on_error`` settings apply;
- a read timeout is not retried here: the server may be working on it, and the node's
  ``retry`` (same Idempotency-Key family, next attempt) is the place to decide;
- error messages name the method and ``scheme://host/path`` only, never the query string or
  a header value, since both routinely carry tokens.
"""

from __future__ import annotations

import json as jsonlib
import random
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.message import Message
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import NameResolutionError, ReadTimeoutError

from app.config import Settings
from app.engine.errors import NodeError
from app.services.ssrf import AllowList, GuardedAdapter

MAX_ATTEMPTS = 3
MAX_REDIRECTS = 5
READ_CHUNK_BYTES = 64 * 1024
USER_AGENT = "Jobsprint (http.request)"


class RequestsHttpPort:
    """Sends http.request for a worker. Thread-safe: each thread gets its own Session (requests
    does not promise a Session is safe to share), each with its own connection pools."""

    def __init__(self, allow: AllowList, *,
                 session_factory: Callable[[], requests.Session] = requests.Session,
                 max_attempts: int = MAX_ATTEMPTS, backoff_s: float = 0.5,
                 max_wait_s: float = 60.0, sleep: Callable[[float], None] = time.sleep) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.allow = allow
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_wait_s = max_wait_s  # a longer Retry-After gives up rather than park a worker
        self._session_factory = session_factory
        self._sleep = sleep
        self._local = threading.local()
        # Weak, so a finished thread's session goes with it; close() reaches the live ones.
        self._sessions: weakref.WeakSet[requests.Session] = weakref.WeakSet()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> RequestsHttpPort:
        return cls(AllowList.parse(settings.http_allow), **kwargs)

    def close(self) -> None:
        """Close every thread's session and its pooled connections; later requests open new
        ones."""
        with self._lock:
            sessions = list(self._sessions)
            self._sessions.clear()
            self._local = threading.local()
        for session in sessions:
            session.close()

    def request(self, *, method: str, url: str, query: dict, headers: dict, body_type: str,
                json: Any, form: dict, raw: str | None, timeout_s: float,
                follow_redirects: bool, max_response_bytes: int, idempotency_key: str,
                credential_id: str | None, deadline: datetime | None) -> dict[str, Any]:
        if credential_id is not None:
            # A run's port (credentials.HttpWithCredentials) turns the id into headers or
            # query parameters for the run's owner; this process-wide port never sees one.
            raise NodeError("http.request: the credential was not resolved for this run")
        where = f"http.request {method} {_safe_url(url)}"
        kwargs: dict[str, Any] = {
            "params": query or None,
            "headers": _headers(headers, idempotency_key, body_type),
            "allow_redirects": follow_redirects,
            "stream": True,
            **_body(body_type, json, form, raw),
        }
        session = self._session()
        attempt = 0
        while True:
            attempt += 1
            timeout = _time_left(timeout_s, deadline, where)
            try:
                result = self._send(session, method, url, timeout, max_response_bytes, where,
                                    kwargs)
            except _Retryable as failure:
                delay = failure.retry_after
                if delay is None:
                    delay = self.backoff_s * 2 ** (attempt - 1) * (1 + random.random() / 2)
                if attempt >= self.max_attempts or not self._can_wait(delay, deadline):
                    raise NodeError(f"{where}: {failure.what} after {attempt} "
                                    f"attempt{'s' if attempt > 1 else ''}") from None
                self._sleep(delay)
                continue
            return result

    def stream_lines(self, *, url: str, json: Any, headers: dict, idempotency_key: str,
                     timeout_s: float, deadline: datetime | None,
                     credential_id: str | None = None) -> Iterator[str]:
        """POST ``json`` and yield the answer's lines as they arrive (server-sent events),
        through the same guard; one attempt (a stream is not retried). A refusal (any status
        of 400 or more) raises ``StreamRefused`` before anything is yielded, so the caller can
        fall back to ``request`` and its retries."""
        if credential_id is not None:
            raise NodeError("http.request: the credential was not resolved for this run")
        where = f"POST {_safe_url(url)}"
        timeout = _time_left(timeout_s, deadline, where)
        stop_at = time.monotonic() + timeout
        try:
            with self._session().post(url, json=json, timeout=timeout, stream=True,
                                      allow_redirects=False,
                                      headers=_headers(headers, idempotency_key, "json")
                                      ) as response:
                if response.status_code >= 400:
                    raise StreamRefused(response.status_code)
                for line in response.iter_lines(decode_unicode=True):
                    if time.monotonic() > stop_at:
                        raise NodeError(f"{where}: timed out after {timeout:g} s")
                    yield line
        except requests.RequestException as exc:
            raise NodeError(f"{where}: the stream failed ({type(exc).__name__})") from None

    def _send(self, session: requests.Session, method: str, url: str, timeout: float,
              limit: int, where: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """One attempt, the body read within ``timeout`` in all (requests' own timeout is per
        socket read, which a server trickling bytes would never trip)."""
        stop_at = time.monotonic() + timeout
        try:
            with session.request(method, url, timeout=timeout, **kwargs) as response:
                if response.status_code == 429 or response.status_code >= 500:
                    raise _Retryable(f"HTTP {response.status_code}",
                                     _retry_after(response.headers.get("Retry-After")))
                body = _read_body(response, limit, stop_at, where, timeout)
                return {"status": response.status_code,
                        "headers": {k.lower(): v for k, v in response.headers.items()},
                        "body": _decode(body, response.headers.get("Content-Type", ""))}
        except requests.exceptions.ConnectTimeout:
            raise _Retryable(f"connect timed out after {timeout:g} s") from None
        except requests.exceptions.SSLError as exc:
            raise NodeError(f"{where}: TLS failed ({_ssl_reason(exc)})") from None
        except requests.exceptions.ConnectionError as exc:
            if _read_timed_out(exc):
                raise NodeError(f"{where}: timed out after {timeout:g} s") from None
            raise _Retryable(_connection_failure(exc)) from None
        except requests.exceptions.ReadTimeout:
            raise NodeError(f"{where}: timed out after {timeout:g} s") from None
        except requests.exceptions.TooManyRedirects:
            raise NodeError(f"{where}: more than {MAX_REDIRECTS} redirects") from None
        except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                requests.exceptions.MissingSchema, requests.exceptions.InvalidHeader):
            raise NodeError(f"{where}: invalid URL or header") from None
        except requests.RequestException as exc:
            raise NodeError(f"{where}: request failed ({type(exc).__name__})") from None

    def _can_wait(self, delay: float, deadline: datetime | None) -> bool:
        if delay > self.max_wait_s:
            return False
        return deadline is None or _seconds_until(deadline) > delay

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._session_factory()
            # No proxies or .netrc from the environment: the guard must see the real target,
            # and a user's URL must not pick up the worker's own credentials.
            session.trust_env = False
            session.max_redirects = MAX_REDIRECTS
            session.headers["User-Agent"] = USER_AGENT
            adapter = GuardedAdapter(self.allow)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
            with self._lock:
                self._sessions.add(session)
        return session


class StreamRefused(Exception):
    """A streamed request was answered with an error status (nothing was read yet)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class _Retryable(Exception):
    """An attempt that may succeed if tried again; ``what`` is safe to show."""

    def __init__(self, what: str, retry_after: float | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.retry_after = retry_after


def _safe_url(url: str) -> str:
    """``scheme://host[:port]/path``: no user info, query or fragment (they carry secrets)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(invalid URL)"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path or '/'}"


def _headers(headers: dict, idempotency_key: str, body_type: str) -> dict[str, str]:
    sent = {k: v for k, v in (headers or {}).items() if k.lower() != "idempotency-key"}
    sent["Idempotency-Key"] = idempotency_key
    if body_type == "raw" and not any(k.lower() == "content-type" for k in sent):
        sent["Content-Type"] = "text/plain; charset=utf-8"
    return sent


def _body(body_type: str, json: Any, form: dict, raw: str | None) -> dict[str, Any]:
    if body_type == "json" and json is not None:
        return {"json": json}
    if body_type == "form":
        return {"data": form or {}}
    if body_type == "raw" and raw is not None:
        return {"data": raw.encode("utf-8")}
    return {}


def _seconds_until(deadline: datetime) -> float:
    return (deadline - datetime.now(UTC)).total_seconds()


def _time_left(timeout_s: float, deadline: datetime | None, where: str) -> float:
    if deadline is None:
        return timeout_s
    left = _seconds_until(deadline)
    if left <= 0:
        raise NodeError(f"{where}: the node's deadline passed before the request was sent")
    return min(timeout_s, left)


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds from now: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _read_body(response: requests.Response, limit: int, stop_at: float, where: str,
               timeout: float) -> bytes:
    too_large = NodeError(f"{where}: response larger than {limit} bytes")
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(READ_CHUNK_BYTES):
        size += len(chunk)
        if size > limit:
            raise too_large
        if time.monotonic() > stop_at:
            raise NodeError(f"{where}: timed out after {timeout:g} s")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(body: bytes, content_type: str) -> Any:
    header = Message()
    header["Content-Type"] = content_type or "application/octet-stream"
    mime = header.get_content_type()
    if body and (mime == "application/json" or mime.endswith("+json")):
        try:
            return jsonlib.loads(body)  # detects UTF-8/16/32 itself
        except ValueError:
            pass
    charset = header.get_content_charset() or "utf-8"
    try:
        return body.decode(charset, errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and what it wraps (``__cause__``, ``__context__``, urllib3 ``reason``)."""
    seen: list[BaseException] = []
    todo: list[Any] = [exc]
    while todo:
        current = todo.pop()
        if not isinstance(current, BaseException) or any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [current.__cause__, current.__context__, getattr(current, "reason", None),
                 *current.args]
    return seen


def _read_timed_out(exc: BaseException) -> bool:
    return any(isinstance(e, ReadTimeoutError) for e in _causes(exc))


def _connection_failure(exc: BaseException) -> str:
    causes = _causes(exc)
    if any(isinstance(e, NameResolutionError) for e in causes):
        return "could not resolve the host"
    if any(isinstance(e, ConnectionRefusedError) for e in causes):
        return "connection refused"
    if any(isinstance(e, ConnectionResetError) for e in causes):
        return "connection reset"
    return "connection failed"


def _ssl_reason(exc: BaseException) -> str:
    for e in _causes(exc):
        if isinstance(e, ssl.SSLError) and e.reason:
            return str(e.reason)
    return "handshake or certificate error"
