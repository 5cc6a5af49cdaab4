"""A workflow's webhook, for its owner: the URL and secret to give the sender, and rotation."""

from __future__ import annotations

from flask import g, jsonify, request

from app.services import webhooks
from app.web.api import bp
from app.web.api import contract as c
from app.web.api.contract import json_object, operation


@bp.get("/workflows/<workflow_id>/webhook")
@operation("The webhook's URL and secret (owner only)", tag="webhooks", query=c.NodeQuery,
           responses={200: c.WebhookOut})
def get_webhook(workflow_id: str):
    return jsonify(webhooks.describe(g.user, workflow_id, request.args.get("node_id")))


@bp.post("/workflows/<workflow_id>/webhook/rotate-secret")
@operation("A new secret; the old one verifies until its grace ends", tag="webhooks",
           query=c.NodeQuery, body=c.RotateSecretIn, body_required=False,
           responses={200: c.WebhookOut})
def rotate_webhook_secret(workflow_id: str):
    body = json_object() if request.content_length else {}
    return jsonify(webhooks.rotate_secret(g.user, workflow_id, request.args.get("node_id"),
                                          secret=body.get("secret")))
