"""``POST /hooks/<token>``: signed webhook deliveries (DESIGN.md, "Webhook signatures").

Cheap refusals come first and the body is read last: a declared size over the limit is a 413
before anything is read, a non-JSON type a 415, an unknown or inactive webhook a 404; then the
body is read up to the limit (a body without Content-Length stops there too), and the service
verifies, parses, checks and accepts it. Errors are JSON like the API's; no cookies, no CSRF.

A delivery does not go through Flask's request machinery (``FastPath``, a WSGI middleware): it
needs no session, user, CSRF check, rate limit or URL routing, and those cost about a fifth of
the web process's time per delivery under load. It runs in an application context, and gets
the same security headers and delivery metric as any response. A refusal is answered by the
app's own error handlers in a request context made for it, so refusals look exactly as they
would through Flask; requests of other methods to ``/hooks/<token>`` go to Flask (405).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import Any

from flask import Blueprint, Flask, Request, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from app import metrics
from app.errors import PayloadTooLarge, ServiceError, Unauthorized, UnsupportedMediaType
from app.extensions import csrf, limiter
from app.live.hub import hub_for
from app.live.waiting import RunWaiter
from app.services import webhooks
from app.web import security

log = logging.getLogger(__name__)
bp = Blueprint("hooks", __name__)
csrf.exempt(bp)  # authenticated by the signature, never by a cookie
# No per-IP limit: providers send from shared address pools in bursts, and a forged delivery
# costs one HMAC and one cache read before it is refused.
limiter.exempt(bp)
CHUNK = 64 * 1024
# The ``result`` label of jobsprint_webhook_deliveries_total for a delivery refused (or lost)
# before it was stored; a stored one is "accepted" or "replayed".
REFUSALS = {400: "invalid", 401: "unauthorized", 404: "not_found", 413: "too_large",
            415: "unsupported_media_type", 503: "unavailable"}


@bp.after_request
def _count_delivery(response):
    result = g.get("delivery_result") or REFUSALS.get(response.status_code, "error")
    metrics.webhook_delivery(result)
    return response


@bp.errorhandler(ServiceError)
def _service_error(exc: ServiceError):
    return jsonify(exc.as_dict()), exc.status


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    status = exc.code or 500
    code = "payload_too_large" if status == 413 else "bad_request"
    return jsonify(error={"code": code, "message": exc.name, "details": []}), status


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the body is over the limit of {limit} bytes")


def _read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing (413) as soon as it passes ``limit``, whatever was declared."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    stream = request.stream
    while True:
        chunk = stream.read(min(CHUNK, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)


@bp.post("/hooks/<token>")
def receive(token: str):
    """The same delivery through Flask (when ``FastPath`` is not in front)."""
    response, g.delivery_result = receive_delivery(request, token)
    return response


def receive_delivery(request: Request, token: str) -> tuple[Response, str]:
    """Answer one delivery: the response and the delivery's metric result (accepted or
    replayed). Raises ``ServiceError`` (and werkzeug's HTTP errors) for refusals."""
    limit = webhooks.body_limit()
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    if not request.is_json:
        raise UnsupportedMediaType(
            "the body must be JSON (Content-Type: application/json)")
    hook = webhooks.lookup(token)
    try:
        body = _read_body(request, webhooks.body_limit(hook))
        try:
            pending = webhooks.check(hook, body, request.headers, request.args)
        except Unauthorized:
            if (newer := webhooks.check_again(token, hook)) is None:
                raise
            hook = newer
            pending = webhooks.check(hook, body, request.headers, request.args)
    except ServiceError as exc:
        webhooks.count(hook.id, "rejected")
        log.info("webhook %s refused a delivery: %s %s", hook.id, exc.status, exc.message)
        raise
    params = hook.first_params
    if params.get("respond") == "when_finished" and pending.links:
        return _when_finished(hook, pending, float(params.get("timeout_s", 30)))
    webhooks.try_on_arrival(hook, pending)
    delivery = webhooks.accept(hook, pending)
    return _json(_answer(delivery), 202), _result(delivery)


def _json(body: Any, status: int, headers: dict | None = None) -> Response:
    response = current_app.json.response(body)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _result(delivery: webhooks.Delivery) -> str:
    return "replayed" if delivery.replayed else "accepted"


def _answer(delivery: webhooks.Delivery) -> dict:
    return {"event_id": str(delivery.event_id),
            "execution_ids": [str(i) for i in delivery.execution_ids]}


def _when_finished(hook: webhooks.HookConfig, pending, timeout_s: float):
    """Store the delivery, wait for its first run; answer with the run's result, or 504 with
    its id (it goes on). A pure run runs on arrival (app.services.arrival) and is stored
    finished if the intake gets its slot: there is nothing to wait for (else it is stored
    queued and waited for from then on). Otherwise the waiter listens before the run
    exists, so it misses nothing."""
    hub = hub_for(current_app._get_current_object())
    on_arrival = webhooks.try_on_arrival(hook, pending)
    with ExitStack() as stack:
        waiter = (None if on_arrival else
                  stack.enter_context(RunWaiter(hub, hook.user_id, pending.run_ids[0])))
        delivery = webhooks.accept(hook, pending)
        if not delivery.execution_ids:
            return _json(_answer(delivery), 202), _result(delivery)
        execution_id = delivery.execution_ids[0]
        if delivery.outcome is not None:  # it ran on arrival, and is stored finished
            outcome = delivery.outcome
        elif waiter is not None and execution_id == pending.run_ids[0]:
            outcome = waiter.wait(timeout_s, lambda: webhooks.run_outcome(execution_id),
                                  before_run=True)
        else:  # a replay, the first link's workflow no longer active, or stored queued
            stack.close()  # registered before the read: nothing is missed
            with RunWaiter(hub, hook.user_id, execution_id) as other:
                outcome = other.wait(timeout_s, lambda: webhooks.run_outcome(execution_id),
                                     before_run=False)
    answer = _answer(delivery)
    headers = {"X-Jobsprint-Execution-Id": str(execution_id),
               "X-Jobsprint-Event-Id": answer["event_id"]}
    if outcome is None:
        body = {**answer, "execution_id": str(execution_id), "error": {
            "code": "timeout", "details": [],
            "message": f"the run did not finish within {timeout_s:g} s; it goes on"}}
        return _json(body, 504, headers), _result(delivery)
    status, result, error = outcome
    headers["X-Jobsprint-Run-Status"] = status
    if status == "succeeded":
        return _json(result, 200, headers), _result(delivery)
    # The delivery itself succeeded; a failed run is news for the caller, not an HTTP error.
    return (_json({"status": status, "execution_id": str(execution_id), "error": error}, 200,
                  headers), _result(delivery))


class FastPath:
    """WSGI middleware: ``POST /hooks/<token>`` answered in an application context, outside
    Flask's request machinery; every other request goes on to ``wsgi_app``."""

    PREFIX = "/hooks/"

    def __init__(self, app: Flask, wsgi_app) -> None:
        self.app = app
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        token = path[len(self.PREFIX):]
        if (environ.get("REQUEST_METHOD") != "POST" or not path.startswith(self.PREFIX)
                or not token or "/" in token):
            return self.wsgi_app(environ, start_response)
        with self.app.app_context():
            try:
                response, result = receive_delivery(self.app.request_class(environ), token)
            except Exception as exc:  # noqa: BLE001 - answered by the app's error handlers
                response = self._refusal(environ, exc)
            else:
                security.secure_headers(response, path)
                metrics.webhook_delivery(result)
        return response(environ, start_response)

    def _refusal(self, environ, exc: Exception) -> Response:
        """The app's own answer to ``exc`` (error handlers, after-request hooks: headers and
        the delivery metric), in a request context made for it."""
        with self.app.request_context(environ):
            response = self.app.make_response(self.app.handle_user_exception(exc))
            return self.app.process_response(response)
