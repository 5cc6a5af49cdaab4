"""The runs pages: the live dashboard and one run, live (fed by ``app.live.ws``)."""

from flask import Blueprint

bp = Blueprint("executions", __name__)

from app.web.executions import routes  # noqa: E402,F401  (routes attach to bp)
