from __future__ import annotations

from flask import g, jsonify, request

from app.services import executions
from app.services.pagination import parse_limit
from app.web.api import bp
from app.web.api.guard import json_object


@bp.post("/workflows/<workflow_id>/run")
def run_workflow(workflow_id: str):
    body = json_object() if request.content_length else {}
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
