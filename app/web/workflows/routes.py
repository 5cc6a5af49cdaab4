"""The workflow list: search, keyset pages, create, duplicate, (de)activate, delete, import
and export. Handlers are thin: the services own every rule and transaction."""

from __future__ import annotations

from flask import Response, flash, json, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from app.errors import ServiceError
from app.services import workflows
from app.web.workflows import bp

PAGE_SIZE = 25


def _rows(items) -> list[dict]:
    summaries = workflows.run_summaries([w.id for w in items])
    return [{"workflow": w, "kind": workflows.trigger_kind(w), "runs": summaries.get(w.id)}
            for w in items]


def _list(status: int = 200, problems=None):
    query = (request.args.get("q") or "").strip()[:200]
    items, next_cursor = workflows.list_page(current_user, cursor=request.args.get("cursor"),
                                             limit=PAGE_SIZE, query=query or None)
    context = {"rows": _rows(items), "q": query, "next_cursor": next_cursor,
               "problems": problems or []}
    if request.headers.get("HX-Request") and request.headers.get("HX-Target") == "workflow-rows":
        return render_template("workflows/_rows.html", **context), status
    return render_template("workflows/list.html", **context), status


@bp.get("/workflows")
@login_required
def index():
    try:
        return _list()
    except ServiceError as exc:  # a cursor that is not ours: start again from the top
        flash(exc.message)
        return redirect(url_for("workflows.index"))


@bp.post("/workflows/new")
@login_required
def create():
    name = (request.form.get("name") or "").strip() or "Untitled workflow"
    try:
        workflow = workflows.create(current_user, {
            "name": name, "nodes": [{"id": "start", "type": "trigger.manual", "params": {}}],
            "connections": []})
    except ServiceError as exc:
        return _list(exc.status, exc.details or [exc])
    flash(f"Created “{workflow.name}”.")
    return redirect(url_for("workflows.edit", workflow_id=workflow.id))


@bp.post("/workflows/import")
@login_required
def import_file():
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        return _list(400, [ServiceError("choose a JSON file to import")])
    try:
        workflow, report = workflows.import_json(current_user,
                                                 upload.read(workflows.IMPORT_MAX_BYTES + 1))
    except ServiceError as exc:
        return _list(exc.status, [exc, *exc.details])
    flash(f"Imported “{workflow.name}” ({len(workflow.definition['nodes'])} nodes).")
    for item in report:  # what an n8n import could not carry over, node by node
        flash(f"{item['node']}: {item['message']}" if item["node"] else item["message"])
    return redirect(url_for("workflows.index"))


@bp.get("/workflows/<workflow_id>/export")
@login_required
def export(workflow_id: str):
    workflow = workflows.get_owned(current_user.id, workflow_id)
    document = workflows.export(workflow)
    suffix = ""
    if request.args.get("format") == "n8n":
        from app.services import n8n_interop

        document, suffix = n8n_interop.to_n8n(document), ".n8n"
    body = json.dumps(document, indent=2, ensure_ascii=False)
    filename = "".join(c if c.isalnum() or c in "-_" else "-" for c in workflow.name)[:60]
    return Response(body, mimetype="application/json", headers={
        "Content-Disposition": f'attachment; filename="{filename or "workflow"}{suffix}.json"'})


@bp.post("/workflows/<workflow_id>/duplicate")
@login_required
def duplicate(workflow_id: str):
    copy = workflows.duplicate(current_user, workflow_id)
    flash(f"Created “{copy.name}”.")
    return redirect(url_for("workflows.index"))


@bp.post("/workflows/<workflow_id>/active")
@login_required
def set_active(workflow_id: str):
    wanted = request.form.get("active") == "on"
    try:
        workflow = workflows.set_active(current_user, workflow_id, wanted)
        problem = None
    except ServiceError as exc:  # e.g. an unsigned webhook on a stricter server
        workflow, problem = workflows.get_owned(current_user.id, workflow_id), exc
    if request.headers.get("HX-Request"):
        return render_template("workflows/_row.html", row=_rows([workflow])[0],
                               problem=problem)
    if problem:
        flash(problem.message)
    return redirect(url_for("workflows.index"))


@bp.post("/workflows/<workflow_id>/delete")
@login_required
def delete(workflow_id: str):
    workflow = workflows.get_owned(current_user.id, workflow_id)
    workflows.delete(current_user, workflow.id)
    if request.headers.get("HX-Request"):
        return ""  # the row is swapped out
    flash(f"Deleted “{workflow.name}”.")
    return redirect(url_for("workflows.index"))
