from __future__ import annotations

from urllib.parse import urlsplit

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user

from app.errors import Conflict, Unauthorized, ValidationFailed
from app.extensions import limiter
from app.services import accounts, sessions
from app.web.auth import bp
from app.web.auth.forms import LoginForm, LogoutForm, RegisterForm
from app.web.auth.session import SessionUser
from app.web.security import client_addr


def _login_limit() -> str:
    return current_app.config["SETTINGS"].login_rate_limit


def _register_limit() -> str:
    return current_app.config["SETTINGS"].register_rate_limit


def _failed(response) -> bool:
    return response.status_code >= 400


def _start_session(user) -> None:
    session_id = sessions.open_session(user.id)
    login_user(SessionUser(user, session_id))


def _safe_next(target: str | None) -> str:
    """Only same-site paths, so ``?next=`` cannot send the user elsewhere."""
    if target and target.startswith("/") and not target.startswith("//"):
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return url_for("workflows.index")


def _put_problems(form, problems) -> None:
    for problem in problems:
        field = getattr(form, problem.path, None)
        if field is not None:
            field.errors = [*field.errors, problem.message]


@bp.get("/")
def home():
    return redirect(url_for("workflows.index" if current_user.is_authenticated else "auth.login"))


@bp.route("/register", methods=["GET", "POST"])
@limiter.limit(_register_limit, methods=["POST"], deduct_when=_failed)
def register():
    form = RegisterForm()
    if form.validate_on_submit():
        try:
            user = accounts.register(form.email.data, form.password.data,
                                     client_addr=client_addr())
        except (ValidationFailed, Conflict) as exc:
            _put_problems(form, exc.details)
        else:
            _start_session(user)
            flash("Welcome to Jobsprint.")
            return redirect(url_for("workflows.index"))
    status = 400 if form.errors else 200
    return render_template("auth/register.html", form=form), status


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(_login_limit, methods=["POST"], deduct_when=_failed)
def login():
    form = LoginForm()
    if form.validate_on_submit():
        try:
            user = accounts.authenticate(form.email.data, form.password.data,
                                         client_addr=client_addr())
        except Unauthorized as exc:
            form.form_errors.append(str(exc).capitalize() + ".")
            return render_template("auth/login.html", form=form), 401
        _start_session(user)
        return redirect(_safe_next(request.args.get("next")))
    status = 400 if form.errors else 200
    return render_template("auth/login.html", form=form), status


@bp.post("/logout")
@login_required
def logout():
    form = LogoutForm()
    if form.validate_on_submit():
        accounts.logout(current_user.user, session_id=current_user.session_id,
                        client_addr=client_addr())
        logout_user()
        flash("You are signed out.")
    return redirect(url_for("auth.login"))
