"""App nodes: each a small declarative mapping onto the HTTP port (no HTTP code of their own).

An ``AppAction`` names the request (method, a path template filled with URL-quoted params, the
body and query built from the params, extra headers) and how the answer becomes the node's
output; ``node_type`` turns it into a node type whose settings are the action's fields plus
the app's base URL (an API's own address by default: GitHub Enterprise or a proxy can change
it). Authentication is the node's credential (a bearer token, or the OAuth connection once
that lands), applied by the port like any HTTP request's, through the same SSRF guard.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from app.engine.nodes.base import NodeContext, NodeError, NodeOutput, NodeType, port_unavailable
from app.engine.nodes.http import check_url

Params = dict[str, Any]


@dataclass(frozen=True)
class AppAction:
    name: str
    label: str
    description: str
    base_url: str
    method: str
    path: str  # str.format template over the params, each value URL-quoted
    fields: dict[str, dict]  # JSON Schema properties of the params
    required: tuple[str, ...]
    body: Callable[[Params], Any]
    output: Callable[[Any], Any]
    query: Callable[[Params], dict] = lambda _params: {}
    headers: dict[str, str] = field(default_factory=dict)
    failed: Callable[[int, Any], str | None] = lambda status, body: None  # an error in a 200
    path_safe: str = ""


def _error_message(body: Any) -> str:
    if isinstance(body, dict):
        for key in ("message", "error", "error_description"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message")
            if value:
                return str(value)[:300]
    return ""


def node_type(action: AppAction) -> NodeType:
    def run(ctx: NodeContext) -> NodeOutput:
        if ctx.ports.http is None:
            raise port_unavailable(action.name)
        params = ctx.params
        try:
            path = action.path.format(**{
                k: quote(str(v), safe=action.path_safe) for k, v in params.items()})
        except KeyError as exc:
            raise NodeError(f"{action.name}: {exc.args[0]} is required") from None
        answer = ctx.ports.http.request(
            method=action.method, url=params["base_url"].rstrip("/") + path,
            query=action.query(params), headers=dict(action.headers), body_type="json",
            json=action.body(params), form={}, raw=None, timeout_s=30, follow_redirects=False,
            max_response_bytes=5_000_000, idempotency_key=ctx.idempotency_key,
            credential_id=ctx.credential_id, deadline=ctx.deadline)
        status, body = answer["status"], answer.get("body")
        problem = action.failed(status, body) if status < 400 else None
        if status >= 400 or problem:
            detail = problem or _error_message(body) or "no message"
            raise NodeError(f"{action.label}: the API answered {status}: {detail}")
        return NodeOutput(action.output(body))

    schema = {"type": "object", "additionalProperties": False,
              "required": ["base_url", *action.required],
              "properties": {**action.fields, "base_url": {
                  "type": "string", "title": "API base URL", "default": action.base_url,
                  "minLength": 1, "maxLength": 2048,
                  "description": "Change it for GitHub Enterprise, a proxy or a test server."}}}
    return NodeType(name=action.name, group="Apps", label=action.label,
                    description=action.description, params_schema=schema, run=run,
                    check_params=lambda params: check_url(params, "base_url"))


def _text(title: str, description: str = "", *, expression: bool = True, **more) -> dict:
    spec = {"type": "string", "title": title, "minLength": 1, **more}
    if description:
        spec["description"] = description
    if expression:
        spec["format"] = "expression"
    return spec


GITHUB_CREATE_ISSUE = AppAction(
    name="integration.github.create_issue", label="GitHub: create issue",
    description="Opens an issue in a repository; outputs {number, url, id}. Credential: a "
                "bearer token (a GitHub token with issues: write).",
    base_url="https://api.github.com", method="POST", path="/repos/{owner}/{repo}/issues",
    fields={"owner": _text("Owner", "The user or organisation.", maxLength=100),
            "repo": _text("Repository", maxLength=100),
            "title": _text("Title", maxLength=1000),
            "body": {"type": "string", "title": "Body", "format": "textarea", "default": ""},
            "labels": {"type": "array", "items": {"type": "string"}, "default": [],
                       "title": "Labels", "format": "json"}},
    required=("owner", "repo", "title"),
    headers={"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"},
    body=lambda p: {"title": p["title"], "body": p.get("body", ""),
                    "labels": p.get("labels") or []},
    output=lambda b: {"number": b.get("number"), "url": b.get("html_url"), "id": b.get("id")})

SLACK_POST_MESSAGE = AppAction(
    name="integration.slack.post_message", label="Slack: post message",
    description="Posts a message to a channel; outputs {channel, ts}. Credential: a bearer "
                "token (a bot token with chat:write).",
    base_url="https://slack.com", method="POST", path="/api/chat.postMessage",
    fields={"channel": _text("Channel", "A channel id (C…) or #name.", maxLength=200),
            "text": {"type": "string", "title": "Text", "format": "textarea", "minLength": 1}},
    required=("channel", "text"),
    body=lambda p: {"channel": p["channel"], "text": p["text"]},
    # Slack answers 200 with {"ok": false, "error": "channel_not_found"} when it refuses
    failed=lambda status, b: None if isinstance(b, dict) and b.get("ok") else
    (_error_message(b) or "not ok"),
    output=lambda b: {"channel": b.get("channel"), "ts": b.get("ts")})

SHEETS_APPEND_ROW = AppAction(
    name="integration.google_sheets.append_row", label="Google Sheets: append row",
    description="Appends one row to a sheet; outputs {updated_range, updated_rows}. "
                "Credential: a bearer token (an OAuth access token with the spreadsheets "
                "scope).",
    base_url="https://sheets.googleapis.com", method="POST",
    path="/v4/spreadsheets/{spreadsheet_id}/values/{range}:append", path_safe="!:",
    fields={"spreadsheet_id": _text("Spreadsheet id", "The id in the sheet's URL.",
                                    maxLength=200),
            "range": _text("Range", "Where the table is, e.g. Sheet1!A1.", maxLength=200,
                           default="Sheet1!A1"),
            "values": {"type": "array", "title": "Row values", "format": "json",
                       "minItems": 1, "maxItems": 1000,
                       "description": "One value per column; each may be an expression."}},
    required=("spreadsheet_id", "range", "values"),
    query=lambda _p: {"valueInputOption": "USER_ENTERED", "insertDataOption": "INSERT_ROWS"},
    body=lambda p: {"values": [p["values"]]},
    output=lambda b: {"updated_range": (b.get("updates") or {}).get("updatedRange"),
                      "updated_rows": (b.get("updates") or {}).get("updatedRows")})

NODE_TYPES = tuple(node_type(a) for a in (GITHUB_CREATE_ISSUE, SLACK_POST_MESSAGE,
                                          SHEETS_APPEND_ROW))
