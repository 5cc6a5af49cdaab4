"""Credentials against the real database of each run mode: the API never shows a secret
again, the database holds only ciphertext, an http.request node sends each kind to a local
server, and the vault refuses swapped ciphertexts and unknown KEKs with a clear error;
``flask jobsprint rotate-keys`` re-wraps every data key."""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
import uuid
from dataclasses import replace

import pytest
from sqlalchemy import select, update

from app.config import KeyEncryptionKey
from app.db import db
from app.models import Credential, Webhook
from tests.integration.conftest import ApiClient
from tests.integration.local_http import LocalService

SECRET = "sk_live_" + "Z" * 24


@pytest.fixture
def settings_overrides():
    return {"http_allow": ("127.0.0.1",)}  # the capture server below is on loopback


@pytest.fixture
def capture():
    """A local server that answers 200 (401 on /deny) and keeps each request."""
    service = LocalService(lambda seen: (401, {"ok": False}) if seen.path == "/deny"
                           else (200, {"ok": True})).start()
    yield service.url, service.seen
    service.stop()


@pytest.fixture
def api(api_client):
    return api_client


def run_http(api, url, credential_id):
    return api.run_node({"id": "call", "type": "http.request", "credential_id": credential_id,
                         "params": {"url": url, "body_type": "none"}})


def test_create_list_get_delete_and_never_show_the_secret(api, caplog):
    caplog.set_level(logging.DEBUG)
    created = api.credential("api_key", {"key": SECRET, "in": "header", "name": "X-Key"})
    assert created["meta"] == {"in": "header", "name": "X-Key"}
    listed = api.get("/credentials")
    one = api.get(f"/credentials/{created['id']}")
    for answer in (listed, one):
        assert answer.status_code == 200 and SECRET not in answer.get_data(as_text=True)
    assert [c["id"] for c in listed.get_json()["items"]] == [created["id"]]
    row = db.session.scalars(select(Credential)).one()
    db.session.commit()
    assert SECRET.encode() not in row.secret_ct and SECRET not in json.dumps(row.meta)
    assert SECRET not in caplog.text
    assert api.delete(f"/credentials/{created['id']}").status_code == 204
    assert api.get(f"/credentials/{created['id']}").status_code == 404


def test_bad_credentials_say_what_and_where(api):
    answer = api.post("/credentials", {"name": "", "kind": "ssh", "secret": []})
    assert answer.status_code == 400
    paths = {d["path"] for d in answer.get_json()["error"]["details"]}
    assert paths == {"name", "kind", "secret"}
    answer = api.post("/credentials", {"name": "x", "kind": "basic",
                                       "secret": {"username": "a:b"}})
    paths = {d["path"] for d in answer.get_json()["error"]["details"]}
    assert paths == {"secret.username", "secret.password"}
    answer = api.post("/credentials", {"name": "x", "kind": "api_key",
                                       "secret": {"key": "k", "name": "bad name\n"}})
    assert {d["path"] for d in answer.get_json()["error"]["details"]} == {"secret.name"}


def test_another_users_credential_is_not_found_nor_usable(api, client, auth, capture):
    url, seen = capture
    mine = api.credential("bearer", {"token": SECRET})
    other = ApiClient(client, auth.register_api()["token"])
    assert other.get(f"/credentials/{mine['id']}").status_code == 404
    assert other.delete(f"/credentials/{mine['id']}").status_code == 404
    # a workflow naming someone else's credential is refused when saved
    answer = other.post("/workflows", {"name": "Steal", "nodes": [
        {"id": "start", "type": "trigger.manual"},
        {"id": "call", "type": "http.request", "credential_id": mine["id"],
         "params": {"url": url}}], "connections": [{"from": "start", "to": "call"}]})
    assert answer.status_code == 400
    assert seen == []


