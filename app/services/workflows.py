"""Workflows: create, update (a new version each save), soft delete, list, (de)activate.

Every definition is validated by the engine before it is stored; each save bumps ``version``
and keeps that definition in ``workflow_versions``; the current one is written through to the
cache ``workflow:{id}`` that workers read.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from app import engine
from app.db import db
from app.errors import Conflict, NotFound, Problem, ValidationFailed
from app.models import (
    Connection,
    Credential,
    Execution,
    User,
    Workflow,
    WorkflowVersion,
    isoformat,
    utcnow,
)
from app.services import audit, cache, triggers
from app.services.pagination import keyset_page

DEFINITION_KEYS = ("nodes", "connections", "settings")
DEFAULT_SETTINGS = {"concurrency": 1, "timeout_s": 300}


def cache_key(workflow_id: uuid.UUID | str) -> str:
    return f"workflow:{workflow_id}"


def _parse_id(workflow_id: uuid.UUID | str) -> uuid.UUID | None:
    if isinstance(workflow_id, uuid.UUID):
        return workflow_id
    try:
        return uuid.UUID(str(workflow_id))
    except ValueError:
        return None


def get_owned(user_id: uuid.UUID, workflow_id: uuid.UUID | str) -> Workflow:
    """The caller's workflow, or ``NotFound`` — also for another user's (never 403)."""
    key = _parse_id(workflow_id)
    workflow = db.session.get(Workflow, key) if key else None
    if workflow is None or workflow.user_id != user_id or workflow.deleted_at is not None:
        raise NotFound("workflow not found")
    return workflow


def cached_definition(workflow_id: uuid.UUID | str) -> dict | None:
    """What a worker needs to run the current version, read through the cache."""
    def load() -> dict | None:
        workflow = db.session.get(Workflow, _parse_id(workflow_id))
        return None if workflow is None or workflow.deleted_at else _cache_entry(workflow)

    return cache.get_or_load(cache_key(workflow_id), load)


def _cache_entry(workflow: Workflow) -> dict:
    return {"id": str(workflow.id), "user_id": str(workflow.user_id), "name": workflow.name,
            "version": workflow.version, "active": workflow.active,
            "definition": workflow.definition}


def _checked_definition(user_id: uuid.UUID, data: Any) -> tuple[str, dict]:
    """Name and definition from a request body, validated; every problem at once."""
    if not isinstance(data, dict):
        raise ValidationFailed("the workflow must be a JSON object")
    settings = data.get("settings", {})
    if isinstance(settings, dict):
        settings = {**DEFAULT_SETTINGS, **settings}
    candidate = {"name": data.get("name"), "nodes": data.get("nodes", []),
                 "connections": data.get("connections", []), "settings": settings}
    result = engine.validate(candidate)
    problems = [Problem(p.path, p.message) for p in result.errors]
    problems.extend(_credential_problems(user_id, candidate.get("nodes")))
    if problems:
        raise ValidationFailed("the workflow definition is invalid", problems)
    return candidate["name"].strip(), {k: candidate[k] for k in DEFINITION_KEYS}


def _credential_problems(user_id: uuid.UUID, nodes: Any) -> list[Problem]:
    if not isinstance(nodes, list):
        return []
    wanted = {}
    for index, node in enumerate(nodes):
        if isinstance(node, dict) and node.get("credential_id"):
            wanted[index] = node["credential_id"]
    if not wanted:
        return []
    ids = {_parse_id(v) for v in wanted.values()} - {None}
    owned = set(db.session.scalars(
        select(Credential.id).where(Credential.user_id == user_id, Credential.id.in_(ids))))
    owned |= set(db.session.scalars(  # an OAuth connection serves as a credential too
        select(Connection.id).where(Connection.user_id == user_id, Connection.id.in_(ids))))
    return [Problem(f"nodes[{i}].credential_id", "no such credential")
            for i, value in wanted.items() if _parse_id(value) not in owned]


def _keep_version(workflow: Workflow, user_id: uuid.UUID) -> None:
    db.session.add(WorkflowVersion(workflow_id=workflow.id, version=workflow.version,
                                   name=workflow.name, definition=workflow.definition,
                                   created_by=user_id))


def _push_to_n8n(workflow: Workflow) -> None:
    """The n8n copy, inside this save's transaction: n8n refusing rolls the save back."""
    from app.services import n8n_sync

    try:
        n8n_sync.push(workflow)
    except Exception:
        db.session.rollback()
        raise


