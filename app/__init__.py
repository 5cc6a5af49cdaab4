"""Jobsprint: the application factory.

Importing ``app`` (or ``app.engine``) imports no web framework: Flask and the services load
inside ``create_app`` only, so the engine stays pure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from app.config import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the web application from ``settings`` (default: read from the environment)."""
    from flask import Flask

    from app import logs, store
    from app.config import PROJECT_ROOT, load_settings
    from app.db import db
    from app.extensions import csrf, htmx, limiter, login_manager, sock
    from app.migrate import upgrade_if_embedded

    settings = settings or load_settings()
    app = Flask(
        __name__,
        instance_path=str(settings.instance_path),
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static"),
    )
    app.config.update(
        SETTINGS=settings,
        SECRET_KEY=settings.secret_key,
        TESTING=settings.testing,
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        PERMANENT_SESSION_LIFETIME=settings.session_ttl_s,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the (server-side) session
        RATELIMIT_STORAGE_URI=settings.rate_limit_storage_url,
        RATELIMIT_HEADERS_ENABLED=True,
        JSON_SORT_KEYS=False,
    )
    logs.configure(settings.log_level, settings.log_format)

    db.configure(settings.database_url)
    upgrade_if_embedded(settings)
    app.teardown_appcontext(db.remove)
    app.extensions["jobsprint.store"] = store.connect(settings.redis_url)

    login_manager.init_app(app)
    csrf.init_app(app)
    sock.init_app(app)
    htmx.init_app(app)
    limiter.init_app(app)

    from app.queue import open_queue
    from app.web import register_blueprints

    register_blueprints(app)
    from app.web.hooks import FastPath

    # Outermost first: the request's id, then deliveries to /hooks (outside Flask), then Flask.
    app.wsgi_app = logs.RequestIds(FastPath(app, app.wsgi_app))
    from app import cli

    cli.init_app(app)
    app.extensions["jobsprint.queue"] = open_queue(
        settings.queue_url, **({"queue_name": settings.queue_name} if settings.queue_url else {}))
    from app.services.http_port import RequestsHttpPort

    # The ports the engine's nodes use in this process's runs (a worker, or the embedded app).
    app.extensions["jobsprint.http_port"] = RequestsHttpPort.from_settings(settings)
    if settings.inline_workers:
        from app.workers import start_in_process

        app.extensions["jobsprint.stop"] = start_in_process(app)
    return app
