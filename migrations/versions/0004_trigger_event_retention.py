"""runs by trigger event: replays, and retention of trigger events

An index on ``executions.trigger_event_id``: a replayed webhook delivery finds the runs of its
first delivery through it, retention asks whether any run still refers to an old event, and
purging an event sets that column to NULL in the runs that refer to it (without the index,
each of those would scan the whole executions table).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 15:30:00
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_executions_trigger_event_id", "executions", ["trigger_event_id"])


def downgrade() -> None:
    op.drop_index("ix_executions_trigger_event_id", table_name="executions")
