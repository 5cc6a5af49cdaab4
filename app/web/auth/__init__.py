"""Sign-up, sign-in and sign-out pages, and the browser session behind them."""

from flask import Blueprint

bp = Blueprint("auth", __name__)

from app.web.auth import routes  # noqa: E402,F401  (routes attach to bp)
