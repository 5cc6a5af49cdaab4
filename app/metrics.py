"""Prometheus metrics: what each process counts, and what ``/metrics`` computes when scraped.

Counted where it happens (a counter increment or a histogram observation, no I/O): runs
finished by status and their duration, node durations by node type, webhook deliveries by
result, AI tokens by provider, model and kind. Computed at scrape time from the database (one
grouped query on the (status, lease_expires_at) index): the queue's depth and the age of its
oldest run, and the runs running or parked now. Labels are bounded: statuses, node types and
results are fixed sets; AI model names come from users, so past ``MAX_MODELS`` distinct ones a
process counts the rest as ``other``. Nothing is labelled by user, workflow or run.

Multiprocess mode: when ``PROMETHEUS_MULTIPROC_DIR`` is set (before this process imports
prometheus_client), every process — gunicorn's web workers, ``jobs.worker``, ``jobs.clock`` —
writes its values to files there, and ``/metrics`` in any web process adds up the files of all
of them. gunicorn.conf.py empties the directory of dead processes' files when the web starts
and marks a web worker dead when it exits.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

log = logging.getLogger(__name__)

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
if MULTIPROC_DIR:
    # A worker may start before the web process that prepares the directory.
    os.makedirs(MULTIPROC_DIR, exist_ok=True)

MAX_MODELS = 100
QUEUE_QUERY_TIMEOUT_MS = 2000

RUNS = Counter("jobsprint_runs", "Runs that reached a final state, by that state.",
               ["status"])
RUN_SECONDS = Histogram(
    "jobsprint_run_duration_seconds",
    "From a run's first claim by a worker to its final state (parked time included).",
    ["status"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600))
NODE_SECONDS = Histogram(
    "jobsprint_node_duration_seconds", "One attempt of one node, by node type.",
    ["node_type"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
             30, 60, 300))
WEBHOOK_DELIVERIES = Counter(
    "jobsprint_webhook_deliveries", "POST /hooks/<token> requests, by what became of them.",
    ["result"])
AI_TOKENS = Counter("jobsprint_ai_tokens", "Tokens reported by AI providers.",
                    ["provider", "model", "kind"])

_node_children: dict[str, Any] = {}
_models: set[tuple[str, str]] = set()
_models_lock = threading.Lock()


def run_finished(status: str, seconds: float | None) -> None:
    RUNS.labels(status).inc()
    if seconds is not None:
        RUN_SECONDS.labels(status).observe(max(seconds, 0.0))


def node_finished(node_type: str, seconds: float) -> None:
    # Once per node attempt: keep each type's child rather than look it up (about 1 µs).
    child = _node_children.get(node_type)
    if child is None:
        child = _node_children.setdefault(node_type, NODE_SECONDS.labels(node_type))
    child.observe(max(seconds, 0.0))


def webhook_delivery(result: str) -> None:
    WEBHOOK_DELIVERIES.labels(result).inc()


def ai_tokens(provider: str, model: str, prompt: int, completion: int) -> None:
    model = model[:100]
    with _models_lock:
        if (provider, model) not in _models:
            if len(_models) >= MAX_MODELS:
                model = "other"
            else:
                _models.add((provider, model))
    if prompt:
        AI_TOKENS.labels(provider, model, "prompt").inc(prompt)
    if completion:
        AI_TOKENS.labels(provider, model, "completion").inc(completion)


class RunStateCollector:
    """Gauges read from the database when scraped: every process sees the same queue, so
    the answer does not depend on which process (or machine) was asked."""

    def collect(self):
        from sqlalchemy import func, select, text

        from app.db import db
        from app.models import Execution, utcnow

        query = (select(Execution.status, func.count(), func.min(Execution.created_at))
                 .where(Execution.status.in_(("queued", "running", "waiting")))
                 .group_by(Execution.status))
        try:
            with db.engine.begin() as connection:
                if not db.is_sqlite:
                    connection.execute(text(
                        f"SET LOCAL statement_timeout = {QUEUE_QUERY_TIMEOUT_MS}"))
                rows = {status: (count, oldest)
                        for status, count, oldest in connection.execute(query)}
        except Exception as exc:  # noqa: BLE001 - the process metrics are still worth serving
            log.warning("metrics: could not read the run states: %s", type(exc).__name__)
            return
        depth, oldest = rows.get("queued", (0, None))
        yield GaugeMetricFamily("jobsprint_queue_depth",
                                "Runs queued: committed, not yet claimed by a worker "
                                "(deferred runs included).", value=depth)
        yield GaugeMetricFamily("jobsprint_queue_oldest_age_seconds",
                                "Age of the oldest queued run (0 when none is queued).",
                                value=_age(oldest, utcnow()))
        active = GaugeMetricFamily("jobsprint_runs_active",
                                   "Runs running on a worker or parked in a wait, now.",
                                   labels=["status"])
        for status in ("running", "waiting"):
            active.add_metric([status], rows.get(status, (0, None))[0])
        yield active


def _age(oldest: datetime | None, now: datetime) -> float:
    return max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0


class _ThisProcess:
    """The default registry (this process's metrics, with Python's process collectors)."""

    def collect(self):
        return REGISTRY.collect()


def exposition() -> tuple[bytes, str]:
    """The ``/metrics`` answer: every process's metrics (added up from the multiprocess
    directory when there is one, else this process's), then the database's gauges."""
    registry = CollectorRegistry()
    if MULTIPROC_DIR:
        MultiProcessCollector(registry, path=MULTIPROC_DIR)
    else:
        registry.register(_ThisProcess())
    registry.register(RunStateCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST
