"""OAuth connections (seed flow 5): a "Connect" button per provider, tokens kept sealed.

``start`` makes the state (random, single use, bound to the user and the browser session, 10
minutes, in the store) and a PKCE S256 verifier, and returns the provider's authorize URL.
``finish`` (the callback) takes the state back exactly once, refuses it for anyone else, turns
the provider's refusal into a clear message, exchanges the code (Authlib), seals the access and
the refresh token as separate fields of one vault record, tests the connection with the
provider's user-info URL, and activates it — or deletes it and says why. ``access_token``
(the worker, while a node runs) refreshes a token that expires within a minute, under a lock
so that two workers never refresh the same token at once (the loser waits and reads the
winner's); a refresh the provider refuses marks the connection failed and fails the node.
``disconnect`` revokes the token where the provider supports it. Connect, refresh failure and
disconnect are audited; no token is ever logged, shown or put in an error.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
import uuid
from datetime import timedelta
from typing import Any

import requests
from authlib.integrations.base_client import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2 import OAuth2Error
from flask import current_app
from sqlalchemy import select

from app.config import OAuthProvider
from app.db import db
from app.errors import NotFound, UpstreamFailed, ValidationFailed
from app.models import Connection, User, isoformat, utcnow
from app.services import audit, cache, owned, vault

log = logging.getLogger(__name__)

STATE_TTL_S = 600
REFRESH_BEFORE = timedelta(seconds=60)
TIMEOUT_S = 15


class ConnectionUnusable(Exception):
    """The connection cannot give a token (gone, failed, its refresh refused)."""


def providers() -> dict[str, OAuthProvider]:
    return {p.name: p for p in current_app.config["SETTINGS"].oauth_providers}


def _provider(name: str) -> OAuthProvider:
    found = providers().get(name)
    if found is None:
        raise NotFound(f"no OAuth provider {name!r} is configured")
    return found


def _store():
    return current_app.extensions["jobsprint.store"]


def redirect_uri() -> str:
    return current_app.config["SETTINGS"].base_url.rstrip("/") + "/oauth/callback"


def _session(provider: OAuthProvider, **kwargs) -> OAuth2Session:
    return OAuth2Session(provider.client_id, provider.client_secret, scope=provider.scopes,
                         redirect_uri=redirect_uri(), default_timeout=TIMEOUT_S,
                         code_challenge_method="S256" if provider.pkce else None, **kwargs)


# --- connecting -----------------------------------------------------------------------------

def start(user: User, session_id: str, provider_name: str) -> str:
    """The URL to send the browser to; the state waits for the callback (10 min, once)."""
    provider = _provider(provider_name)
    state, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(64)
    _store().set(f"oauth-state:{state}", json.dumps({
        "user_id": str(user.id), "session_id": session_id, "provider": provider.name,
        "verifier": verifier}), ex=STATE_TTL_S)
    url, _state = _session(provider).create_authorization_url(
        provider.authorize_url, state=state, code_verifier=verifier if provider.pkce else None,
        **dict(provider.extra_authorize_params))
    return url


def finish(user: User, session_id: str, args: dict[str, str]) -> Connection:
    """The callback: a new active connection, or an error saying what went wrong."""
    raw = _store().getdel(f"oauth-state:{args.get('state') or '-'}")
    data = json.loads(raw) if raw else None
    if not data or data["user_id"] != str(user.id) or data["session_id"] != session_id:
        raise ValidationFailed("this sign-in link has expired or was already used; start "
                               "again from the Connect button")
    provider = _provider(data["provider"])
    if args.get("error"):
        reason = args.get("error_description") or args["error"]
        audit.record("connection.denied", user_id=user.id, target_type="connection",
                     provider=provider.name, error=str(args["error"])[:100])
        db.session.commit()
        raise ValidationFailed(f"{provider.label} did not grant access: {reason[:200]}")
    if not args.get("code"):
        raise ValidationFailed(f"{provider.label} sent no authorization code")
    try:
        token = _session(provider).fetch_token(
            provider.token_url, code=args["code"], grant_type="authorization_code",
            code_verifier=data["verifier"] if provider.pkce else None)
    except (OAuth2Error, OAuthError) as exc:
        raise UpstreamFailed(f"{provider.label} refused the code: "
                             f"{exc.description or exc.error}") from None
    except (requests.RequestException, ValueError) as exc:
        log.warning("oauth: token endpoint of %s failed: %s", provider.name, type(exc).__name__)
        raise UpstreamFailed(f"{provider.label} could not be reached to finish connecting; "
                             "try again") from None
    connection = _save(user, provider, token)
    try:
        label = _account_label(provider, token["access_token"])
    except UpstreamFailed as exc:
        db.session.delete(connection)
        db.session.commit()
        raise UpstreamFailed(f"the connection test failed, so it was not kept: "
                             f"{exc.message}") from None
    connection.status, connection.account_label = "active", label
    audit.record("connection.create", user_id=user.id, target_type="connection",
                 target_id=connection.id, provider=provider.name, account=label)
    db.session.commit()
    _cache(connection)
    return connection


def _save(user: User, provider: OAuthProvider, token: dict) -> Connection:
    connection_id = uuid.uuid4()
    box = vault.current()
    sealed = box.seal(str(token["access_token"]).encode(), record_id=connection_id,
                      owner_id=user.id, label="access_token")
    connection = Connection(id=connection_id, user_id=user.id, provider=provider.name,
                            status="pending", kek_id=sealed.kek_id,
                            wrapped_key=sealed.wrapped_key, access_token_ct=sealed.ciphertext,
                            scopes=str(token.get("scope") or provider.scopes)[:1000])
    _set_tokens(connection, token, sealed_access=True)
    db.session.add(connection)
    db.session.flush()
    return connection


def _set_tokens(connection: Connection, token: dict, *, sealed_access: bool = False) -> None:
    box = vault.current()
    if not sealed_access:
        connection.access_token_ct = box.seal_more(
            connection.kek_id, connection.wrapped_key, str(token["access_token"]).encode(),
            record_id=connection.id, owner_id=connection.user_id, label="access_token")
    if token.get("refresh_token"):
        connection.refresh_token_ct = box.seal_more(
            connection.kek_id, connection.wrapped_key, str(token["refresh_token"]).encode(),
            record_id=connection.id, owner_id=connection.user_id, label="refresh_token")
    expires_in = token.get("expires_in")
    connection.expires_at = (utcnow() + timedelta(seconds=float(expires_in))
                             if expires_in else None)
    connection.updated_at = utcnow()


def _account_label(provider: OAuthProvider, access_token: str) -> str:
    """The connection test: who the token belongs to, from the provider's user-info URL."""
    try:
        answer = requests.get(provider.userinfo_url, timeout=TIMEOUT_S, headers={
            "Authorization": f"Bearer {access_token}", "Accept": "application/json"})
    except requests.RequestException:
        raise UpstreamFailed(f"{provider.label} could not be reached") from None
    try:
        body = answer.json()
    except ValueError:
        body = {}
    if answer.status_code >= 400 or (isinstance(body, dict) and body.get("ok") is False):
        raise UpstreamFailed(f"{provider.label} refused the new token "
                             f"({answer.status_code})")
    for key in provider.account_keys:
        if isinstance(body, dict) and body.get(key):
            return str(body[key])[:200]
    return provider.label


