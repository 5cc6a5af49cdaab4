"""API tokens: JWT HS256 (algorithm pinned), 24 h, each with a ``jti`` recorded in the store.

``token:{jti}`` → user id, so a token can be revoked before it expires; ``tokens:{user_id}``
lists a user's token ids so that a password change revokes them all.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import UTC, datetime, timedelta

import jwt
from flask import current_app

from app.errors import Unauthorized

ALGORITHM = "HS256"


def _signing_key() -> bytes:
    # A key of its own, derived from SECRET_KEY, so a cookie key never signs a token.
    secret = current_app.config["SETTINGS"].secret_key.encode()
    return hmac.new(secret, b"jobsprint api tokens", hashlib.sha256).digest()


def _store():
    return current_app.extensions["jobsprint.store"]


def issue(user_id: uuid.UUID) -> tuple[str, datetime]:
    ttl = current_app.config["SETTINGS"].token_ttl_s
    now = datetime.now(UTC)
    expires_at = now + timedelta(seconds=ttl)
    jti = uuid.uuid4().hex
    claims = {"sub": str(user_id), "jti": jti, "iat": now, "exp": expires_at}
    token = jwt.encode(claims, _signing_key(), algorithm=ALGORITHM)
    pipe = _store().pipeline()
    pipe.set(f"token:{jti}", str(user_id), ex=ttl)
    pipe.sadd(f"tokens:{user_id}", jti)
    pipe.expire(f"tokens:{user_id}", ttl)
    pipe.execute()
    return token, expires_at.replace(microsecond=0)


def verify(token: str) -> tuple[uuid.UUID, str]:
    """The user id and token id of a valid, unrevoked token; ``Unauthorized`` otherwise."""
    try:
        claims = jwt.decode(
            token,
            _signing_key(),
            algorithms=[ALGORITHM],
            options={"require": ["exp", "iat", "sub", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token expired") from None
    except jwt.InvalidTokenError:
        raise Unauthorized("invalid token") from None
    if _store().get(f"token:{claims['jti']}") != claims["sub"]:
        raise Unauthorized("token revoked")
    try:
        return uuid.UUID(claims["sub"]), claims["jti"]
    except (ValueError, TypeError):
        raise Unauthorized("invalid token") from None


def revoke(user_id: uuid.UUID, jti: str) -> None:
    pipe = _store().pipeline()
    pipe.delete(f"token:{jti}")
    pipe.srem(f"tokens:{user_id}", jti)
    pipe.execute()


def revoke_all(user_id: uuid.UUID) -> None:
    store = _store()
    jtis = store.smembers(f"tokens:{user_id}")
    pipe = store.pipeline()
    for jti in jtis:
        pipe.delete(f"token:{jti}")
    pipe.delete(f"tokens:{user_id}")
    pipe.execute()
