"""The /api/v1 contract, declared once beside each handler and used twice: to check the request
before the handler sees it, and to write ``/api/v1/openapi.json``.

A handler says what it takes and what it answers with ``@operation(...)``; the document is built
from Flask's URL map (paths, methods, path parameters) and these declarations, so a route without
a declaration fails the build of the document (and its test) instead of drifting out of it.
Request bodies and query parameters are validated strictly against the same pydantic models the
document shows (400 with a path per problem); the services still do the deep checks (a workflow
graph, a credential's fields) and answer 400 with their own paths.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import wraps
from typing import Any, Literal

from flask import request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.errors import Problem, ValidationFailed
from app.models.execution import RUN_STATES
from app.services.credentials import KINDS
from app.services.pagination import MAX_LIMIT
from app.services.storable import nul_paths

RunState = Literal[RUN_STATES]  # type: ignore[valid-type]
CredentialKind = Literal[KINDS]  # type: ignore[valid-type]
Id = Field(json_schema_extra={"format": "uuid"})


class Answer(BaseModel):
    """A response body: exactly these fields, so a field the code adds without declaring it
    breaks the contract test rather than slipping out undocumented."""

    model_config = ConfigDict(extra="forbid")


class Body(BaseModel):
    """A request body: fields of the wrong type are refused; unknown fields are ignored (an
    exported object can be posted back as it is)."""

    model_config = ConfigDict(extra="allow", strict=True)


# --- errors -------------------------------------------------------------------------------

class ErrorDetail(Answer):
    path: str
    message: str


class ErrorBody(Answer):
    code: str
    message: str
    details: list[ErrorDetail]


class Error(Answer):
    """Every error: a code, a message, and where (``details``: a path and a message each)."""

    error: ErrorBody


ERROR_MEANINGS = {
    400: "The request is invalid; `details` says where.",
    401: "Missing, invalid or expired bearer token (or wrong email or password).",
    404: "No such resource among yours (another user's id answers 404 too).",
    409: "The request conflicts with the resource's state.",
    413: "The body is over the size limit.",
    422: "The Idempotency-Key is invalid or was used with a different request.",
    429: "Rate limited; see the Retry-After header.",
    502: "A service Jobsprint must keep in step (n8n) refused or failed; nothing was saved.",
    503: "The database or Redis cannot be reached; see Retry-After.",
}


# --- shared shapes ------------------------------------------------------------------------

class UserOut(Answer):
    id: str = Id
    email: str


class NodeIn(Body):
    id: str = Field(min_length=1, max_length=64)
    type: str = Field(description="A node type from the registry, e.g. logic.set")
    name: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    credential_id: str | None = None
    position: list[float] | None = Field(default=None, min_length=2, max_length=2)
    retry: dict[str, Any] | None = None
    on_error: Literal["stop", "continue", "error_output"] | None = None
    timeout_s: float | None = None


class ConnectionIn(Body):
    from_: str = Field(alias="from")
    to: str
    output: str | None = None


class WorkflowIn(Body):
    """A workflow definition (DESIGN.md's format). The engine checks the graph: node types,
    params against each type's JSON Schema, connections, cycles, triggers."""

    name: str = Field(min_length=1, max_length=200)
    nodes: list[NodeIn] = Field(default_factory=list)
    connections: list[ConnectionIn] = Field(default_factory=list)
    settings: dict[str, Any] = Field(default_factory=dict)
    version: int | None = Field(default=None, description="On update: the version you edited; "
                                "another answers 409.")


class WorkflowOut(Answer):
    id: str = Id
    name: str
    version: int
    active: bool
    nodes: list[dict[str, Any]]
    connections: list[dict[str, Any]]
    settings: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class WorkflowPage(Answer):
    items: list[WorkflowOut]
    next_cursor: str | None


class VersionOut(Answer):
    version: int
    name: str
    created_by: str | None
    created_at: datetime


class VersionPage(Answer):
    items: list[VersionOut]
    next_cursor: None


class WebhookOut(Answer):
    url: str
    secret: str = Field(description="Shown to the owner only; signs deliveries.")
    scheme: Literal["jobsprint", "stripe", "github", "slack", "none"]
    node_id: str
    signature_header: str | None
    previous_secret_expires_at: datetime | None
    warning: str | None


class RotateSecretIn(Body):
    secret: str | None = Field(default=None, min_length=16, max_length=256,
                               description="A secret the provider issued; generated if absent.")


class RunIn(Body):
    input: Any = Field(default=None, description="The manual trigger's output.")


class RunAccepted(Answer):
    execution_id: str = Id
    status: RunState


class TriggerOut(Answer):
    type: str | None
    node_id: str | None
    event_id: str | None


class ExecutionNodeOut(Answer):
    node_id: str
    status: str
    attempts: int
    output: Any
    error: Any
    started_at: datetime | None
    finished_at: datetime | None


class ExecutionSummary(Answer):
    id: str = Id
    workflow_id: str = Id
    workflow_version: int
    trigger: TriggerOut
    status: RunState
    result: Any
    error: Any
    retry_of: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ExecutionOut(ExecutionSummary):
    nodes: list[ExecutionNodeOut]


class ExecutionPage(Answer):
    items: list[ExecutionSummary]
    next_cursor: str | None


class CredentialIn(Body):
    name: str = Field(min_length=1, max_length=200)
    kind: CredentialKind
    secret: dict[str, Any] = Field(description="api_key: {key, in: header|query, name}; "
                                   "basic: {username, password}; bearer: {token}. Write-only.")


class CredentialOut(Answer):
    id: str = Id
    name: str
    kind: str
    meta: dict[str, Any]
    created_at: datetime
    last_used_at: datetime | None


class CredentialList(Answer):
    items: list[CredentialOut]


class CredentialTestIn(Body):
    url: str = Field(pattern=r"^https?://", description="GET with the credential applied.")


class CredentialTestOut(Answer):
    ok: bool
    status: int | None = None
    error: str | None = None


class PromptTemplateIn(Body):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[^@]*$")
    prompt: str = Field(min_length=1)
    system: str | None = None


class PromptTemplateOut(Answer):
    name: str
    version: int
    system: str | None
    prompt: str
    created_at: datetime


class PromptTemplateList(Answer):
    items: list[PromptTemplateOut]


class RegisterIn(Body):
    email: str = Field(min_length=3, max_length=254)
    password: str = Field(min_length=1, max_length=1024)


class Registered(Answer):
    user: UserOut
    token: str


class TokenOut(Answer):
    token: str
    expires_at: datetime


# --- query parameters ---------------------------------------------------------------------

class Query(BaseModel):
    """Query parameters: an unknown one is refused (``?statu=failed`` would otherwise quietly
    list everything)."""

    model_config = ConfigDict(extra="forbid")


class PageQuery(Query):
    cursor: str | None = Field(default=None, description="next_cursor of the previous page")
    limit: int | None = Field(default=None, ge=1, le=MAX_LIMIT)


class WorkflowQuery(PageQuery):
    q: str | None = Field(default=None, description="Part of the name")


class ExecutionQuery(PageQuery):
    workflow_id: uuid.UUID | None = None
    status: RunState | None = None


class NodeQuery(Query):
    node_id: str | None = Field(default=None, description="Which trigger.webhook node, when "
                                "the workflow has several")


# --- the declaration ----------------------------------------------------------------------

@dataclass(frozen=True)
class Operation:
    summary: str
    tag: str
    responses: dict[int, type[BaseModel] | None]
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: type[Query] | None = None
    errors: tuple[int, ...] = ()
    public: bool = False
    headers: dict[str, str] = field(default_factory=dict)


OPERATIONS: dict[str, Operation] = {}


def operation(summary: str, *, tag: str, responses: dict[int, type[BaseModel] | None],
              body: type[BaseModel] | None = None, body_required: bool = True,
              query: type[Query] | None = None, errors: tuple[int, ...] = (),
              public: bool = False, headers: dict[str, str] | None = None) -> Callable:
    """Declare a /api/v1 handler's contract and check its request against it."""
    spec = Operation(summary, tag, responses, body, body_required, query, errors, public,
                     headers or {})

    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def checked(*args, **kwargs):
            if spec.query is not None:
                _check(spec.query, request.args.to_dict(), "the query is invalid", strict=False)
            if spec.body is not None and (spec.body_required or request.content_length):
                _check(spec.body, json_object(), "the body is invalid", strict=True)
            return view(*args, **kwargs)

        OPERATIONS[f"api.{view.__name__}"] = spec
        return checked

    return decorate


def json_object() -> dict:
    """The request body as a JSON object, or a 400 that says what is wrong (parsed once per
    request: Flask keeps it, so the handler reading it again after the check costs nothing)."""
    if not request.is_json:
        raise ValidationFailed("the body must be JSON (Content-Type: application/json)",
                               [Problem("body", "send Content-Type: application/json")])
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ValidationFailed("the body must be a JSON object",
                               [Problem("body", "must be a JSON object")])
    return body


def _check(model: type[BaseModel], data: dict, message: str, *, strict: bool) -> None:
    if nul := nul_paths(data):
        raise ValidationFailed(message, [Problem(path, "must not contain NUL characters")
                                         for path in nul])
    try:
        model.model_validate(data, strict=strict, by_alias=True)
    except ValidationError as exc:
        raise ValidationFailed(message, [
            Problem(".".join(str(part) for part in error["loc"]) or "body", error["msg"])
            for error in exc.errors(include_url=False)]) from None
