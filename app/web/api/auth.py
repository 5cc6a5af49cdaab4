from __future__ import annotations

from flask import current_app, g, jsonify

from app.extensions import limiter
from app.models import isoformat
from app.services import accounts, tokens
from app.web.api import bp
from app.web.api.guard import json_object, string_field
from app.web.security import client_addr


def _login_limit() -> str:
    return current_app.config["SETTINGS"].login_rate_limit


def _register_limit() -> str:
    return current_app.config["SETTINGS"].register_rate_limit


def _failed(response) -> bool:
    return response.status_code >= 400


@bp.post("/auth/register")
@limiter.limit(_register_limit, deduct_when=_failed)
def register():
    body = json_object()
    user = accounts.register(string_field(body, "email"), string_field(body, "password"),
                             client_addr=client_addr())
    token, _expires = tokens.issue(user.id)
    return jsonify(user={"id": str(user.id), "email": user.email}, token=token), 201


@bp.post("/auth/token")
@limiter.limit(_login_limit, deduct_when=_failed)
def token():
    body = json_object()
    user = accounts.authenticate(string_field(body, "email"), string_field(body, "password"),
                                 client_addr=client_addr(), via="api")
    token, expires_at = tokens.issue(user.id)
    return jsonify(token=token, expires_at=isoformat(expires_at))


@bp.post("/auth/logout")
def logout():
    accounts.logout(g.user, token_id=g.token_id, client_addr=client_addr())
    return "", 204


@bp.get("/me")
def me():
    return jsonify(id=str(g.user.id), email=g.user.email)
