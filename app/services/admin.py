"""Lookups across accounts, for the operator's command line.

The pages and the API only ever see the signed-in user's rows (another user's id is a 404).
The command line runs on the server with the operator's authority: it names a workflow or a
run by id, or a user by email, and then acts as that row's owner through the same services.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select

from app.db import db
from app.errors import NotFound, Unprocessable
from app.models import Execution, User, Workflow
from app.services import accounts


def user_by_email(email: str) -> User:
    address = accounts.normalize_email(email)
    user = db.session.scalar(select(User).where(User.email == address))
    if user is None or not user.is_active:
        raise NotFound(f"no active account has the email {address}")
    return user


def workflow(workflow_id: str) -> Workflow:
    """Anyone's workflow (not deleted)."""
    try:
        key = uuid.UUID(workflow_id)
    except ValueError:
        raise NotFound(f"{workflow_id!r} is not a workflow id") from None
    found = db.session.get(Workflow, key)
    if found is None or found.deleted_at is not None:
        raise NotFound(f"no workflow has the id {workflow_id}")
    return found


def owner(workflow: Workflow) -> User:
    """The account a workflow belongs to, which commands act as."""
    user = accounts.get_user(workflow.user_id)
    if user is None:
        raise Unprocessable(f"the owner of workflow {workflow.id} is deactivated")
    return user


def workflows_of(user: User) -> list[Workflow]:
    return list(db.session.scalars(
        select(Workflow).where(Workflow.user_id == user.id, Workflow.deleted_at.is_(None))
        .order_by(Workflow.created_at, Workflow.id)))


def recent_executions(*, workflow_id: str | None = None, user: User | None = None,
                      status: str | None = None, limit: int = 20) -> list[tuple[Execution, str]]:
    """The newest runs, with their workflow's name: everyone's, or one workflow's, one user's,
    in one state."""
    stmt = (select(Execution, Workflow.name)
            .join(Workflow, Workflow.id == Execution.workflow_id)
            .where(Execution.deleted_at.is_(None)))
    if workflow_id:
        stmt = stmt.where(Execution.workflow_id == workflow(workflow_id).id)
    if user is not None:
        stmt = stmt.where(Execution.user_id == user.id)
    if status:
        stmt = stmt.where(Execution.status == status)
    rows = db.session.execute(
        stmt.order_by(Execution.created_at.desc(), Execution.id.desc()).limit(limit))
    return [(execution, name) for execution, name in rows]
