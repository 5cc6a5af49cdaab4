"""Error responses: JSON for the API, a plain page elsewhere; never a stack, path or version."""

from __future__ import annotations

import logging

import redis
from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException, InternalServerError

from app.errors import RateLimited, ServiceError

log = logging.getLogger(__name__)

CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
         405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
         422: "unprocessable", 429: "rate_limited", 500: "internal_error",
         502: "upstream_failed", 503: "service_unavailable"}
MESSAGES = {
    400: "The request could not be understood.",
    401: "You need to sign in.",
    403: "You may not do that.",
    404: "There is nothing here.",
    405: "This address does not accept that method.",
    413: "The request is too large.",
    429: "Too many requests; wait a moment and try again.",
    500: "Something went wrong on our side. It has been logged.",
}


def wants_json() -> bool:
    """The API and webhook senders are programs: they get JSON errors."""
    return request.path.startswith(("/api/", "/hooks/"))


def error_response(status: int, message: str, code: str | None = None, details=None):
    code = code or CODES.get(status, "error")
    if wants_json():
        body = {"error": {"code": code, "message": message, "details": details or []}}
        return jsonify(body), status
    return render_template("errors/error.html", status=status, message=message), status


def _service_error(exc: ServiceError):
    response, status = error_response(exc.status, exc.message, exc.code,
                                      [d.as_dict() for d in exc.details])
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else {}
    return response, status, headers


def _csrf_error(exc: CSRFError):
    return error_response(400, "The form is missing its security token or it has expired. "
                               "Reload the page and try again.", "csrf_failed")


def _http_error(exc: HTTPException):
    status = exc.code or 500
    message = MESSAGES.get(status, exc.name)
    if status == 400 and exc.description and wants_json():
        message = exc.description
    return error_response(status, message)


def _outage(exc: Exception):
    """A service we depend on is down: say which, and when to come back; log the detail."""
    part = "store (Redis)" if isinstance(exc, redis.RedisError) else "database"
    log.warning("%s unavailable on %s %s: %s", part, request.method, request.path,
                type(exc).__name__)
    response, status = error_response(
        503, f"The {part} is unavailable. Try again in a moment.")
    return response, status, {"Retry-After": "5"}


def _unexpected_error(exc: Exception):
    if isinstance(exc, HTTPException) and not isinstance(exc, InternalServerError):
        return _http_error(exc)
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, MESSAGES[500])


def init_app(app: Flask) -> None:
    app.register_error_handler(ServiceError, _service_error)
    app.register_error_handler(CSRFError, _csrf_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(redis.ConnectionError, _outage)
    app.register_error_handler(redis.TimeoutError, _outage)
    app.register_error_handler(OperationalError, _outage)  # connection lost, database locked
    app.register_error_handler(InterfaceError, _outage)
    app.register_error_handler(Exception, _unexpected_error)
