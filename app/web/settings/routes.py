from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, logout_user

from app.errors import ServiceError, ValidationFailed
from app.services import accounts, credentials, oauth
from app.web.security import client_addr
from app.web.settings import bp
from app.web.settings.forms import PasswordChangeForm


@bp.route("/settings", methods=["GET", "POST"])
@login_required
def index():
    form = PasswordChangeForm()
    if form.validate_on_submit():
        try:
            accounts.change_password(current_user.user, form.current_password.data,
                                     form.new_password.data, client_addr=client_addr())
        except ValidationFailed as exc:
            for problem in exc.details:
                getattr(form, problem.path).errors.append(problem.message)
        else:
            logout_user()
            flash("Password changed. Every session and API token was signed out; sign in again.")
            return redirect(url_for("auth.login"))
    status = 400 if form.errors else 200
    return render_template("settings/index.html", form=form), status


def _credential_page(status: int = 200, problems=None, form=None):
    return render_template("settings/credentials.html",
                           credentials=credentials.list_for(current_user.user),
                           problems=problems or [], form=form or {}), status


@bp.get("/settings/credentials")
@login_required
def credential_list():
    return _credential_page()


@bp.post("/settings/credentials")
@login_required
def credential_create():
    form = request.form
    kind = form.get("kind", "")
    secret = {"api_key": {"key": form.get("key"), "in": form.get("in"),
                          "name": form.get("param_name") or None},
              "basic": {"username": form.get("username"), "password": form.get("password")},
              "bearer": {"token": form.get("token")}}.get(kind, {})
    try:
        created = credentials.create(current_user.user, {
            "name": form.get("name", ""), "kind": kind, "secret": secret})
    except ValidationFailed as exc:
        kept = {k: form.get(k, "") for k in ("name", "kind", "in", "param_name", "username")}
        return _credential_page(400, [exc, *exc.details], kept)
    flash(f"Saved the credential “{created.name}”. Its secret will not be shown again.")
    return redirect(url_for("settings.credential_list"))


@bp.post("/settings/credentials/<credential_id>/delete")
@login_required
def credential_delete(credential_id: str):
    found = credentials.get_owned(current_user.id, credential_id)
    credentials.delete(current_user.user, found.id)
    flash(f"Deleted the credential “{found.name}”.")
    if request.headers.get("HX-Request"):  # asked through the confirmation dialog
        return "", 200, {"HX-Redirect": url_for("settings.credential_list")}
    return redirect(url_for("settings.credential_list"))


# --- OAuth connections ------------------------------------------------------------------------

def _session_id() -> str:
    return str(getattr(current_user, "session_id", "") or "")


@bp.get("/settings/connections")
@login_required
def connection_list():
    return render_template("settings/connections.html",
                           connections=oauth.list_for(current_user.user),
                           providers=list(oauth.providers().values()))


@bp.post("/settings/connections/<provider>/connect")
@login_required
def connection_start(provider: str):
    return redirect(oauth.start(current_user.user, _session_id(), provider))


@bp.get("/oauth/callback")
@login_required
def oauth_callback():
    try:
        connection = oauth.finish(current_user.user, _session_id(), request.args.to_dict())
    except ServiceError as exc:
        flash(f"Not connected: {exc.message}")
    else:
        flash(f"Connected {connection.provider} as {connection.account_label}.")
    return redirect(url_for("settings.connection_list"))


@bp.post("/settings/connections/<connection_id>/disconnect")
@login_required
def connection_disconnect(connection_id: str):
    oauth.disconnect(current_user.user, connection_id)
    flash("Disconnected.")
    return redirect(url_for("settings.connection_list"))
