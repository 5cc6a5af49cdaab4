from __future__ import annotations

from flask import render_template
from flask_login import current_user, login_required

from app.live import ws
from app.services import executions
from app.web.executions import bp


@bp.get("/executions")
@login_required
def index():
    rows = ws.latest_rows(current_user.id)
    return render_template("executions/list.html", rows=rows)


@bp.get("/executions/<execution_id>")
@login_required
def show(execution_id: str):
    execution = executions.get_owned(current_user.id, execution_id)  # another user's: 404
    state = ws.execution_state(execution, ws.planned_nodes(execution))
    return render_template("executions/show.html", **state)
