from __future__ import annotations

from flask import render_template
from flask_login import current_user, login_required
from sqlalchemy import select

from app.db import db
from app.models import Workflow
from app.web.workflows import bp


@bp.get("/workflows")
@login_required
def index():
    workflows = db.session.scalars(
        select(Workflow)
        .where(Workflow.user_id == current_user.id, Workflow.deleted_at.is_(None))
        .order_by(Workflow.updated_at.desc(), Workflow.id.desc())
        .limit(50)
    ).all()
    return render_template("workflows/list.html", workflows=workflows)
