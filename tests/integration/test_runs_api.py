"""Runs end to end in one process: API → queue (inline) → worker → engine → database."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import func, select

from app.db import db
from app.models import Execution, IdempotencyKey


def chain(*fields, fail=False):
    nodes = [{"id": "start", "type": "trigger.manual", "params": {}}]
    connections = []
    previous = "start"
    for i, expr in enumerate(fields):
        node_id = f"set{i}"
        nodes.append({"id": node_id, "type": "logic.set", "params": {"fields": {"v": expr}}})
        connections.append({"from": previous, "to": node_id})
        previous = node_id
    if fail:
        nodes.append({"id": "boom", "type": "logic.set",
                      "params": {"fields": {"v": "{{ input.v.nope() }}"}}})
        connections.append({"from": previous, "to": "boom"})
    return {"name": "Chain", "nodes": nodes, "connections": connections}


@pytest.fixture
def api(client, auth):
    headers = {"Authorization": f"Bearer {auth.register_api()['token']}"}

    class Api:
        def post(self, path, json=None, **extra):
            return client.post(path, json=json, headers={**headers, **extra})

        def get(self, path, **kw):
            return client.get(path, headers=headers, **kw)

        def wait(self, execution_id, states=("succeeded", "failed", "cancelled"), timeout=20):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                body = self.get(f"/api/v1/executions/{execution_id}").get_json()
                assert "status" in body, body
                if body["status"] in states:
                    return body
                time.sleep(0.1)  # under the API's per-user rate limit
            raise AssertionError(f"run {execution_id} still {body['status']}")

    return Api()


def test_a_manual_run_goes_through_every_node(api):
    workflow = api.post("/api/v1/workflows", chain("{{ input.n * 2 }}", "{{ input.v + 1 }}"))
    workflow_id = workflow.get_json()["id"]
    started = api.post(f"/api/v1/workflows/{workflow_id}/run", {"input": {"n": 20}})
    assert started.status_code == 202
    assert started.get_json()["status"] == "queued"
    run = api.wait(started.get_json()["execution_id"])
    assert run["status"] == "succeeded"
    assert run["result"]["v"] == 41
    assert [n["node_id"] for n in run["nodes"]] == ["start", "set0", "set1"]
    assert all(n["status"] == "succeeded" and n["attempts"] == 1 for n in run["nodes"])
    assert run["workflow_version"] == 1 and run["trigger"]["type"] == "manual"


def test_a_failing_node_fails_the_run_with_a_clean_error(api):
    workflow_id = api.post("/api/v1/workflows", chain("{{ 1 }}", fail=True)).get_json()["id"]
    run_id = api.post(f"/api/v1/workflows/{workflow_id}/run", {"input": {}}).get_json()[
        "execution_id"]
    run = api.wait(run_id)
    assert run["status"] == "failed"
    assert run["error"]["node_id"] == "boom"
    assert "Traceback" not in str(run["error"])


def test_the_same_idempotency_key_starts_one_run(api):
    workflow_id = api.post("/api/v1/workflows", chain("{{ 1 }}")).get_json()["id"]
    path = f"/api/v1/workflows/{workflow_id}/run"
    first = api.post(path, {"input": {"a": 1}}, **{"Idempotency-Key": "k-1"}).get_json()
    again = api.post(path, {"input": {"a": 1}}, **{"Idempotency-Key": "k-1"}).get_json()
    assert first["execution_id"] == again["execution_id"]
    other = api.post(path, {"input": {"a": 2}}, **{"Idempotency-Key": "k-1"})
    assert other.status_code == 422
    assert other.get_json()["error"]["details"][0]["path"] == "Idempotency-Key"
    assert db.session.scalar(select(func.count()).select_from(Execution)) == 1


def test_an_idempotency_key_of_the_longest_allowed_length_works(api):
    """The stored key holds a digest of the client's: 200 characters fit its column."""
    workflow_id = api.post("/api/v1/workflows", chain("{{ 1 }}")).get_json()["id"]
    path, key = f"/api/v1/workflows/{workflow_id}/run", "k" * 200
    first = api.post(path, {"input": {}}, **{"Idempotency-Key": key})
    assert first.status_code == 202, first.get_json()
    again = api.post(path, {"input": {}}, **{"Idempotency-Key": key}).get_json()
    assert again["execution_id"] == first.get_json()["execution_id"]
    too_long = api.post(path, {"input": {}}, **{"Idempotency-Key": key + "k"})
    assert too_long.status_code == 422


