"""Workflows: create, update (a new version each save), soft delete, list, (de)activate.

Every definition is validated by the engine before it is stored; each save bumps ``version``
and keeps that definition in ``workflow_versions``; the current one is written through to the
cache ``workflow:{id}`` that workers read.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select

from app import engine
from app.db import db
from app.errors import Conflict, NotFound, Problem, ValidationFailed
from app.models import Credential, User, Workflow, WorkflowVersion, isoformat, utcnow
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
    return [Problem(f"nodes[{i}].credential_id", "no such credential")
            for i, value in wanted.items() if _parse_id(value) not in owned]


def _keep_version(workflow: Workflow, user_id: uuid.UUID) -> None:
    db.session.add(WorkflowVersion(workflow_id=workflow.id, version=workflow.version,
                                   name=workflow.name, definition=workflow.definition,
                                   created_by=user_id))


def create(user: User, data: Any) -> Workflow:
    name, definition = _checked_definition(user.id, data)
    workflow = Workflow(id=uuid.uuid4(), user_id=user.id, name=name, definition=definition,
                        version=1, active=False)
    db.session.add(workflow)
    db.session.flush()
    _keep_version(workflow, user.id)
    triggers.sync(workflow)
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


def as_api(workflow: Workflow) -> dict:
    definition = workflow.definition or {}
    return {
        "id": str(workflow.id), "name": workflow.name, "version": workflow.version,
        "active": workflow.active, "nodes": definition.get("nodes", []),
        "connections": definition.get("connections", []),
        "settings": definition.get("settings", {}),
        "created_at": isoformat(workflow.created_at), "updated_at": isoformat(workflow.updated_at),
    }