def _remove_from_n8n(workflow: Workflow) -> None:
    """Delete the n8n copy before this delete commits: n8n refusing rolls it back."""
    from app.services import n8n_sync

    try:
        n8n_sync.remove(workflow)
    except Exception:
        db.session.rollback()
        raise


def create(user: User, data: Any) -> Workflow:
    name, definition = _checked_definition(user.id, data)
    workflow = Workflow(id=uuid.uuid4(), user_id=user.id, name=name, definition=definition,
                        version=1, active=False)
    db.session.add(workflow)
    db.session.flush()
    _keep_version(workflow, user.id)
    triggers.sync(workflow)
    _push_to_n8n(workflow)
    audit.record("workflow.create", user_id=user.id, target_type="workflow",
                 target_id=workflow.id, version=1)
    db.session.commit()
    cache.put(cache_key(workflow.id), _cache_entry(workflow))
    return workflow


def update(user: User, workflow_id: uuid.UUID | str, data: Any) -> Workflow:
    """Save a new version. A body naming a ``version`` other than the current one is a 409,
    so two editors cannot silently overwrite each other."""
    workflow = get_owned(user.id, workflow_id)
    expected = data.get("version") if isinstance(data, dict) else None
    if expected is not None and expected != workflow.version:
        raise Conflict(f"the workflow is at version {workflow.version}, not {expected}",
                       [Problem("version", "stale; reload the workflow")])
    name, definition = _checked_definition(user.id, data)
    workflow.name, workflow.definition = name, definition
    workflow.version += 1
    db.session.flush()
    _keep_version(workflow, user.id)
    triggers.sync(workflow)
    _push_to_n8n(workflow)
    audit.record("workflow.update", user_id=user.id, target_type="workflow",
                 target_id=workflow.id, version=workflow.version)
    db.session.commit()
    cache.put(cache_key(workflow.id), _cache_entry(workflow))
    return workflow


def delete(user: User, workflow_id: uuid.UUID | str) -> None:
    workflow = get_owned(user.id, workflow_id)
    workflow.deleted_at = utcnow()
    workflow.active = False
    triggers.sync(workflow)
    _remove_from_n8n(workflow)
    audit.record("workflow.delete", user_id=user.id, target_type="workflow",
                 target_id=workflow.id)
    db.session.commit()
    cache.forget(cache_key(workflow.id))


def set_active(user: User, workflow_id: uuid.UUID | str, active: bool) -> Workflow:
    workflow = get_owned(user.id, workflow_id)
    if workflow.active != active:
        workflow.active = active
        triggers.sync(workflow)
        audit.record("workflow.activate" if active else "workflow.deactivate",
                     user_id=user.id, target_type="workflow", target_id=workflow.id)
        db.session.commit()
        cache.put(cache_key(workflow.id), _cache_entry(workflow))
    return workflow


def versions(user: User, workflow_id: uuid.UUID | str) -> list[WorkflowVersion]:
    workflow = get_owned(user.id, workflow_id)
    return list(db.session.scalars(
        select(WorkflowVersion).where(WorkflowVersion.workflow_id == workflow.id)
        .order_by(WorkflowVersion.version.desc())))


