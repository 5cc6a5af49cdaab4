"""Every node type: its schema, its outputs, and what it does when it runs."""

from __future__ import annotations

import copy

import pytest
from jsonschema import Draft202012Validator

from app.engine import Ports, get_node_type, node_types, trigger_payload_schema_errors
from tests.unit.engine.support import FakeHttp, chain, definition, edge, node, run

EXPECTED_TYPES = [
    "trigger.manual", "trigger.schedule", "trigger.webhook", "logic.set", "logic.if",
    "logic.switch", "logic.filter", "logic.merge", "logic.split", "logic.wait", "logic.noop",
    "http.request", "ai.chat", "integration.mcp", "integration.github.create_issue",
    "integration.slack.post_message", "integration.google_sheets.append_row"]


# --- the registry ---------------------------------------------------------------------------

def test_the_palette_lists_every_type_in_order():
    assert [t.name for t in node_types()] == EXPECTED_TYPES
    assert {t.group for t in node_types()} == {"Triggers", "Logic", "HTTP", "AI", "Apps"}
    assert [t.name for t in node_types() if t.is_trigger] == EXPECTED_TYPES[:3]


@pytest.mark.parametrize("name", EXPECTED_TYPES)
def test_every_schema_is_a_valid_json_schema_with_form_hints(name):
    node_type = get_node_type(name)
    Draft202012Validator.check_schema(node_type.params_schema)
    assert node_type.params_schema["type"] == "object"
    assert node_type.params_schema["additionalProperties"] is False
    for spec in node_type.params_schema["properties"].values():
        assert "title" in spec
    entry = node_type.as_dict()
    assert entry["name"] == name and entry["params_schema"] is node_type.params_schema
    assert node_type.label and node_type.description


def test_unknown_types_are_none():
    assert get_node_type("logic.teleport") is None


def test_outputs():
    assert get_node_type("logic.set").outputs({}) == ["main"]
    assert get_node_type("logic.if").outputs({}) == ["true", "false"]
    assert get_node_type("logic.split").outputs({}) == ["item", "done"]
    switch = get_node_type("logic.switch")
    assert switch.outputs({"cases": [{"name": "a"}, {"name": "b"}]}) == ["a", "b", "default"]
    assert switch.outputs({"cases": "junk"}) == ["default"]


# --- triggers -------------------------------------------------------------------------------

def test_manual_outputs_the_runs_input():
    result, _ = run(chain(), {"a": 1})
    assert result.result == {"a": 1}


def test_schedule_and_webhook_output_their_payload():
    payload = {"scheduled_for": "2026-01-01T09:00:00+00:00",
               "fired_at": "2026-01-01T09:00:01+00:00"}
    schedule = definition([node("cron", "trigger.schedule",
                                params={"cron": "0 9 * * *", "timezone": "Europe/Paris"})], [])
    result, _ = run(schedule, payload, trigger_id="cron")
    assert result.result == payload
    request = {"headers": {}, "query": {}, "body": {"amount": 1}, "received_at": "…"}
    webhook = definition([node("hook", "trigger.webhook",
                               params={"respond": "when_finished", "auth": "github"})], [])
    result, _ = run(webhook, request, trigger_id="hook")
    assert result.result == request


def test_trigger_payload_schema_errors():
    params = {"schema": {"type": "object", "required": ["order_id"],
                         "properties": {"order_id": {"type": "integer"},
                                        "items": {"type": "array",
                                                  "items": {"type": "string"}}}}}
    assert trigger_payload_schema_errors(params, {"order_id": 1}) == []
    assert [p.as_dict() for p in trigger_payload_schema_errors(
        params, {"order_id": "1", "items": ["a", 2]})] == [
        {"path": "items[1]", "message": "2 is not of type 'string'"},
        {"path": "order_id", "message": "'1' is not of type 'integer'"}]
    assert trigger_payload_schema_errors(params, [])[0].as_dict() == {
        "path": "", "message": "[] is not of type 'object'"}
    assert trigger_payload_schema_errors({}, "anything") == []


# --- logic.set ------------------------------------------------------------------------------

def run_set(input, **params):
    result, _ = run(chain(node("set", "logic.set", params=params)), input)
    return result.result


