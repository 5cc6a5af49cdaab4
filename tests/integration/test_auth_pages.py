"""Sign-up, sign-in, sign-out and settings pages, with CSRF and server-side sessions."""

from __future__ import annotations

from sqlalchemy import select

from app.db import db
from app.models import AuditLog


def test_register_signs_in_and_shows_the_empty_workflow_list(client, auth):
    response = auth.register(email="  Page@Example.com")
    assert response.status_code == 302
    assert response.headers["Location"] == "/workflows"
    page = client.get("/workflows").get_data(as_text=True)
    assert "No workflows yet" in page
    assert "page@example.com" in page


def test_duplicate_email_is_a_form_error(client, auth):
    auth.register(email="dup@example.com")
    auth.logout()
    response = auth.register(email="DUP@example.com ")
    assert response.status_code == 400
    assert "taken" in response.get_data(as_text=True)


def test_short_password_is_a_form_error_next_to_the_field(auth):
    response = auth.register(password="short")
    html = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "Field must be between 8 and 1024 characters long." in html


def test_a_form_post_without_csrf_token_is_400(client):
    response = client.post("/login", data={"email": "a@example.com", "password": "x" * 8})
    assert response.status_code == 400
    assert "security token" in response.get_data(as_text=True)
    response = client.post("/register", data={"email": "a@example.com", "password": "x" * 8,
                                              "confirm": "x" * 8})
    assert response.status_code == 400


def test_wrong_password_on_the_page_is_401_and_audited(client, auth):
    auth.register(email="gina@example.com")
    auth.logout()
    response = auth.login("gina@example.com", "not the password")
    assert response.status_code == 401
    assert "Wrong email or password." in response.get_data(as_text=True)
    actions = db.session.scalars(select(AuditLog.action).order_by(AuditLog.created_at)).all()
    assert actions == ["user.register", "user.logout", "user.login_failed"]


def test_logout_revokes_the_session_even_if_the_cookie_is_replayed(app, client, auth):
    auth.register(email="hank@example.com")
    assert client.get("/workflows").status_code == 200
    stolen = client.get_cookie("session").value
    assert auth.logout().status_code == 302
    assert client.get("/workflows").status_code == 302  # back to the login page

    replay = app.test_client()
    replay.set_cookie("session", stolen)
    response = replay.get("/workflows")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")


def test_password_change_revokes_every_session_and_token(app, client, auth):
    auth.register(email="ivy@example.com")
    token = client.post("/api/v1/auth/token", json={"email": "ivy@example.com",
                                                    "password": "correct horse battery"})
    token = token.get_json()["token"]
    other_browser = app.test_client()
    AuthLogin = type(auth)
    AuthLogin(other_browser).login("ivy@example.com")
    assert other_browser.get("/workflows").status_code == 200

    response = client.post("/settings", data={
        "csrf_token": auth.csrf_token("/settings"), "current_password": "correct horse battery",
        "new_password": "a brand new password", "confirm": "a brand new password"})
    assert response.status_code == 302

    assert other_browser.get("/workflows").status_code == 302
    assert client.get("/workflows").status_code == 302
    assert client.get("/api/v1/me",
                      headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert auth.login("ivy@example.com", "a brand new password").status_code == 302
    assert auth.login("ivy@example.com", "correct horse battery").status_code == 401


def test_password_change_needs_the_current_password(client, auth):
    auth.register()
    response = client.post("/settings", data={
        "csrf_token": auth.csrf_token("/settings"), "current_password": "wrong one!",
        "new_password": "a brand new password", "confirm": "a brand new password"})
    assert response.status_code == 400
    assert "is not your current password" in response.get_data(as_text=True)


def test_login_redirects_only_to_same_site_paths(client, auth):
    auth.register(email="jo@example.com")
    auth.logout()
    for target, expected in [("/settings", "/settings"), ("//evil.example/x", "/workflows"),
                             ("https://evil.example/", "/workflows")]:
        token = auth.csrf_token("/login")
        response = client.post(f"/login?next={target}", data={
            "csrf_token": token, "email": "jo@example.com", "password": "correct horse battery"})
        assert response.headers["Location"] == expected
        auth.logout()


def test_a_burst_of_20_failed_page_logins_is_429(client, auth):
    auth.register(email="kim@example.com")
    auth.logout()
    statuses = [auth.login("kim@example.com", f"wrong {i}").status_code for i in range(20)]
    assert statuses[:10] == [401] * 10
    assert set(statuses[10:]) == {429}


def test_pages_need_a_session(client):
    for path in ["/workflows", "/settings"]:
        response = client.get(path)
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/login?next=")
