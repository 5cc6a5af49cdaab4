"""The OpenAPI document matches the API: every /api/v1 route is in it, and schemathesis fuzzes a
running app from it (real PostgreSQL and Redis, a real HTTP server) and fails on any 500, any
response that breaks the document, and any answer that shows another user's data."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field, replace

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app import create_app
from app.web.api.openapi import Undocumented, document

PASSWORD = "correct horse battery"


@pytest.fixture(params=["production"])
def mode(request) -> str:
    """The fuzz runs against the production stack only (PostgreSQL, Redis)."""
    return request.param


@pytest.fixture
def settings_overrides() -> dict:
    # The limits are tested elsewhere; here they would only turn most cases into 429s.
    return {"api_rate_limit": "100000 per minute", "login_rate_limit": "100000 per minute",
            "register_rate_limit": "100000 per minute"}


# --- the document -------------------------------------------------------------------------

def test_every_api_route_and_method_is_in_the_document(app, client):
    answer = client.get("/api/v1/openapi.json")
    assert answer.status_code == 200
    doc = answer.get_json()
    assert doc["openapi"] == "3.1.0"
    routes = {(rule.rule.replace("<", "{").replace(">", "}"), method.lower())
              for rule in app.url_map.iter_rules() if rule.endpoint.startswith("api.")
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert routes == documented
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["responses"], (method, path)
            for status, response in op["responses"].items():
                if status != "204":
                    assert "application/json" in response["content"], (method, path, status)


def test_a_route_without_a_declaration_breaks_the_document(app):
    # No in-process workers or clock: a clock left running would fire other tests' schedules.
    fresh = create_app(replace(app.config["SETTINGS"], inline_workers=False))
    fresh.add_url_rule("/api/v1/undeclared", endpoint="api.undeclared", view_func=lambda: "")
    with pytest.raises(Undocumented, match="api.undeclared"):
        document(fresh)


def test_a_body_of_the_wrong_type_is_a_400_naming_the_field(client, api_client):
    answer = client.post("/api/v1/workflows", json={"name": 12, "nodes": "none"},
                         headers=api_client.headers)
    assert answer.status_code == 400
    paths = {d["path"] for d in answer.get_json()["error"]["details"]}
    assert paths == {"name", "nodes"}
    answer = client.get("/api/v1/executions?limit=lots", headers=api_client.headers)
    assert answer.status_code == 400
    assert answer.get_json()["error"]["details"][0]["path"] == "limit"
    answer = client.get("/api/v1/executions?workflow_id=", headers=api_client.headers)
    assert answer.status_code == 400
    assert answer.get_json()["error"]["details"][0]["path"] == "workflow_id"
    answer = client.get("/api/v1/executions?statu=failed", headers=api_client.headers)
    assert answer.status_code == 400
    assert answer.get_json()["error"]["details"][0]["path"] == "statu"


def test_a_nul_character_is_a_400_naming_where_it_is(client, api_client):
    """PostgreSQL text cannot hold NUL; found by the fuzz as a 500 on /auth/token."""
    answer = client.post("/api/v1/prompt-templates", headers=api_client.headers,
                         json={"name": "greeting", "prompt": "hi\u0000", "meta": {"k\u0000": 1}})
    assert answer.status_code == 400
    assert {d["path"] for d in answer.get_json()["error"]["details"]} == {"prompt", "meta.k\\u0000"}
    answer = client.post("/api/v1/auth/token", json={"email": "a\u0000@b.c", "password": "x"})
    assert answer.status_code == 400


# --- the fuzz -----------------------------------------------------------------------------

@dataclass
class World:
    """Two users: the fuzz acts as ``me``; ``them`` owns things it must never see."""

    my_email: str
    my_headers: dict
    ids: dict[str, dict[str, str]]  # path parameter name -> {"mine": id, "theirs": id}
    their_secrets: list[str] = field(default_factory=list)

    @property
    def their_ids(self) -> list[str]:
        return [pair["theirs"] for pair in self.ids.values()]


def _make_user(base: str, label: str) -> tuple[str, dict, str]:
    email = f"{label}-{uuid.uuid4().hex[:8]}@example.com"
    answer = requests.post(f"{base}/api/v1/auth/register",
                           json={"email": email, "password": PASSWORD}, timeout=10)
    assert answer.status_code == 201, answer.text
    return email, {"Authorization": f"Bearer {answer.json()['token']}"}, answer.json()["user"]["id"]


def _own_things(base: str, headers: dict, marker: str) -> dict[str, str]:
    flow = {"name": f"flow {marker}",
            "nodes": [{"id": "start", "type": "trigger.manual"},
                      {"id": "hook", "type": "trigger.webhook"},
                      {"id": "calc", "type": "logic.set",
                       "params": {"fields": {"note": marker}}}],
            "connections": [{"from": "start", "to": "calc"}, {"from": "hook", "to": "calc"}]}
    workflow = requests.post(f"{base}/api/v1/workflows", json=flow, headers=headers, timeout=10)
    assert workflow.status_code == 201, workflow.text
    workflow_id = workflow.json()["id"]
    run = requests.post(f"{base}/api/v1/workflows/{workflow_id}/run",
                        json={"input": {"note": marker}}, headers=headers, timeout=10)
    credential = requests.post(f"{base}/api/v1/credentials", headers=headers, timeout=10, json={
        "name": f"key {marker}", "kind": "bearer", "secret": {"token": f"token-{marker}"}})
    template = requests.post(f"{base}/api/v1/prompt-templates", headers=headers, timeout=10,
                             json={"name": f"t-{marker}", "prompt": f"say {marker}"})
    assert run.status_code == 202 and credential.status_code == 201, (run.text, credential.text)
    assert template.status_code == 201, template.text
    return {"workflow_id": workflow_id, "execution_id": run.json()["execution_id"],
            "credential_id": credential.json()["id"]}


@pytest.fixture
def world(live_server):
    my_email, my_headers, _my_id = _make_user(live_server, "me")
    their_email, their_headers, their_id = _make_user(live_server, "them")
    marker = uuid.uuid4().hex
    theirs = _own_things(live_server, their_headers, marker)
    mine = _own_things(live_server, my_headers, uuid.uuid4().hex)
    ids = {name: {"mine": mine[name], "theirs": theirs[name]} for name in mine}
    return World(my_email, my_headers, ids, [their_id, their_email, marker])


def no_foreign_data(world: World):
    def check(ctx, response, case):
        """Nothing of the other user's (ids, email, names, stored values) in any answer."""
        text = response.text
        for secret in world.their_ids + world.their_secrets:
            if secret in text:
                raise AssertionError(f"the answer shows another user's data ({secret[:8]}…)")

    return check


