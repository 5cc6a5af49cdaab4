"""The migrations build the whole data model, identically on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from app.db import db
from app.migrate import is_current
from app.models import (
    Base,
    Execution,
    ExecutionNode,
    User,
    Workflow,
    WorkflowVersion,
)

TABLES = {"users", "workflows", "workflow_versions", "webhooks", "webhook_links",
          "trigger_events", "schedules", "executions", "execution_nodes",
          "idempotency_keys", "credentials", "connections", "prompt_templates", "ai_history",
          "audit_logs", "maintenance_runs"}


def test_migrations_create_every_table_and_are_current(app):
    names = set(inspect(db.engine).get_table_names())
    assert names >= TABLES
    assert set(Base.metadata.tables) == TABLES
    assert is_current()


def test_migrated_schema_matches_the_models(app):
    """Autogenerate against the migrated database finds nothing to add or change."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_dashboard_indexes_exist(app):
    indexes = {ix["name"]: ix["column_names"]
               for ix in inspect(db.engine).get_indexes("executions")}
    assert indexes["ix_executions_workflow_created"] == ["workflow_id", "created_at", "id"]
    assert indexes["ix_executions_user_status_created"] == ["user_id", "status", "created_at"]


def _user() -> User:
    user = User(email=f"{uuid.uuid4().hex}@example.com", password_hash="x")
    db.session.add(user)
    db.session.flush()
    return user


def test_round_trip_uuid_json_and_aware_times(app):
    user = _user()
    definition = {"nodes": [{"id": "a", "type": "trigger.manual", "params": {"n": 1.5}}],
                  "connections": [], "settings": {"concurrency": 1}}
    workflow = Workflow(user_id=user.id, name="W", definition=definition)
    db.session.add(workflow)
    db.session.commit()
    db.session.expunge_all()
    loaded = db.session.get(Workflow, workflow.id)
    assert isinstance(loaded.id, uuid.UUID) and loaded.id.version == 4
    assert loaded.definition == definition
    assert loaded.created_at.tzinfo is UTC
    assert abs((datetime.now(UTC) - loaded.created_at).total_seconds()) < 60
    assert loaded.deleted_at is None


def test_unique_keys_hold(app):
    user = _user()
    workflow = Workflow(user_id=user.id, name="W")
    db.session.add(workflow)
    db.session.flush()
    db.session.add(WorkflowVersion(workflow_id=workflow.id, version=1, name="W", definition={}))
    db.session.flush()
    db.session.add(WorkflowVersion(workflow_id=workflow.id, version=1, name="W", definition={}))
    with pytest.raises(IntegrityError):
        db.session.flush()
    db.session.rollback()


def test_one_row_per_node_attempt(app):
    user = _user()
    workflow = Workflow(user_id=user.id, name="W")
    db.session.add(workflow)
    db.session.flush()
    run = Execution(user_id=user.id, workflow_id=workflow.id, workflow_version=1,
                    trigger_type="manual", input={"x": 1})
    db.session.add(run)
    db.session.flush()
    db.session.add(ExecutionNode(execution_id=run.id, node_key="a", node_id="a", attempt=1,
                                 status="succeeded", output=None))
    db.session.flush()
    db.session.add(ExecutionNode(execution_id=run.id, node_key="a", node_id="a", attempt=1,
                                 status="succeeded"))
    with pytest.raises(IntegrityError):
        db.session.flush()
    db.session.rollback()
    assert db.session.scalar(select(Execution.status).where(Execution.id == run.id)) is None


def test_json_null_output_is_stored(app):
    user = _user()
    workflow = Workflow(user_id=user.id, name="W")
    db.session.add(workflow)
    db.session.flush()
    run = Execution(user_id=user.id, workflow_id=workflow.id, workflow_version=1,
                    trigger_type="manual", input=None)
    db.session.add(run)
    db.session.commit()
    assert db.session.get(Execution, run.id).status == "queued"
