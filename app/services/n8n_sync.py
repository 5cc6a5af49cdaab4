"""Keeping a copy of each workflow in n8n (seed flow 2), when ``N8N_API_URL`` and
``N8N_API_KEY`` are set: saving a workflow creates or updates it through n8n's public REST API
(``POST /api/v1/workflows``, ``PUT /api/v1/workflows/<id>``, header ``X-N8N-API-KEY``) inside
the save's transaction, and a refusal or an outage there rolls the Jobsprint save back with
n8n's own message. Deleting a workflow deletes its copy the same way (a copy n8n no longer has
is already gone). The URL is the operator's (n8n often runs next to Jobsprint on a private
address), so it is not subject to the SSRF guard that user-supplied URLs are.
"""

from __future__ import annotations

import logging

import requests
from flask import current_app

from app.errors import UpstreamFailed
from app.models import Workflow
from app.services import n8n_interop

log = logging.getLogger(__name__)
TIMEOUT_S = 10


def enabled() -> bool:
    settings = current_app.config["SETTINGS"]
    return bool(settings.n8n_api_url and settings.n8n_api_key)


def push(workflow: Workflow) -> None:
    """Create or update the workflow's copy in n8n; records n8n's id on the workflow (the
    caller commits). Raises ``UpstreamFailed`` with n8n's message."""
    if not enabled():
        return
    settings = current_app.config["SETTINGS"]
    document = n8n_interop.to_n8n({"name": workflow.name, **(workflow.definition or {})})
    body = {key: document[key] for key in ("name", "nodes", "connections", "settings")}
    headers = {"X-N8N-API-KEY": settings.n8n_api_key, "Accept": "application/json"}
    base = f"{settings.n8n_api_url}/api/v1/workflows"
    try:
        answer = None
        if workflow.n8n_id:
            answer = requests.put(f"{base}/{workflow.n8n_id}", json=body, headers=headers,
                                  timeout=TIMEOUT_S)
        if answer is None or answer.status_code == 404:  # no copy yet, or it was deleted
            answer = requests.post(base, json=body, headers=headers, timeout=TIMEOUT_S)
    except requests.RequestException as exc:
        log.warning("n8n unreachable while saving workflow %s: %s", workflow.id,
                    type(exc).__name__)
        raise UpstreamFailed("n8n could not be reached; the workflow was not saved") from None
    if answer.status_code >= 400:
        raise UpstreamFailed(f"n8n refused the workflow ({answer.status_code}"
                             f"{_message(answer)}); it was not saved")
    try:
        workflow.n8n_id = str(answer.json()["id"])[:64]
    except (ValueError, KeyError, TypeError):
        raise UpstreamFailed("n8n answered without a workflow id; the workflow was not "
                             "saved") from None


def remove(workflow: Workflow) -> None:
    """Delete the workflow's copy in n8n (the caller then commits its own delete). Raises
    ``UpstreamFailed`` when n8n refuses or is down, so nothing is deleted on either side."""
    if not enabled() or not workflow.n8n_id:
        return
    settings = current_app.config["SETTINGS"]
    headers = {"X-N8N-API-KEY": settings.n8n_api_key, "Accept": "application/json"}
    try:
        answer = requests.delete(f"{settings.n8n_api_url}/api/v1/workflows/{workflow.n8n_id}",
                                 headers=headers, timeout=TIMEOUT_S)
    except requests.RequestException as exc:
        log.warning("n8n unreachable while deleting workflow %s: %s", workflow.id,
                    type(exc).__name__)
        raise UpstreamFailed("n8n could not be reached; the workflow was not deleted") from None
    if answer.status_code >= 400 and answer.status_code != 404:
        raise UpstreamFailed(f"n8n refused to delete its copy ({answer.status_code}"
                             f"{_message(answer)}); the workflow was not deleted")


def _message(answer: requests.Response) -> str:
    try:
        message = str(answer.json().get("message") or "")[:500]
    except (ValueError, AttributeError):
        message = ""
    return f": {message}" if message else ""
