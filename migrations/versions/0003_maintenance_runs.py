"""maintenance runs: retention's once-per-period claims, and the indexes its batches need

``maintenance_runs`` holds when each clock job with a shared period (daily, weekly, monthly
retention) last ran, so that any number of clocks, restarted at any time, run it once a period.
The indexes: old runs by creation time, and the columns that reference a run (set to NULL,
row by row, when a run is purged: without an index each would scan its whole table).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 12:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

INDEXES = (
    ("ix_executions_created_at", "executions", "created_at"),
    ("ix_executions_retry_of_id", "executions", "retry_of_id"),
    ("ix_ai_history_execution_id", "ai_history", "execution_id"),
    ("ix_idempotency_keys_execution_id", "idempotency_keys", "execution_id"),
)


def upgrade() -> None:
    op.create_table(
        "maintenance_runs",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("running_since", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_maintenance_runs")),
    )
    for name, table, column in INDEXES:
        op.create_index(name, table, [column])


def downgrade() -> None:
    for name, table, _column in reversed(INDEXES):
        op.drop_index(name, table_name=table)
    op.drop_table("maintenance_runs")
