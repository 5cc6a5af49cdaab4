from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, IdMixin, SoftDeleteMixin, TimestampMixin, utcnow

RUN_STATES = ("queued", "running", "waiting", "succeeded", "failed", "cancelled")
FINAL_STATES = ("succeeded", "failed", "cancelled")


class Execution(IdMixin, TimestampMixin, SoftDeleteMixin, Base):
    """One run of one workflow version; the row is also the run's outbox entry.

    A run is committed ``queued`` with ``lease_expires_at`` = when someone must have claimed
    it; it is published to the queue after the commit, and the clock re-publishes any run whose
    lease has passed (a lost publish, a dead worker, a deferred or parked run that is due).

    ``epoch`` fences workers: each claim increments it and every later write of the run says
    ``WHERE id = :id AND epoch = :epoch``, so a worker that lost its lease writes nothing.
    """

    __tablename__ = "executions"
    __table_args__ = (
        Index("ix_executions_workflow_created", "workflow_id", "created_at", "id"),
        Index("ix_executions_user_created", "user_id", "created_at", "id"),
        Index("ix_executions_user_status_created", "user_id", "status", "created_at"),
        Index("ix_executions_status_lease", "status", "lease_expires_at"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    workflow_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workflows.id", ondelete="CASCADE")
    )
    workflow_version: Mapped[int]
    trigger_type: Mapped[str] = mapped_column(String(16))  # manual | schedule | webhook | retry
    trigger_node_id: Mapped[str | None] = mapped_column(String(64), default=None)
    trigger_event_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("trigger_events.id", ondelete="SET NULL"), default=None
    )
    retry_of_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("executions.id", ondelete="SET NULL"), default=None
    )
    input: Mapped[Any] = mapped_column(nullable=True, default=None)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    result: Mapped[Any] = mapped_column(nullable=True, default=None)
    error: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    epoch: Mapped[int] = mapped_column(default=0)
    deliveries: Mapped[int] = mapped_column(default=0)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    resume_at: Mapped[datetime | None] = mapped_column(default=None)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class ExecutionNode(IdMixin, SoftDeleteMixin, Base):
    """One attempt of one node in a run; the unique key makes a duplicate delivery a no-op."""

    __tablename__ = "execution_nodes"
    __table_args__ = (UniqueConstraint("execution_id", "node_key", "attempt"),)

    execution_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("executions.id", ondelete="CASCADE")
    )
    # The node's id, or ``id[i]`` for the i-th item of a split's sub-branch.
    node_key: Mapped[str] = mapped_column(String(80))
    node_id: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(default=1)
    status: Mapped[str] = mapped_column(String(16))
    input: Mapped[Any] = mapped_column(nullable=True, default=None)
    output: Mapped[Any] = mapped_column(nullable=True, default=None)
    output_name: Mapped[str | None] = mapped_column(String(64), default=None)
    error: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    resume_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class IdempotencyKey(Base):
    """The durable half of idempotency (Redis SET NX is the fast half).

    ``key`` is ``{user}:{resource}:{id}:{action}:{client key}`` for API calls, or a schedule slot
    or webhook delivery id; ``request_hash`` tells a replay from a different request.
    """

    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), default=None
    )
    request_hash: Mapped[str] = mapped_column(String(64))
    execution_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("executions.id", ondelete="SET NULL"), default=None
    )
    response: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
