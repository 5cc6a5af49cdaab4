"""Fixtures shared by the page tests: a user signed in through the register page."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

from app.db import db
from app.models import User


@pytest.fixture
def user(auth):
    """A new user, registered (and so signed in) through the page; the client holds the
    session."""
    email = auth.new_email()
    assert auth.register(email).status_code == 302
    found = db.session.scalar(select(User).where(User.email == email))
    db.session.commit()
    return found


@pytest.fixture
def token(auth, user):
    """A CSRF token of the signed-in session, for the pages' forms."""
    return auth.csrf_token("/settings")


class ApiClient:
    """The JSON API as a script would use it, with a bearer token."""

    def __init__(self, client, token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    def post(self, path, body=None):
        return self.client.post("/api/v1" + path, json=body, headers=self.headers)

    def put(self, path, body=None):
        return self.client.put("/api/v1" + path, json=body, headers=self.headers)

    def get(self, path):
        return self.client.get("/api/v1" + path, headers=self.headers)

    def delete(self, path):
        return self.client.delete("/api/v1" + path, headers=self.headers)

    def credential(self, kind: str, secret: dict, name: str | None = None) -> dict:
        answer = self.post("/credentials", {"name": name or kind, "kind": kind,
                                            "secret": secret})
        assert answer.status_code == 201, answer.get_json()
        return answer.get_json()

    def run_node(self, node: dict, run_input: dict | None = None, timeout: float = 30) -> dict:
        """Save ``manual trigger → node`` (the node's id is kept), run it, wait for the end."""
        workflow = self.post("/workflows", {"name": "One node", "nodes": [
            {"id": "start", "type": "trigger.manual"}, node],
            "connections": [{"from": "start", "to": node["id"]}]})
        assert workflow.status_code == 201, workflow.get_json()
        started = self.post(f"/workflows/{workflow.get_json()['id']}/run",
                            {"input": run_input or {}})
        run_id = started.get_json()["execution_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.get(f"/executions/{run_id}").get_json()
            if run["status"] in ("succeeded", "failed"):
                return run
            time.sleep(0.05)
        raise AssertionError(f"run {run_id} did not finish within {timeout:g} s")


@pytest.fixture
def api_client(client, auth) -> ApiClient:
    return ApiClient(client, auth.register_api()["token"])


@pytest.fixture
def live_server(app):
    """The app behind a real threaded HTTP server on a free loopback port."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)
