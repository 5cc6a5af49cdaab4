"""The OAuth "Connect" flow against a real local Authlib authorization server, in both run
modes: connect, every way the callback can go wrong, a token refreshed once by two workers at
once, a refresh refused, disconnect with revocation; tokens never stored or shown in clear."""

from __future__ import annotations

import threading
import time
import uuid
from urllib.parse import urlsplit

import pytest
import requests
from sqlalchemy import select

from app.config import OAuthProvider
from app.db import db
from app.models import AuditLog, Connection
from app.services import oauth
from tests.integration.local_http import LocalService
from tests.integration.oauth_provider import CLIENT_ID, CLIENT_SECRET, OAuthProviderServer

REDIRECT = "http://127.0.0.1:5000/oauth/callback"
PROVIDER = OAuthProviderServer(REDIRECT)


@pytest.fixture
def provider():
    PROVIDER.codes.clear()
    PROVIDER.tokens.clear()
    PROVIDER.revoked.clear()
    PROVIDER.deny = PROVIDER.token_down = PROVIDER.refuse_refresh = False
    PROVIDER.expires_in = 3600
    PROVIDER.refreshes = PROVIDER.token_requests = 0
    return PROVIDER


@pytest.fixture
def settings_overrides():
    return {"base_url": "http://127.0.0.1:5000", "http_allow": ("127.0.0.1",),
            "oauth_providers": (OAuthProvider(
                name="generic", label="Test OAuth", authorize_url=PROVIDER.url + "/authorize",
                token_url=PROVIDER.url + "/token", userinfo_url=PROVIDER.url + "/userinfo",
                revoke_url=PROVIDER.url + "/revoke", scopes="profile", client_id=CLIENT_ID,
                client_secret=CLIENT_SECRET),)}


def begin(client, token) -> str:
    """Press Connect: the provider's authorize URL (with state and an S256 challenge)."""
    answer = client.post("/settings/connections/generic/connect", data={"csrf_token": token})
    assert answer.status_code == 302
    return answer.headers["Location"]


