"""The workflow list (and, later, the editor)."""

from flask import Blueprint

bp = Blueprint("workflows", __name__)

from app.web.workflows import routes  # noqa: E402,F401
