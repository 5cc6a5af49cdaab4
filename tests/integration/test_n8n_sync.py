"""With N8N_API_URL and N8N_API_KEY set, saving a workflow keeps a copy in n8n through its
public REST API (a fake n8n served by the test, with n8n's shapes), and n8n refusing or being
down rolls the Jobsprint save back with n8n's message."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import func, select

from app.db import db
from app.models import Workflow

API_KEY = "n8n_api_" + "k" * 24


class FakeN8n:
    """POST/PUT /api/v1/workflows as n8n answers them; ``refuse`` makes it answer 400."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.refuse: str | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"method": self.command, "path": self.path,
                                      "key": self.headers.get("X-N8N-API-KEY"), "body": body})
                if self.headers.get("X-N8N-API-KEY") != API_KEY:
                    return self._answer(401, {"message": "unauthorized"})
                if fake.refuse:
                    return self._answer(400, {"message": fake.refuse})
                workflow_id = self.path.rsplit("/", 1)[1] if self.command == "PUT" else "n8nWf1"
                return self._answer(200, {"id": workflow_id, **body, "active": False})

            do_POST = do_PUT = _handle  # noqa: N815 - the stdlib's names

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"


FAKE = FakeN8n()


@pytest.fixture
def n8n():
    FAKE.requests.clear()
    FAKE.refuse = None
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
    first = n8n.requests[-1]
    assert (first["method"], first["path"], first["key"]) == ("POST", "/api/v1/workflows",
                                                              API_KEY)
    assert set(first["body"]) == {"name", "nodes", "connections", "settings"}
    assert first["body"]["connections"]["start"]["main"][0][0]["node"] == "calc"
    assert any(n["parameters"].get("assignments") for n in first["body"]["nodes"])
    workflow_id = created.get_json()["id"]
    assert db.session.get(Workflow, uuid.UUID(workflow_id)).n8n_id == "n8nWf1"
    db.session.commit()
    updated = api.put(f"/workflows/{workflow_id}", {**DEFINITION, "name": "Synced 2"})
    assert updated.status_code == 200
    assert (n8n.requests[-1]["method"], n8n.requests[-1]["path"]) == (
        "PUT", "/api/v1/workflows/n8nWf1")
    assert n8n.requests[-1]["body"]["name"] == "Synced 2"


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
    assert n8n.requests == []
