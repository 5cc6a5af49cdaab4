"""The accounts API of DESIGN.md, against both run modes, with every bad input sent for real."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from sqlalchemy import func, select

from app.db import db
from app.models import AuditLog, User
from app.services import tokens


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_register_returns_user_and_token(client, auth):
    body = auth.register_api(email="  Alice@Example.COM ")
    assert body["user"]["email"] == "alice@example.com"
    me = client.get("/api/v1/me", headers=bearer(body["token"]))
    assert me.status_code == 200
    assert me.get_json() == {"id": body["user"]["id"], "email": "alice@example.com"}


@pytest.mark.parametrize("variant", ["bob@example.com", "BOB@EXAMPLE.COM", "  bob@example.com",
                                     "Bob@Example.Com  ", "\tbob@example.com\n"])
def test_duplicate_email_in_any_case_or_spacing_is_409(client, auth, variant):
    auth.register_api(email="bob@example.com")
    response = client.post("/api/v1/auth/register",
                           json={"email": variant, "password": "another password"})
    assert response.status_code == 409
    error = response.get_json()["error"]
    assert error["code"] == "conflict"
    assert error["details"] == [{"path": "email", "message": "taken"}]
    assert db.session.scalar(select(func.count()).select_from(User)) == 1


def test_password_of_7_characters_is_refused_and_8_accepted(client):
    short = client.post("/api/v1/auth/register",
                        json={"email": "p7@example.com", "password": "1234567"})
    assert short.status_code == 400
    assert short.get_json()["error"]["details"] == [
        {"path": "password", "message": "must be at least 8 characters"}]
    ok = client.post("/api/v1/auth/register", json={"email": "p8@example.com",
                                                    "password": "12345678"})
    assert ok.status_code == 201


def test_passwords_either_side_of_bcrypts_72_bytes_both_count_in_full(client):
    at_limit = "é" * 36  # 72 bytes in UTF-8
    over = at_limit + "x"  # 73 bytes: bcrypt alone would drop the last byte
    assert len(at_limit.encode()) == 72 and len(over.encode()) == 73
    assert client.post("/api/v1/auth/register",
                       json={"email": "long@example.com", "password": over}).status_code == 201
    ok = client.post("/api/v1/auth/token", json={"email": "long@example.com", "password": over})
    assert ok.status_code == 200
    prefix = client.post("/api/v1/auth/token",
                         json={"email": "long@example.com", "password": at_limit})
    assert prefix.status_code == 401
    stored = db.session.scalar(select(User.password_hash))
    assert stored.startswith("$2b$10$")  # bcrypt, cost 10


def test_a_one_megabyte_email_is_a_400_not_a_500(client):
    response = client.post("/api/v1/auth/register",
                           json={"email": "a" * (1024 * 1024) + "@example.com",
                                 "password": "12345678"})
    assert response.status_code == 400
    assert response.get_json()["error"]["details"][0]["path"] == "email"


@pytest.mark.parametrize("body,path", [
    ({"password": "12345678"}, "email"),
    ({"email": 5, "password": "12345678"}, "email"),
    ({"email": "x@example.com"}, "password"),
    ({"email": "not an email", "password": "12345678"}, "email"),
])
def test_malformed_registrations_name_the_field(client, body, path):
    response = client.post("/api/v1/auth/register", json=body)
    assert response.status_code == 400
    assert response.get_json()["error"]["details"][0]["path"] == path


@pytest.mark.parametrize("data,content_type", [
    ("not json", "application/json"), ("[1, 2]", "application/json"),
    ('{"email": "a@b.co"}', "text/plain")])
def test_non_object_bodies_are_400(client, data, content_type):
    response = client.post("/api/v1/auth/register", data=data, content_type=content_type)
    assert response.status_code == 400
    assert "error" in response.get_json()


def test_token_with_wrong_password_is_401_and_audited(client, auth):
    auth.register_api(email="carol@example.com")
    response = client.post("/api/v1/auth/token",
                           json={"email": "carol@example.com", "password": "wrong password"})
    assert response.status_code == 401
    assert response.get_json()["error"]["message"] == "wrong email or password"
    actions = db.session.scalars(select(AuditLog.action).order_by(AuditLog.created_at)).all()
    assert actions == ["user.register", "user.login_failed"]
    failed = db.session.scalar(select(AuditLog).where(AuditLog.action == "user.login_failed"))
    assert failed.client_addr == "127.0.0.1"


def test_token_expires_at_is_24_hours_ahead(client, auth):
    auth.register_api(email="dave@example.com")
    body = client.post("/api/v1/auth/token", json={"email": "dave@example.com",
                                                   "password": "correct horse battery"}).get_json()
    expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert abs((expires - datetime.now(UTC)) - timedelta(hours=24)) < timedelta(minutes=1)


def _forge(app, claims, key=None, algorithm="HS256"):
    with app.app_context():
        key = key if key is not None else tokens._signing_key()
    return jwt.encode(claims, key, algorithm=algorithm)


def test_alg_none_tampered_and_expired_tokens_are_401(app, client, auth):
    body = auth.register_api()
    user_id = body["user"]["id"]
    good = body["token"]
    assert client.get("/api/v1/me", headers=bearer(good)).status_code == 200

    header, payload, signature = good.split(".")
    none_token = jwt.encode({"sub": user_id, "jti": "x", "iat": int(time.time()),
                             "exp": int(time.time()) + 60}, None, algorithm="none")
    tampered = f"{header}.{payload}.{signature[:-4]}AAAA"
    now = datetime.now(UTC)
    expired = _forge(app, {"sub": user_id, "jti": "y", "iat": now - timedelta(days=2),
                           "exp": now - timedelta(days=1)})
    wrong_key = _forge(app, {"sub": user_id, "jti": "z", "iat": now,
                             "exp": now + timedelta(hours=1)}, key=b"k" * 32)
    for token, message in [(none_token, "invalid token"), (tampered, "invalid token"),
                           (expired, "token expired"), (wrong_key, "invalid token"),
                           ("garbage", "invalid token")]:
        response = client.get("/api/v1/me", headers=bearer(token))
        assert response.status_code == 401, token
        assert response.get_json()["error"]["message"] == message
    assert client.get("/api/v1/me").status_code == 401
    assert client.get("/api/v1/me", headers={"Authorization": "Basic abc"}).status_code == 401


def test_a_validly_signed_token_that_was_never_issued_is_refused(app, client, auth):
    user_id = auth.register_api()["user"]["id"]
    now = datetime.now(UTC)
    unrecorded = _forge(app, {"sub": user_id, "jti": "never-issued", "iat": now,
                              "exp": now + timedelta(hours=1)})
    response = client.get("/api/v1/me", headers=bearer(unrecorded))
    assert response.status_code == 401
    assert response.get_json()["error"]["message"] == "token revoked"


def test_api_logout_revokes_that_token_only(client, auth):
    body = auth.register_api(email="erin@example.com")
    other = client.post("/api/v1/auth/token", json={"email": "erin@example.com",
                                                    "password": "correct horse battery"})
    assert client.post("/api/v1/auth/logout", headers=bearer(body["token"])).status_code == 204
    assert client.get("/api/v1/me", headers=bearer(body["token"])).status_code == 401
    assert client.get("/api/v1/me", headers=bearer(other.get_json()["token"])).status_code == 200


def test_a_burst_of_20_failed_logins_is_rate_limited_with_retry_after(client, auth):
    auth.register_api(email="frank@example.com")
    statuses = [client.post("/api/v1/auth/token", json={"email": "frank@example.com",
                                                        "password": f"wrong {i}"}).status_code
                for i in range(20)]
    assert statuses[:10] == [401] * 10
    assert set(statuses[10:]) == {429}
    limited = client.post("/api/v1/auth/token", json={"email": "frank@example.com",
                                                      "password": "correct horse battery"})
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) > 0
    assert limited.get_json()["error"]["code"] == "rate_limited"


class TestPerUserLimit:
    @pytest.fixture
    def settings_overrides(self):
        return {"api_rate_limit": "5 per minute"}

    def test_api_calls_are_limited_per_user_after_authentication(self, client, auth):
        first = auth.register_api()["token"]
        second = auth.register_api()["token"]
        statuses = [client.get("/api/v1/me", headers=bearer(first)).status_code
                    for _ in range(7)]
        assert statuses == [200] * 5 + [429] * 2
        limited = client.get("/api/v1/me", headers=bearer(first))
        assert int(limited.headers["Retry-After"]) >= 1
        # Another user is not affected, and bad tokens do not spend anyone's budget.
        assert client.get("/api/v1/me", headers=bearer(second)).status_code == 200


def test_unknown_api_route_is_json_404(client):
    response = client.get("/api/v1/does-not-exist")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"
