"""Credentials: create, list (never a secret), test, delete."""

from __future__ import annotations

from flask import current_app, g, jsonify

from app.engine import NodeError
from app.errors import Problem, ValidationFailed
from app.services import credentials
from app.web.api import bp
from app.web.api import contract as c
from app.web.api.contract import json_object, operation


@bp.get("/credentials")
@operation("List your credentials (never a secret)", tag="credentials",
           responses={200: c.CredentialList})
def list_credentials():
    return jsonify(items=[credentials.as_api(c) for c in credentials.list_for(g.user)])


@bp.post("/credentials")
@operation("Store a credential (its secret is write-only)", tag="credentials",
           body=c.CredentialIn, responses={201: c.CredentialOut})
def create_credential():
    return jsonify(credentials.as_api(credentials.create(g.user, json_object()))), 201


@bp.get("/credentials/<credential_id>")
@operation("One credential (never its secret)", tag="credentials",
           responses={200: c.CredentialOut})
def get_credential(credential_id: str):
    return jsonify(credentials.as_api(credentials.get_owned(g.user.id, credential_id)))


@bp.delete("/credentials/<credential_id>")
@operation("Delete a credential", tag="credentials", responses={204: None})
def delete_credential(credential_id: str):
    credentials.delete(g.user, credential_id)
    return "", 204


@bp.post("/credentials/<credential_id>/test")
@operation("Test a credential against a URL", tag="credentials", body=c.CredentialTestIn,
           responses={200: c.CredentialTestOut})
def test_credential(credential_id: str):
    """GET ``url`` with the credential (through the SSRF guard): does the service accept it?"""
    body = json_object()
    url = body.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValidationFailed("the test needs a URL", [Problem("url", "must be http(s)://…")])
    credentials.get_owned(g.user.id, credential_id)
    port = credentials.HttpWithCredentials(current_app.extensions["jobsprint.http_port"],
                                           g.user.id)
    try:
        answer = port.request(method="GET", url=url, query={}, headers={}, body_type="none",
                              json=None, form={}, raw=None, timeout_s=10,
                              follow_redirects=False, max_response_bytes=65536,
                              idempotency_key=f"credential-test:{credential_id}",
                              credential_id=credential_id, deadline=None)
    except NodeError as exc:
        return jsonify(ok=False, error=str(exc))
    return jsonify(ok=answer["status"] < 400, status=answer["status"])
