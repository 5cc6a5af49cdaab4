"""All models, imported here so that ``Base.metadata`` knows every table."""

from app.models.ai import AIHistory, PromptTemplate
from app.models.audit import AuditLog
from app.models.base import Base, isoformat, utcnow
from app.models.credential import Connection, Credential
from app.models.execution import (
    FINAL_STATES,
    RUN_STATES,
    Execution,
    ExecutionNode,
    IdempotencyKey,
)
from app.models.maintenance import MaintenanceRun
from app.models.trigger import Schedule, TriggerEvent, Webhook, WebhookLink
from app.models.user import User
from app.models.workflow import Workflow, WorkflowVersion

__all__ = [
    "AIHistory", "AuditLog", "Base", "Connection", "Credential", "Execution", "ExecutionNode",
    "FINAL_STATES", "IdempotencyKey", "MaintenanceRun", "PromptTemplate", "RUN_STATES",
    "Schedule", "TriggerEvent", "User", "Webhook", "WebhookLink", "Workflow", "WorkflowVersion",
    "isoformat", "utcnow",
]
