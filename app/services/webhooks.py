"""Signed webhooks: each trigger.webhook node of a workflow owns a URL ``/hooks/<token>`` and a
secret; a delivery that proves it knows the secret starts the workflow.

- ``sync`` (a trigger syncer) gives a webhook node its Webhook + WebhookLink the first time the
  workflow is saved, keeps them (and so the URL) across edits and (de)activation, and removes
  them with the node or the workflow. ``auth: none`` is refused unless the server allows
  unsigned webhooks.
- ``lookup`` reads a webhook's configuration through the cache ``webhook:{token}``: sealed
  secrets only (the vault's ciphertext), never a plain secret.
- ``receive`` verifies the signature (constant time, 300 s tolerance, the previous secret too
  while a rotation's grace lasts), parses and checks the body, and ``accept`` records one
  trigger event and one run per active linked workflow in one transaction, then publishes the
  runs. A delivery seen before (same webhook + dedupe key) answers with its first event and
  starts nothing: the unique (webhook_id, dedupe_key) of trigger_events decides, so two
  identical deliveries racing each other still make one event.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import redis
from flask import current_app
from sqlalchemy import bindparam, event, select
from sqlalchemy.orm import Session

from app.db import db
from app.engine.nodes.trigger import trigger_payload_schema_errors
from app.errors import NotFound, Problem, Unauthorized, ValidationFailed
from app.models import (
    Execution,
    TriggerEvent,
    User,
    Webhook,
    WebhookLink,
    Workflow,
    isoformat,
    utcnow,
)
from app.services import arrival, audit, cache, intake, vault, workflows
from app.services.intake import counter_key  # noqa: F401 - part of this module's API
from app.services.storable import nul_paths

log = logging.getLogger(__name__)

NODE_TYPE = "trigger.webhook"
TOLERANCE_S = 300
RECENT_S = 1.0  # how long a process uses a webhook's config again without asking Redis
RECENT_MAX = 10_000  # configs remembered per process (then it starts afresh)
SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix that secret scanners recognise
# Request headers a run may see; never signatures, cookies or credentials.
ALLOWED_HEADERS = ("content-type", "user-agent", "x-request-id", "x-github-event",
                   "x-github-delivery", "x-github-hook-id", "x-slack-retry-num",
                   "x-slack-retry-reason")
UNSIGNED_WARNING = ("This webhook accepts unsigned requests: anyone who knows its URL can "
                    "start the workflow.")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_DIGITS = re.compile(r"[0-9]{1,12}")
_DELIVERY_ID = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


def cache_key(token: str) -> str:
    return f"webhook:{token}"


def _settings():
    return current_app.config["SETTINGS"]


def _new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def _b64(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode()


def _unb64(value: str | None) -> bytes | None:
    return None if value is None else base64.b64decode(value)


# --- keeping webhooks in step with their workflow (a trigger syncer) ------------------------

def _webhook_nodes(workflow: Workflow) -> list[tuple[int, dict]]:
    if workflow.deleted_at is not None:
        return []
    nodes = (workflow.definition or {}).get("nodes", [])
    return [(i, n) for i, n in enumerate(nodes)
            if isinstance(n, dict) and n.get("type") == NODE_TYPE]


def _scheme(node: dict) -> str:
    return (node.get("params") or {}).get("auth", "jobsprint")


def sync(workflow: Workflow) -> None:
    """Create, update or remove the workflow's webhooks to match its definition (no commit).

    A node with ``auth: none`` is refused (400) unless unsigned webhooks are allowed, when it
    would newly become unsigned or the workflow is active; so a workflow saved under a laxer
    setting can still be deactivated or deleted, but not activated."""
    session = db.session
    nodes = _webhook_nodes(workflow)
    linked = {link.node_id: (link, hook) for link, hook in session.execute(
        select(WebhookLink, Webhook).join(Webhook, Webhook.id == WebhookLink.webhook_id)
        .where(WebhookLink.workflow_id == workflow.id))}
    if not _settings().allow_unsigned_webhooks:
        unsigned = [i for i, node in nodes if _scheme(node) == "none" and (
            workflow.active or node["id"] not in linked
            or linked[node["id"]][1].scheme != "none")]
        if unsigned:
            raise ValidationFailed(
                "unsigned webhooks are disabled on this server",
                [Problem(f"nodes[{i}].params.auth",
                         "'none' is not allowed (JOBSPRINT_ALLOW_UNSIGNED_WEBHOOKS is off); "
                         "choose a signature scheme") for i in unsigned])
    touched: set[str] = set()
    wanted = {node["id"]: node for _i, node in nodes}
    for node_id, node in wanted.items():
        if node_id in linked:
            hook = linked[node_id][1]
            if hook.scheme != _scheme(node):
                hook.scheme = _scheme(node)
            touched.add(hook.token)
        else:
            touched.add(_create(workflow, node_id, _scheme(node)).token)
    gone = [(link, hook) for node_id, (link, hook) in linked.items() if node_id not in wanted]
    for link, hook in gone:
        touched.add(hook.token)
        session.delete(link)
    if gone:
        session.flush()
        for _link, hook in gone:
            if not session.scalar(select(WebhookLink.node_id)
                                  .where(WebhookLink.webhook_id == hook.id).limit(1)):
                session.delete(hook)
                audit.record("webhook.delete", user_id=workflow.user_id, target_type="webhook",
                             target_id=hook.id, workflow_id=str(workflow.id))
    _forget_after_commit(touched)


def _create(workflow: Workflow, node_id: str, scheme: str) -> Webhook:
    hook_id = uuid.uuid4()
    sealed = vault.current().seal(_new_secret().encode(), record_id=hook_id,
                                  owner_id=workflow.user_id, label="secret")
    hook = Webhook(id=hook_id, user_id=workflow.user_id, token=secrets.token_urlsafe(32),
                   scheme=scheme, kek_id=sealed.kek_id, wrapped_key=sealed.wrapped_key,
                   secret_ct=sealed.ciphertext)
    db.session.add(hook)
    db.session.flush()
    db.session.add(WebhookLink(webhook_id=hook.id, workflow_id=workflow.id, node_id=node_id))
    audit.record("webhook.create", user_id=workflow.user_id, target_type="webhook",
                 target_id=hook.id, workflow_id=str(workflow.id), node_id=node_id,
                 scheme=scheme)
    return hook


_FORGET = "jobsprint.webhook_tokens_to_forget"


def _forget_after_commit(tokens: set[str]) -> None:
    """Drop the cached configs now and again once the transaction commits, so a reader that
    re-cached the old state in between does not keep it."""
    for token in tokens:
        forget_config(token)
    db.session().info.setdefault(_FORGET, set()).update(tokens)


@event.listens_for(Session, "after_commit")
def _forget_committed(session: Session) -> None:
    tokens = session.info.pop(_FORGET, None)
    for token in tokens or ():
        forget_config(token)


def forget_config(token: str) -> None:
    """Drop the cached config of ``token`` (Redis and this process)."""
    cache.forget(cache_key(token))
    _recent().pop(token, None)


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_FORGET, None)


# --- reading a webhook's configuration (cached) ----------------------------------------------

@dataclass(frozen=True)
class HookConfig:
    """What receiving needs, as cached: sealed secrets, never plain ones."""

    id: uuid.UUID
    user_id: uuid.UUID
    scheme: str
    kek_id: str
    wrapped_key: bytes = field(repr=False)
    secret_ct: bytes = field(repr=False)
    previous_ct: bytes | None = field(repr=False)
    previous_expires_at: float | None
    body_limit: int | None
    # active workflows only: {workflow_id, node_id, version, params}
    links: tuple[dict, ...]

    def secrets(self, now: float) -> list[bytes]:
        """The secrets that verify now: the current one, and the previous during its grace."""
        box = vault.current()
        found = [_opened(box, self.kek_id, self.wrapped_key, self.secret_ct, self.id,
                         self.user_id, "secret")]
        if self.previous_ct is not None and (self.previous_expires_at or 0) > now:
            found.append(_opened(box, self.kek_id, self.wrapped_key, self.previous_ct,
                                 self.id, self.user_id, "previous_secret"))
        return found

    @property
    def first_params(self) -> dict:
        return self.links[0]["params"] if self.links else {}


@lru_cache(maxsize=4096)
def _opened(box: vault.Vault, kek_id: str, wrapped_key: bytes, ciphertext: bytes,
            record_id: uuid.UUID, owner_id: uuid.UUID, label: str) -> bytes:
    """A webhook secret opened once per process, not on each delivery (two AES-GCM
    decryptions and their keys' setup: a twentieth of a web process under W2). Keyed by
    everything the opening depends on, so a rotated secret or key is opened anew."""
    return box.open(kek_id, wrapped_key, ciphertext, record_id=record_id, owner_id=owner_id,
                    label=label)


def _load_config(token: str) -> dict | None:
    hook = db.session.scalar(select(Webhook).where(Webhook.token == token))
    if hook is None:
        return None
    rows = db.session.execute(
        select(WebhookLink.workflow_id, WebhookLink.node_id, Workflow.version,
               Workflow.definition)
        .join(Workflow, Workflow.id == WebhookLink.workflow_id)
        .where(WebhookLink.webhook_id == hook.id, Workflow.active.is_(True),
               Workflow.deleted_at.is_(None))
        .order_by(WebhookLink.workflow_id, WebhookLink.node_id)).all()
    links = []
    for workflow_id, node_id, version, definition in rows:
        node = next((n for n in (definition or {}).get("nodes", [])
                     if n.get("id") == node_id), None)
        if node is not None:
            links.append({"workflow_id": str(workflow_id), "node_id": node_id,
                          "version": version, "params": node.get("params") or {}})
    expires = hook.previous_expires_at
    return {"id": str(hook.id), "user_id": str(hook.user_id), "scheme": hook.scheme,
            "kek_id": hook.kek_id, "wrapped_key": _b64(hook.wrapped_key),
            "secret_ct": _b64(hook.secret_ct), "previous_ct": _b64(hook.previous_secret_ct),
            "previous_expires_at": expires.timestamp() if expires else None,
            "body_limit": hook.body_limit, "links": links}


def _recent() -> dict[str, tuple[float, HookConfig]]:
    """This process's configs read in the last ``RECENT_S``: token → (read at, config)."""
    return current_app.extensions.setdefault("jobsprint.recent_hooks", {})


def lookup(token: str, *, fresh: bool = False) -> HookConfig:
    """The webhook behind ``token`` with at least one active workflow, else ``NotFound``.

    A config this process read in the last ``RECENT_S`` is used again without asking Redis
    (under load that is one round trip fewer per delivery); ``fresh`` asks anyway. A change
    made through another process is therefore seen here up to ``RECENT_S`` late, which
    costs nothing: a delivery for a workflow deactivated meanwhile starts no run (the intake
    reads which workflows are active when it stores), and a signature that fails against a
    recent config is checked again against a fresh one (see ``check_again``)."""
    if not token or len(token) > 64:
        raise NotFound("no webhook at this address")
    recent = _recent()
    now = time.monotonic()
    if not fresh and (hit := recent.get(token)) is not None and now - hit[0] < RECENT_S:
        return hit[1]
    entry = cache.get_or_load(cache_key(token), lambda: _load_config(token))
    if entry is None or not entry["links"]:
        recent.pop(token, None)
        raise NotFound("no webhook at this address")
    hook = _config(entry)
    if len(recent) >= RECENT_MAX:
        recent.clear()
    recent[token] = (now, hook)
    return hook


def check_again(token: str, hook: HookConfig) -> HookConfig | None:
    """After a signature failed: the fresh config if it differs from ``hook`` (its secret
    may have been rotated through another process a moment ago), else None."""
    newer = lookup(token, fresh=True)
    return None if newer == hook else newer


def _config(entry: dict) -> HookConfig:
    return HookConfig(
        id=uuid.UUID(entry["id"]), user_id=uuid.UUID(entry["user_id"]), scheme=entry["scheme"],
        kek_id=entry["kek_id"], wrapped_key=_unb64(entry["wrapped_key"]),
        secret_ct=_unb64(entry["secret_ct"]), previous_ct=_unb64(entry["previous_ct"]),
        previous_expires_at=entry["previous_expires_at"], body_limit=entry["body_limit"],
        links=tuple(entry["links"]))


def body_limit(hook: HookConfig | None = None) -> int:
    limit = _settings().webhook_body_limit
    if hook is not None and hook.body_limit:
        limit = min(limit, hook.body_limit)
    return limit


# --- signatures ------------------------------------------------------------------------------

def _hmac_hex(secret: bytes, message: bytes) -> str:
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def _matches(secrets_: list[bytes], message: bytes, candidates: list[str]) -> bool:
    found = False
    for secret in secrets_:
        expected = _hmac_hex(secret, message).encode()
        for candidate in candidates:
            # every comparison runs, so timing says nothing about which one matched
            found |= hmac.compare_digest(expected, candidate.lower().encode())
    return found


def _parse_pairs(header: str) -> dict[str, list[str]]:
    pairs: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            pairs.setdefault(key.strip(), []).append(value.strip())
    return pairs


def _check_time(header: str, raw: str, now: float, window: int = TOLERANCE_S) -> None:
    if abs(now - int(raw)) > window:
        raise Unauthorized(f"the {header} timestamp is more than {window} s from now")


def _timestamped(header: str, headers: Mapping, body: bytes, secrets_: list[bytes],
                 now: float) -> str:
    """``t=<unix seconds>,v1=<hex>[,v1=<hex>…]`` over ``<t>.<body>`` (Jobsprint, Stripe)."""
    raw = headers.get(header)
    if not raw:
        raise Unauthorized(f"missing {header} header")
    pairs = _parse_pairs(raw)
    stamps = pairs.get("t", [])
    candidates = [v for v in pairs.get("v1", []) if _HEX64.fullmatch(v)]
    if len(stamps) != 1 or not _DIGITS.fullmatch(stamps[0]) or not candidates:
        raise Unauthorized(f"malformed {header} header (expected t=<unix seconds>,v1=<hex>)")
    _check_time(header, stamps[0], now)
    message = stamps[0].encode() + b"." + body
    if not _matches(secrets_, message, candidates):
        raise Unauthorized(f"the {header} signature does not match")
    return "sha256:" + hashlib.sha256(message).hexdigest()


def _github(headers: Mapping, body: bytes, secrets_: list[bytes], now: float) -> str:
    header = "X-Hub-Signature-256"
    raw = headers.get(header)
    if not raw:
        raise Unauthorized(f"missing {header} header")
    prefix, _, digest = raw.strip().partition("=")
    if prefix != "sha256" or not _HEX64.fullmatch(digest):
        raise Unauthorized(f"malformed {header} header (expected sha256=<hex>)")
    if not _matches(secrets_, body, [digest]):
        raise Unauthorized(f"the {header} signature does not match")
    delivery = (headers.get("X-GitHub-Delivery") or "").strip()
    if _DELIVERY_ID.fullmatch(delivery):
        return "github:" + delivery
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _slack(headers: Mapping, body: bytes, secrets_: list[bytes], now: float) -> str:
    header, stamp_header = "X-Slack-Signature", "X-Slack-Request-Timestamp"
    raw, stamp = headers.get(header), (headers.get(stamp_header) or "").strip()
    if not raw:
        raise Unauthorized(f"missing {header} header")
    if not stamp:
        raise Unauthorized(f"missing {stamp_header} header")
    version, _, digest = raw.strip().partition("=")
    if version != "v0" or not _HEX64.fullmatch(digest):
        raise Unauthorized(f"malformed {header} header (expected v0=<hex>)")
    if not _DIGITS.fullmatch(stamp):
        raise Unauthorized(f"malformed {stamp_header} header (expected unix seconds)")
    _check_time(stamp_header, stamp, now)
    message = b"v0:" + stamp.encode() + b":" + body
    if not _matches(secrets_, message, [digest]):
        raise Unauthorized(f"the {header} signature does not match")
    return "sha256:" + hashlib.sha256(message).hexdigest()


def verify_signature(hook: HookConfig, headers: Mapping, body: bytes,
                     now: float | None = None) -> str:
    """Check the delivery's signature for the webhook's scheme; returns its dedupe key.

    Raises ``Unauthorized`` naming the header that failed, and nothing more."""
    now = time.time() if now is None else now
    if hook.scheme == "none":
        if not _settings().allow_unsigned_webhooks:
            raise Unauthorized("unsigned webhooks are disabled on this server")
        return "unsigned:" + uuid.uuid4().hex  # nothing to recognise a repeat by
    secrets_ = hook.secrets(now)
    if hook.scheme == "jobsprint":
        return _timestamped("X-Jobsprint-Signature", headers, body, secrets_, now)
    if hook.scheme == "stripe":
        return _timestamped("Stripe-Signature", headers, body, secrets_, now)
    if hook.scheme == "github":
        return _github(headers, body, secrets_, now)
    if hook.scheme == "slack":
        return _slack(headers, body, secrets_, now)
    raise Unauthorized(f"unknown signature scheme {hook.scheme!r}")


def sign(secret: str | bytes, body: bytes, timestamp: int | None = None) -> str:
    """The ``X-Jobsprint-Signature`` header value for ``body`` (for senders and tests)."""
    key = secret.encode() if isinstance(secret, str) else secret
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_hmac_hex(key, str(t).encode() + b'.' + body)}"


