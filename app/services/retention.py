"""Retention: old runs, the trigger events (webhook deliveries, schedule slots) no kept run
refers to, AI history and audit logs are soft-deleted, and expired idempotency keys deleted
(the clock: daily); rows soft-deleted long enough ago are deleted for real (monthly), and
PostgreSQL is vacuumed (weekly). Every age and period is a setting (``JOBSPRINT_RETENTION_*``).

Each job works in batches of ``retention_batch`` rows, each batch its own short transaction
(select a batch of ids, change those rows, commit): no transaction holds many rows for long and
nothing locks a table, so runs, the dashboard and the API go on while a job works. Each job is
idempotent (run again, it finds nothing left to do) and logs one line with its counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import Select, delete, exists, or_, select, text, update

from app.db import db
from app.models import (
    FINAL_STATES,
    AIHistory,
    AuditLog,
    Base,
    Execution,
    ExecutionNode,
    IdempotencyKey,
    TriggerEvent,
    isoformat,
    utcnow,
)

log = logging.getLogger(__name__)

# The order ``run_now`` runs them in: soft deletes, then the purge, then the vacuum that makes
# the purged rows' space reusable.
JOB_NAMES: tuple[str, ...] = ("executions", "trigger_events", "ai_history", "audit_logs",
                              "idempotency_keys", "purge", "vacuum")

# Children first, so that a batch of runs does not also delete thousands of node rows; trigger
# events after the runs that referred to them.
PURGED = (ExecutionNode, Execution, TriggerEvent, AIHistory, AuditLog)


def _in_batches(candidates: Select, change: Callable[[list], int], batch: int) -> int:
    """Apply ``change`` to the ids ``candidates`` selects, ``batch`` at a time, one transaction
    each, until none are left. A changed row must leave ``candidates``; a batch that changes
    nothing (another clock got there first) ends the loop rather than spin."""
    done = 0
    while True:
        ids = db.session.scalars(candidates.limit(batch)).all()
        changed = change(ids) if ids else 0
        db.session.commit()
        done += changed
        if len(ids) < batch or not changed:
            return done


def _soft_delete(model, ids: list, now: datetime) -> int:
    return db.session.execute(
        update(model).where(model.id.in_(ids), model.deleted_at.is_(None))
        .values(deleted_at=now)).rowcount


def soft_delete_executions(now: datetime | None = None) -> int:
    """Soft-delete the finished runs (succeeded, failed, cancelled) created and finished more
    than ``retention_executions_days`` ago, with their node rows; returns the number of runs.
    (A run created long ago that finished yesterday, after a long wait or a late retry, stays
    for its full period; the filter on ``created_at`` lets the batches use its index.)

    A queued, running or waiting run is kept however old: it is still work in progress (a long
    wait, or a stuck run the reaper hands on), and its worker would write to a hidden row.
    """
    settings = current_app.config["SETTINGS"]
    now = now or utcnow()
    cutoff = now - timedelta(days=settings.retention_executions_days)
    nodes = 0

    def with_nodes(ids: list) -> int:
        nonlocal nodes
        nodes += db.session.execute(
            update(ExecutionNode)
            .where(ExecutionNode.execution_id.in_(ids), ExecutionNode.deleted_at.is_(None))
            .values(deleted_at=now)).rowcount
        return _soft_delete(Execution, ids, now)

    runs = _in_batches(
        select(Execution.id).where(Execution.deleted_at.is_(None),
                                   Execution.created_at < cutoff,
                                   or_(Execution.finished_at.is_(None),
                                       Execution.finished_at < cutoff),
                                   Execution.status.in_(FINAL_STATES)),
        with_nodes, settings.retention_batch)
    log.info("retention executions: soft-deleted %d finished runs and %d node rows "
             "created before %s", runs, nodes, isoformat(cutoff))
    return runs


def soft_delete_trigger_events(now: datetime | None = None) -> int:
    """Soft-delete the trigger events (a webhook delivery's payload, a schedule's fired slot)
    received more than ``retention_executions_days`` ago that no kept run refers to; returns
    how many. They go with their runs: an event whose run is still kept (in progress, or
    finished recently) stays. A soft-deleted event still answers a replay of its delivery
    until it is purged; after that, the timestamped schemes (jobsprint, stripe, slack) refuse
    a delivery that old anyway (300 s), while a GitHub delivery, which carries no timestamp,
    is recognised as a replay only while its event exists (by default 90 + 30 days)."""
    settings = current_app.config["SETTINGS"]
    now = now or utcnow()
    cutoff = now - timedelta(days=settings.retention_executions_days)
    kept_run = exists().where(Execution.trigger_event_id == TriggerEvent.id,
                              Execution.deleted_at.is_(None))
    count = _in_batches(
        select(TriggerEvent.id).where(TriggerEvent.deleted_at.is_(None),
                                      TriggerEvent.received_at < cutoff, ~kept_run),
        lambda ids: _soft_delete(TriggerEvent, ids, now), settings.retention_batch)
    log.info("retention trigger_events: soft-deleted %d events received before %s that no "
             "kept run refers to", count, isoformat(cutoff))
    return count


def delete_expired_idempotency_keys(now: datetime | None = None) -> int:
    """Delete the idempotency keys past their expiry (24 h after their request); returns how
    many. An expired key already counts for nothing (a request with it starts afresh)."""
    now = now or utcnow()
    count = _in_batches(
        select(IdempotencyKey.key).where(IdempotencyKey.expires_at <= now),
        lambda keys: db.session.execute(delete(IdempotencyKey).where(
            IdempotencyKey.key.in_(keys), IdempotencyKey.expires_at <= now)).rowcount,
        current_app.config["SETTINGS"].retention_batch)
    log.info("retention idempotency_keys: deleted %d expired keys", count)
    return count


def _soft_delete_older(model, days: int, now: datetime | None) -> int:
    now = now or utcnow()
    cutoff = now - timedelta(days=days)
    count = _in_batches(
        select(model.id).where(model.deleted_at.is_(None), model.created_at < cutoff),
        lambda ids: _soft_delete(model, ids, now),
        current_app.config["SETTINGS"].retention_batch)
    log.info("retention %s: soft-deleted %d rows created before %s",
             model.__tablename__, count, isoformat(cutoff))
    return count


def soft_delete_ai_history(now: datetime | None = None) -> int:
    """Soft-delete the AI exchanges older than ``retention_ai_history_days``; returns how many.
    (A conversation's cached memory, its last few messages, is not touched: it expires an hour
    after the conversation's last exchange.)"""
    return _soft_delete_older(
        AIHistory, current_app.config["SETTINGS"].retention_ai_history_days, now)


def soft_delete_audit_logs(now: datetime | None = None) -> int:
    """Soft-delete the audit entries older than ``retention_audit_days``; returns how many."""
    return _soft_delete_older(
        AuditLog, current_app.config["SETTINGS"].retention_audit_days, now)


def purge(now: datetime | None = None) -> int:
    """Delete for real the rows of every retained table soft-deleted more than
    ``retention_purge_after_days`` ago; returns how many rows in all.

    A run's node rows go first (a purged run still takes any left with it: ON DELETE CASCADE);
    the database sets to NULL what referred to a purged run (a retry's ``retry_of``, an AI
    exchange's run, an idempotency record), each through an index (migration 0003).
    """
    settings = current_app.config["SETTINGS"]
    now = now or utcnow()
    cutoff = now - timedelta(days=settings.retention_purge_after_days)
    counts = {}
    for model in PURGED:
        def remove(ids: list, model=model) -> int:
            return db.session.execute(
                delete(model).where(model.id.in_(ids), model.deleted_at < cutoff)).rowcount

        counts[model.__tablename__] = _in_batches(
            select(model.id).where(model.deleted_at < cutoff), remove, settings.retention_batch)
    log.info("retention purge: deleted rows soft-deleted before %s: %s", isoformat(cutoff),
             ", ".join(f"{table} {count}" for table, count in counts.items()))
    return sum(counts.values())


def vacuum() -> int:
    """VACUUM (ANALYZE) each of Jobsprint's tables on PostgreSQL; returns how many tables.

    Plain VACUUM takes no lock that blocks reads or writes; each table is its own statement,
    outside any transaction (VACUUM cannot run in one), so each holds its lock only for its own
    table. On SQLite it does nothing: VACUUM there rewrites the whole file under an exclusive
    lock (every write of the app would wait), and the pages purged rows free are reused anyway.
    """
    if db.is_sqlite:
        log.info("retention vacuum: skipped on SQLite (the purge's free pages are reused)")
        return 0
    tables = [table.name for table in Base.metadata.sorted_tables]
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        quote = connection.dialect.identifier_preparer.quote
        for table in tables:
            connection.execute(text(f"VACUUM (ANALYZE) {quote(table)}"))
    log.info("retention vacuum: vacuumed and analyzed %d tables", len(tables))
    return len(tables)


_JOBS: dict[str, Callable[[datetime], int]] = {
    "executions": soft_delete_executions,
    "trigger_events": soft_delete_trigger_events,
    "ai_history": soft_delete_ai_history,
    "audit_logs": soft_delete_audit_logs,
    "idempotency_keys": delete_expired_idempotency_keys,
    "purge": purge,
    "vacuum": lambda _now: vacuum(),
}


def run_now(names: Iterable[str] | None = None, *, now: datetime | None = None
            ) -> dict[str, int]:
    """Run the named jobs (all when None) at once, whatever their periods, in the order of
    ``JOB_NAMES``; returns {job name: rows (tables, for the vacuum) it touched}."""
    if isinstance(names, str):  # one name, not its letters
        names = (names,)
    wanted = set(JOB_NAMES if names is None else names)
    if unknown := sorted(wanted - set(JOB_NAMES)):
        raise ValueError(f"unknown retention job {', '.join(map(repr, unknown))}; "
                         f"the jobs are: {', '.join(JOB_NAMES)}")
    now = now or utcnow()
    return {name: _JOBS[name](now) for name in JOB_NAMES if name in wanted}