def test_set_sets_dotted_paths_on_a_copy_of_the_input():
    original = {"keep": 1, "a": {"x": 1, "b": {"old": True}}, "scalar": 5}
    before = copy.deepcopy(original)
    assert run_set(original, fields={"a.b.c": "{{ input.keep + 1 }}", "new.deep": "v",
                                     "scalar.child": 1}) == {
        "keep": 1, "a": {"x": 1, "b": {"old": True, "c": 2}}, "scalar": {"child": 1},
        "new": {"deep": "v"}}
    assert original == before


def test_set_only_outputs_just_the_fields():
    assert run_set({"keep": 1}, fields={"x": 2}, keep="set_only") == {"x": 2}


def test_set_on_input_that_is_not_an_object():
    assert run_set(None, fields={"x": 1}) == {"x": 1}
    assert run_set([1, 2], fields={"x": 1}) == {"input": [1, 2], "x": 1}


# --- logic.if and logic.switch --------------------------------------------------------------

@pytest.mark.parametrize(("condition", "total", "output"), [
    ("{{ input.total > 100 }}", 150, "true"), ("{{ input.total > 100 }}", 50, "false"),
    (True, 0, "true"), ("{{ input.missing }}", 0, "false"), ("{{ input.total }}", 0, "false"),
    ("yes", 0, "true"), ("false", 0, "false"), ("{{ [1] }}", 0, "true")])
def test_if(condition, total, output):
    _, recorder = run(chain(node("check", "logic.if", params={"condition": condition})),
                      {"total": total})
    check = recorder.result("check")
    assert (check.output_name, check.output) == (output, {"total": total})


def test_if_refuses_text_that_is_not_true_or_false():
    result, _ = run(chain(node("check", "logic.if", params={"condition": "{{ input.x }} > 1"})),
                    {"x": 2})
    assert result.error["message"] == ("the condition gave the text '2 > 1'; expected true "
                                       "or false")


def switch_definition() -> dict:
    return chain(node("route", "logic.switch", params={"cases": [
        {"name": "big", "condition": "{{ input.total > 100 }}"},
        {"name": "medium", "condition": "{{ input.total > 10 }}"},
        {"name": "broken", "condition": "{{ input.total / 0 }}"}]}))


@pytest.mark.parametrize(("total", "output"), [(500, "big"), (50, "medium")])
def test_switch_takes_the_first_case_that_holds(total, output):
    _, recorder = run(switch_definition(), {"total": total})
    assert recorder.result("route").output_name == output


def test_switch_conditions_after_a_match_are_not_evaluated_and_errors_name_the_case():
    result, _ = run(switch_definition(), {"total": 5})
    assert result.error["message"] == ("cases[2].condition: ZeroDivisionError: division by "
                                       "zero")


def test_switch_default():
    defn = chain(node("route", "logic.switch", params={"cases": [
        {"name": "big", "condition": "{{ input.total > 100 }}"}]}))
    _, recorder = run(defn, {"total": 1})
    assert recorder.result("route").output_name == "default"


# --- logic.filter ---------------------------------------------------------------------------

def test_filter_keeps_the_items_whose_condition_holds():
    defn = chain(node("keep", "logic.filter", params={
        "condition": "{{ item.paid and index < 3 }}"}))
    items = [{"paid": True}, {"paid": False}, {"paid": True}, {"paid": True}]
    result, _ = run(defn, items)
    assert result.result == [{"paid": True}, {"paid": True}]


def test_filter_items_param_and_errors():
    defn = chain(node("keep", "logic.filter", params={
        "items": "{{ input.rows }}", "condition": "{{ item > 1 }}"}))
    assert run(defn, {"rows": [1, 2, 3]})[0].result == [2, 3]
    assert run(defn, {"rows": "nope"})[0].error["message"] == "items must be a list, not text"
    no_items = chain(node("keep", "logic.filter", params={"condition": True}))
    assert run(no_items, {"a": 1})[0].error["message"] == (
        "the input (set items to choose a list) must be a list, not an object")
    failing = chain(node("keep", "logic.filter", params={"condition": "{{ 1 / item }}"}))
    assert run(failing, [1, 0])[0].error["message"] == (
        "item 1: ZeroDivisionError: division by zero")


# --- logic.merge, logic.split, logic.wait, logic.noop ---------------------------------------

def test_merge_of_a_single_input():
    result, _ = run(chain(node("m", "logic.merge")), 7)
    assert result.result == {"start": 7}


def test_split_without_a_sub_branch_outputs_the_items_on_done():
    defn = definition([node("start", "trigger.manual"), node("each", "logic.split"),
                       node("after", "logic.noop")],
                      [edge("start", "each"), edge("each", "after", "done")])
    result, _ = run(defn, [1, 2])
    assert result.result == [1, 2]


