"""Registration, login and password changes."""

from __future__ import annotations

import uuid

from email_validator import EmailNotValidError, validate_email
from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.db import db
from app.errors import Conflict, Problem, Unauthorized, ValidationFailed
from app.models import User, utcnow
from app.services import audit, passwords, sessions, tokens

MAX_EMAIL_LENGTH = 254


def normalize_email(raw: str) -> str:
    """Trimmed, lower-cased and syntactically valid; ``ValidationFailed`` otherwise."""
    email = raw.strip().lower()
    if not email:
        raise ValidationFailed("invalid email", [Problem("email", "is required")])
    if len(email) > MAX_EMAIL_LENGTH:
        raise ValidationFailed(
            "invalid email", [Problem("email", f"must be at most {MAX_EMAIL_LENGTH} characters")]
        )
    try:
        checked = validate_email(email, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValidationFailed("invalid email", [Problem("email", str(exc))]) from None
    return checked.normalized.lower()


def get_user(user_id: uuid.UUID | str) -> User | None:
    try:
        key = user_id if isinstance(user_id, uuid.UUID) else uuid.UUID(str(user_id))
    except ValueError:
        return None
    user = db.session.get(User, key)
    return user if user is not None and user.is_active else None


def register(email: str, password: str, *, client_addr: str | None = None) -> User:
    problems = []
    try:
        email = normalize_email(email)
    except ValidationFailed as exc:
        problems.extend(exc.details)
    if reason := passwords.password_problem(password):
        problems.append(Problem("password", reason))
    if problems:
        raise ValidationFailed("registration refused", problems)
    if db.session.scalar(select(User.id).where(User.email == email)) is not None:
        raise Conflict("an account with this email already exists", [Problem("email", "taken")])
    rounds = current_app.config["SETTINGS"].bcrypt_rounds
    password_hash = passwords.hash_password(password, rounds)
    user = User(id=uuid.uuid4(), email=email, password_hash=password_hash)
    db.session.add(user)
    try:
        db.session.flush()
    except IntegrityError:
        # Two registrations of the same email raced; the unique index decided.
        db.session.rollback()
        raise Conflict("an account with this email already exists",
                       [Problem("email", "taken")]) from None
    audit.record("user.register", user_id=user.id, target_type="user", target_id=user.id,
                 client_addr=client_addr)
    db.session.commit()
    return user


def authenticate(email: str, password: str, *, client_addr: str | None = None,
                 via: str = "web") -> User:
    """The user with these credentials; ``Unauthorized`` (and an audit row) otherwise."""
    try:
        email = normalize_email(email)
    except ValidationFailed:
        email = email.strip().lower()[:MAX_EMAIL_LENGTH]
    user = db.session.scalar(select(User).where(User.email == email))
    ok = passwords.check_password(password, user.password_hash if user else None)
    if not ok or not user.is_active:
        audit.record("user.login_failed", user_id=user.id if user else None,
                     client_addr=client_addr, email=email, via=via)
        db.session.commit()
        raise Unauthorized("wrong email or password")
    user.last_login_at = utcnow()
    audit.record("user.login", user_id=user.id, client_addr=client_addr, via=via)
    db.session.commit()
    return user


def logout(user: User, *, session_id: str | None = None, token_id: str | None = None,
           client_addr: str | None = None) -> None:
    if session_id:
        sessions.close_session(user.id, session_id)
    if token_id:
        tokens.revoke(user.id, token_id)
    audit.record("user.logout", user_id=user.id, client_addr=client_addr,
                 via="api" if token_id else "web")
    db.session.commit()


def change_password(user: User, current: str, new: str, *, client_addr: str | None = None) -> None:
    """Set a new password and revoke every session and API token of the user."""
    if not passwords.check_password(current, user.password_hash):
        raise ValidationFailed("password not changed",
                               [Problem("current_password", "is not your current password")])
    if reason := passwords.password_problem(new):
        raise ValidationFailed("password not changed", [Problem("new_password", reason)])
    user.password_hash = passwords.hash_password(new, current_app.config["SETTINGS"].bcrypt_rounds)
    user.password_changed_at = utcnow()
    audit.record("user.password_changed", user_id=user.id, client_addr=client_addr)
    db.session.commit()
    sessions.close_all(user.id)
    tokens.revoke_all(user.id)
