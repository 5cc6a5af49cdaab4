from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, LargeBinary, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, IdMixin, SoftDeleteMixin, TimestampMixin, utcnow


class Webhook(IdMixin, TimestampMixin, Base):
    """An inbound URL ``/hooks/<token>``; its secret is encrypted at rest (vault format)."""

    __tablename__ = "webhooks"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    token: Mapped[str] = mapped_column(String(64), unique=True)
    # jobsprint | stripe | github | slack | none
    scheme: Mapped[str] = mapped_column(String(16), default="jobsprint")
    kek_id: Mapped[str] = mapped_column(String(32))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    secret_ct: Mapped[bytes] = mapped_column(LargeBinary)
    # During rotation the previous secret still verifies until previous_expires_at.
    previous_secret_ct: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    previous_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    body_limit: Mapped[int | None] = mapped_column(default=None)


class WebhookLink(Base):
    """Which workflow's trigger node a webhook starts (one webhook may start several)."""

    __tablename__ = "webhook_links"

    webhook_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhooks.id", ondelete="CASCADE"), primary_key=True
    )
    workflow_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workflows.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    node_id: Mapped[str] = mapped_column(String(64), primary_key=True)


class TriggerEvent(IdMixin, SoftDeleteMixin, Base):
    """One accepted delivery (webhook) or fired slot (schedule), before its runs."""

    __tablename__ = "trigger_events"
    __table_args__ = (
        UniqueConstraint("webhook_id", "dedupe_key"),
        # The constraint above holds nothing for schedules (NULL webhook_id): one slot of one
        # schedule (dedupe_key = workflow:node:slot) is unique here instead (migration 0002).
        Index("uq_trigger_events_schedule_slot", "dedupe_key", unique=True,
              postgresql_where=text("kind = 'schedule'"),
              sqlite_where=text("kind = 'schedule'")),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    webhook_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("webhooks.id", ondelete="CASCADE"), default=None
    )
    kind: Mapped[str] = mapped_column(String(16))  # webhook | schedule
    dedupe_key: Mapped[str] = mapped_column(String(128))
    payload: Mapped[Any] = mapped_column(nullable=True, default=None)
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Schedule(IdMixin, TimestampMixin, Base):
    """A cron trigger of an active workflow; the clock claims due rows and moves next_run_at."""

    __tablename__ = "schedules"
    __table_args__ = (
        UniqueConstraint("workflow_id", "node_id"),
        Index("ix_schedules_active_next", "active", "next_run_at"),
    )

    workflow_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workflows.id", ondelete="CASCADE")
    )
    node_id: Mapped[str] = mapped_column(String(64))
    cron: Mapped[str] = mapped_column(String(200))  # as long as the node param allows
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    active: Mapped[bool] = mapped_column(default=True)
    next_run_at: Mapped[datetime]
    last_slot_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
