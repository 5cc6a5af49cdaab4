from __future__ import annotations

from flask import g, jsonify, request

from app.models import isoformat
from app.services import workflows
from app.services.pagination import parse_limit
from app.web.api import bp
from app.web.api import contract as c
from app.web.api.contract import json_object, operation


@bp.get("/workflows")
@operation("List your workflows (newest first)", tag="workflows", query=c.WorkflowQuery,
           responses={200: c.WorkflowPage})
def list_workflows():
    rows, next_cursor = workflows.list_page(
        g.user, cursor=request.args.get("cursor"), limit=parse_limit(request.args.get("limit")),
        query=request.args.get("q"))
    return jsonify(items=[workflows.as_api(w) for w in rows], next_cursor=next_cursor)


@bp.post("/workflows")
@operation("Create a workflow (version 1, inactive)", tag="workflows", body=c.WorkflowIn,
           responses={201: c.WorkflowOut}, errors=(502,))
def create_workflow():
    workflow = workflows.create(g.user, json_object())
    return jsonify(workflows.as_api(workflow)), 201


@bp.get("/workflows/<workflow_id>")
@operation("One workflow", tag="workflows", responses={200: c.WorkflowOut})
def get_workflow(workflow_id: str):
    return jsonify(workflows.as_api(workflows.get_owned(g.user.id, workflow_id)))


@bp.put("/workflows/<workflow_id>")
@operation("Save a new version", tag="workflows", body=c.WorkflowIn,
           responses={200: c.WorkflowOut}, errors=(409, 502))
def update_workflow(workflow_id: str):
    return jsonify(workflows.as_api(workflows.update(g.user, workflow_id, json_object())))


@bp.delete("/workflows/<workflow_id>")
@operation("Delete a workflow (its webhooks stop at once)", tag="workflows",
           responses={204: None}, errors=(502,))
def delete_workflow(workflow_id: str):
    workflows.delete(g.user, workflow_id)
    return "", 204


@bp.post("/workflows/<workflow_id>/activate")
@operation("Activate: its webhooks and schedules start firing", tag="workflows",
           responses={200: c.WorkflowOut})
def activate_workflow(workflow_id: str):
    return jsonify(workflows.as_api(workflows.set_active(g.user, workflow_id, True)))


@bp.post("/workflows/<workflow_id>/deactivate")
@operation("Deactivate: no webhook or schedule starts it", tag="workflows",
           responses={200: c.WorkflowOut})
def deactivate_workflow(workflow_id: str):
    return jsonify(workflows.as_api(workflows.set_active(g.user, workflow_id, False)))


@bp.get("/workflows/<workflow_id>/versions")
@operation("Every saved version, newest first", tag="workflows",
           responses={200: c.VersionPage})
def workflow_versions(workflow_id: str):
    rows = workflows.versions(g.user, workflow_id)
    return jsonify(items=[{"version": v.version, "name": v.name,
                           "created_by": str(v.created_by) if v.created_by else None,
                           "created_at": isoformat(v.created_at)} for v in rows],
                   next_cursor=None)
