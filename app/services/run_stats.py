"""What the runs dashboard filters by and counts: a workflow, a status, a time window; counts
per status and runs and failures per hour over the last 24 h (grouped in the database)."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select

from app.db import db
from app.models import RUN_STATES, Execution, Workflow, utcnow

WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}


@dataclass(frozen=True)
class Filters:
    workflow_id: uuid.UUID | None = None
    status: str | None = None
    window: str | None = None  # a key of WINDOWS; None: all time

    @classmethod
    def parse(cls, args: Any, user_id: uuid.UUID) -> Filters:
        """From query arguments; anything unknown (or another user's workflow) is ignored."""
        workflow_id = None
        with contextlib.suppress(ValueError):
            workflow_id = uuid.UUID(args.get("workflow") or "")
        if workflow_id is not None and db.session.scalar(
                select(Workflow.id).where(Workflow.id == workflow_id,
                                          Workflow.user_id == user_id)) is None:
            workflow_id = None
        status = args.get("status") if args.get("status") in RUN_STATES else None
        window = args.get("since") if args.get("since") in WINDOWS else None
        return cls(workflow_id, status, window)

    def as_args(self) -> dict[str, str]:
        found = {"workflow": str(self.workflow_id) if self.workflow_id else None,
                 "status": self.status, "since": self.window}
        return {k: v for k, v in found.items() if v}

    def since(self, now: datetime | None = None) -> datetime | None:
        return (now or utcnow()) - WINDOWS[self.window] if self.window else None

    def where(self, stmt, *, with_status: bool = True):
        if self.workflow_id:
            stmt = stmt.where(Execution.workflow_id == self.workflow_id)
        if with_status and self.status:
            stmt = stmt.where(Execution.status == self.status)
        if (since := self.since()) is not None:
            stmt = stmt.where(Execution.created_at >= since)
        return stmt

    def matches(self, row: dict) -> bool:
        """Whether a run (a dashboard row with workflow_id, status, created_at) belongs."""
        if self.workflow_id and row.get("workflow_id") != str(self.workflow_id):
            return False
        if self.status and row.get("status") != self.status:
            return False
        since = self.since()
        return since is None or row.get("created_at") is None or row["created_at"] >= since


def status_counts(user_id: uuid.UUID, filters: Filters) -> dict[str, int]:
    """Runs per status within the filters' workflow and window (the status filter aside)."""
    stmt = filters.where(
        select(Execution.status, func.count())
        .where(Execution.user_id == user_id, Execution.deleted_at.is_(None))
        .group_by(Execution.status), with_status=False)
    found = dict(db.session.execute(stmt).all())
    return {status: found.get(status, 0) for status in RUN_STATES}


def hourly(user_id: uuid.UUID, filters: Filters, now: datetime | None = None
           ) -> list[dict]:
    """24 buckets, oldest first: {hour, runs, failures} of the last 24 hours."""
    now = (now or utcnow()).replace(minute=0, second=0, microsecond=0)
    first = now - timedelta(hours=23)
    if db.is_sqlite:
        bucket = func.strftime("%Y-%m-%d %H", Execution.created_at)
    else:
        utc = func.timezone("UTC", Execution.created_at)
        bucket = func.to_char(func.date_trunc("hour", utc), "YYYY-MM-DD HH24")
    failed = func.sum(case((Execution.status == "failed", 1), else_=0))
    stmt = (select(bucket, func.count(), failed)
            .where(Execution.user_id == user_id, Execution.deleted_at.is_(None),
                   Execution.created_at >= first)
            .group_by(bucket))
    if filters.workflow_id:
        stmt = stmt.where(Execution.workflow_id == filters.workflow_id)
    counts = {key: (runs, int(failures or 0)) for key, runs, failures in db.session.execute(stmt)}
    buckets = []
    for step in range(24):
        hour = first + timedelta(hours=step)
        runs, failures = counts.get(hour.strftime("%Y-%m-%d %H"), (0, 0))
        buckets.append({"hour": hour, "runs": runs, "failures": failures})
    return buckets

