"""How senders sign deliveries, written from each provider's documentation rather than from
the app's code, so the tests check the app against the spec and not against itself."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid


def _hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def jobsprint(secret: str, body: bytes, t: int | None = None) -> dict:
    t = int(time.time()) if t is None else t
    return {"X-Jobsprint-Signature": f"t={t},v1={_hex(secret, f'{t}.'.encode() + body)}"}


def stripe(secret: str, body: bytes, t: int | None = None, extra_v1: str | None = None) -> dict:
    t = int(time.time()) if t is None else t
    signatures = [f"v1={_hex(secret, f'{t}.'.encode() + body)}"]
    if extra_v1:  # Stripe sends one v1 per active secret while one is rolled
        signatures.insert(0, f"v1={extra_v1}")
    return {"Stripe-Signature": ",".join([f"t={t}", *signatures, "v0=" + "0" * 64])}


def github(secret: str, body: bytes, delivery: str | None = None) -> dict:
    return {"X-Hub-Signature-256": "sha256=" + _hex(secret, body),
            "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery or str(uuid.uuid4())}


def slack(secret: str, body: bytes, ts: int | None = None) -> dict:
    ts = int(time.time()) if ts is None else ts
    return {"X-Slack-Request-Timestamp": str(ts),
            "X-Slack-Signature": "v0=" + _hex(secret, f"v0:{ts}:".encode() + body)}


SIGNERS = {"jobsprint": jobsprint, "stripe": stripe, "github": github, "slack": slack}