def _cache(connection: Connection) -> None:
    """``integration:{user}:{provider}``: what a worker needs, sealed (ciphertext only)."""
    cache.put(f"integration:{connection.user_id}:{connection.provider}", {
        "id": str(connection.id), "kek_id": connection.kek_id,
        "wrapped_key": base64.b64encode(connection.wrapped_key).decode(),
        "access_token_ct": base64.b64encode(connection.access_token_ct).decode(),
        "expires_at": isoformat(connection.expires_at), "status": connection.status})


# --- using and ending ------------------------------------------------------------------------

def get_owned(user_id: uuid.UUID, connection_id: Any) -> Connection:
    return owned.get_owned(Connection, user_id, connection_id, "connection")


def list_for(user: User) -> list[Connection]:
    return list(db.session.scalars(select(Connection).where(Connection.user_id == user.id)
                                   .order_by(Connection.provider, Connection.created_at)))


def _open(connection: Connection, label: str) -> str:
    ciphertext = (connection.access_token_ct if label == "access_token"
                  else connection.refresh_token_ct)
    return vault.current().open(connection.kek_id, connection.wrapped_key, ciphertext,
                                record_id=connection.id, owner_id=connection.user_id,
                                label=label).decode()


def access_token(owner_id: uuid.UUID, connection_id: Any) -> str:
    """A usable access token of the owner's connection, refreshed first when it expires
    within a minute. Raises ``ConnectionUnusable`` with a message naming the connection."""
    try:
        connection = get_owned(owner_id, connection_id)
    except NotFound:
        raise ConnectionUnusable(f"connection {connection_id} does not exist or is not "
                                 "yours") from None
    name = f"{connection.provider} connection"
    if connection.status != "active":
        raise ConnectionUnusable(f"the {name} is {connection.status}: connect it again")
    if connection.expires_at is None or connection.expires_at - utcnow() > REFRESH_BEFORE:
        return _open(connection, "access_token")
    if connection.refresh_token_ct is None:
        raise ConnectionUnusable(f"the {name} expired and has no refresh token: connect it "
                                 "again")
    return _refresh(connection, name)


