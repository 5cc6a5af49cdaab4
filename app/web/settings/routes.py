from __future__ import annotations

from flask import flash, redirect, render_template, url_for
from flask_login import current_user, login_required, logout_user

from app.errors import ValidationFailed
from app.services import accounts
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
