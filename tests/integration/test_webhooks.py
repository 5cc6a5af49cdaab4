"""Signed webhooks end to end, in both run modes: the API gives the URL and secret, a signed
POST /hooks/<token> starts the workflow, and every way of getting it wrong is refused."""

from __future__ import annotations

import io
import json
import logging
import math
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from types import SimpleNamespace

import flask
import pytest
import requests
from sqlalchemy import func, select, update

from app import metrics
from app.db import db
from app.models import AuditLog, Execution, TriggerEvent, Webhook, WebhookLink, utcnow
from app.services import cache, webhooks
from tests.integration import webhook_signing as signing

BODY = {"order_id": 1, "amount": 12.5, "email": "A@B.com"}


def definition(params=None, *, wait_s=None, fail=False, concurrency=1):
    nodes = [{"id": "hook", "type": "trigger.webhook", "params": params or {}},
             {"id": "calc", "type": "logic.set",
              "params": {"keep": "set_only",
                         "fields": {"total": "{{ input.body.amount * 2 }}",
                                    "email": "{{ input.body.email | lower }}"}}}]
    connections = [{"from": "hook", "to": "calc"}]
    if wait_s is not None:
        nodes.append({"id": "pause", "type": "logic.wait", "params": {"seconds": wait_s}})
        connections.append({"from": "calc", "to": "pause"})
    if fail:
        nodes.append({"id": "boom", "type": "logic.set",
                      "params": {"fields": {"v": "{{ input.total.nope() }}"}}})
        connections.append({"from": "calc", "to": "boom"})
    return {"name": "Orders", "nodes": nodes, "connections": connections,
            "settings": {"concurrency": concurrency}}


def raw(body) -> bytes:
    return json.dumps(body).encode() if not isinstance(body, bytes) else body


