"""schedule slots: one trigger event per (workflow, node, slot)

The unique key (webhook_id, dedupe_key) of trigger_events holds nothing for schedule events,
whose webhook_id is NULL (NULLs are distinct in a unique index on PostgreSQL and SQLite). This
partial unique index makes a schedule slot fire once, whatever the number of clocks.
``schedules.cron`` grows to the 200 characters the trigger.schedule node accepts.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 02:45:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEDULE_ONLY = sa.text("kind = 'schedule'")


def upgrade() -> None:
    op.create_index("uq_trigger_events_schedule_slot", "trigger_events", ["dedupe_key"],
                    unique=True, postgresql_where=SCHEDULE_ONLY, sqlite_where=SCHEDULE_ONLY)
    with op.batch_alter_table("schedules") as batch_op:
        batch_op.alter_column("cron", type_=sa.String(length=200),
                              existing_type=sa.String(length=120), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("schedules") as batch_op:
        batch_op.alter_column("cron", type_=sa.String(length=120),
                              existing_type=sa.String(length=200), existing_nullable=False)
    op.drop_index("uq_trigger_events_schedule_slot", table_name="trigger_events")
