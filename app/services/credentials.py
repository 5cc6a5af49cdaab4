"""Credentials: the secrets nodes use to call other services (API key, basic, bearer).

A credential's secret fields are sealed with the vault (a fresh data key per record wrapped by
the current KEK; the record's id, its owner and the field ``secret`` as associated data, so a
ciphertext moved to another row or another user does not open). The database holds only the
ciphertext and ``meta`` (what may be shown: where an API key goes, a username hint); the API
and the pages never show a secret again after it is created. The plain secret exists only in
the worker, while the node that uses it runs (``HttpWithCredentials``).

OAuth2 credentials come from the Connect flow (a later part of this work), not from this form.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from app.db import db
from app.engine import NodeError
from app.errors import NotFound, Problem, ValidationFailed
from app.models import Credential, User, isoformat, utcnow
from app.services import audit, owned, vault

KINDS = ("api_key", "basic", "bearer")
LABEL = "secret"
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$")
_PARAM_NAME = re.compile(r"^[A-Za-z0-9_.~-]{1,100}$")


def _text(data: dict, key: str, problems: list[Problem], *, path: str, limit: int = 4096,
          required: bool = True) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        if required:
            problems.append(Problem(f"{path}.{key}", "is required"))
        return None
    if not isinstance(value, str) or len(value) > limit or "\n" in value or "\r" in value:
        problems.append(Problem(f"{path}.{key}",
                                f"must be one line of text of at most {limit} characters"))
        return None
    return value


def _checked(data: Any) -> tuple[str, str, dict, dict]:
    """(name, kind, secret fields, meta) from a request body; every problem at once."""
    if not isinstance(data, dict):
        raise ValidationFailed("the credential must be a JSON object")
    problems: list[Problem] = []
    name = data.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        problems.append(Problem("name", "must be 1 to 200 characters"))
    kind = data.get("kind")
    if kind not in KINDS:
        problems.append(Problem("kind", "must be one of " + ", ".join(KINDS)))
    secret = data.get("secret")
    if not isinstance(secret, dict):
        problems.append(Problem("secret", "must be an object"))
        secret = {}
    fields: dict[str, str] = {}
    meta: dict[str, str] = {}
    if kind == "api_key":
        key = _text(secret, "key", problems, path="secret")
        place = secret.get("in", "header")
        if place not in ("header", "query"):
            problems.append(Problem("secret.in", "must be 'header' or 'query'"))
        pattern = _HEADER_NAME if place == "header" else _PARAM_NAME
        param = secret.get("name") or ("X-API-Key" if place == "header" else "api_key")
        if not isinstance(param, str) or not pattern.match(param):
            problems.append(Problem("secret.name", f"is not a valid {place} name"))
        fields = {"key": key or ""}
        meta = {"in": str(place), "name": str(param)}
    elif kind == "basic":
        username = _text(secret, "username", problems, path="secret", limit=256)
        password = _text(secret, "password", problems, path="secret")
        if username and ":" in username:
            problems.append(Problem("secret.username", "must not contain ':'"))
        fields = {"username": username or "", "password": password or ""}
        meta = {"username": _hint(username or "")}
    elif kind == "bearer":
        fields = {"token": _text(secret, "token", problems, path="secret") or ""}
    if problems:
        raise ValidationFailed("the credential is invalid", problems)
    return name.strip(), kind, fields, meta


def _hint(value: str) -> str:
    """Enough of a value to recognise it, never enough to use it."""
    return value[:2] + "…" if len(value) > 4 else "…"


def create(user: User, data: Any) -> Credential:
    name, kind, fields, meta = _checked(data)
    credential_id = uuid.uuid4()
    sealed = vault.current().seal(json.dumps(fields).encode(), record_id=credential_id,
                                  owner_id=user.id, label=LABEL)
    credential = Credential(id=credential_id, user_id=user.id, name=name, kind=kind,
                            kek_id=sealed.kek_id, wrapped_key=sealed.wrapped_key,
                            secret_ct=sealed.ciphertext, meta=meta)
    db.session.add(credential)
    audit.record("credential.create", user_id=user.id, target_type="credential",
                 target_id=credential_id, kind=kind)
    db.session.commit()
    return credential


def get_owned(user_id: uuid.UUID, credential_id: uuid.UUID | str) -> Credential:
    return owned.get_owned(Credential, user_id, credential_id, "credential")


def list_for(user: User) -> list[Credential]:
    return list(db.session.scalars(select(Credential).where(Credential.user_id == user.id)
                                   .order_by(Credential.name, Credential.id)))


def delete(user: User, credential_id: str) -> None:
    credential = get_owned(user.id, credential_id)
    db.session.delete(credential)
    audit.record("credential.delete", user_id=user.id, target_type="credential",
                 target_id=credential.id, kind=credential.kind)
    db.session.commit()


def as_api(credential: Credential) -> dict:
    """What may be shown: never the secret."""
    return {"id": str(credential.id), "name": credential.name, "kind": credential.kind,
            "meta": credential.meta or {}, "created_at": isoformat(credential.created_at),
            "last_used_at": isoformat(credential.last_used_at)}


# --- using a credential (the worker, while a node runs) -------------------------------------

class CredentialUnusable(NodeError):
    """The credential is gone, not the run owner's, or its secret does not open."""


