"""The workflow list and the editor."""

from flask import Blueprint

bp = Blueprint("workflows", __name__)

from app.web.workflows import editor, routes  # noqa: E402,F401
