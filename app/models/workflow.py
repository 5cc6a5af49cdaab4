from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, IdMixin, SoftDeleteMixin, TimestampMixin, utcnow


class Workflow(IdMixin, TimestampMixin, SoftDeleteMixin, Base):
    """A user's workflow. ``definition`` holds nodes, connections and settings (DESIGN.md)."""

    __tablename__ = "workflows"
    __table_args__ = (
        Index("ix_workflows_user_updated", "user_id", "updated_at", "id"),
        Index("ix_workflows_user_name", "user_id", "name"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(default=1)
    active: Mapped[bool] = mapped_column(default=False)
    definition: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The id of the same workflow in an external n8n, when pushing to one is configured.
    n8n_id: Mapped[str | None] = mapped_column(String(64), default=None)


class WorkflowVersion(IdMixin, Base):
    """The definition a workflow had at one version; every save keeps the previous one."""

    __tablename__ = "workflow_versions"
    __table_args__ = (UniqueConstraint("workflow_id", "version"),)

    workflow_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workflows.id", ondelete="CASCADE")
    )
    version: Mapped[int]
    name: Mapped[str] = mapped_column(String(200))
    definition: Mapped[dict[str, Any]]
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
