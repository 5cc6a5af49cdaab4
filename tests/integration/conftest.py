"""Fixtures shared by the page tests: a user signed in through the register page."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.db import db
from app.models import User


@pytest.fixture
def user(auth):
    """A new user, registered (and so signed in) through the page; the client holds the
    session."""
    email = auth.new_email()
    assert auth.register(email).status_code == 302
    found = db.session.scalar(select(User).where(User.email == email))
    db.session.commit()
    return found


@pytest.fixture
def token(auth, user):
    """A CSRF token of the signed-in session, for the pages' forms."""
    return auth.csrf_token("/settings")
