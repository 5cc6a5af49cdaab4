from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, IdMixin, TimestampMixin


class Credential(IdMixin, TimestampMixin, Base):
    """A secret a node uses (API key, basic auth, bearer, OAuth2 client).

    The secret is AES-256-GCM encrypted with a per-record data key, itself wrapped by the key
    encryption key ``kek_id``; the row's id and owner are the associated data.
    ``meta`` holds only what may be shown (header name, username hint).
    """

    __tablename__ = "credentials"
    __table_args__ = (Index("ix_credentials_user_name", "user_id", "name"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # api_key | basic | bearer | oauth2
    app: Mapped[str | None] = mapped_column(String(64), default=None)
    kek_id: Mapped[str] = mapped_column(String(32))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    secret_ct: Mapped[bytes] = mapped_column(LargeBinary)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)


class Connection(IdMixin, TimestampMixin, Base):
    """An OAuth connection to an app; access and refresh tokens encrypted separately."""

    __tablename__ = "connections"
    __table_args__ = (Index("ix_connections_user_provider", "user_id", "provider"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|active|failed
    account_label: Mapped[str | None] = mapped_column(String(200), default=None)
    scopes: Mapped[str | None] = mapped_column(String(1000), default=None)
    kek_id: Mapped[str] = mapped_column(String(32))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    access_token_ct: Mapped[bytes] = mapped_column(LargeBinary)
    refresh_token_ct: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(String(1000), default=None)
