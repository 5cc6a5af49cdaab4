from __future__ import annotations

from flask import g, jsonify, request

from app.models import isoformat
from app.services import workflows
from app.services.pagination import parse_limit
from app.web.api import bp
from app.web.api.guard import json_object


@bp.get("/workflows")
def list_workflows():
    rows, next_cursor = workflows.list_page(
        g.user, cursor=request.args.get("cursor"), limit=parse_limit(request.args.get("limit")),
        query=request.args.get("q"))
    return jsonify(items=[workflows.as_api(w) for w in rows], next_cursor=next_cursor)


@bp.post("/workflows")
def create_workflow():
    workflow = workflows.create(g.user, json_object())
    return jsonify(workflows.as_api(workflow)), 201


@bp.get("/workflows/<workflow_id>")
def get_workflow(workflow_id: str):
    return jsonify(workflows.as_api(workflows.get_owned(g.user.id, workflow_id)))


@bp.put("/workflows/<workflow_id>")
def update_workflow(workflow_id: str):
    return jsonify(workflows.as_api(workflows.update(g.user, workflow_id, json_object())))


@bp.delete("/workflows/<workflow_id>")
def delete_workflow(workflow_id: str):
    workflows.delete(g.user, workflow_id)
    return "", 204


@bp.post("/workflows/<workflow_id>/activate")
def activate_workflow(workflow_id: str):
    return jsonify(workflows.as_api(workflows.set_active(g.user, workflow_id, True)))


@bp.post("/workflows/<workflow_id>/deactivate")
def deactivate_workflow(workflow_id: str):
    return jsonify(workflows.as_api(workflows.set_active(g.user, workflow_id, False)))


@bp.get("/workflows/<workflow_id>/versions")
def workflow_versions(workflow_id: str):
    rows = workflows.versions(g.user, workflow_id)
    return jsonify(items=[{"version": v.version, "name": v.name,
                           "created_by": str(v.created_by) if v.created_by else None,
                           "created_at": isoformat(v.created_at)} for v in rows],
                   next_cursor=None)
