"""Keeps a workflow's triggers in step with it: its webhook links and its schedules follow
its definition and whether it is active.

``sync`` runs inside the transaction that saves, (de)activates or deletes the workflow, before
its commit, so a trigger never outlives (or predates) the state that asked for it. Each kind
of trigger has a ``sync(workflow) -> None`` that reads ``workflow.definition``,
``workflow.active`` and ``workflow.deleted_at`` and adds, changes or removes its rows in the
current session without committing.
"""

from __future__ import annotations

from app.models import Workflow


def sync(workflow: Workflow) -> None:
    # Imported here: both modules reach back to workflows (through executions), which calls
    # this one.
    from app.services import schedules, webhooks

    schedules.sync(workflow)
    webhooks.sync(workflow)