def test_idempotency_survives_losing_redis(app, api):
    workflow_id = api.post("/api/v1/workflows", chain("{{ 1 }}")).get_json()["id"]
    path = f"/api/v1/workflows/{workflow_id}/run"
    first = api.post(path, {"input": {}}, **{"Idempotency-Key": "k-2"}).get_json()
    store = app.extensions["jobsprint.store"]
    store.delete(*store.keys("idem:*"))  # what a Redis restart without persistence loses
    again = api.post(path, {"input": {}}, **{"Idempotency-Key": "k-2"}).get_json()
    assert again["execution_id"] == first["execution_id"]
    assert db.session.scalar(select(func.count()).select_from(IdempotencyKey)) == 1


def test_retry_runs_again_from_the_failed_node_keeping_earlier_outputs(api):
    workflow_id = api.post("/api/v1/workflows", chain("{{ 7 }}", fail=True)).get_json()["id"]
    failed = api.wait(api.post(f"/api/v1/workflows/{workflow_id}/run",
                               {"input": {}}).get_json()["execution_id"])
    retried = api.post(f"/api/v1/executions/{failed['id']}/retry")
    assert retried.status_code == 202
    second = api.wait(retried.get_json()["execution_id"])
    assert second["status"] == "failed"
    before = {n["node_id"]: n for n in failed["nodes"]}
    after = {n["node_id"]: n for n in second["nodes"]}
    assert after["set0"]["finished_at"] == before["set0"]["finished_at"]  # not run again
    assert after["boom"]["status"] == "failed"
    assert api.post(f"/api/v1/executions/{second['id']}/retry").status_code == 202


def test_listing_filters_and_pages(api):
    workflow_id = api.post("/api/v1/workflows", chain("{{ 1 }}")).get_json()["id"]
    ids = [api.post(f"/api/v1/workflows/{workflow_id}/run", {"input": {"i": i}}).get_json()[
        "execution_id"] for i in range(5)]
    for run_id in ids:
        api.wait(run_id)
    seen, cursor = [], ""
    while cursor is not None:
        body = api.get("/api/v1/executions", query_string={
            "workflow_id": workflow_id, "limit": 2, "cursor": cursor}).get_json()
        seen += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
    assert seen == list(reversed(ids))
    ok = api.get("/api/v1/executions", query_string={"status": "succeeded"}).get_json()
    assert len(ok["items"]) == 5
    assert api.get("/api/v1/executions", query_string={"status": "bogus"}).status_code == 400


def test_other_users_runs_are_404(client, auth, api):
    workflow_id = api.post("/api/v1/workflows", chain("{{ 1 }}")).get_json()["id"]
    run_id = api.post(f"/api/v1/workflows/{workflow_id}/run", {"input": {}}).get_json()[
        "execution_id"]
    other = {"Authorization": f"Bearer {auth.register_api()['token']}"}
    assert client.get(f"/api/v1/executions/{run_id}", headers=other).status_code == 404
    assert client.post(f"/api/v1/executions/{run_id}/cancel", headers=other).status_code == 404
    assert client.post(f"/api/v1/workflows/{workflow_id}/run", headers=other,
                       json={"input": {}}).status_code == 404
    assert client.get("/api/v1/executions", headers=other).get_json()["items"] == []


def test_a_long_wait_parks_the_run_and_the_clock_resumes_it(api, app):
    definition = chain("{{ input.n + 1 }}")
    definition["nodes"].insert(1, {"id": "pause", "type": "logic.wait",
                                   "params": {"seconds": 6}})
    definition["connections"] = [{"from": "start", "to": "pause"},
                                 {"from": "pause", "to": "set0"}]
    workflow_id = api.post("/api/v1/workflows", definition).get_json()["id"]
    execution_id = api.post(f"/api/v1/workflows/{workflow_id}/run",
                            {"input": {"n": 1}}).get_json()["execution_id"]
    parked = api.wait(execution_id, states=("waiting",))
    assert parked["finished_at"] is None
    run = api.wait(execution_id, timeout=30)
    assert run["status"] == "succeeded", run
    nodes = {n["node_id"]: n for n in run["nodes"]}
    pause = nodes["pause"]
    assert pause["status"] == "succeeded"
    assert pause["started_at"] is not None  # kept from before the park
    assert pause["finished_at"] > pause["started_at"]
    with app.app_context():
        row = db.session.get(Execution, uuid.UUID(execution_id))
        assert (row.finished_at - row.started_at).total_seconds() >= 5.9
