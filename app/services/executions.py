"""Runs as the API and pages see them: start, read, list, cancel, retry.

Starting a run commits the execution ``queued`` (with the idempotency record, if any) and then
publishes its id. The row is its own outbox entry: its ``lease_expires_at`` is when someone
must have claimed it, so if the publish is lost (a crash, a broker outage) the clock's reaper
publishes it again. A duplicate publish is harmless: the worker's claim is fenced.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from app import metrics
from app.db import db
from app.errors import Conflict, NotFound, Problem, ValidationFailed
from app.models import (
    FINAL_STATES,
    RUN_STATES,
    Execution,
    ExecutionNode,
    User,
    isoformat,
    utcnow,
)
from app.services import audit, idempotency, workflows
from app.services.pagination import keyset_page

log = logging.getLogger(__name__)


def publish_grace() -> timedelta:
    """A queued run nobody has claimed within this (the run lease) is published again."""
    return timedelta(seconds=current_app.config["SETTINGS"].run_lease_s)


def _queue():
    return current_app.extensions["jobsprint.queue"]


def publish(execution_ids: list[uuid.UUID]) -> None:
    """Hand committed runs to the queue (together: a broker may carry several in one
    message); a failure is logged, the reaper retries."""
    try:
        _queue().publish([str(i) for i in execution_ids], together=True)
    except Exception as exc:  # noqa: BLE001 - any broker failure: the reaper re-publishes
        log.warning("publish of %d runs failed, the reaper will retry: %s",
                    len(execution_ids), exc)


def announce(runs: list[Execution]) -> None:
    """Tell the owners' live pages the state of runs just committed (new ones: ``queued``).
    Called after the commit and before the queue sees them, so a worker's later events for a
    run always follow this one."""
    from app.live import events

    by_user: dict[uuid.UUID, list[dict]] = {}
    for run in runs:
        by_user.setdefault(run.user_id, []).append(
            events.run_event(run.id, run.workflow_id, run.status))
    for user_id, batch in by_user.items():
        events.publish_many(current_app.extensions["jobsprint.store"], user_id, batch)


def _trigger_node(definition: dict, trigger_type: str, node_id: str | None) -> str:
    wanted = {"manual": "trigger.manual", "schedule": "trigger.schedule",
              "webhook": "trigger.webhook"}[trigger_type]
    for node in definition.get("nodes", []):
        if node.get("type") == wanted and (node_id is None or node["id"] == node_id):
            return node["id"]
    raise ValidationFailed(f"this workflow has no {wanted} trigger",
                           [Problem("nodes", f"add a {wanted} node to run it this way")])


def new_execution(workflow, *, trigger_type: str, trigger_node_id: str, input: Any,
                  trigger_event_id: uuid.UUID | None = None,
                  retry_of_id: uuid.UUID | None = None,
                  version: int | None = None) -> Execution:
    """A queued run of ``workflow`` (at ``version``, default its current one) added to the
    current transaction; the caller commits, then publishes."""
    execution = Execution(
        id=uuid.uuid4(), user_id=workflow.user_id, workflow_id=workflow.id,
        workflow_version=version or workflow.version, trigger_type=trigger_type,
        trigger_node_id=trigger_node_id, trigger_event_id=trigger_event_id,
        retry_of_id=retry_of_id, input=input, status="queued",
        lease_expires_at=utcnow() + publish_grace())
    db.session.add(execution)
    return execution


def start_manual(user: User, workflow_id: uuid.UUID | str, input: Any, *,
                 idempotency_key: str | None = None,
                 stream_answers: bool = False) -> tuple[Execution, bool]:
    """Start a manual run; returns the run and whether it is new (False: an idempotent replay).
    ``stream_answers``: its AI nodes publish their answers as they come (the editor's runs).
    """
    workflow = workflows.get_owned(user.id, workflow_id)
    key = digest = None
    if idempotency_key is not None:
        key = idempotency.scoped_key(user.id, "workflow", workflow.id, "run", idempotency_key)
        digest = idempotency.request_hash({"input": input})
        if (earlier := idempotency.previous_execution(key, digest)) is not None:
            return get_owned(user.id, earlier), False
    trigger = _trigger_node(workflow.definition, "manual", None)
    execution = new_execution(workflow, trigger_type="manual", trigger_node_id=trigger,
                              input=input)
    if key:
        idempotency.remember(key, digest, user.id, execution.id)
    try:
        db.session.commit()
    except IntegrityError:
        # The same key committed concurrently (or while Redis was away): that run wins.
        db.session.rollback()
        if key is None:
            raise
        return get_owned(user.id, idempotency.winner(key, digest)), False
    if key:
        idempotency.cache_answer(key, digest, execution.id)
    if stream_answers:  # before any worker can see the run
        from app.services.ai import stream_key

        current_app.extensions["jobsprint.store"].set(stream_key(execution.id), 1, ex=3600)
    announce([execution])
    publish([execution.id])
    return execution, True


def get_owned(user_id: uuid.UUID, execution_id: uuid.UUID | str) -> Execution:
    try:
        key = execution_id if isinstance(execution_id, uuid.UUID) else uuid.UUID(execution_id)
    except ValueError:
        raise NotFound("execution not found") from None
    execution = db.session.get(Execution, key)
    if execution is None or execution.user_id != user_id or execution.deleted_at is not None:
        raise NotFound("execution not found")
    return execution


def node_rows(execution_id: uuid.UUID) -> list[ExecutionNode]:
    """The latest attempt of each node, in the order they started."""
    rows = db.session.scalars(
        select(ExecutionNode).where(ExecutionNode.execution_id == execution_id)
        .order_by(ExecutionNode.node_key, ExecutionNode.attempt)).all()
    latest = {row.node_key: row for row in rows}
    never = utcnow()
    return sorted(latest.values(), key=lambda r: (r.started_at or r.finished_at or never,
                                                  r.node_key))


def list_page(user: User, *, workflow_id: str | None = None, status: str | None = None,
              cursor: str | None = None, limit: int = 50) -> tuple[list[Execution], str | None]:
    stmt = select(Execution).where(Execution.user_id == user.id, Execution.deleted_at.is_(None))
    if workflow_id:
        stmt = stmt.where(Execution.workflow_id == workflows.get_owned(user.id, workflow_id).id)
    if status:
        if status not in RUN_STATES:
            raise ValidationFailed("invalid status", [Problem(
                "status", "must be one of " + ", ".join(RUN_STATES))])
        stmt = stmt.where(Execution.status == status)
    return keyset_page(db.session, stmt, Execution.created_at, Execution.id, cursor, limit)


def cancel(user: User, execution_id: uuid.UUID | str) -> Execution:
    """A queued or parked run is cancelled at once; a running one between two nodes."""
    execution = get_owned(user.id, execution_id)
    if execution.status in FINAL_STATES:
        raise Conflict(f"the run has already {execution.status}")
    now = utcnow()
    done = db.session.execute(
        update(Execution)
        .where(Execution.id == execution.id, Execution.status.in_(("queued", "waiting")))
        .values(status="cancelled", finished_at=now, updated_at=now, cancel_requested=True,
                epoch=Execution.epoch + 1)).rowcount
    if not done:
        db.session.execute(update(Execution).where(Execution.id == execution.id)
                           .values(cancel_requested=True, updated_at=now))
    audit.record("execution.cancel", user_id=user.id, target_type="execution",
                 target_id=execution.id)
    db.session.commit()
    db.session.refresh(execution)
    if done:
        metrics.run_finished("cancelled", None)  # never claimed again: no worker counts it
        announce([execution])
    return execution


def retry(user: User, execution_id: uuid.UUID | str) -> Execution:
    """Run a failed execution again from its failed node: a new run of the same workflow
    version that starts with the old run's succeeded nodes already done."""
    old = get_owned(user.id, execution_id)
    if old.status not in ("failed", "cancelled"):
        raise Conflict("only a failed or cancelled run can be retried")
    workflow = workflows.get_owned(user.id, old.workflow_id)
    execution = new_execution(workflow, version=old.workflow_version,
                              trigger_type=old.trigger_type,
                              trigger_node_id=old.trigger_node_id, input=old.input,
                              trigger_event_id=old.trigger_event_id, retry_of_id=old.id)
    db.session.flush()
    for row in node_rows(old.id):
        if row.status in ("succeeded", "skipped"):
            db.session.add(ExecutionNode(
                execution_id=execution.id, node_key=row.node_key, node_id=row.node_id,
                attempt=row.attempt, status=row.status, input=row.input, output=row.output,
                output_name=row.output_name, started_at=row.started_at,
                finished_at=row.finished_at))
    audit.record("execution.retry", user_id=user.id, target_type="execution",
                 target_id=execution.id, retry_of=str(old.id))
    db.session.commit()
    announce([execution])
    publish([execution.id])
    return execution


def as_api(execution: Execution, *, with_nodes: bool = True) -> dict:
    body = {
        "id": str(execution.id), "workflow_id": str(execution.workflow_id),
        "workflow_version": execution.workflow_version,
        "trigger": {"type": execution.trigger_type, "node_id": execution.trigger_node_id,
                    "event_id": str(execution.trigger_event_id)
                    if execution.trigger_event_id else None},
        "status": execution.status, "result": execution.result, "error": execution.error,
        "retry_of": str(execution.retry_of_id) if execution.retry_of_id else None,
        "created_at": isoformat(execution.created_at),
        "started_at": isoformat(execution.started_at),
        "finished_at": isoformat(execution.finished_at),
    }
    if with_nodes:
        body["nodes"] = [{
            "node_id": row.node_key, "status": row.status, "attempts": row.attempt,
            "output": row.output, "error": row.error, "started_at": isoformat(row.started_at),
            "finished_at": isoformat(row.finished_at)} for row in node_rows(execution.id)]
    return body
