from __future__ import annotations

from flask import g, jsonify, request

from app.errors import RateLimited
from app.services import ai, executions, workflows
from app.services.pagination import parse_limit
from app.web.api import bp
from app.web.api import contract as c
from app.web.api.contract import json_object, operation


@bp.post("/workflows/<workflow_id>/run")
@operation("Start a run by hand", tag="executions", body=c.RunIn, body_required=False,
           responses={202: c.RunAccepted}, errors=(422,),
           headers={"Idempotency-Key": "Repeat a request safely: the same key answers with "
                                       "the first run"})
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
@operation("List your runs (newest first)", tag="executions", query=c.ExecutionQuery,
           responses={200: c.ExecutionPage}, errors=(404,))
def list_executions():
    rows, next_cursor = executions.list_page(
        g.user, workflow_id=request.args.get("workflow_id"), status=request.args.get("status"),
        cursor=request.args.get("cursor"), limit=parse_limit(request.args.get("limit")))
    return jsonify(items=[executions.as_api(e, with_nodes=False) for e in rows],
                   next_cursor=next_cursor)


@bp.get("/executions/<execution_id>")
@operation("One run with its nodes", tag="executions", responses={200: c.ExecutionOut})
def get_execution(execution_id: str):
    return jsonify(executions.as_api(executions.get_owned(g.user.id, execution_id)))


@bp.post("/executions/<execution_id>/cancel")
@operation("Cancel a run (a running one stops between two nodes)", tag="executions",
           responses={200: c.ExecutionOut}, errors=(409,))
def cancel_execution(execution_id: str):
    return jsonify(executions.as_api(executions.cancel(g.user, execution_id)))


@bp.post("/executions/<execution_id>/retry")
@operation("Run a failed or cancelled run again", tag="executions",
           responses={202: c.RunAccepted}, errors=(409,))
def retry_execution(execution_id: str):
    execution = executions.retry(g.user, execution_id)
    return jsonify(execution_id=str(execution.id), status=execution.status), 202
