from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import ForeignKey, Index, Numeric, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, IdMixin, SoftDeleteMixin, TimestampMixin, utcnow


class PromptTemplate(IdMixin, TimestampMixin, SoftDeleteMixin, Base):
    """A user's prompt; each save is a new row with the next version of the same name."""

    __tablename__ = "prompt_templates"
    __table_args__ = (UniqueConstraint("user_id", "name", "version"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(default=1)
    system: Mapped[str | None] = mapped_column(Text, default=None)
    prompt: Mapped[str] = mapped_column(Text)


class AIHistory(IdMixin, SoftDeleteMixin, Base):
    """One exchange with a model: the user message and the assistant's answer, with costs."""

    __tablename__ = "ai_history"
    __table_args__ = (
        Index("ix_ai_history_conversation", "user_id", "conversation_key", "created_at"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    execution_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("executions.id", ondelete="SET NULL"), default=None
    )
    node_id: Mapped[str | None] = mapped_column(String(64), default=None)
    conversation_key: Mapped[str | None] = mapped_column(String(200), default=None)
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    user_message: Mapped[str] = mapped_column(Text)
    assistant_message: Mapped[str] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(32), default=None)
    prompt_tokens: Mapped[int] = mapped_column(default=0)
    completion_tokens: Mapped[int] = mapped_column(default=0)
    latency_ms: Mapped[int] = mapped_column(default=0)
    cost_estimate: Mapped[Decimal] = mapped_column(Numeric(12, 6), default=Decimal(0))
    cached: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