def _headers(operation, live_server, world) -> dict:
    if operation.path in ("/api/v1/auth/register", "/api/v1/auth/token"):
        return {}
    if operation.path == "/api/v1/auth/logout":  # revokes the token it is called with
        answer = requests.post(f"{live_server}/api/v1/auth/token", timeout=10,
                               json={"email": world.my_email, "password": PASSWORD})
        return {"Authorization": f"Bearer {answer.json()['token']}"}
    return world.my_headers


def _fuzz(operation, mode, live_server, world) -> None:
    check = no_foreign_data(world)

    @given(case=operation.as_strategy(generation_mode=mode),
           whose=st.sampled_from(["theirs", "mine", "generated"]))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=IN_CI,
              suppress_health_check=list(HealthCheck))
    def fuzz(case, whose):
        # requests leaves out a query parameter whose value is None or an empty list: such a
        # "forbidden extra parameter" is never sent, and the valid request that is sent
        # rightly succeeds.
        assume(not any(value is None or value == [] for value in (case.query or {}).values()))
        if whose != "generated" and mode == GenerationMode.POSITIVE:
            # (Negative cases keep their broken path parameters: they must be refused.)
            # Real ids of the right kind: mine (reachable) or theirs (must answer 404).
            case.path_parameters = {name: world.ids[name][whose] if name in world.ids else value
                                    for name, value in case.path_parameters.items()}
        headers = _headers(operation, live_server, world)
        response = case.call(base_url=live_server, headers=headers, timeout=30)
        if whose == "theirs" and case.path_parameters:
            assert not 200 <= response.status_code < 300, (
                f"{case.method} {case.formatted_path} with another user's id answered "
                f"{response.status_code}")
        case.validate_response(response, headers=headers, additional_checks=[check],
                               # The document describes shapes; the services refuse more (a
                               # graph with a cycle, a taken email), with a 400 or 409.
                               excluded_checks=[positive_data_acceptance],
                               transport_kwargs={"base_url": live_server, "headers": headers})

    fuzz()


EXAMPLES = 25
# CI replays the same cases on every run (a red CI then means the code changed, not the dice);
# a developer's run draws new ones each time.
IN_CI = os.environ.get("CI") == "true"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("generation", ["positive", "negative"])
def test_the_api_keeps_its_contract_and_its_users_apart(live_server, world, generation):
    """Every operation, fuzzed with data the document allows (positive) and data it forbids
    (negative: must be a 4xx, never a 500); failures of all operations reported together."""
    schema = schemathesis.openapi.from_url(f"{live_server}/api/v1/openapi.json")
    mode = GenerationMode.POSITIVE if generation == "positive" else GenerationMode.NEGATIVE
    failures, tested = [], 0
    for result in schema.get_all_operations():
        operation = result.ok()
        tested += 1
        try:
            _fuzz(operation, mode, live_server, world)
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - reported together
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert tested >= 25
    assert not failures, "\n\n".join(failures)
    # The fuzz acted as a signed-in user all along (not as a stranger getting 401s).
    me = requests.get(f"{live_server}/api/v1/me", headers=world.my_headers, timeout=10)
    assert me.status_code == 200