def _refresh(connection: Connection, name: str) -> str:
    lock_key, holder = f"oauth-refresh:{connection.id}", secrets.token_hex(8)
    deadline = time.monotonic() + 20
    while not _store().set(lock_key, holder, nx=True, ex=30):
        if time.monotonic() > deadline:
            raise ConnectionUnusable(f"the {name} is being refreshed elsewhere; try again")
        time.sleep(0.1)
    try:
        db.session.refresh(connection)  # another worker may have refreshed it meanwhile
        if connection.expires_at and connection.expires_at - utcnow() > REFRESH_BEFORE:
            return _open(connection, "access_token")
        provider = _provider(connection.provider)
        try:
            token = _session(provider).refresh_token(
                provider.token_url, refresh_token=_open(connection, "refresh_token"))
        except (OAuth2Error, OAuthError, requests.RequestException, ValueError) as exc:
            reason = getattr(exc, "description", None) or getattr(exc, "error", None) \
                or type(exc).__name__
            connection.status, connection.last_error = "failed", f"refresh failed: {reason}"
            audit.record("connection.refresh_failed", user_id=connection.user_id,
                         target_type="connection", target_id=connection.id,
                         provider=connection.provider, error=str(reason)[:200])
            db.session.commit()
            cache.forget(f"integration:{connection.user_id}:{connection.provider}")
            raise ConnectionUnusable(f"the {name} could not be refreshed ({reason}): "
                                     "connect it again") from None
        _set_tokens(connection, token)
        db.session.commit()
        _cache(connection)
        return str(token["access_token"])
    finally:
        # free the lock only if it is still ours (it may have timed out and moved on)
        if _store().get(lock_key) == holder:
            _store().delete(lock_key)


def disconnect(user: User, connection_id: str) -> None:
    """Revoke at the provider where it can (best effort), then forget the connection."""
    connection = get_owned(user.id, connection_id)
    provider = providers().get(connection.provider)
    revoked = False
    if provider and provider.revoke_url:
        try:
            token = _open(connection, "access_token")
            answer = requests.post(provider.revoke_url, data={"token": token},
                                   auth=(provider.client_id, provider.client_secret),
                                   timeout=TIMEOUT_S)
            revoked = answer.status_code < 400
        except (requests.RequestException, vault.VaultError) as exc:
            log.warning("oauth: revoking a %s token failed: %s", connection.provider,
                        type(exc).__name__)
    audit.record("connection.disconnect", user_id=user.id, target_type="connection",
                 target_id=connection.id, provider=connection.provider, revoked=revoked)
    db.session.delete(connection)
    db.session.commit()
    cache.forget(f"integration:{user.id}:{connection.provider}")
