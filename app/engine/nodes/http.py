"""http.request: call any REST API through the injected HTTP port (the engine does no I/O)."""

from __future__ import annotations

import json

from app.engine.expressions import is_template
from app.engine.nodes.base import (
    NodeContext,
    NodeError,
    NodeOutput,
    NodeType,
    ParamProblems,
    port_unavailable,
)

_STRING_MAP = {"type": "object", "x-kind": "keyvalue", "default": {},
               "additionalProperties": {"type": "string"}}


def run_request(ctx: NodeContext) -> NodeOutput:
    """Sends the request. A ``json`` body given as text (``{{ input | tojson }}``) is parsed,
    so the port always gets the JSON value to send."""
    if ctx.ports.http is None:
        raise port_unavailable("http.request")
    params = dict(ctx.params)
    if params["body_type"] == "json" and isinstance(params.get("json"), str):
        try:
            params["json"] = json.loads(params["json"])
        except ValueError as exc:
            raise NodeError(f"json: the body is not valid JSON ({exc})") from None
    params.setdefault("json", None)
    params.setdefault("raw", None)
    value = ctx.ports.http.request(**params, idempotency_key=ctx.idempotency_key,
                                   credential_id=ctx.credential_id, deadline=ctx.deadline)
    return NodeOutput(value)


def check_url(params: dict, name: str) -> ParamProblems:
    url = params[name]
    if not is_template(url) and not url.lower().startswith(("http://", "https://")):
        yield (name,), "must start with http:// or https://"


REQUEST = NodeType(
    name="http.request", group="HTTP", label="HTTP request",
    description="Calls a REST API and outputs {status, headers, body}. Private and loopback "
                "addresses are refused.",
    params_schema={
        "type": "object", "additionalProperties": False, "required": ["url"],
        "properties": {
            "method": {"enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
                       "default": "GET", "title": "Method"},
            "url": {"type": "string", "minLength": 1, "maxLength": 8192, "title": "URL",
                    "format": "expression", "description": "https://… ; may use expressions."},
            "query": {**_STRING_MAP, "title": "Query parameters"},
            "headers": {**_STRING_MAP, "title": "Headers",
                        "description": "Authentication comes from the credential."},
            "body_type": {"enum": ["json", "form", "raw", "none"], "default": "json",
                          "title": "Body",
                          "description": "How the body is sent; 'json' sends the json "
                                         "param when it is set."},
            "json": {"title": "JSON body", "format": "json",
                     "description": "Any JSON value, or {{ input | tojson }}."},
            "form": {**_STRING_MAP, "title": "Form fields"},
            "raw": {"type": "string", "title": "Raw body", "format": "textarea"},
            "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 300,
                          "default": 30, "title": "Timeout (s)"},
            "follow_redirects": {"type": "boolean", "default": True,
                                 "title": "Follow redirects"},
            "max_response_bytes": {"type": "integer", "minimum": 1, "maximum": 10_000_000,
                                   "default": 5_000_000, "title": "Max response size (bytes)"},
        }},
    run=run_request, check_params=lambda params: check_url(params, "url"))

NODE_TYPES = (REQUEST,)
