"""The workflow editor: one page per workflow, every change a small POST that answers with
the editor re-rendered (htmx swaps it in; without JavaScript the browser follows a redirect to
the same page). The draft and its rules live in ``services.drafts``."""

from __future__ import annotations

import re
from collections import defaultdict
from functools import wraps

from flask import current_app, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import select

from app import engine
from app.db import db
from app.errors import ServiceError
from app.live import ws
from app.models import Connection, Credential, User
from app.services import drafts, executions, workflows
from app.web.workflows import bp, node_form

_PARAM = re.compile(r"^nodes\[\d+\]\.params\.([^.\[]+)")
GROUPS = ("Triggers", "Logic", "HTTP", "AI", "Apps")
NODE_W, NODE_H = 170, 60


def palette() -> list[tuple[str, list[engine.NodeType]]]:
    by_group = defaultdict(list)
    for node_type in engine.node_types():
        by_group[node_type.group].append(node_type)
    ordered = [g for g in GROUPS if g in by_group] + sorted(set(by_group) - set(GROUPS))
    return [(group, by_group[group]) for group in ordered]


def _credentials():
    """The user's credentials and active OAuth connections (either can be a node's)."""
    found = [(c.id, c.name, c.kind) for c in db.session.execute(
        select(Credential.id, Credential.name, Credential.kind)
        .where(Credential.user_id == current_user.id).order_by(Credential.name))]
    found += [(c.id, f"{c.provider}: {c.account_label or 'connection'}", "oauth2")
              for c in db.session.execute(
                  select(Connection.id, Connection.provider, Connection.account_label)
                  .where(Connection.user_id == current_user.id,
                         Connection.status == "active"))]
    return [{"id": i, "name": n, "kind": k} for i, n, k in found]


def _context(workflow, draft: drafts.Draft, notice: str | None = None,
             errors: list | None = None) -> dict:
    problems = drafts.problems(draft)
    by_node: dict[str, list] = defaultdict(list)
    general = []
    for problem in problems:
        (by_node[problem.node_id] if problem.node_id else general).append(problem)
    nodes = draft.definition["nodes"]
    width = max([n["position"][0] for n in nodes if n.get("position")] + [0]) + NODE_W + 40
    height = max([n["position"][1] for n in nodes if n.get("position")] + [0]) + NODE_H + 40
    panel = None
    selected = draft.node(draft.selected)
    if selected is not None:
        node_type = engine.get_node_type(str(selected.get("type")))
        field_errors: dict[str, list[str]] = defaultdict(list)
        node_errors = []
        for problem in by_node.get(selected["id"], []):
            match = _PARAM.match(problem.path)
            if match and node_type and match.group(1) in node_type.params_schema.get(
                    "properties", {}):
                field_errors[match.group(1)].append(problem.message)
            else:
                node_errors.append(problem)
        raw = {key.partition(".")[2]: text for key, text in draft.raw.items()
               if key.partition(".")[0] == selected["id"]}
        panel = {
            "node": selected, "type": node_type, "node_errors": node_errors,
            "outputs": drafts.output_names(selected),
            "fields": node_form.fields(node_type, selected.get("params") or {}, raw,
                                       field_errors) if node_type else [],
            "targets": [n for n in nodes if n["id"] != selected["id"]],
            "hint": ["input", "trigger", "execution.id"] + [
                f"nodes.{n['id']}" for n in nodes if n["id"] != selected["id"]],
            "credentials": _credentials() if node_type and node_type.group in (
                "HTTP", "AI", "Apps") else None,
        }
    versions = None
    if request.args.get("history") or request.form.get("history"):
        versions = workflows.versions(current_user, workflow.id)
    authors = {}
    if versions:
        authors = dict(db.session.execute(select(User.id, User.email).where(
            User.id.in_({v.created_by for v in versions if v.created_by}))).all())
    run, run_input = None, request.form.get("input")
    remembered = drafts.last_run(current_user, workflow.id)
    if remembered.get("run_id"):
        try:
            execution = executions.get_owned(current_user.id, remembered["run_id"])
            run = ws.execution_state(execution, ws.planned_nodes(execution))
        except ServiceError:
            run = None
    if run_input is None:
        run_input = remembered.get("input", "{}")
    return {"workflow": workflow, "draft": draft, "nodes": nodes, "run": run,
            "run_input": run_input,
            "types": {t.name: t for t in engine.node_types()},
            "outputs_of": drafts.output_names, "versions": versions, "authors": authors,
            "edges": _edges(draft), "palette": palette(), "panel": panel,
            "problems": problems, "general_problems": general, "node_problems": by_node,
            "canvas": {"width": max(width, 640), "height": max(height, 420)},
            "node_w": NODE_W, "node_h": NODE_H, "notice": notice, "errors": errors or []}


