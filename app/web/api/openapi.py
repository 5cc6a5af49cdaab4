"""``GET /api/v1/openapi.json``: the OpenAPI 3.1 document, built from the URL map and each
handler's ``@operation`` (app/web/api/contract.py) — never a hand-kept copy."""

from __future__ import annotations

import re

from flask import Flask, current_app, jsonify
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app.services import idempotency
from app.web.api import bp
from app.web.api.contract import ERROR_MEANINGS, OPERATIONS, Body, Error, Operation, Query

# Every authenticated operation: bad query/body, token, limit, and the database or Redis down.
COMMON_ERRORS = (400, 401, 429, 503)
REF = "#/components/schemas/{model}"


class Undocumented(RuntimeError):
    """A /api/v1 route has no ``@operation``: the document would not match the API."""


@bp.get("/openapi.json")
def openapi_document():
    return jsonify(document(current_app._get_current_object()))


def document(app: Flask) -> dict:
    """Built on first use and kept: routes do not change while the app runs."""
    if "jobsprint.openapi" not in app.extensions:
        rules = sorted(
            (rule.rule, sorted(rule.methods - {"HEAD", "OPTIONS"}), rule.endpoint)
            for rule in app.url_map.iter_rules() if rule.endpoint.startswith("api."))
        app.extensions["jobsprint.openapi"] = _build(app.config["SETTINGS"].base_url, rules)
    return app.extensions["jobsprint.openapi"]


def _build(base_url: str, rules: list) -> dict:
    models: set[type[BaseModel]] = {Error}
    for _rule, _methods, endpoint in rules:
        if endpoint == "api.openapi_document":
            continue
        spec = OPERATIONS.get(endpoint)
        if spec is None:
            raise Undocumented(f"{endpoint} has no @operation")
        models.update(m for m in spec.responses.values() if m is not None)
        if spec.body is not None:
            models.add(spec.body)
    ordered = sorted(models, key=lambda m: m.__name__)
    refs, schemas = models_json_schema(
        [(m, "validation" if issubclass(m, Body) else "serialization") for m in ordered],
        ref_template=REF)
    ref_of = {model: refs[(model, mode)] for (model, mode) in refs}

    paths: dict[str, dict] = {}
    for path, methods, endpoint in rules:
        if endpoint == "api.openapi_document":
            continue
        spec = OPERATIONS[endpoint]
        openapi_path, parameters = _path(path)
        for method in methods:
            paths.setdefault(openapi_path, {})[method.lower()] = _operation(
                spec, endpoint, parameters, ref_of)
    paths["/api/v1/openapi.json"] = {"get": {
        "operationId": "openapi_document", "summary": "This document", "tags": ["meta"],
        "security": [],
        "responses": {"200": {"description": "OpenAPI 3.1",
                              "content": {"application/json": {"schema": {"type": "object"}}}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Jobsprint API", "version": "1",
                 "description": "Workflows, runs, credentials and webhooks. Authenticate with "
                                "`Authorization: Bearer <token>` from POST /api/v1/auth/token."},
        "servers": [{"url": base_url}],
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "bearerFormat": "JWT"}},
        },
        "security": [{"bearer": []}],
    }


_PARAM = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def _path(rule: str) -> tuple[str, list[dict]]:
    names = _PARAM.findall(rule)
    parameters = [{"name": name, "in": "path", "required": True,
                   "schema": {"type": "string", "format": "uuid"}} for name in names]
    return _PARAM.sub(r"{\1}", rule), parameters


def _operation(spec: Operation, endpoint: str, path_parameters: list[dict],
               ref_of: dict) -> dict:
    parameters = list(path_parameters)
    if spec.query is not None:
        parameters.extend(_query_parameters(spec.query))
    parameters.extend({"name": name, "in": "header", "required": False,
                       "schema": {"type": "string", "minLength": 1,
                                  "maxLength": idempotency.MAX_CLIENT_KEY},
                       "description": text} for name, text in spec.headers.items())
    statuses = set(spec.errors) | (set() if spec.public else set(COMMON_ERRORS))
    if path_parameters:
        statuses.add(404)
    if spec.body is not None:
        statuses |= {400, 413}
    responses: dict[str, dict] = {}
    for status, model in sorted(spec.responses.items()):
        responses[str(status)] = ({"description": "No content"} if model is None else
                                  {"description": model.__doc__.strip().splitlines()[0]
                                   if model.__doc__ and model.__module__ != "pydantic.main"
                                   else "OK",
                                   "content": {"application/json": {"schema": ref_of[model]}}})
    for status in sorted(statuses):
        responses[str(status)] = {"description": ERROR_MEANINGS[status],
                                  "content": {"application/json": {"schema": ref_of[Error]}}}
    body = {}
    if spec.body is not None:
        body = {"requestBody": {"required": spec.body_required, "content": {
            "application/json": {"schema": ref_of[spec.body]}}}}
    return {"operationId": endpoint.removeprefix("api."), "summary": spec.summary,
            "tags": [spec.tag], **({"security": []} if spec.public else {}),
            **({"parameters": parameters} if parameters else {}), **body,
            "responses": responses}


def _query_parameters(model: type[Query]) -> list[dict]:
    schema = model.model_json_schema(ref_template=REF)
    found = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        prop.pop("title", None)
        prop.pop("default", None)
        description = prop.pop("description", None)
        # ``X | None`` is an anyOf with null; a query string has no null, only absence.
        options = [o for o in prop.pop("anyOf", []) if o.get("type") != "null"]
        if options:
            prop.update(options[0] if len(options) == 1 else {"anyOf": options})
        found.append({"name": name, "in": "query", "required": False, "schema": prop,
                      **({"description": description} if description else {})})
    return found