@dataclass(frozen=True)
class Auth:
    """What a request adds: headers and query parameters (values are secret)."""

    headers: dict[str, str]
    query: dict[str, str]

    def __repr__(self) -> str:  # never the values
        return f"Auth(headers={sorted(self.headers)}, query={sorted(self.query)})"


def auth_for(owner_id: uuid.UUID, credential_id: str) -> Auth:
    """Open the credential for a node of a run owned by ``owner_id``. The error names the
    credential and what went wrong, never the secret."""
    try:
        credential = get_owned(owner_id, credential_id)
    except NotFound:
        return _connection_auth(owner_id, credential_id)
    try:
        fields = json.loads(vault.current().open(
            credential.kek_id, credential.wrapped_key, credential.secret_ct,
            record_id=credential.id, owner_id=credential.user_id, label=LABEL))
    except (vault.VaultError, ValueError) as exc:
        raise CredentialUnusable(f"credential '{credential.name}' cannot be decrypted: "
                                 f"{exc}") from None
    finally:
        credential.last_used_at = utcnow()
        db.session.commit()
    meta = credential.meta or {}
    if credential.kind == "api_key":
        if meta.get("in") == "query":
            return Auth({}, {meta.get("name", "api_key"): fields["key"]})
        return Auth({meta.get("name", "X-API-Key"): fields["key"]}, {})
    if credential.kind == "basic":
        pair = f"{fields['username']}:{fields['password']}".encode()
        return Auth({"Authorization": "Basic " + base64.b64encode(pair).decode()}, {})
    if credential.kind == "bearer":
        return Auth({"Authorization": f"Bearer {fields['token']}"}, {})
    raise CredentialUnusable(f"credential '{credential.name}' of kind {credential.kind} "
                             "cannot be used by an HTTP request")


def _connection_auth(owner_id: uuid.UUID, connection_id: str) -> Auth:
    """An OAuth connection used as a node's credential: its (refreshed) access token."""
    from app.services import oauth

    try:
        token = oauth.access_token(owner_id, connection_id)
    except oauth.ConnectionUnusable as exc:
        raise CredentialUnusable(str(exc)) from None
    except vault.VaultError as exc:
        raise CredentialUnusable(f"connection {connection_id} cannot be decrypted: "
                                 f"{exc}") from None
    return Auth({"Authorization": f"Bearer {token}"}, {})


class HttpWithCredentials:
    """The process's HTTP port for one run: a node's ``credential_id`` becomes the headers or
    query parameters of that credential, opened for the run's owner only."""

    def __init__(self, port, owner_id: uuid.UUID) -> None:
        self.port = port
        self.owner_id = owner_id

    def request(self, **kwargs: Any) -> dict[str, Any]:
        credential_id = kwargs.pop("credential_id", None)
        if credential_id:
            auth = auth_for(self.owner_id, credential_id)
            kwargs["headers"] = {**(kwargs.get("headers") or {}), **auth.headers}
            kwargs["query"] = {**(kwargs.get("query") or {}), **auth.query}
        return self.port.request(credential_id=None, **kwargs)

    def stream_lines(self, **kwargs: Any):
        """The port's streamed POST, with the credential applied the same way."""
        credential_id = kwargs.pop("credential_id", None)
        if credential_id:
            auth = auth_for(self.owner_id, credential_id)
            if auth.query:
                raise CredentialUnusable("a credential sent in the query string cannot be "
                                         "used to stream")
            kwargs["headers"] = {**(kwargs.get("headers") or {}), **auth.headers}
        return self.port.stream_lines(credential_id=None, **kwargs)


# --- key rotation ---------------------------------------------------------------------------

def rotate_keys(batch: int = 200) -> dict[str, int]:
    """Re-wrap every data key not wrapped by the current KEK (credentials, webhook secrets,
    OAuth connections), a batch per transaction; the values themselves are not re-encrypted.
    Returns how many rows of each kind were re-wrapped."""
    from app.models import Connection, Webhook

    box = vault.current()
    done: dict[str, int] = {}
    for model, name in ((Credential, "credentials"), (Webhook, "webhooks"),
                        (Connection, "connections")):
        done[name] = 0
        while True:
            rows = list(db.session.scalars(
                select(model).where(model.kek_id != box.current.id).limit(batch)))
            if not rows:
                break
            for row in rows:
                row.kek_id, row.wrapped_key = box.rewrap(
                    row.kek_id, row.wrapped_key, record_id=row.id, owner_id=row.user_id)
            db.session.commit()
            done[name] += len(rows)
    return done