# --- receiving ------------------------------------------------------------------------------

def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def parse_body(body: bytes) -> Any:
    try:
        parsed = json.loads(body, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ValidationFailed("the body is not valid JSON", [
            Problem("body", f"{exc.msg} at line {exc.lineno} column {exc.colno}")]) from None
    except UnicodeDecodeError:
        message = "is not UTF-8 text"
    except ValueError as exc:  # NaN, Infinity
        message = str(exc)
    except RecursionError:
        message = "nests too deeply"
    else:
        if nul := nul_paths(parsed):
            raise ValidationFailed("the body holds NUL characters, which cannot be stored", [
                Problem(f"body.{path}" if path != "body" else path,
                        "must not contain NUL characters") for path in nul])
        return parsed
    raise ValidationFailed("the body is not valid JSON", [Problem("body", message)])


def payload_of(headers: Mapping, query: Mapping, parsed: Any, received_at: datetime) -> dict:
    """The trigger's output: allow-listed headers, the query, the body and when it came."""
    kept = {name: headers.get(name) for name in ALLOWED_HEADERS if headers.get(name)}
    args = {key: (values[0] if len(values) == 1 else values)
            for key, values in query.lists()} if hasattr(query, "lists") else dict(query)
    return {"headers": kept, "query": args, "body": parsed,
            "received_at": isoformat(received_at)}


@dataclass
class Delivery:
    event_id: uuid.UUID
    execution_ids: list[uuid.UUID]
    replayed: bool
    user_id: uuid.UUID
    params: dict  # the first linked trigger node's params (respond, timeout_s)
    # (status, result, error) of the first run when it ran on arrival and was stored finished
    outcome: tuple[str, Any, Any] | None = None


def check(hook: HookConfig, body: bytes, headers: Mapping, query: Mapping) -> intake.Pending:
    """Verify, parse and check a delivery: what ``accept`` will store (nothing stored yet)."""
    dedupe_key = verify_signature(hook, headers, body)
    parsed = parse_body(body)
    problems: list[Problem] = []
    for link in hook.links:
        for problem in trigger_payload_schema_errors(link["params"], parsed):
            joiner = "" if not problem.path or problem.path.startswith("[") else "."
            found = Problem(f"body{joiner}{problem.path}", problem.message)
            if found not in problems:
                problems.append(found)
    if problems:
        raise ValidationFailed("the body does not match the webhook's schema", problems)
    return intake.Pending(
        webhook_id=hook.id, user_id=hook.user_id, dedupe_key=dedupe_key,
        payload=payload_of(headers, query, parsed, utcnow()),
        links=[(uuid.UUID(link["workflow_id"]), link["node_id"]) for link in hook.links])


def try_on_arrival(hook: HookConfig, pending: intake.Pending) -> bool:
    """Run the delivery's runs of pure workflows on arrival (app.services.arrival), each
    stored finished by ``accept`` if its slot is free and its workflow version is still the
    active one. Says whether the first ran. Links after the first are not tried once
    the runs so far took an arrival's budget."""
    began = time.monotonic()
    for n, (link, run_id) in enumerate(zip(hook.links, pending.run_ids, strict=True)):
        if n and time.monotonic() - began > arrival.BUDGET_S:
            break
        if (ran := arrival.run(link, run_id, hook.user_id, pending.payload)) is not None:
            pending.arrived[run_id] = ran
    return bool(pending.run_ids) and pending.run_ids[0] in pending.arrived


def accept(hook: HookConfig, pending: intake.Pending) -> Delivery:
    """One trigger event and one run per active linked workflow, stored by the intake's next
    group commit, then published. A repeat of an accepted delivery returns the first. A run
    that ran on arrival (``try_on_arrival``) is stored finished, and the delivery carries its
    outcome."""
    intake.intake_for(current_app._get_current_object()).submit(pending)
    if pending.outcome == "gone":
        raise NotFound("no webhook at this address")
    if pending.outcome == "replayed":
        return _first_delivery(hook, pending.dedupe_key)
    delivery = Delivery(pending.event_id, [run_id for run_id, _workflow in pending.runs],
                        False, hook.user_id, hook.first_params)
    if delivery.execution_ids and delivery.execution_ids[0] in pending.finished:
        final = pending.arrived[delivery.execution_ids[0]].ran.final
        delivery.outcome = (final["status"], final["result"], final["error"])
    return delivery


def _first_delivery(hook: HookConfig, dedupe_key: str) -> Delivery:
    event_id = db.session.scalar(select(TriggerEvent.id).where(
        TriggerEvent.webhook_id == hook.id, TriggerEvent.dedupe_key == dedupe_key))
    if event_id is None:  # the conflict was something else (the webhook went away)
        raise NotFound("no webhook at this address")
    ids = list(db.session.scalars(
        select(Execution.id).where(Execution.trigger_event_id == event_id,
                                   Execution.retry_of_id.is_(None))
        .order_by(Execution.workflow_id, Execution.trigger_node_id)))
    db.session.commit()
    return Delivery(event_id, ids, True, hook.user_id, hook.first_params)


def count(webhook_id: Any, result: str) -> None:
    """Count one delivery (see ``intake.count_into``); a store outage only loses the count."""
    try:
        pipe = current_app.extensions["jobsprint.store"].pipeline(transaction=False)
        intake.count_into(pipe, webhook_id, result)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("could not count a delivery of webhook %s: %s", webhook_id, exc)


_OUTCOME = (select(Execution.status, Execution.result, Execution.error)
            .where(Execution.id == bindparam("run_id")))


def run_outcome(execution_id: uuid.UUID) -> tuple[str, Any, Any] | None:
    """(status, result, error) of a run: one prebuilt statement on a connection returned at
    once (a waiting request holds none)."""
    with db.engine.connect() as connection:
        row = connection.execute(_OUTCOME, {"run_id": execution_id}).one_or_none()
    return None if row is None else (row.status, row.result, row.error)


# --- the owner's view: URL, secret, rotation ------------------------------------------------

def _owned_hook(user: User, workflow_id: str, node_id: str | None) -> tuple[Workflow, Webhook,
                                                                             str]:
    workflow = workflows.get_owned(user.id, workflow_id)
    stmt = (select(Webhook, WebhookLink.node_id)
            .join(WebhookLink, WebhookLink.webhook_id == Webhook.id)
            .where(WebhookLink.workflow_id == workflow.id, Webhook.user_id == user.id))
    if node_id:
        stmt = stmt.where(WebhookLink.node_id == node_id)
    order = [n["id"] for _i, n in _webhook_nodes(workflow)]
    rows = sorted(db.session.execute(stmt).all(),
                  key=lambda r: order.index(r[1]) if r[1] in order else len(order))
    if not rows:
        raise NotFound("this workflow has no webhook trigger")
    hook, linked_node = rows[0]
    return workflow, hook, linked_node


def describe(user: User, workflow_id: str, node_id: str | None = None) -> dict:
    """The webhook's URL and current secret, for its owner only."""
    _workflow, hook, linked_node = _owned_hook(user, workflow_id, node_id)
    secret = vault.current().open(hook.kek_id, hook.wrapped_key, hook.secret_ct,
                                  record_id=hook.id, owner_id=hook.user_id, label="secret")
    db.session.commit()
    return _as_api(hook, linked_node, secret.decode())


def _as_api(hook: Webhook, node_id: str, secret: str) -> dict:
    expires = hook.previous_expires_at
    still_valid = expires is not None and expires > utcnow()
    return {"url": f"{_settings().base_url}/hooks/{hook.token}", "secret": secret,
            "scheme": hook.scheme, "node_id": node_id,
            "signature_header": {"jobsprint": "X-Jobsprint-Signature",
                                 "stripe": "Stripe-Signature",
                                 "github": "X-Hub-Signature-256",
                                 "slack": "X-Slack-Signature"}.get(hook.scheme),
            "previous_secret_expires_at": isoformat(expires) if still_valid else None,
            "warning": UNSIGNED_WARNING if hook.scheme == "none" else None}


def rotate_secret(user: User, workflow_id: str, node_id: str | None = None,
                  secret: str | None = None) -> dict:
    """A new secret (generated, or the one a provider issued, e.g. Stripe's ``whsec_…``); the
    old one keeps verifying for ``webhook_rotation_grace_s``."""
    if secret is not None and (not isinstance(secret, str) or not 16 <= len(secret) <= 256):
        raise ValidationFailed("the secret is invalid",
                               [Problem("secret", "must be a string of 16 to 256 characters")])
    workflow, hook, linked_node = _owned_hook(user, workflow_id, node_id)
    box = vault.current()
    old = box.open(hook.kek_id, hook.wrapped_key, hook.secret_ct, record_id=hook.id,
                   owner_id=hook.user_id, label="secret")
    new = (secret or _new_secret()).encode()
    sealed = box.seal(new, record_id=hook.id, owner_id=hook.user_id, label="secret")
    hook.kek_id, hook.wrapped_key, hook.secret_ct = (sealed.kek_id, sealed.wrapped_key,
                                                     sealed.ciphertext)
    hook.previous_secret_ct = box.seal_more(sealed.kek_id, sealed.wrapped_key, old,
                                            record_id=hook.id, owner_id=hook.user_id,
                                            label="previous_secret")
    hook.previous_expires_at = utcnow() + timedelta(seconds=_settings().webhook_rotation_grace_s)
    hook.updated_at = utcnow()
    audit.record("webhook.rotate", user_id=user.id, target_type="webhook", target_id=hook.id,
                 workflow_id=str(workflow.id), node_id=linked_node,
                 provided=secret is not None,
                 previous_expires_at=isoformat(hook.previous_expires_at))
    db.session.commit()
    cache.forget(cache_key(hook.token))
    return _as_api(hook, linked_node, new.decode())
