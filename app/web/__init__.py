"""Blueprints: pages (auth, workflows, settings) and the JSON API, plus what every response
shares (security headers, error pages)."""

from __future__ import annotations

from flask import Flask


def register_blueprints(app: Flask) -> None:
    from app.live import ws as live_ws
    from app.web import errors, security
    from app.web.api import bp as api_bp
    from app.web.auth import bp as auth_bp
    from app.web.executions import bp as executions_bp
    from app.web.hooks import bp as hooks_bp
    from app.web.ops import bp as ops_bp
    from app.web.settings import bp as settings_bp
    from app.web.workflows import bp as workflows_bp

    app.register_blueprint(auth_bp)
    app.register_blueprint(workflows_bp)
    app.register_blueprint(settings_bp)
    app.register_blueprint(executions_bp)
    live_ws.init_app(app)  # the WebSocket routes of the live pages
    app.register_blueprint(api_bp)
    app.register_blueprint(hooks_bp)
    app.register_blueprint(ops_bp)
    security.init_app(app)
    errors.init_app(app)
