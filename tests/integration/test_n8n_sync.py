"""With N8N_API_URL and N8N_API_KEY set, saving a workflow keeps a copy in n8n through its
public REST API (a fake n8n served by the test, with n8n's shapes), and n8n refusing or being
down rolls the Jobsprint save back with n8n's message."""

from __future__ import annotations

import socket
import uuid

import pytest
from sqlalchemy import func, select

from app.db import db
from app.models import Workflow
from tests.integration.local_http import LocalService

API_KEY = "n8n_api_" + "k" * 24


class FakeN8n(LocalService):
    """POST/PUT /api/v1/workflows as n8n answers them; ``refuse`` makes it answer 400."""

    def __init__(self) -> None:
        super().__init__(self._answer)
        self.refuse: str | None = None
        self.missing = False

    def _answer(self, seen):
        if seen.headers.get("x-n8n-api-key") != API_KEY:
            return 401, {"message": "unauthorized"}
        if self.refuse:
            return 400, {"message": self.refuse}
        if self.missing and seen.method == "PUT":
            return 404, {"message": "Not Found"}
        workflow_id = seen.path.rsplit("/", 1)[1] if seen.method != "POST" else "n8nWf1"
        if seen.method == "DELETE":
            return 200, {"id": workflow_id}
        return 200, {"id": workflow_id, **seen.body, "active": False}


FAKE = FakeN8n().start()


@pytest.fixture
def n8n():
    FAKE.seen.clear()
    FAKE.refuse = None
    FAKE.missing = False
    return FAKE


@pytest.fixture
def settings_overrides():
    return {"n8n_api_url": FAKE.url, "n8n_api_key": API_KEY}


@pytest.fixture
def api(client, auth):
    token = auth.register_api()["token"]

    class Api:
        def post(self, path, body=None):
            return client.post("/api/v1" + path, json=body,
                               headers={"Authorization": f"Bearer {token}"})

        def put(self, path, body=None):
            return client.put("/api/v1" + path, json=body,
                              headers={"Authorization": f"Bearer {token}"})

        def get(self, path):
            return client.get("/api/v1" + path, headers={"Authorization": f"Bearer {token}"})

        def delete(self, path):
            return client.delete("/api/v1" + path, headers={"Authorization": f"Bearer {token}"})
    return Api()


DEFINITION = {"name": "Synced", "nodes": [
    {"id": "start", "type": "trigger.manual"},
    {"id": "calc", "type": "logic.set", "params": {"fields": {"x": "{{ input.a }}"}}}],
    "connections": [{"from": "start", "to": "calc"}]}


def count() -> int:
    found = db.session.scalar(select(func.count()).select_from(Workflow))
    db.session.commit()
    return found


def test_create_and_update_keep_a_copy_in_n8n(api, n8n):
    created = api.post("/workflows", DEFINITION)
    assert created.status_code == 201, created.get_json()
    first = n8n.seen[-1]
    assert (first.method, first.path, first.headers["x-n8n-api-key"]) == (
        "POST", "/api/v1/workflows", API_KEY)
    assert set(first.body) == {"name", "nodes", "connections", "settings"}
    assert first.body["connections"]["start"]["main"][0][0]["node"] == "calc"
    assert any(n["parameters"].get("assignments") for n in first.body["nodes"])
    workflow_id = created.get_json()["id"]
    assert db.session.get(Workflow, uuid.UUID(workflow_id)).n8n_id == "n8nWf1"
    db.session.commit()
    updated = api.put(f"/workflows/{workflow_id}", {**DEFINITION, "name": "Synced 2"})
    assert updated.status_code == 200
    assert (n8n.seen[-1].method, n8n.seen[-1].path) == (
        "PUT", "/api/v1/workflows/n8nWf1")
    assert n8n.seen[-1].body["name"] == "Synced 2"


def test_n8n_refusing_rolls_the_save_back_with_its_message(api, n8n):
    n8n.refuse = "request/body/nodes/0 must have required property 'position'"
    answer = api.post("/workflows", DEFINITION)
    assert answer.status_code == 502
    error = answer.get_json()["error"]
    assert error["code"] == "upstream_failed"
    assert "must have required property 'position'" in error["message"]
    assert count() == 0
    n8n.refuse = None
    workflow_id = api.post("/workflows", DEFINITION).get_json()["id"]
    n8n.refuse = "conflict"
    answer = api.put(f"/workflows/{workflow_id}", {**DEFINITION, "name": "Renamed"})
    assert answer.status_code == 502
    stored = db.session.get(Workflow, uuid.UUID(workflow_id))
    assert (stored.name, stored.version) == ("Synced", 1)
    db.session.commit()


@pytest.mark.parametrize("settings_overrides", [{"n8n_api_key": API_KEY}])
def test_n8n_down_rolls_the_save_back(app, api):
    from dataclasses import replace

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    app.config["SETTINGS"] = replace(app.config["SETTINGS"], n8n_api_url=dead)
    answer = api.post("/workflows", DEFINITION)
    assert answer.status_code == 502
    assert answer.get_json()["error"]["message"] == (
        "n8n could not be reached; the workflow was not saved")
    assert count() == 0


@pytest.mark.parametrize("settings_overrides", [{}])
def test_without_the_settings_nothing_is_pushed(api, n8n):
    assert api.post("/workflows", DEFINITION).status_code == 201
    assert n8n.seen == []


def test_deleting_a_workflow_deletes_its_copy_and_a_refusal_keeps_both(api, n8n):
    workflow_id = api.post("/workflows", DEFINITION).get_json()["id"]
    n8n.refuse = "workflow is in use"
    refused = api.delete(f"/workflows/{workflow_id}")
    assert refused.status_code == 502
    assert refused.get_json()["error"]["message"] == (
        "n8n refused to delete its copy (400: workflow is in use); the workflow was not deleted")
    assert api.get(f"/workflows/{workflow_id}").status_code == 200
    n8n.refuse = None
    assert api.delete(f"/workflows/{workflow_id}").status_code == 204
    assert (n8n.seen[-1].method, n8n.seen[-1].path) == ("DELETE", "/api/v1/workflows/n8nWf1")
    assert api.get(f"/workflows/{workflow_id}").status_code == 404


def test_a_copy_deleted_in_n8n_is_created_again_on_the_next_save(api, n8n):
    workflow_id = api.post("/workflows", DEFINITION).get_json()["id"]
    n8n.missing = True  # someone deleted the copy in n8n
    saved = api.put(f"/workflows/{workflow_id}", {**DEFINITION, "name": "Again"})
    assert saved.status_code == 200, saved.get_json()
    assert [(s.method, s.path) for s in n8n.seen[-2:]] == [
        ("PUT", "/api/v1/workflows/n8nWf1"), ("POST", "/api/v1/workflows")]
