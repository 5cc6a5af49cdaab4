"""Keeps a workflow's triggers in step with it: its webhook links and its schedules follow
its definition and whether it is active.

``sync`` runs inside the transaction that saves, (de)activates or deletes the workflow, before
its commit, so a trigger never outlives (or predates) the state that asked for it. Each kind
of trigger registers a function ``sync(workflow) -> None`` in ``SYNCERS``; it reads
``workflow.definition``, ``workflow.active`` and ``workflow.deleted_at`` and adds, changes or
removes its rows in the current session without committing.
"""

from __future__ import annotations

from collections.abc import Callable

from app.models import Workflow

SYNCERS: list[Callable[[Workflow], None]] = []


def sync(workflow: Workflow) -> None:
    for syncer in SYNCERS:
        syncer(workflow)