@pytest.mark.parametrize(("kind", "secret", "expect"), [
    ("api_key", {"key": SECRET, "in": "header", "name": "X-Api-Key"},
     lambda r: r.headers["x-api-key"] == SECRET),
    ("api_key", {"key": SECRET, "in": "query", "name": "token"},
     lambda r: r.query["token"] == [SECRET]),
    ("bearer", {"token": SECRET}, lambda r: r.headers["authorization"] == f"Bearer {SECRET}"),
    ("basic", {"username": "ann", "password": SECRET},
     lambda r: r.headers["authorization"]
     == "Basic " + base64.b64encode(f"ann:{SECRET}".encode()).decode()),
])
def test_the_http_node_sends_each_kind(api, capture, kind, secret, expect):
    url, seen = capture
    created = api.credential(kind, secret)
    run = run_http(api, url + "/hello", created["id"])
    assert run["status"] == "succeeded", run
    assert len(seen) == 1 and expect(seen[0])
    assert SECRET not in json.dumps(run)  # neither in the run's result nor its nodes
    assert api.get(f"/credentials/{created['id']}").get_json()["last_used_at"]


def test_test_endpoint_reports_whether_the_service_accepts_it(api, capture):
    url, seen = capture
    created = api.credential("bearer", {"token": SECRET})
    ok = api.post(f"/credentials/{created['id']}/test", {"url": url + "/me"}).get_json()
    assert ok == {"ok": True, "status": 200}
    denied = api.post(f"/credentials/{created['id']}/test", {"url": url + "/deny"}).get_json()
    assert denied == {"ok": False, "status": 401}
    assert seen[0].headers["authorization"] == f"Bearer {SECRET}"
    assert api.post(f"/credentials/{created['id']}/test", {"url": "ftp://x"}).status_code == 400


def test_a_ciphertext_moved_to_another_row_does_not_open(api, capture):
    url, seen = capture
    first = api.credential("bearer", {"token": SECRET}, name="first")
    second = api.credential("bearer", {"token": "other-token-value"}, name="second")
    donor = db.session.get(Credential, uuid.UUID(first["id"]))
    db.session.execute(update(Credential).where(Credential.id == uuid.UUID(second["id"]))
                       .values(secret_ct=donor.secret_ct, wrapped_key=donor.wrapped_key))
    db.session.commit()
    run = run_http(api, url, second["id"])
    assert run["status"] == "failed"
    message = run["error"]["message"]
    assert "credential 'second' cannot be decrypted" in message and SECRET not in message
    assert seen == []  # nothing was sent


def test_an_unknown_kek_is_a_clear_error(app, api, capture):
    url, _seen = capture
    created = api.credential("bearer", {"token": SECRET})
    other = KeyEncryptionKey("other", secrets.token_bytes(32))
    app.config["SETTINGS"] = replace(app.config["SETTINGS"], keks=(other,))
    app.extensions.pop("jobsprint.vault", None)
    run = run_http(api, url, created["id"])
    assert run["status"] == "failed"
    assert "is not configured" in run["error"]["message"]


def test_rotate_keys_rewraps_every_data_key_and_they_still_open(app, api, capture, runner):
    url, seen = capture
    created = api.credential("basic", {"username": "ann", "password": SECRET})
    workflow = api.post("/workflows", {"name": "Hook", "nodes": [
        {"id": "hook", "type": "trigger.webhook"}], "connections": []}).get_json()
    secret_before = api.get(f"/workflows/{workflow['id']}/webhook").get_json()["secret"]
    old = app.config["SETTINGS"].keks[0]
    new = KeyEncryptionKey("new", secrets.token_bytes(32))
    app.config["SETTINGS"] = replace(app.config["SETTINGS"], keks=(new, old))
    app.extensions.pop("jobsprint.vault", None)
    result = runner.invoke(args=["jobsprint", "rotate-keys"])
    assert result.exit_code == 0, result.output
    assert "credentials: 1 re-wrapped" in result.output
    assert "webhooks: 1 re-wrapped" in result.output
    assert {r.kek_id for r in db.session.scalars(select(Credential))} == {"new"}
    assert {r.kek_id for r in db.session.scalars(select(Webhook))} == {"new"}
    db.session.commit()
    again = runner.invoke(args=["jobsprint", "rotate-keys"])
    assert "credentials: 0 re-wrapped" in again.output  # idempotent
    app.config["SETTINGS"] = replace(app.config["SETTINGS"], keks=(new,))  # old key retired
    app.extensions.pop("jobsprint.vault", None)
    run = run_http(api, url, created["id"])
    assert run["status"] == "succeeded", run
    assert api.get(f"/workflows/{workflow['id']}/webhook").get_json()["secret"] == secret_before


