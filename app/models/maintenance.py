from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.ai import AIHistory
from app.models.base import Base
from app.models.execution import Execution, IdempotencyKey


class MaintenanceRun(Base):
    """When a clock job with a period shared by every clock (retention: daily, weekly,
    monthly) last ran, and which clock runs it now.

    Several clock processes may tick at once and any may restart: the period lives here, not
    in a process's memory. A clock runs the job only after one conditional UPDATE claims the row
    (``running_since``); a clock killed mid-run leaves a claim that expires (the lease).
    """

    __tablename__ = "maintenance_runs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # When the last run that finished started; the job is due again one period later.
    last_run_at: Mapped[datetime | None] = mapped_column(default=None)
    running_since: Mapped[datetime | None] = mapped_column(default=None)


# The indexes the retention jobs' batched statements need, declared with them:
# - old runs are found by creation time (ai_history and audit_logs index theirs already);
# - a trigger event is kept while a run refers to it;
# - deleting a run (or a trigger event) makes PostgreSQL set to NULL, row by row, every
#   reference to it: without an index on each referencing column, each deleted row would scan
#   the whole referencing table.
Index("ix_executions_created_at", Execution.created_at)
Index("ix_executions_retry_of_id", Execution.retry_of_id)
Index("ix_executions_trigger_event_id", Execution.trigger_event_id)  # also: webhook replays
Index("ix_ai_history_execution_id", AIHistory.execution_id)
Index("ix_idempotency_keys_execution_id", IdempotencyKey.execution_id)
