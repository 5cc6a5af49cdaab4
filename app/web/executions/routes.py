from __future__ import annotations

import json

from flask import render_template, request
from flask_login import current_user, login_required
from sqlalchemy import select

from app.db import db
from app.live import ws
from app.models import RUN_STATES, Workflow
from app.services import executions, run_stats
from app.web.executions import bp


@bp.get("/executions")
@login_required
def index():
    filters = run_stats.Filters.parse(request.args, current_user.id)
    choices = db.session.execute(
        select(Workflow.id, Workflow.name)
        .where(Workflow.user_id == current_user.id, Workflow.deleted_at.is_(None))
        .order_by(Workflow.name).limit(500)).all()
    return render_template("executions/list.html",
                           rows=ws.latest_rows(current_user.id, filters=filters),
                           workflow_choices=choices, statuses=RUN_STATES,
                           **ws.summary(current_user.id, filters))


@bp.get("/executions/<execution_id>")
@login_required
def show(execution_id: str):
    execution = executions.get_owned(current_user.id, execution_id)  # another user's: 404
    state = ws.execution_state(execution, ws.planned_nodes(execution))
    return render_template("executions/show.html", **state)


SHOWN_CHARS = 4000


def _part(value) -> dict:
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    full = request.args.get("full") == "1"
    cut = not full and len(text) > SHOWN_CHARS
    return {"text": text[:SHOWN_CHARS] + "\n…" if cut else text, "cut": cut, "size": len(text)}


@bp.get("/executions/<execution_id>/nodes/<path:node_key>")
@login_required
def node_detail(execution_id: str, node_key: str):
    """A node's latest attempt: its input, output and error (the page asks with htmx)."""
    execution = executions.get_owned(current_user.id, execution_id)  # another user's: 404
    row = next((r for r in executions.node_rows(execution.id) if r.node_key == node_key), None)
    if row is None:
        return render_template("errors/error.html", status=404,
                               message="This node has not run."), 404
    parts = [("Output", _part(row.output))]
    if row.input is not None:  # stored for nodes with side effects; a logic node's input is
        parts.insert(0, ("Input", _part(row.input)))  # the output of the node before it
    return render_template("executions/_node_detail.html", key=node_key, row=row, parts=parts,
                           execution_id=str(execution.id))