def test_a_run_in_flight_during_a_rotation_uses_its_credential_after_it(app, api, capture,
                                                                         runner):
    """A run waiting between two nodes while the keys rotate (new KEK first, old kept) opens
    the re-wrapped credential when it goes on; runs started later do too, old key retired."""
    url, seen = capture
    created = api.credential("bearer", {"token": SECRET})
    workflow = api.post("/workflows", {"name": "Slow", "nodes": [
        {"id": "start", "type": "trigger.manual"},
        {"id": "pause", "type": "logic.wait", "params": {"seconds": 1.5}},
        {"id": "call", "type": "http.request", "credential_id": created["id"],
         "params": {"url": url + "/late", "body_type": "none"}}],
        "connections": [{"from": "start", "to": "pause"}, {"from": "pause", "to": "call"}]})
    run_id = api.post(f"/workflows/{workflow.get_json()['id']}/run",
                      {"input": {}}).get_json()["execution_id"]
    deadline = time.monotonic() + 10
    while api.get(f"/executions/{run_id}").get_json()["status"] not in ("running", "waiting"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    old = app.config["SETTINGS"].keks[0]
    new = KeyEncryptionKey("new", secrets.token_bytes(32))
    app.config["SETTINGS"] = replace(app.config["SETTINGS"], keks=(new, old))
    app.extensions.pop("jobsprint.vault", None)
    assert "credentials: 1 re-wrapped" in runner.invoke(args=["jobsprint", "rotate-keys"]).output
    assert seen == []  # the run was still waiting
    deadline = time.monotonic() + 20
    while (run := api.get(f"/executions/{run_id}").get_json())["status"] not in (
            "succeeded", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert run["status"] == "succeeded", run
    assert seen[-1].headers["authorization"] == f"Bearer {SECRET}"
    app.config["SETTINGS"] = replace(app.config["SETTINGS"], keks=(new,))
    app.extensions.pop("jobsprint.vault", None)
    assert run_http(api, url, created["id"])["status"] == "succeeded"


def test_the_page_adds_lists_and_deletes_without_echoing_secrets(client, auth):
    auth.register()
    token = auth.csrf_token("/settings")
    bad = client.post("/settings/credentials", data={
        "csrf_token": token, "name": "Stripe", "kind": "api_key", "key": "",
        "in": "header", "param_name": "X Bad"})
    assert bad.status_code == 400
    html = bad.get_data(as_text=True)
    assert "<code>secret.key</code>: is required" in html and 'value="Stripe"' in html
    saved = client.post("/settings/credentials", data={
        "csrf_token": token, "name": "Stripe <live>", "kind": "api_key", "key": SECRET,
        "in": "query", "param_name": "api_key"}, follow_redirects=True)
    html = saved.get_data(as_text=True)
    assert saved.status_code == 200 and "Its secret will not be shown again." in html
    assert "Stripe &lt;live&gt;" in html and SECRET not in html
    assert "query <code>api_key</code>" in html
    row_id = db.session.scalars(select(Credential.id)).one()
    db.session.commit()
    gone = client.post(f"/settings/credentials/{row_id}/delete",
                       data={"csrf_token": token}, headers={"HX-Request": "true"})
    assert gone.headers["HX-Redirect"] == "/settings/credentials"
    assert "No credentials yet." in client.get("/settings/credentials").get_data(as_text=True)