def test_split_needs_a_list():
    defn = definition([node("start", "trigger.manual"), node("each", "logic.split")],
                      [edge("start", "each")])
    assert run(defn, {"a": 1})[0].error["message"] == (
        "the input (set items to choose a list) must be a list, not an object")


def test_wait_of_zero_seconds_and_noop_pass_the_input_on():
    result, _ = run(chain(node("pause", "logic.wait", params={"seconds": 0}),
                          node("nothing", "logic.noop")), {"a": 1})
    assert result.result == {"a": 1}


# --- nodes with ports -----------------------------------------------------------------------

def test_http_request_sends_every_param_with_defaults_and_run_context():
    port = FakeHttp({"status": 201, "headers": {}, "body": {"ok": True}})
    defn = chain(node("post", "http.request", credential_id="cred-9", params={
        "method": "POST", "url": "https://example.com/in/{{ input.id }}",
        "headers": {"X-Trace": "{{ execution.id }}"}, "json": "{{ input | tojson }}"}))
    result, _ = run(defn, {"id": 7, "name": "é"}, ports=Ports(http=port))
    assert result.result == {"status": 201, "headers": {}, "body": {"ok": True}}
    [call] = port.calls
    deadline = call.pop("deadline")
    assert deadline is None
    assert call == {
        "method": "POST", "url": "https://example.com/in/7", "query": {},
        "headers": {"X-Trace": "exec-1"}, "body_type": "json", "json": {"id": 7, "name": "é"},
        "form": {}, "raw": None, "timeout_s": 30, "follow_redirects": True,
        "max_response_bytes": 5_000_000, "idempotency_key": "exec-1:post:1",
        "credential_id": "cred-9"}


def test_http_request_json_text_must_be_json():
    defn = chain(node("post", "http.request", params={
        "method": "POST", "url": "https://example.com", "json": "{{ input.text }}"}))
    result, _ = run(defn, {"text": "{not json"}, ports=Ports(http=FakeHttp()))
    assert result.error["message"].startswith("json: the body is not valid JSON")


class FakeAi:
    def __init__(self):
        self.calls = []

    def chat(self, **kwargs):
        self.calls.append(kwargs)
        return {"text": "hi " + kwargs["prompt"], "model": kwargs["model"], "usage": {}}


def test_ai_chat_calls_the_ai_port():
    port = FakeAi()
    defn = chain(node("ask", "ai.chat", params={
        "provider": "openai", "model": "small", "prompt": "{{ input.q }}",
        "conversation_key": "{{ input.user }}"}))
    result, _ = run(defn, {"q": "there", "user": "u1"}, ports=Ports(ai=port))
    assert result.result == {"text": "hi there", "model": "small", "usage": {}}
    [call] = port.calls
    assert call["conversation_key"] == "u1" and call["temperature"] == 0.7
    assert call["max_tokens"] == 1024 and call["fallback_model"] is None
    assert call["idempotency_key"] == "exec-1:ask:1"
    run(defn, {"q": "no user"}, ports=Ports(ai=port))
    assert port.calls[-1]["conversation_key"] is None  # a template giving null: not set
    assert run(defn, {"q": "x"})[0].error["message"] == "ai.chat is not available in this run"


class FakeMcp:
    def __init__(self):
        self.calls = []

    def call_tool(self, **kwargs):
        self.calls.append(kwargs)
        return {"content": [{"type": "text", "text": "done"}]}


def test_mcp_calls_the_tool_through_the_mcp_port():
    port = FakeMcp()
    defn = chain(node("zap", "integration.mcp", credential_id="oauth-1", params={
        "server_url": "https://mcp.zapier.com/api/mcp", "tool": "gmail_send",
        "arguments": {"to": "{{ input.email }}"}}))
    result, _ = run(defn, {"email": "a@b.com"}, ports=Ports(mcp=port))
    assert result.result == {"content": [{"type": "text", "text": "done"}]}
    assert port.calls == [{"server_url": "https://mcp.zapier.com/api/mcp", "tool": "gmail_send",
                           "arguments": {"to": "a@b.com"}, "idempotency_key": "exec-1:zap:1",
                           "credential_id": "oauth-1", "deadline": None}]
    assert run(defn, {})[0].error["message"] == "integration.mcp is not available in this run"
