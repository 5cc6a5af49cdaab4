"""The signed-in browser user, as Flask-Login sees it.

The cookie carries ``{user_id}:{session_id}``; the session must still be open in the store
(``session:{user_id}``), so logging out or changing the password ends it everywhere.
"""

from __future__ import annotations

from flask_login import UserMixin

from app.extensions import login_manager
from app.models import User
from app.services import accounts, sessions


class SessionUser(UserMixin):
    def __init__(self, user: User, session_id: str) -> None:
        self.user = user
        self.session_id = session_id

    @property
    def id(self):
        return self.user.id

    @property
    def email(self) -> str:
        return self.user.email

    def get_id(self) -> str:
        return f"{self.user.id}:{self.session_id}"


@login_manager.user_loader
def load_user(cookie_id: str) -> SessionUser | None:
    user_id, _, session_id = cookie_id.partition(":")
    if not session_id or not sessions.is_open(user_id, session_id):
        return None
    user = accounts.get_user(user_id)
    return SessionUser(user, session_id) if user else None


login_manager.login_view = "auth.login"
login_manager.login_message = "Sign in to continue."
login_manager.session_protection = "basic"
