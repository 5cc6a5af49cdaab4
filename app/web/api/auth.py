from __future__ import annotations

from flask import current_app, g, jsonify

from app.extensions import limiter
from app.models import isoformat
from app.services import accounts, tokens
from app.web.api import bp
from app.web.api import contract as c
from app.web.api.contract import json_object, operation
from app.web.api.guard import string_field
from app.web.security import client_addr


def _login_limit() -> str:
    return current_app.config["SETTINGS"].login_rate_limit


def _register_limit() -> str:
    return current_app.config["SETTINGS"].register_rate_limit


def _failed(response) -> bool:
    return response.status_code >= 400


@bp.post("/auth/register")
@operation("Create an account and get a token", tag="auth", body=c.RegisterIn,
           responses={201: c.Registered}, errors=(400, 409, 429), public=True)
@limiter.limit(_register_limit, deduct_when=_failed)
def register():
    body = json_object()
    user = accounts.register(string_field(body, "email"), string_field(body, "password"),
                             client_addr=client_addr())
    token, _expires = tokens.issue(user.id)
    return jsonify(user={"id": str(user.id), "email": user.email}, token=token), 201


@bp.post("/auth/token")
@operation("Exchange email and password for a bearer token", tag="auth", body=c.RegisterIn,
           responses={200: c.TokenOut}, errors=(400, 401, 429), public=True)
@limiter.limit(_login_limit, deduct_when=_failed)
def token():
    body = json_object()
    user = accounts.authenticate(string_field(body, "email"), string_field(body, "password"),
                                 client_addr=client_addr(), via="api")
    token, expires_at = tokens.issue(user.id)
    return jsonify(token=token, expires_at=isoformat(expires_at))


@bp.post("/auth/logout")
@operation("Revoke this token", tag="auth", responses={204: None})
def logout():
    accounts.logout(g.user, token_id=g.token_id, client_addr=client_addr())
    return "", 204


@bp.get("/me")
@operation("The signed-in user", tag="auth", responses={200: c.UserOut})
def me():
    return jsonify(id=str(g.user.id), email=g.user.email)
