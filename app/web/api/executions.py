from __future__ import annotations

from flask import g, jsonify, request

from app.errors import RateLimited
from app.services import ai, executions, workflows
from app.services.pagination import parse_limit
from app.web.api import bp
from app.web.api.guard import json_object


@bp.post("/workflows/<workflow_id>/run")
def run_workflow(workflow_id: str):
    body = json_object() if request.content_length else {}
    workflow = workflows.get_owned(g.user.id, workflow_id)
    uses_ai = any(n.get("type") == "ai.chat" for n in (workflow.definition or {}).get(
        "nodes", []) if isinstance(n, dict))
    if uses_ai and ai.budget_left(g.user.id) == 0:
        raise RateLimited("your AI budget for today is spent; it renews at midnight UTC",
                          retry_after=ai.seconds_to_midnight())
    execution, _new = executions.start_manual(
        g.user, workflow_id, body.get("input"),
        idempotency_key=request.headers.get("Idempotency-Key"))
    return jsonify(execution_id=str(execution.id), status=execution.status), 202


@bp.get("/executions")
def list_executions():
    rows, next_cursor = executions.list_page(
        g.user, workflow_id=request.args.get("workflow_id"), status=request.args.get("status"),
        cursor=request.args.get("cursor"), limit=parse_limit(request.args.get("limit")))
    return jsonify(items=[executions.as_api(e, with_nodes=False) for e in rows],
                   next_cursor=next_cursor)


@bp.get("/executions/<execution_id>")
def get_execution(execution_id: str):
    return jsonify(executions.as_api(executions.get_owned(g.user.id, execution_id)))


@bp.post("/executions/<execution_id>/cancel")
def cancel_execution(execution_id: str):
    return jsonify(executions.as_api(executions.cancel(g.user, execution_id)))


@bp.post("/executions/<execution_id>/retry")
def retry_execution(execution_id: str):
    execution = executions.retry(g.user, execution_id)
    return jsonify(execution_id=str(execution.id), status=execution.status), 202
