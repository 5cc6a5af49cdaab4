"""Workflows through the API: validation by the engine, versions, ownership, pagination."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from app.db import db
from app.models import AuditLog, WorkflowVersion
from app.services import cache, workflows


def definition(name="Orders", **extra):
    return {
        "name": name,
        "nodes": [
            {"id": "start", "type": "trigger.manual", "params": {}, "position": [80, 120]},
            {"id": "calc", "type": "logic.set",
             "params": {"fields": {"total": "{{ input.amount * 2 }}"}}},
        ],
        "connections": [{"from": "start", "to": "calc"}],
        **extra,
    }


@pytest.fixture
def api(client, auth):
    token = auth.register_api()["token"]

    class Api:
        headers = {"Authorization": f"Bearer {token}"}

        def get(self, path, **kw):
            return client.get(path, headers=self.headers, **kw)

        def post(self, path, json=None):
            return client.post(path, headers=self.headers, json=json)

        def put(self, path, json):
            return client.put(path, headers=self.headers, json=json)

        def delete(self, path):
            return client.delete(path, headers=self.headers)

    return Api()


def test_create_returns_the_stored_workflow(api):
    response = api.post("/api/v1/workflows", definition())
    assert response.status_code == 201
    body = response.get_json()
    assert body["name"] == "Orders" and body["version"] == 1 and body["active"] is False
    assert [n["id"] for n in body["nodes"]] == ["start", "calc"]
    assert body["settings"] == {"concurrency": 1, "timeout_s": 300}
    assert uuid.UUID(body["id"]).version == 4
    assert api.get(f"/api/v1/workflows/{body['id']}").get_json() == body


def test_invalid_definitions_list_every_problem(api):
    bad = definition()
    bad["nodes"].append({"id": "calc", "type": "logic.nope", "params": {}})
    bad["connections"].append({"from": "calc", "to": "ghost"})
    response = api.post("/api/v1/workflows", bad)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "validation_failed"
    paths = {d["path"] for d in error["details"]}
    assert {"nodes[2].id", "nodes[2].type", "connections[1].to"} <= paths


def test_a_credential_of_someone_else_is_refused(api):
    body = definition()
    body["nodes"][1]["credential_id"] = str(uuid.uuid4())
    response = api.post("/api/v1/workflows", body)
    assert response.status_code == 400
    assert {"path": "nodes[1].credential_id", "message": "no such credential"} in \
        response.get_json()["error"]["details"]


def test_each_save_keeps_the_previous_version(api):
    created = api.post("/api/v1/workflows", definition()).get_json()
    changed = definition(name="Orders v2")
    changed["nodes"][1]["params"]["fields"]["total"] = "{{ input.amount * 3 }}"
    updated = api.put(f"/api/v1/workflows/{created['id']}", changed).get_json()
    assert updated["version"] == 2 and updated["name"] == "Orders v2"
    kept = db.session.scalars(select(WorkflowVersion).order_by(WorkflowVersion.version)).all()
    assert [v.version for v in kept] == [1, 2]
    assert kept[0].definition["nodes"][1]["params"]["fields"]["total"] == \
        "{{ input.amount * 2 }}"
    versions = api.get(f"/api/v1/workflows/{created['id']}/versions").get_json()["items"]
    assert [v["version"] for v in versions] == [2, 1]


def test_a_stale_version_is_a_conflict(api):
    created = api.post("/api/v1/workflows", definition()).get_json()
    assert api.put(f"/api/v1/workflows/{created['id']}",
                   definition(version=1)).status_code == 200
    stale = api.put(f"/api/v1/workflows/{created['id']}", definition(version=1))
    assert stale.status_code == 409


def test_write_through_cache_follows_every_change(app, api):
    created = api.post("/api/v1/workflows", definition()).get_json()
    with app.app_context():
        key = workflows.cache_key(created["id"])
        assert cache.get(key)["version"] == 1
        api.post(f"/api/v1/workflows/{created['id']}/activate")
        assert cache.get(key)["active"] is True
        cache.forget(key)  # a lost entry is read back from the database
        assert workflows.cached_definition(created["id"])["definition"]["nodes"][0]["id"] == \
            "start"
        api.delete(f"/api/v1/workflows/{created['id']}")
        assert cache.get(key) is None


def test_activate_deactivate_and_audit(api):
    created = api.post("/api/v1/workflows", definition()).get_json()
    assert api.post(f"/api/v1/workflows/{created['id']}/activate").get_json()["active"] is True
    assert api.post(f"/api/v1/workflows/{created['id']}/deactivate").get_json()["active"] is False
    actions = db.session.scalars(
        select(AuditLog.action).where(AuditLog.target_id == created["id"])
        .order_by(AuditLog.created_at)).all()
    assert actions == ["workflow.create", "workflow.activate", "workflow.deactivate"]


def test_another_users_workflow_is_404_everywhere(client, auth, api):
    created = api.post("/api/v1/workflows", definition()).get_json()
    other = {"Authorization": f"Bearer {auth.register_api()['token']}"}
    path = f"/api/v1/workflows/{created['id']}"
    assert client.get(path, headers=other).status_code == 404
    assert client.put(path, headers=other, json=definition()).status_code == 404
    assert client.delete(path, headers=other).status_code == 404
    assert client.post(path + "/activate", headers=other).status_code == 404
    assert client.get("/api/v1/workflows", headers=other).get_json()["items"] == []
    assert client.get("/api/v1/workflows/not-a-uuid", headers=other).status_code == 404
    assert api.get(path).status_code == 200


def test_deleted_workflows_are_gone(api):
    created = api.post("/api/v1/workflows", definition()).get_json()
    assert api.delete(f"/api/v1/workflows/{created['id']}").status_code == 204
    assert api.get(f"/api/v1/workflows/{created['id']}").status_code == 404
    assert api.get("/api/v1/workflows").get_json()["items"] == []


def test_keyset_pagination_and_search(api):
    ids = [api.post("/api/v1/workflows", definition(name=f"Flow {i:02d}")).get_json()["id"]
           for i in range(7)]
    seen, cursor = [], None
    while True:
        page = api.get("/api/v1/workflows", query_string={"limit": 3, "cursor": cursor or ""})
        body = page.get_json()
        seen.extend(item["id"] for item in body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    found = api.get("/api/v1/workflows", query_string={"q": "flow 03"}).get_json()["items"]
    assert [w["name"] for w in found] == ["Flow 03"]
    assert api.get("/api/v1/workflows", query_string={"cursor": "junk"}).status_code == 400
    assert api.get("/api/v1/workflows", query_string={"limit": 0}).status_code == 400


@pytest.mark.parametrize("body", [[], "text", {"name": 5}, {"nodes": "x"}])
def test_malformed_bodies_are_400_not_500(api, body):
    response = api.post("/api/v1/workflows", body)
    assert response.status_code == 400