def _edges(draft: drafts.Draft) -> list[dict]:
    """Each connection with the coordinates of its ends, for the SVG paths."""
    placed = {n["id"]: n for n in draft.definition["nodes"] if n.get("position")}
    found = []
    for index, edge in enumerate(draft.definition["connections"]):
        source, target = placed.get(edge.get("from")), placed.get(edge.get("to"))
        if source is None or target is None:
            continue
        outputs = drafts.output_names(source) or ["main"]
        output = edge.get("output", "main")
        slot = outputs.index(output) if output in outputs else 0
        x1 = source["position"][0] + NODE_W
        y1 = source["position"][1] + NODE_H * (slot + 1) / (len(outputs) + 1)
        x2, y2 = target["position"][0], target["position"][1] + NODE_H / 2
        bend = max(40, abs(x2 - x1) / 2)
        found.append({"index": index, "from": edge["from"], "to": edge["to"],
                      "output": output, "selected": draft.selected_edge == index,
                      "d": f"M{x1:.0f},{y1:.0f} C{x1 + bend:.0f},{y1:.0f} "
                           f"{x2 - bend:.0f},{y2:.0f} {x2:.0f},{y2:.0f}"})
    return found


def _answer(workflow_id: str, draft: drafts.Draft | None = None, *, status: int = 200,
            notice: str | None = None, errors: list | None = None):
    if not request.headers.get("HX-Request"):
        return redirect(url_for("workflows.edit", workflow_id=workflow_id))
    if draft is None:
        workflow, draft = drafts.load(current_user, workflow_id)
    else:  # the action's own draft: only the workflow row is needed
        workflow = workflows.get_owned(current_user.id, workflow_id)
    return render_template("workflows/_editor.html",
                           **_context(workflow, draft, notice, errors)), status


def editing(view):
    """Run an editor action; a refused one answers with the editor and its reasons."""
    @wraps(view)
    def wrapper(workflow_id: str, *args, **kwargs):
        workflows.get_owned(current_user.id, workflow_id)  # another user's: a plain 404
        try:
            return view(workflow_id, *args, **kwargs)
        except ServiceError as exc:
            return _answer(workflow_id, status=exc.status,
                           errors=[exc.message, *(f"{d.path}: {d.message}" if d.path
                                                  else d.message for d in exc.details)])
    return login_required(wrapper)


@bp.get("/workflows/<workflow_id>/edit")
@login_required
def edit(workflow_id: str):
    workflow, draft = drafts.load(current_user, workflow_id)
    return render_template("workflows/editor.html", **_context(workflow, draft))


@bp.post("/workflows/<workflow_id>/edit/nodes")
@editing
def add_node(workflow_id: str):
    kind = request.form.get("type", "")
    return _answer(workflow_id, drafts.change(current_user, workflow_id,
                                              lambda d: drafts.add_node(d, kind)))


@bp.post("/workflows/<workflow_id>/edit/select")
@editing
def select_item(workflow_id: str):
    edge = request.form.get("edge", "")
    return _answer(workflow_id, drafts.select(
        current_user, workflow_id, request.form.get("node") or None,
        int(edge) if edge.isdigit() else None))


@bp.post("/workflows/<workflow_id>/edit/nodes/<node_id>/move")
@editing
def move(workflow_id: str, node_id: str):
    try:
        x, y = float(request.form["x"]), float(request.form["y"])
    except (KeyError, ValueError):
        raise ServiceError("x and y must be numbers") from None
    return _answer(workflow_id, drafts.change(current_user, workflow_id,
                                              lambda d: drafts.move(d, node_id, x, y)))


