"""Password hashing: bcrypt (cost from settings, 10 by default) over a SHA-256 pre-hash.

bcrypt reads at most 72 bytes (bcrypt 5 refuses more). Pre-hashing every password with
SHA-256 and base64 (44 ASCII bytes, no NUL) lets any length count in full: a 73-byte password
and its 72-byte prefix are different passwords.
"""

from __future__ import annotations

import base64
import hashlib

import bcrypt

MIN_LENGTH = 8
MAX_LENGTH = 1024  # characters; longer input is refused, not truncated
# A valid hash to compare against when the account does not exist, so that a login for an
# unknown email costs the same time as one for a known email.
_DUMMY_HASH = bcrypt.hashpw(b"jobsprint-dummy", bcrypt.gensalt(rounds=10))


def _prehash(password: str) -> bytes:
    return base64.b64encode(hashlib.sha256(password.encode("utf-8")).digest())


def password_problem(password: str) -> str | None:
    """Why this password cannot be used, or None."""
    if len(password) < MIN_LENGTH:
        return f"must be at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"must be at most {MAX_LENGTH} characters"
    return None


def hash_password(password: str, rounds: int = 10) -> str:
    return bcrypt.hashpw(_prehash(password), bcrypt.gensalt(rounds=rounds)).decode("ascii")


def check_password(password: str, password_hash: str | None) -> bool:
    if len(password) > MAX_LENGTH:
        return False
    if password_hash is None:
        bcrypt.checkpw(_prehash(password), _DUMMY_HASH)
        return False
    return bcrypt.checkpw(_prehash(password), password_hash.encode("ascii"))
