"""Every /api/v1 request except sign-up and token: a valid bearer token, then the user's
rate limit (counted after authentication, so it is per user, not per address)."""

from __future__ import annotations

import math
import time

from flask import current_app, g, request
from limits import parse

from app.errors import Problem, RateLimited, Unauthorized, ValidationFailed
from app.extensions import csrf, limiter
from app.services import accounts, tokens
from app.web.api import bp

PUBLIC_ENDPOINTS = {"api.register", "api.token", "api.openapi_document"}

csrf.exempt(bp)  # no cookies are accepted here, only Authorization: Bearer


@bp.before_request
def authenticate() -> None:
    if request.endpoint in PUBLIC_ENDPOINTS:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token")
    user_id, token_id = tokens.verify(token.strip())
    user = accounts.get_user(user_id)
    if user is None:
        raise Unauthorized("invalid token")
    g.user, g.token_id = user, token_id
    _rate_limit(str(user.id))


def _rate_limit(user_key: str) -> None:
    item = parse(current_app.config["SETTINGS"].api_rate_limit)
    if not limiter.limiter.hit(item, "api-user", user_key):
        reset_at, _remaining = limiter.limiter.get_window_stats(item, "api-user", user_key)
        retry_after = max(1, math.ceil(reset_at - time.time()))
        raise RateLimited(f"rate limit of {item} exceeded", retry_after)


def string_field(body: dict, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise ValidationFailed(f"{name} is required",
                               [Problem(name, "is required and must be a string")])
    return value
