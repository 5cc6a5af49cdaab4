"""Once a period across every clock: the claims on ``maintenance_runs``.

A clock's ``every_s`` lives in its process's memory, so two clocks (or one restarted) would
each run a daily job. A job with a shared period is run only by the clock whose conditional
UPDATE claims its row; the claim records when that run started, and the period counts from
the start of the last run that finished. A clock killed mid-run leaves its claim behind: after
``LEASE`` another clock may take the job (every retention job is idempotent, so a rare second
run costs time, not data).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlalchemy.dialects import postgresql, sqlite

from app.db import db
from app.models import MaintenanceRun

LEASE = timedelta(hours=1)


def claim(name: str, period_s: float, now: datetime) -> bool:
    """Whether this clock runs ``name`` now: True at most once per period across all clocks;
    the caller then says ``finish`` (or ``release`` when the run failed)."""
    due_before = now - timedelta(seconds=period_s)
    claimed = db.session.execute(
        update(MaintenanceRun)
        .where(MaintenanceRun.name == name,
               or_(MaintenanceRun.last_run_at.is_(None),
                   MaintenanceRun.last_run_at <= due_before),
               or_(MaintenanceRun.running_since.is_(None),
                   MaintenanceRun.running_since <= now - LEASE))
        .values(running_since=now)).rowcount == 1
    if not claimed:  # not due, or the job's first run ever (whichever clock inserts it)
        dialect = sqlite if db.is_sqlite else postgresql
        claimed = db.session.execute(
            dialect.insert(MaintenanceRun).values(name=name, running_since=now)
            .on_conflict_do_nothing().returning(MaintenanceRun.name)).first() is not None
    db.session.commit()
    return claimed


def finish(name: str, started: datetime) -> None:
    """The run claimed at ``started`` is done: the next one is due a period after it."""
    _end(name, started, last_run_at=started)


def release(name: str, started: datetime) -> None:
    """The run claimed at ``started`` failed: any clock may try again at its next check."""
    _end(name, started)


def _end(name: str, started: datetime, **values) -> None:
    # Only our own claim: if the lease passed and another clock took the job, it owns the row.
    db.session.execute(
        update(MaintenanceRun)
        .where(MaintenanceRun.name == name, MaintenanceRun.running_since == started)
        .values(running_since=None, **values))
    db.session.commit()