@bp.post("/workflows/<workflow_id>/edit/nodes/<node_id>/delete")
@editing
def delete_node(workflow_id: str, node_id: str):
    return _answer(workflow_id, drafts.change(current_user, workflow_id,
                                              lambda d: drafts.delete_node(d, node_id)))


@bp.post("/workflows/<workflow_id>/edit/nodes/<node_id>/settings")
@editing
def node_settings(workflow_id: str, node_id: str):
    _workflow, current = drafts.load(current_user, workflow_id)
    node = current.node(node_id)
    node_type = engine.get_node_type(str(node.get("type"))) if node else None
    if node_type is None:
        raise ServiceError("no such node")
    params, raw = node_form.parse(node_type, request.form)
    name = (request.form.get("name") or "").strip()[:200] or None
    credential = request.form.get("credential_id") or None
    return _answer(workflow_id, drafts.change(
        current_user, workflow_id,
        lambda d: drafts.set_node(d, node_id, name, params, raw, credential)))


@bp.post("/workflows/<workflow_id>/edit/connections")
@editing
def connect(workflow_id: str):
    form = request.form
    return _answer(workflow_id, drafts.change(current_user, workflow_id, lambda d: (
        drafts.connect(d, form.get("from", ""), form.get("output") or "main",
                       form.get("to", "")))))


@bp.post("/workflows/<workflow_id>/edit/connections/<int:index>/delete")
@editing
def delete_edge(workflow_id: str, index: int):
    return _answer(workflow_id, drafts.change(current_user, workflow_id,
                                              lambda d: drafts.delete_edge(d, index)))


@bp.post("/workflows/<workflow_id>/edit/name")
@editing
def rename(workflow_id: str):
    name = (request.form.get("name") or "").strip()[:200]
    return _answer(workflow_id, drafts.change(current_user, workflow_id,
                                              lambda d: drafts.set_name(d, name)))


@bp.post("/workflows/<workflow_id>/edit/undo")
@editing
def undo(workflow_id: str):
    return _answer(workflow_id, drafts.undo(current_user, workflow_id))


@bp.post("/workflows/<workflow_id>/edit/discard")
@editing
def discard(workflow_id: str):
    drafts.discard(current_user, workflow_id)
    return _answer(workflow_id, notice="Changes discarded.")


@bp.post("/workflows/<workflow_id>/edit/restore")
@editing
def restore(workflow_id: str):
    version = request.form.get("version", "")
    if not version.isdigit():
        raise ServiceError("choose a version")
    draft = drafts.restore(current_user, workflow_id, int(version))
    return _answer(workflow_id, draft,
                   notice=f"Version {version} is in the editor; save to make it current.")


@bp.post("/workflows/<workflow_id>/edit/save")
@editing
def save(workflow_id: str):
    saved = drafts.save(current_user, workflow_id)
    return _answer(workflow_id, notice=f"Saved version {saved.version}.")


@bp.post("/workflows/<workflow_id>/edit/run")
@editing
def run(workflow_id: str):
    drafts.run(current_user, workflow_id, request.form.get("input") or "{}")
    return _answer(workflow_id)


@bp.get("/workflows/<workflow_id>/edit/nodes/<node_id>/mcp-tools")
@login_required
def mcp_tools(workflow_id: str, node_id: str):
    """The tools of the MCP node's server, for the panel (fetched when asked)."""
    from app.engine import NodeError
    from app.services.mcp_port import McpPort
    from app.services.ssrf import AllowList

    _workflow, draft = drafts.load(current_user, workflow_id)
    node = draft.node(node_id)
    url = ((node or {}).get("params") or {}).get("server_url") or ""
    tools, problem = [], None
    if not url or "{{" in url:
        problem = "Set a server URL (without expressions) first."
    else:
        port = McpPort(AllowList.parse(current_app.config["SETTINGS"].http_allow),
                       current_user.id)
        try:
            tools = port.list_tools(url, (node or {}).get("credential_id"))
        except NodeError as exc:
            problem = str(exc)
    return render_template("workflows/_mcp_tools.html", tools=tools, problem=problem)
