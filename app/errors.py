"""Errors the services raise; the web layer turns each into a status code and a message."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Problem:
    """One thing wrong with a request: where (a JSON path or field name) and what."""

    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


@dataclass
class ServiceError(Exception):
    message: str
    details: list[Problem] = field(default_factory=list)
    status = 400
    code = "bad_request"

    def __str__(self) -> str:
        return self.message

    def as_dict(self) -> dict:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "details": [d.as_dict() for d in self.details],
            }
        }


class ValidationFailed(ServiceError):
    status = 400
    code = "validation_failed"


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ServiceError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported_media_type"


class Unprocessable(ServiceError):
    status = 422
    code = "unprocessable"


class RateLimited(ServiceError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamFailed(ServiceError):
    """A service we must keep in step refused or failed (e.g. n8n); nothing was saved."""

    status = 502
    code = "upstream_failed"