def consent(authorize_url: str) -> str:
    """The provider's answer to the browser: the callback path with its query."""
    answer = requests.get(authorize_url, allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    location = urlsplit(answer.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    return f"{location.path}?{location.query}"


def callback(client, path) -> str:
    answer = client.get(path, follow_redirects=True)
    assert answer.status_code == 200
    return answer.get_data(as_text=True)


def connections():
    found = list(db.session.scalars(select(Connection)))
    db.session.commit()
    return found


def connect(client, token) -> Connection:
    html = callback(client, consent(begin(client, token)))
    assert "Connected generic as ann." in html, html[:3000]
    return connections()[0]


def test_connect_stores_sealed_tokens_and_tests_the_connection(client, token, provider):
    url = begin(client, token)
    query = dict(part.split("=", 1) for part in urlsplit(url).query.split("&"))
    assert query["code_challenge_method"] == "S256" and query["state"]
    connection = connect(client, token)
    assert (connection.status, connection.account_label) == ("active", "ann")
    issued = provider.tokens[0]
    assert issued.access_token.encode() not in connection.access_token_ct
    assert issued.refresh_token.encode() not in connection.refresh_token_ct
    page = client.get("/settings/connections").get_data(as_text=True)
    assert "ann" in page and issued.access_token not in page
    actions = set(db.session.scalars(select(AuditLog.action)))
    db.session.commit()
    assert "connection.create" in actions


def test_a_wrong_or_reused_state_is_refused(client, token, provider):
    path = consent(begin(client, token))
    forged = path.replace("state=", "state=x")
    assert "has expired or was already used" in callback(client, forged)
    assert "Connected generic as ann." in callback(client, path)
    assert "has expired or was already used" in callback(client, path)  # once only
    assert len(connections()) == 1


def test_a_reused_code_is_refused_by_the_provider(client, token, provider):
    first = consent(begin(client, token))
    callback(client, first)
    code = dict(p.split("=", 1) for p in first.split("?", 1)[1].split("&"))["code"]
    second = consent(begin(client, token))
    state = dict(p.split("=", 1) for p in second.split("?", 1)[1].split("&"))["state"]
    html = callback(client, f"/oauth/callback?code={code}&state={state}")
    assert "Not connected: Test OAuth refused the code" in html
    assert len(connections()) == 1


def test_denied_consent_says_so_and_keeps_nothing(client, token, provider):
    provider.deny = True
    html = callback(client, consent(begin(client, token)))
    assert "Not connected: Test OAuth did not grant access: The resource owner" in html
    assert connections() == []


def test_the_token_endpoint_failing_keeps_nothing(client, token, provider):
    provider.token_down = True
    html = callback(client, consent(begin(client, token)))
    assert "Not connected: Test OAuth" in html
    assert connections() == []


def test_another_users_callback_is_refused(client, auth, token, provider):
    path = consent(begin(client, token))
    auth.logout()
    auth.register()
    assert "has expired or was already used" in callback(client, path)
    assert connections() == []


def run_http(client, user, connection, url):
    """Run http.request with the connection as its credential through the app's workers."""
    from app.services import executions, workflows

    flow = workflows.create(user, {"name": "Call", "nodes": [
        {"id": "start", "type": "trigger.manual"},
        {"id": "call", "type": "http.request", "credential_id": str(connection.id),
         "params": {"url": url, "body_type": "none"}}],
        "connections": [{"from": "start", "to": "call"}]})
    run, _new = executions.start_manual(user, flow.id, {})
    from app.models import Execution

    for _ in range(200):
        found = db.session.get(Execution, run.id)
        db.session.refresh(found)
        db.session.commit()
        if found.status in ("succeeded", "failed"):
            return found
        time.sleep(0.05)
    raise AssertionError("the run did not finish")


@pytest.fixture
def api_server():
    service = LocalService(lambda seen: (200, {"ok": True})).start()
    yield service
    service.stop()


def test_an_expiring_token_is_refreshed_before_a_node_uses_it(app, client, token, user,
                                                              provider, api_server):
    provider.expires_in = 30  # inside the refresh margin: the next use refreshes it
    connection = connect(client, token)
    old = provider.tokens[0].access_token
    with app.app_context():
        run = run_http(client, user, connection, api_server.url + "/me")
    assert run.status == "succeeded", run.error
    assert provider.refreshes == 1
    sent = api_server.seen[-1].headers["authorization"]
    assert sent.startswith("Bearer ") and sent != f"Bearer {old}"
    assert sent == f"Bearer {provider.tokens[-1].access_token}"


def test_two_workers_refresh_once(app, client, token, provider):
    provider.expires_in = 30
    connection = connect(client, token)
    provider.expires_in = 3600  # the refreshed token lasts
    got: list[str] = []
    barrier = threading.Barrier(2)

    def use():
        with app.app_context():
            barrier.wait()
            got.append(oauth.access_token(connection.user_id, connection.id))
            db.remove()

    threads = [threading.Thread(target=use) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert provider.refreshes == 1  # the second waited for the lock and read the new token
    assert got[0] == got[1] == provider.tokens[-1].access_token


def test_a_refused_refresh_fails_the_node_and_the_connection(app, client, token, user,
                                                             provider, api_server):
    provider.expires_in = 30
    connection = connect(client, token)
    provider.refuse_refresh = True
    with app.app_context():
        run = run_http(client, user, connection, api_server.url + "/me")
    assert run.status == "failed"
    assert "generic connection could not be refreshed" in run.error["message"]
    assert api_server.seen == []
    assert connections()[0].status == "failed"
    actions = set(db.session.scalars(select(AuditLog.action)))
    db.session.commit()
    assert "connection.refresh_failed" in actions


def test_disconnect_revokes_and_forgets(client, token, provider):
    connection = connect(client, token)
    access = provider.tokens[0].access_token
    answer = client.post(f"/settings/connections/{connection.id}/disconnect",
                         data={"csrf_token": token}, follow_redirects=True)
    assert "Disconnected." in answer.get_data(as_text=True)
    assert provider.revoked == [access]
    assert connections() == []
    assert client.post(f"/settings/connections/{uuid.uuid4()}/disconnect",
                       data={"csrf_token": token}).status_code == 404
