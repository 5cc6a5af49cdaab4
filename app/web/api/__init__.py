"""The JSON API, ``/api/v1``: bearer-token authentication and a per-user rate limit."""

from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api/v1")

from app.web.api import (  # noqa: E402,F401
    auth,
    credentials,
    executions,
    guard,
    openapi,
    prompt_templates,
    webhooks,
    workflows,
)
