"""The GitHub, Slack and Google Sheets nodes, run by the real pipeline of each mode against a
local server that answers as those APIs do (their base URL pointed at it): the request each
sends, with the credential; the output; an API refusal failing the node with its message."""

from __future__ import annotations

import pytest

from tests.integration.local_http import LocalService

TOKEN = "ghp_" + "T" * 30


@pytest.fixture
def settings_overrides():
    return {"http_allow": ("127.0.0.1",)}


@pytest.fixture
def apis():
    """One local server for the three APIs; ``answers`` maps a path to (status, body)."""
    answers: dict[str, tuple[int, dict]] = {}
    service = LocalService(lambda seen: answers.get(
        seen.path, (404, {"message": "Not Found"}))).start()
    yield service.url, service.seen, answers
    service.stop()


class Api:
    def __init__(self, client):
        self.client = client

    def run(self, node):
        credential = self.client.credential("bearer", {"token": TOKEN}, name="token")
        return self.client.run_node({**node, "id": "app", "credential_id": credential["id"]},
                                    {"who": "Ann", "n": 3})

    def post(self, path, body=None):
        return self.client.post(path, body)


@pytest.fixture
def api(api_client):
    return Api(api_client)


def test_github_create_issue(api, apis):
    base, seen, answers = apis
    answers["/repos/acme/web%20site/issues"] = (201, {
        "number": 42, "id": 7, "html_url": "https://github.com/acme/web-site/issues/42"})
    run = api.run({"type": "integration.github.create_issue", "params": {
        "base_url": base, "owner": "acme", "repo": "web site",
        "title": "Order from {{ input.who }}", "labels": ["orders"]}})
    assert run["status"] == "succeeded", run
    assert run["result"] == {"number": 42, "id": 7,
                             "url": "https://github.com/acme/web-site/issues/42"}
    sent = seen[-1]
    assert sent.body == {"title": "Order from Ann", "body": "", "labels": ["orders"]}
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["accept"] == "application/vnd.github+json"
    assert sent.headers["idempotency-key"].endswith(":app:1")


def test_github_refusal_fails_the_node_with_its_message(api, apis):
    base, _seen, answers = apis
    answers["/repos/acme/site/issues"] = (422, {"message": "Validation Failed"})
    run = api.run({"type": "integration.github.create_issue", "params": {
        "base_url": base, "owner": "acme", "repo": "site", "title": "x"}})
    assert run["status"] == "failed"
    assert run["error"]["message"].endswith(
        "GitHub: create issue: the API answered 422: Validation Failed")


def test_slack_post_message_and_its_ok_false(api, apis):
    base, seen, answers = apis
    answers["/api/chat.postMessage"] = (200, {"ok": True, "channel": "C1", "ts": "1.2"})
    run = api.run({"type": "integration.slack.post_message", "params": {
        "base_url": base, "channel": "#orders", "text": "{{ input.n }} new orders"}})
    assert run["status"] == "succeeded", run
    assert run["result"] == {"channel": "C1", "ts": "1.2"}
    assert seen[-1].body == {"channel": "#orders", "text": "3 new orders"}
    answers["/api/chat.postMessage"] = (200, {"ok": False, "error": "channel_not_found"})
    run = api.run({"type": "integration.slack.post_message", "params": {
        "base_url": base, "channel": "#nope", "text": "hi"}})
    assert run["status"] == "failed"
    assert "answered 200: channel_not_found" in run["error"]["message"]


def test_google_sheets_append_row(api, apis):
    base, seen, answers = apis
    answers["/v4/spreadsheets/sheet-1/values/Orders!A1:append"] = (200, {
        "updates": {"updatedRange": "Orders!A5:B5", "updatedRows": 1}})
    run = api.run({"type": "integration.google_sheets.append_row", "params": {
        "base_url": base, "spreadsheet_id": "sheet-1", "range": "Orders!A1",
        "values": ["{{ input.who }}", "{{ input.n }}"]}})
    assert run["status"] == "succeeded", run
    assert run["result"] == {"updated_range": "Orders!A5:B5", "updated_rows": 1}
    sent = seen[-1]
    assert sent.body == {"values": [["Ann", 3]]}  # a lone expression keeps its type
    assert sent.query == {"valueInputOption": ["USER_ENTERED"],
                             "insertDataOption": ["INSERT_ROWS"]}


def test_the_apps_are_in_the_palette_and_refuse_a_bad_base_url(api):
    answer = api.post("/workflows", {"name": "Bad", "nodes": [
        {"id": "start", "type": "trigger.manual"},
        {"id": "app", "type": "integration.slack.post_message",
         "params": {"base_url": "file:///etc", "channel": "c", "text": "t"}}],
        "connections": [{"from": "start", "to": "app"}]})
    assert answer.status_code == 400
    assert [d["path"] for d in answer.get_json()["error"]["details"]] == [
        "nodes[1].params.base_url"]