def list_page(user: User, *, cursor: str | None = None, limit: int = 50,
              query: str | None = None) -> tuple[list[Workflow], str | None]:
    """The newest-updated first, ``limit`` at a time, after ``cursor``."""
    stmt = select(Workflow).where(Workflow.user_id == user.id, Workflow.deleted_at.is_(None))
    if query:
        stmt = stmt.where(func.lower(Workflow.name).contains(query.strip().lower(),
                                                             autoescape=True))
    return keyset_page(db.session, stmt, Workflow.updated_at, Workflow.id, cursor, limit)


def duplicate(user: User, workflow_id: uuid.UUID | str) -> Workflow:
    """A new, inactive workflow with the same definition, named "<name> (copy)"."""
    original = get_owned(user.id, workflow_id)
    return create(user, {**export(original), "name": f"{original.name} (copy)"[:200]})


def export(workflow: Workflow) -> dict:
    """The portable form: what ``create`` takes back (no ids, versions or state)."""
    definition = workflow.definition or {}
    return {"name": workflow.name, **{key: definition.get(key, {} if key == "settings" else [])
                                      for key in DEFINITION_KEYS}}


IMPORT_MAX_BYTES = 2 * 1024 * 1024


def import_json(user: User, raw: bytes) -> tuple[Workflow, list[dict]]:
    """Create a workflow from an exported JSON document, Jobsprint's or n8n's (a 400 says
    what and where). Returns it with what an n8n import could not carry over."""
    if len(raw) > IMPORT_MAX_BYTES:
        raise ValidationFailed("the file is too large",
                               [Problem("file", f"must be at most {IMPORT_MAX_BYTES} bytes")])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValidationFailed("the file is not valid JSON",
                               [Problem("file", "is not UTF-8 text")]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationFailed("the file is not valid JSON", [Problem(
            "file", f"{exc.msg} at line {exc.lineno} column {exc.colno}")]) from None
    from app.services import n8n_interop

    if n8n_interop.looks_like_n8n(data):
        definition, report = n8n_interop.from_n8n(data)
        return create(user, definition), report.items
    return create(user, data), []


def trigger_kind(workflow: Workflow) -> str | None:
    """manual | schedule | webhook: the type of the workflow's first trigger node."""
    for node in (workflow.definition or {}).get("nodes", []):
        kind = str(node.get("type", "")) if isinstance(node, dict) else ""
        if kind.startswith("trigger."):
            return kind.removeprefix("trigger.")
    return None


@dataclass(frozen=True)
class RunSummary:
    last_status: str | None
    last_at: datetime | None
    runs_24h: int


def run_summaries(workflow_ids: list[uuid.UUID]) -> dict[uuid.UUID, RunSummary]:
    """Each workflow's latest run and its number of runs in the last 24 h: one statement of
    correlated subqueries, each an index range on (workflow_id, created_at)."""
    if not workflow_ids:
        return {}
    runs = Execution.__table__.alias("runs")

    def latest(column):
        return (select(column).where(runs.c.workflow_id == Workflow.id,
                                     runs.c.deleted_at.is_(None))
                .order_by(runs.c.created_at.desc()).limit(1).scalar_subquery())

    since = utcnow() - timedelta(hours=24)
    recent = (select(func.count()).where(runs.c.workflow_id == Workflow.id,
                                         runs.c.created_at >= since,
                                         runs.c.deleted_at.is_(None))
              .scalar_subquery())
    rows = db.session.execute(
        select(Workflow.id, latest(runs.c.status), latest(runs.c.created_at), recent)
        .where(Workflow.id.in_(workflow_ids)))
    return {row[0]: RunSummary(row[1], row[2], row[3] or 0) for row in rows}


def as_api(workflow: Workflow) -> dict:
    definition = workflow.definition or {}
    return {
        "id": str(workflow.id), "name": workflow.name, "version": workflow.version,
        "active": workflow.active, "nodes": definition.get("nodes", []),
        "connections": definition.get("connections", []),
        "settings": definition.get("settings", {}),
        "created_at": isoformat(workflow.created_at), "updated_at": isoformat(workflow.updated_at),
    }