class Api:
    def __init__(self, client, token):
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    def post(self, path, json=None):
        return self.client.post(path, json=json, headers=self.headers)

    def put(self, path, json=None):
        return self.client.put(path, json=json, headers=self.headers)

    def get(self, path):
        return self.client.get(path, headers=self.headers)

    def delete(self, path):
        return self.client.delete(path, headers=self.headers)

    def workflow(self, body=None, *, active=True):
        created = self.post("/api/v1/workflows", body or definition())
        assert created.status_code == 201, created.get_json()
        workflow_id = created.get_json()["id"]
        if active:
            assert self.post(f"/api/v1/workflows/{workflow_id}/activate").status_code == 200
        return workflow_id

    def webhook(self, workflow_id):
        answer = self.get(f"/api/v1/workflows/{workflow_id}/webhook")
        assert answer.status_code == 200, answer.get_json()
        return answer.get_json()

    def wait(self, execution_id, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.get(f"/api/v1/executions/{execution_id}").get_json()
            if body["status"] in ("succeeded", "failed", "cancelled"):
                return body
            time.sleep(0.1)
        raise AssertionError(f"run {execution_id} still {body['status']}")


@pytest.fixture
def api(client, auth):
    return Api(client, auth.register_api()["token"])


@pytest.fixture
def hook(api):
    """An active workflow with a Jobsprint-signed webhook: (workflow_id, path, secret)."""
    workflow_id = api.workflow()
    info = api.webhook(workflow_id)
    return workflow_id, "/hooks/" + info["url"].rsplit("/", 1)[1], info["secret"]


def deliver(client, path, body=BODY, headers=None, content_type="application/json", **kw):
    return client.post(path, data=raw(body),
                       headers={"Content-Type": content_type, **(headers or {})}, **kw)


def signed(client, path, secret, body=BODY, **kw):
    data = raw(body)
    return deliver(client, path, data, signing.jobsprint(secret, data), **kw)


def executions_count() -> int:
    count = db.session.scalar(select(func.count()).select_from(Execution))
    db.session.commit()
    return count


# --- the happy path ----------------------------------------------------------

def test_a_signed_delivery_starts_the_workflow(api, client, hook):
    workflow_id, path, secret = hook
    answer = deliver(client, path + "?source=shop&tag=a&tag=b", raw(BODY),
                     {**signing.jobsprint(secret, raw(BODY)), "User-Agent": "shop/1.0",
                      "Cookie": "session=abc", "Authorization": "Bearer nope"})
    assert answer.status_code == 202, answer.get_json()
    body = answer.get_json()
    assert set(body) == {"event_id", "execution_ids"} and len(body["execution_ids"]) == 1
    run = api.wait(body["execution_ids"][0])
    assert run["status"] == "succeeded"
    assert run["result"] == {"total": 25.0, "email": "a@b.com"}
    assert run["trigger"] == {"type": "webhook", "node_id": "hook",
                              "event_id": body["event_id"]}
    payload = run["nodes"][0]["output"]
    assert payload["body"] == BODY
    assert payload["query"] == {"source": "shop", "tag": ["a", "b"]}
    assert payload["headers"] == {"content-type": "application/json",
                                  "user-agent": "shop/1.0"}
    assert payload["received_at"].endswith("Z")
    assert run["workflow_id"] == workflow_id


def test_the_api_describes_the_webhook_to_its_owner_only(app, api, client, auth, hook):
    workflow_id, path, secret = hook
    info = api.webhook(workflow_id)
    assert info["url"] == app.config["SETTINGS"].base_url + path
    assert info["scheme"] == "jobsprint" and info["warning"] is None
    assert info["signature_header"] == "X-Jobsprint-Signature"
    assert info["previous_secret_expires_at"] is None and len(secret) > 40
    stranger = Api(client, auth.register_api()["token"])
    assert stranger.get(f"/api/v1/workflows/{workflow_id}/webhook").status_code == 404
    assert stranger.post(f"/api/v1/workflows/{workflow_id}/webhook/rotate-secret"
                         ).status_code == 404
    manual = api.post("/api/v1/workflows", {"name": "M", "nodes": [
        {"id": "go", "type": "trigger.manual", "params": {}}]}).get_json()["id"]
    missing = api.get(f"/api/v1/workflows/{manual}/webhook")
    assert missing.status_code == 404
    assert missing.get_json()["error"]["message"] == "this workflow has no webhook trigger"


def test_the_url_survives_edits_and_deactivation_and_dies_with_the_workflow(api, client, hook):
    workflow_id, path, secret = hook
    url = api.webhook(workflow_id)["url"]
    edited = definition({"respond": "immediately"})
    assert api.put(f"/api/v1/workflows/{workflow_id}", edited).status_code == 200
    assert api.webhook(workflow_id)["url"] == url
    assert signed(client, path, secret).status_code == 202

    api.post(f"/api/v1/workflows/{workflow_id}/deactivate")
    refused = signed(client, path, secret, body={**BODY, "n": 2})
    assert refused.status_code == 404
    assert refused.get_json()["error"]["code"] == "not_found"
    api.post(f"/api/v1/workflows/{workflow_id}/activate")
    assert api.webhook(workflow_id)["url"] == url
    assert signed(client, path, secret, body={**BODY, "n": 3}).status_code == 202

    assert api.delete(f"/api/v1/workflows/{workflow_id}").status_code == 204
    assert signed(client, path, secret, body={**BODY, "n": 4}).status_code == 404
    assert db.session.scalar(select(func.count()).select_from(WebhookLink)) == 0
    assert db.session.scalar(select(func.count()).select_from(Webhook)) == 0


def test_removing_the_webhook_node_removes_its_webhook(api, client, hook):
    workflow_id, path, secret = hook
    manual_only = {"name": "M", "nodes": [{"id": "go", "type": "trigger.manual",
                                           "params": {}}]}
    assert api.put(f"/api/v1/workflows/{workflow_id}", manual_only).status_code == 200
    assert signed(client, path, secret).status_code == 404
    assert api.get(f"/api/v1/workflows/{workflow_id}/webhook").status_code == 404


def test_each_webhook_node_has_its_own_url_chosen_by_node_id(api, client):
    body = definition()
    body["nodes"].append({"id": "hook2", "type": "trigger.webhook", "params": {}})
    body["connections"].append({"from": "hook2", "to": "calc"})
    workflow_id = api.workflow(body)
    first = api.webhook(workflow_id)
    second = api.get(f"/api/v1/workflows/{workflow_id}/webhook?node_id=hook2").get_json()
    assert first["node_id"] == "hook" and second["node_id"] == "hook2"
    assert first["url"] != second["url"] and first["secret"] != second["secret"]
    answer = signed(client, "/hooks/" + second["url"].rsplit("/", 1)[1], second["secret"])
    run = api.wait(answer.get_json()["execution_ids"][0])
    assert run["trigger"]["node_id"] == "hook2" and run["status"] == "succeeded"


# --- signatures ----------------------------------------------------------

def _now() -> int:
    return int(time.time())


JOBSPRINT_FAILURES = {
    "missing header": (lambda s, b: {}, "missing X-Jobsprint-Signature header"),
    "malformed": (lambda s, b: {"X-Jobsprint-Signature": "v1=abc"},
                  "malformed X-Jobsprint-Signature header"),
    "no timestamp": (lambda s, b: {"X-Jobsprint-Signature": "v1=" + "a" * 64},
                     "malformed X-Jobsprint-Signature header"),
    "wrong secret": (lambda s, b: signing.jobsprint("whsec_not-the-secret-at-all", b),
                     "the X-Jobsprint-Signature signature does not match"),
    "body changed by one byte": (lambda s, b: signing.jobsprint(s, b[:-1] + b" "),
                                 "the X-Jobsprint-Signature signature does not match"),
    "301 s old": (lambda s, b: signing.jobsprint(s, b, _now() - 301),
                  "the X-Jobsprint-Signature timestamp is more than 300 s from now"),
    # Rounded up: a whole-second stamp taken from the clock's floor is up to 1 s less ahead.
    "301 s in the future": (lambda s, b: signing.jobsprint(s, b, math.ceil(time.time()) + 301),
                            "the X-Jobsprint-Signature timestamp is more than 300 s from now"),
}


@pytest.mark.parametrize("case", list(JOBSPRINT_FAILURES))
def test_every_jobsprint_signature_failure_is_a_401_naming_the_header(client, hook, case):
    _workflow_id, path, secret = hook
    make, message = JOBSPRINT_FAILURES[case]
    data = raw(BODY)
    answer = deliver(client, path, data, make(secret, data))
    assert answer.status_code == 401
    error = answer.get_json()["error"]
    assert error["code"] == "unauthorized" and error["message"].startswith(message)
    assert secret not in answer.get_data(as_text=True)
    assert executions_count() == 0


def test_a_timestamp_299_s_away_still_verifies(client, hook, monkeypatch):
    _workflow_id, path, secret = hook
    # The verifier's clock is held still: a second passing between signing and checking
    # would make 299 s into 300 s on a loaded machine.
    now = _now()
    monkeypatch.setattr(webhooks, "time", SimpleNamespace(time=lambda: float(now),
                                                    monotonic=time.monotonic))
    for offset in (-299, 299):
        data = raw({**BODY, "offset": offset})
        assert deliver(client, path, data,
                       signing.jobsprint(secret, data, now + offset)).status_code == 202


PRESET_FAILURES = {
    "stripe": (lambda s, b: signing.stripe(s, b, _now() - 400),
               "the Stripe-Signature timestamp is more than 300 s from now"),
    "github": (lambda s, b: {"X-Hub-Signature-256": "sha1=abc"},
               "malformed X-Hub-Signature-256 header (expected sha256=<hex>)"),
    "slack": (lambda s, b: signing.slack("some-other-signing-secret", b),
              "the X-Slack-Signature signature does not match"),
}


@pytest.mark.parametrize("scheme", ["stripe", "github", "slack"])
def test_each_preset_verifies_its_providers_signature(api, client, scheme):
    workflow_id = api.workflow(definition({"auth": scheme}))
    info = api.webhook(workflow_id)
    assert info["scheme"] == scheme
    path, secret = "/hooks/" + info["url"].rsplit("/", 1)[1], info["secret"]
    data = raw(BODY)
    accepted = deliver(client, path, data, signing.SIGNERS[scheme](secret, data))
    assert accepted.status_code == 202, accepted.get_json()
    make, message = PRESET_FAILURES[scheme]
    refused = deliver(client, path, raw({**BODY, "n": 2}), make(secret, raw({**BODY, "n": 2})))
    assert refused.status_code == 401
    assert refused.get_json()["error"]["message"] == message


def test_stripe_accepts_any_matching_v1_and_a_provider_issued_secret(api, client):
    workflow_id = api.workflow(definition({"auth": "stripe"}))
    issued = "whsec_" + "S" * 32
    rotated = api.post(f"/api/v1/workflows/{workflow_id}/webhook/rotate-secret",
                       {"secret": issued})
    assert rotated.status_code == 200 and rotated.get_json()["secret"] == issued
    path = "/hooks/" + rotated.get_json()["url"].rsplit("/", 1)[1]
    data = raw(BODY)
    answer = deliver(client, path, data, signing.stripe(issued, data, extra_v1="f" * 64))
    assert answer.status_code == 202
    short = api.post(f"/api/v1/workflows/{workflow_id}/webhook/rotate-secret",
                     {"secret": "short"})
    assert short.status_code == 400
    assert short.get_json()["error"]["details"][0]["path"] == "secret"


def test_github_deliveries_are_deduplicated_by_delivery_id(api, client):
    workflow_id = api.workflow(definition({"auth": "github"}))
    info = api.webhook(workflow_id)
    path, secret = "/hooks/" + info["url"].rsplit("/", 1)[1], info["secret"]
    data = raw(BODY)
    headers = signing.github(secret, data, delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    first = deliver(client, path, data, headers).get_json()
    again = deliver(client, path, data, headers)
    assert again.status_code == 202 and again.get_json() == first
    assert executions_count() == 1


def test_slack_refuses_a_missing_timestamp(api, client):
    workflow_id = api.workflow(definition({"auth": "slack"}))
    info = api.webhook(workflow_id)
    path = "/hooks/" + info["url"].rsplit("/", 1)[1]
    headers = signing.slack(info["secret"], raw(BODY))
    del headers["X-Slack-Request-Timestamp"]
    answer = deliver(client, path, raw(BODY), headers)
    assert answer.status_code == 401
    assert answer.get_json()["error"]["message"] == "missing X-Slack-Request-Timestamp header"


def test_changing_the_scheme_keeps_the_url_and_the_secret(api, client, hook):
    workflow_id, path, secret = hook
    api.put(f"/api/v1/workflows/{workflow_id}", definition({"auth": "github"}))
    info = api.webhook(workflow_id)
    assert info["scheme"] == "github" and info["url"].endswith(path) and info["secret"] == secret
    data = raw(BODY)
    assert deliver(client, path, data, signing.jobsprint(secret, data)).status_code == 401
    assert deliver(client, path, data, signing.github(secret, data)).status_code == 202


# --- rotation ----------------------------------------------------------

def test_rotation_keeps_the_old_secret_valid_until_its_grace_ends(app, api, client, hook):
    workflow_id, path, old = hook
    rotated = api.post(f"/api/v1/workflows/{workflow_id}/webhook/rotate-secret")
    assert rotated.status_code == 200
    info = rotated.get_json()
    new = info["secret"]
    assert new != old and info["url"].endswith(path)
    assert info["previous_secret_expires_at"] is not None
    assert api.webhook(workflow_id)["secret"] == new
    assert signed(client, path, old, body={**BODY, "n": 1}).status_code == 202
    assert signed(client, path, new, body={**BODY, "n": 2}).status_code == 202

    db.session.execute(update(Webhook).values(previous_expires_at=utcnow()
                                              - timedelta(seconds=1)))
    db.session.commit()
    with app.app_context():
        webhooks.forget_config(path.rsplit("/", 1)[1])
    expired = signed(client, path, old, body={**BODY, "n": 3})
    assert expired.status_code == 401
    assert signed(client, path, new, body={**BODY, "n": 4}).status_code == 202
    assert api.webhook(workflow_id)["previous_secret_expires_at"] is None


def test_a_secret_rotated_through_another_process_verifies_at_once(app, api, client, hook):
    """Each process reuses a config it read in the last second; a signature that fails
    against it is checked again against a fresh one, so a rotation made through another web
    process is never a 401 for the new secret."""
    workflow_id, path, old = hook
    token = path.rsplit("/", 1)[1]
    assert signed(client, path, old).status_code == 202
    recent = app.extensions["jobsprint.recent_hooks"]
    before = recent[token]
    new = api.post(f"/api/v1/workflows/{workflow_id}/webhook/rotate-secret").get_json()["secret"]
    recent[token] = before  # as if the rotation had happened in another process
    assert signed(client, path, new, body={**BODY, "n": 2}).status_code == 202
    assert recent[token][1] != before[1]  # the fresh config replaced the stale one
    assert signed(client, path, "whsec_wrong", body={**BODY, "n": 3}).status_code == 401


def test_rotation_takes_effect_at_once_through_the_cache(app, api, client, hook):
    workflow_id, path, old = hook
    assert signed(client, path, old).status_code == 202  # caches the config
    new = api.post(f"/api/v1/workflows/{workflow_id}/webhook/rotate-secret").get_json()["secret"]
    assert signed(client, path, new, body={**BODY, "n": 2}).status_code == 202
    with app.app_context():
        entry = json.dumps(cache.get(webhooks.cache_key(path.rsplit("/", 1)[1])))
    assert "secret_ct" in entry
    assert new not in entry and old not in entry


# --- replays and limits ----------------------------------------------------------

def test_a_replayed_delivery_answers_with_the_first_event_and_starts_nothing(client, hook):
    _workflow_id, path, secret = hook
    data = raw(BODY)
    headers = signing.jobsprint(secret, data)
    first = deliver(client, path, data, headers)
    again = deliver(client, path, data, headers)
    assert first.status_code == again.status_code == 202
    assert again.get_json() == first.get_json()
    assert executions_count() == 1
    assert db.session.scalar(select(func.count()).select_from(TriggerEvent)) == 1
    other = deliver(client, path, raw({**BODY, "n": 2}),
                    signing.jobsprint(secret, raw({**BODY, "n": 2})))
    assert other.get_json()["event_id"] != first.get_json()["event_id"]


def test_deliveries_are_counted(app, client, hook):
    _workflow_id, path, secret = hook
    data = raw(BODY)
    headers = signing.jobsprint(secret, data)
    deliver(client, path, data, headers)
    deliver(client, path, data, headers)
    deliver(client, path, data, {})
    hook_id = db.session.scalar(select(Webhook.id))
    store = app.extensions["jobsprint.store"]
    assert store.get(webhooks.counter_key(hook_id)) == "3"
    assert store.get(webhooks.counter_key(hook_id, "accepted")) == "1"
    assert store.get(webhooks.counter_key(hook_id, "replayed")) == "1"
    assert store.get(webhooks.counter_key(hook_id, "rejected")) == "1"


@pytest.mark.parametrize("settings_overrides", [{"webhook_body_limit": 1024}])
def test_a_body_over_the_limit_is_a_413_by_content_length(client, hook):
    _workflow_id, path, secret = hook
    big = raw({"pad": "x" * 2000})
    answer = deliver(client, path, big, signing.jobsprint(secret, big))
    assert answer.status_code == 413
    assert answer.get_json()["error"]["code"] == "payload_too_large"
    assert executions_count() == 0


@pytest.mark.parametrize("settings_overrides", [{"webhook_body_limit": 1024}])
def test_a_streamed_body_without_length_stops_at_the_limit(client, hook):
    _workflow_id, path, secret = hook
    big = raw({"pad": "x" * 5000})
    answer = client.post(path, input_stream=io.BytesIO(big),
                         environ_overrides={"wsgi.input_terminated": True},
                         headers={"Content-Type": "application/json",
                                  "Transfer-Encoding": "chunked",
                                  **signing.jobsprint(secret, big)})
    assert answer.status_code == 413
    small = raw(BODY)
    ok = client.post(path, input_stream=io.BytesIO(small),
                     environ_overrides={"wsgi.input_terminated": True},
                     headers={"Content-Type": "application/json",
                              "Transfer-Encoding": "chunked",
                              **signing.jobsprint(secret, small)})
    assert ok.status_code == 202, ok.get_json()


def test_a_body_that_is_not_json_is_a_415(client, hook):
    _workflow_id, path, secret = hook
    data = b"order=1"
    answer = deliver(client, path, data, signing.jobsprint(secret, data),
                     content_type="application/x-www-form-urlencoded")
    assert answer.status_code == 415
    assert answer.get_json()["error"]["code"] == "unsupported_media_type"


def test_a_nul_character_is_a_400_saying_where_and_stores_nothing(client, hook):
    """PostgreSQL's jsonb cannot hold \\u0000: refused up front, not a 500 at commit."""
    _workflow_id, path, secret = hook
    data = b'{"order_id": 1, "notes": ["ok", "a\\u0000b"]}'
    answer = deliver(client, path, data, signing.jobsprint(secret, data))
    assert answer.status_code == 400
    assert answer.get_json()["error"]["details"][0]["path"] == "body.notes.1"
    assert executions_count() == 0


def test_invalid_json_is_a_400_saying_where(client, hook):
    _workflow_id, path, secret = hook
    data = b'{"order_id": 1,\n "amount": }'
    answer = deliver(client, path, data, signing.jobsprint(secret, data))
    assert answer.status_code == 400
    error = answer.get_json()["error"]
    assert error["message"] == "the body is not valid JSON"
    assert error["details"][0]["path"] == "body"
    assert "line 2 column 12" in error["details"][0]["message"]


def test_a_body_failing_the_schema_is_a_400_with_every_path(api, client):
    schema = {"type": "object", "required": ["order_id", "email"],
              "properties": {"order_id": {"type": "integer"},
                             "amount": {"type": "number", "minimum": 0},
                             "items": {"type": "array", "items": {"type": "string"}}}}
    workflow_id = api.workflow(definition({"schema": schema}))
    info = api.webhook(workflow_id)
    path, secret = "/hooks/" + info["url"].rsplit("/", 1)[1], info["secret"]
    bad = {"order_id": "one", "amount": -1, "items": ["a", 2]}
    answer = signed(client, path, secret, body=bad)
    assert answer.status_code == 400
    details = answer.get_json()["error"]["details"]
    assert sorted(d["path"] for d in details) == ["body", "body.amount", "body.items[1]",
                                                  "body.order_id"]
    assert signed(client, path, secret, body=BODY).status_code == 202


def test_an_unknown_token_is_a_404(client):
    answer = deliver(client, "/hooks/" + "x" * 43, raw(BODY), {})
    assert answer.status_code == 404
    assert answer.get_json()["error"]["code"] == "not_found"


# --- outside Flask's request machinery ------------------------------------------

def _delivered(result: str) -> float:
    return metrics.WEBHOOK_DELIVERIES.labels(result)._value.get()


SHARED_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                  "Referrer-Policy": "same-origin"}


def test_answers_and_refusals_carry_what_every_response_carries(client, hook):
    _workflow_id, path, secret = hook
    accepted, refused = _delivered("accepted"), _delivered("unauthorized")
    data = raw(BODY)
    dispatched = []

    def on_dispatch(sender, **_):
        dispatched.append(sender)

    with flask.request_started.connected_to(on_dispatch, client.application):
        answers = [
            deliver(client, path, data, {**signing.jobsprint(secret, data),
                                         "X-Request-ID": "ok-1"}),
            deliver(client, path, data, {"X-Request-ID": "no-2"}),
            client.get(path)]  # the signal works: Flask dispatches this one
    assert len(dispatched) == 1, "a delivery went through Flask's request dispatch"
    answers.pop()
    assert [a.status_code for a in answers] == [202, 401]
    assert answers[1].get_json()["error"]["code"] == "unauthorized"
    for answer, rid in zip(answers, ["ok-1", "no-2"], strict=True):
        assert answer.headers["X-Request-ID"] == rid
        assert answer.headers["Content-Security-Policy"].startswith("default-src 'self'")
        assert {k: answer.headers.get(k) for k in SHARED_HEADERS} == SHARED_HEADERS
        assert "Set-Cookie" not in answer.headers
    assert (_delivered("accepted"), _delivered("unauthorized")) == (accepted + 1, refused + 1)


def test_other_methods_go_to_flask_and_are_a_405(client, hook):
    answer = client.get(hook[1])
    assert answer.status_code == 405
    assert answer.get_json()["error"]["code"] == "method_not_allowed"


def test_an_unexpected_fault_is_a_logged_500_without_its_detail(client, hook, monkeypatch,
                                                                 caplog):
    def broken(token, fresh=False):
        raise RuntimeError("the detail that must stay in the log")

    monkeypatch.setattr(webhooks, "lookup", broken)
    errors = _delivered("error")
    answer = deliver(client, hook[1], raw(BODY), {})
    assert answer.status_code == 500
    assert answer.get_json()["error"]["code"] == "internal_error"
    assert "must stay" not in answer.get_data(as_text=True)
    assert "the detail that must stay in the log" in caplog.text
    assert _delivered("error") == errors + 1


# --- unsigned webhooks ----------------------------------------------------------

def test_auth_none_is_refused_without_the_setting(api):
    answer = api.post("/api/v1/workflows", definition({"auth": "none"}))
    assert answer.status_code == 400
    assert answer.get_json()["error"]["details"][0]["path"] == "nodes[0].params.auth"
    assert db.session.scalar(select(func.count()).select_from(Webhook)) == 0
    assert api.get("/api/v1/workflows").get_json()["items"] == []


@pytest.mark.parametrize("settings_overrides", [{"allow_unsigned_webhooks": True}])
def test_auth_none_is_accepted_with_the_setting_and_warned_about(api, client):
    workflow_id = api.workflow(definition({"auth": "none"}))
    info = api.webhook(workflow_id)
    assert info["scheme"] == "none" and "unsigned" in info["warning"]
    path = "/hooks/" + info["url"].rsplit("/", 1)[1]
    assert deliver(client, path, raw(BODY), {}).status_code == 202
    assert deliver(client, path, raw(BODY), {}).status_code == 202  # nothing to dedupe by
    assert executions_count() == 2


@pytest.mark.parametrize("settings_overrides", [{"allow_unsigned_webhooks": True}])
def test_an_unsigned_webhook_left_behind_when_the_setting_is_turned_off(app, api, client):
    workflow_id = api.workflow(definition({"auth": "none"}))
    path = "/hooks/" + api.webhook(workflow_id)["url"].rsplit("/", 1)[1]
    app.config["SETTINGS"] = replace(app.config["SETTINGS"], allow_unsigned_webhooks=False)
    refused = deliver(client, path, raw(BODY), {})
    assert refused.status_code == 401
    assert refused.get_json()["error"]["message"] == "unsigned webhooks are disabled on this server"
    # it can always be switched off, never on again
    off = api.post(f"/api/v1/workflows/{workflow_id}/deactivate")
    assert off.status_code == 200, off.get_json()
    again = api.post(f"/api/v1/workflows/{workflow_id}/activate")
    assert again.status_code == 400
    assert again.get_json()["error"]["details"][0]["path"] == "nodes[0].params.auth"
    assert api.delete(f"/api/v1/workflows/{workflow_id}").status_code == 204


# --- respond when finished ----------------------------------------------------------

def test_when_finished_answers_with_the_last_nodes_output(api, client):
    workflow_id = api.workflow(definition({"respond": "when_finished", "timeout_s": 15}))
    info = api.webhook(workflow_id)
    path = "/hooks/" + info["url"].rsplit("/", 1)[1]
    answer = signed(client, path, info["secret"])
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json() == {"total": 25.0, "email": "a@b.com"}
    assert answer.headers["X-Jobsprint-Run-Status"] == "succeeded"
    assert uuid.UUID(answer.headers["X-Jobsprint-Execution-Id"])


def test_when_finished_answers_a_replay_with_the_first_runs_result(api, client):
    workflow_id = api.workflow(definition({"respond": "when_finished", "timeout_s": 15}))
    info = api.webhook(workflow_id)
    path = "/hooks/" + info["url"].rsplit("/", 1)[1]
    data = raw(BODY)
    headers = signing.jobsprint(info["secret"], data)
    first, again = deliver(client, path, data, headers), deliver(client, path, data, headers)
    assert first.status_code == again.status_code == 200
    assert again.get_json() == first.get_json() == {"total": 25.0, "email": "a@b.com"}
    assert (again.headers["X-Jobsprint-Execution-Id"]
            == first.headers["X-Jobsprint-Execution-Id"])
    assert executions_count() == 1


def test_when_finished_still_answers_without_an_event_subscription(app, api, client,
                                                                     monkeypatch):
    """With no event subscription the waiter polls the database instead."""
    from app.live import hub as hub_module

    workflow_id = api.workflow(definition({"respond": "when_finished", "timeout_s": 15}))
    info = api.webhook(workflow_id)
    monkeypatch.setattr(hub_module.Hub, "register",
                        lambda self, subscriber, wait_s=2.0: False)  # never subscribed
    answer = signed(client, "/hooks/" + info["url"].rsplit("/", 1)[1], info["secret"])
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json() == {"total": 25.0, "email": "a@b.com"}


def test_when_finished_reports_a_failed_run_without_a_5xx(api, client):
    workflow_id = api.workflow(definition({"respond": "when_finished", "timeout_s": 15},
                                          fail=True))
    info = api.webhook(workflow_id)
    answer = signed(client, "/hooks/" + info["url"].rsplit("/", 1)[1], info["secret"])
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["status"] == "failed" and body["error"]["node_id"] == "boom"
    assert answer.headers["X-Jobsprint-Run-Status"] == "failed"


def test_when_finished_times_out_with_a_504_and_the_run_goes_on(api, client):
    workflow_id = api.workflow(definition({"respond": "when_finished", "timeout_s": 0.5},
                                          wait_s=2))
    info = api.webhook(workflow_id)
    started = time.monotonic()
    answer = signed(client, "/hooks/" + info["url"].rsplit("/", 1)[1], info["secret"])
    assert answer.status_code == 504
    assert time.monotonic() - started < 5
    body = answer.get_json()
    assert body["error"]["code"] == "timeout"
    run = api.wait(body["execution_id"], timeout=30)
    assert run["status"] == "succeeded" and run["result"] == {"total": 25.0,
                                                              "email": "a@b.com"}


# --- secrets stay secret ----------------------------------------------------------

def test_secrets_never_reach_lists_logs_or_audit_rows(api, client, caplog, hook):
    caplog.set_level(logging.DEBUG)
    workflow_id, path, secret = hook
    rotated = api.post(f"/api/v1/workflows/{workflow_id}/webhook/rotate-secret").get_json()
    new = rotated["secret"]
    answer = signed(client, path, new)
    deliver(client, path, raw(BODY), signing.jobsprint("wrong-secret-for-the-log", raw(BODY)))
    run_id = answer.get_json()["execution_ids"][0]
    api.wait(run_id)
    pages = [api.get("/api/v1/workflows"), api.get(f"/api/v1/workflows/{workflow_id}"),
             api.get("/api/v1/executions"), api.get(f"/api/v1/executions/{run_id}")]
    for page in pages:
        text = page.get_data(as_text=True)
        assert page.status_code == 200
        assert secret not in text and new not in text and "X-Jobsprint-Signature" not in text
        assert "v1=" not in text
    assert secret not in caplog.text and new not in caplog.text
    rows = db.session.scalars(select(AuditLog)).all()
    assert {"webhook.create", "webhook.rotate"} <= {r.action for r in rows}
    dumped = json.dumps([r.details for r in rows])
    assert secret not in dumped and new not in dumped
    stored = db.session.scalar(select(Webhook))
    assert secret.encode() not in stored.secret_ct + stored.previous_secret_ct


# --- a real threaded server ----------------------------------------------------------

def _wait_all_finished(ids: list[str], timeout: float = 90) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        rows = dict(db.session.execute(select(Execution.id, Execution.status)).all())
        db.session.commit()
        states = {str(k): v for k, v in rows.items()}
        if all(states.get(i) == "succeeded" for i in ids) or time.monotonic() > deadline:
            return states
        time.sleep(0.2)


@pytest.mark.parametrize("mode", ["production"])
def test_100_concurrent_deliveries_make_100_runs_and_all_finish(api, live_server):
    workflow_id = api.workflow(definition(concurrency=8))
    info = api.webhook(workflow_id)
    url = live_server + "/hooks/" + info["url"].rsplit("/", 1)[1]

    def post(i):
        data = raw({**BODY, "order_id": i})
        return requests.post(url, data=data, timeout=30, headers={
            "Content-Type": "application/json", **signing.jobsprint(info["secret"], data)})

    with ThreadPoolExecutor(max_workers=25) as pool:
        answers = list(pool.map(post, range(100)))
    assert [a.status_code for a in answers] == [202] * 100
    ids = [a.json()["execution_ids"][0] for a in answers]
    assert len(set(ids)) == 100
    states = _wait_all_finished(ids)
    assert len(states) == 100
    assert {states[i] for i in ids} == {"succeeded"}


@pytest.mark.parametrize("mode", ["production"])
def test_identical_deliveries_racing_make_one_event(api, live_server):
    workflow_id = api.workflow()
    info = api.webhook(workflow_id)
    url = live_server + "/hooks/" + info["url"].rsplit("/", 1)[1]
    data = raw(BODY)
    headers = {"Content-Type": "application/json", **signing.jobsprint(info["secret"], data)}
    barrier = threading.Barrier(10)

    def post(_i):
        barrier.wait()
        return requests.post(url, data=data, headers=headers, timeout=30)

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(post, range(10)))
    assert {a.status_code for a in answers} == {202}
    assert len({json.dumps(a.json(), sort_keys=True) for a in answers}) == 1
    assert db.session.scalar(select(func.count()).select_from(TriggerEvent)) == 1
    assert executions_count() == 1


@pytest.mark.parametrize("mode", ["production"])
@pytest.mark.parametrize("settings_overrides", [{"webhook_body_limit": 4096}])
def test_a_chunked_body_over_the_limit_is_refused_by_a_real_server(api, live_server):
    workflow_id = api.workflow()
    info = api.webhook(workflow_id)
    url = live_server + "/hooks/" + info["url"].rsplit("/", 1)[1]
    big = raw({"pad": "x" * 20000})
    chunks = (big[i:i + 1000] for i in range(0, len(big), 1000))  # no Content-Length
    answer = requests.post(url, data=chunks, timeout=30, headers={
        "Content-Type": "application/json", **signing.jobsprint(info["secret"], big)})
    assert answer.status_code == 413
    small = raw(BODY)
    answer = requests.post(url, data=iter([small[:10], small[10:]]), timeout=30, headers={
        "Content-Type": "application/json", **signing.jobsprint(info["secret"], small)})
    assert answer.status_code == 202, answer.text
