"""Operational endpoints for load balancers, orchestrators and Prometheus.

``/healthz``: the process answers (no I/O — a liveness probe must not fail because a
dependency did). ``/readyz``: database, Redis and broker reachable and migrations current,
else 503 naming each part that is down. ``/metrics``: Prometheus text format.

No sign-in, no rate limit, no CSRF (GET only): they reveal no user data, and a probe must never
be refused. ``/metrics`` shows traffic volumes: with ``JOBSPRINT_METRICS_TOKEN`` set it answers
only ``Authorization: Bearer <token>`` (Prometheus: ``authorization: {credentials: …}``) and is
a 401 otherwise; without it, keep ``/metrics`` off the public internet at the proxy.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app, jsonify, request

from app import metrics
from app.extensions import csrf, limiter
from app.services import readiness

bp = Blueprint("ops", __name__)
csrf.exempt(bp)
limiter.exempt(bp)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    checks = readiness.check(current_app._get_current_object())
    ready = all(value.startswith("ok") for value in checks.values())
    response = jsonify(status="ready" if ready else "unavailable", checks=checks)
    response.headers["Cache-Control"] = "no-store"
    return response, 200 if ready else 503


@bp.get("/metrics")
def metrics_text():
    if not _may_scrape():
        return (jsonify(error={"code": "unauthorized", "details": [],
                               "message": "/metrics needs Authorization: Bearer <token>"}),
                401, {"WWW-Authenticate": 'Bearer realm="metrics"'})
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})


def _may_scrape() -> bool:
    token = current_app.config["SETTINGS"].metrics_token
    if not token:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                              token.encode())
