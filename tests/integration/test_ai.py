"""ai.chat against a local OpenAI-compatible server started by the test (real HTTP), which
answers, fails with 500/429/400 or returns invalid JSON on demand: templates, conversation
history, retries then the fallback model, the rate limit, JSON-schema mode, the cache and the
stored history rows."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest
from sqlalchemy import select

from app.db import db
from app.models import AIHistory
from tests.integration.local_http import LocalService, Stream

BEHAVIOUR: list = []  # what the server does next, per request: ("ok", text) | ("status", n)


def _sse(data) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


def _answer(seen):
    model = (seen.body or {}).get("model")
    if (seen.body or {}).get("stream"):  # as OpenAI streams: deltas, then usage, then DONE
        pieces = [_sse({"choices": [{"index": 0, "delta": {"content": p}}]})
                  for p in ("Hel", "lo ", "Ann")]
        pieces.append(_sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        pieces.append(_sse({"choices": [], "usage": {"prompt_tokens": 7,
                                                     "completion_tokens": 3}}))
        return 200, Stream([*pieces, b"data: [DONE]\n\n"], delay_s=0.15)
    step = BEHAVIOUR.pop(0) if BEHAVIOUR else ("ok", f"hello from {model}")
    if step[0] == "status":
        return step[1], {"error": {"message": f"failure {step[1]}"}}
    return 200, {"id": "cmpl-1", "object": "chat.completion", "model": model, "choices": [
        {"index": 0, "finish_reason": "stop",
         "message": {"role": "assistant", "content": step[1]}}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}}


SERVER = LocalService(_answer).start()


@pytest.fixture
def llm():
    BEHAVIOUR.clear()
    SERVER.seen.clear()
    return SERVER


@pytest.fixture
def settings_overrides():
    return {"http_allow": ("127.0.0.1",), "ai_providers": (
        ("local", SERVER.url + "/v1"), ("backup", SERVER.url + "/backup/v1")),
        "ai_prices": (("small", 2.0, 10.0),)}  # dollars per million tokens, in and out


def chat(api, run_input=None, **params):
    node = {"id": "ask", "type": "ai.chat", "params": {
        "provider": "local", "model": "small", "prompt": "Hi {{ input.name }}", **params}}
    return api.run_node(node, run_input or {"name": "Ann"})


def history():
    rows = list(db.session.scalars(select(AIHistory).order_by(AIHistory.created_at)))
    db.session.commit()
    return rows


def test_a_prompt_is_answered_and_stored(api_client, llm):
    run = chat(api_client, system="Be brief.")
    assert run["status"] == "succeeded", run
    result = run["result"]
    assert (result["text"], result["model"], result["finish_reason"]) == (
        "hello from small", "small", "stop")
    assert result["usage"] == {"prompt_tokens": 11, "completion_tokens": 5}
    assert result["cached"] is False and result["fallback"] is False
    sent = llm.seen[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["messages"] == [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "Hi Ann"}]
    row = history()[-1]
    assert (row.user_message, row.assistant_message, row.model, row.node_id) == (
        "Hi Ann", "hello from small", "small", "ask")
    assert (row.prompt_tokens, row.completion_tokens) == (11, 5) and row.latency_ms >= 0
    # 11 tokens in at $2/M and 5 out at $10/M
    assert result["cost_estimate"] == 0.000072 and row.cost_estimate == Decimal("0.000072")


def test_a_saved_template_is_rendered_with_the_nodes_variables(api_client, llm):
    saved = api_client.post("/prompt-templates", {
        "name": "greet", "system": "You greet {{ input.name }}.",
        "prompt": "Say hello. Note: {{ prompt }}"})
    assert saved.status_code == 201 and saved.get_json()["version"] == 1
    api_client.post("/prompt-templates", {"name": "greet", "prompt": "v2: {{ prompt }}"})
    run = chat(api_client, template_id="greet@1", prompt="be kind")
    assert run["status"] == "succeeded", run
    assert llm.seen[-1].body["messages"] == [
        {"role": "system", "content": "You greet Ann."},
        {"role": "user", "content": "Say hello. Note: be kind"}]
    chat(api_client, template_id="greet", prompt="x")  # the newest version
    assert llm.seen[-1].body["messages"][-1]["content"] == "v2: x"
    listed = api_client.get("/prompt-templates").get_json()["items"]
    assert [(t["name"], t["version"]) for t in listed] == [("greet", 2)]
    assert chat(api_client, template_id="nope")["error"]["message"].endswith(
        "there is no prompt template 'nope'")


def test_a_conversation_carries_its_earlier_messages(api_client, llm):
    BEHAVIOUR.extend([("ok", "first answer"), ("ok", "second answer")])
    chat(api_client, {"name": "Ann"}, conversation_key="{{ input.name }}")
    chat(api_client, {"name": "Ann"}, conversation_key="{{ input.name }}", prompt="Again")
    assert llm.seen[-1].body["messages"] == [
        {"role": "user", "content": "Hi Ann"}, {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "Again"}]
    assert {r.conversation_key for r in history()} == {"Ann"}


def test_errors_are_retried_then_the_fallback_answers(api_client, llm):
    BEHAVIOUR.extend([("status", 500), ("status", 503), ("status", 429)])
    run = chat(api_client, fallback_provider="backup", fallback_model="big")
    assert run["status"] == "succeeded", run
    assert run["result"]["model"] == "big" and run["result"]["fallback"] is True
    assert run["result"]["cost_estimate"] == 0  # no price configured for "big"
    assert [s.path for s in llm.seen] == ["/v1/chat/completions"] * 3 + [
        "/backup/v1/chat/completions"]


def test_a_400_is_not_retried(api_client, llm):
    BEHAVIOUR.extend([("status", 400)])
    run = chat(api_client, fallback_model="other")
    assert run["status"] == "succeeded"
    assert [s.body["model"] for s in llm.seen] == ["small", "other"]  # one try, then fallback
    BEHAVIOUR.extend([("status", 400), ("status", 400)])
    failed = chat(api_client, fallback_model="other")
    assert failed["status"] == "failed"
    assert "every model failed" in failed["error"]["message"]
    assert "the API answered 400: failure 400" in failed["error"]["message"]


def test_json_mode_asks_again_once_then_fails_with_the_errors(api_client, llm):
    schema = {"type": "object", "required": ["total"],
              "properties": {"total": {"type": "number"}}}
    BEHAVIOUR.extend([("ok", "not json"), ("ok", json.dumps({"total": 3}))])
    run = chat(api_client, json_schema=schema)
    assert run["status"] == "succeeded", run
    assert run["result"]["json"] == {"total": 3}
    assert llm.seen[-1].body["messages"][-1]["content"].startswith(
        "Your answer did not match the JSON Schema: not JSON")
    assert llm.seen[0].body["response_format"]["json_schema"]["schema"] == schema
    BEHAVIOUR.extend([("ok", '{"total": "x"}'), ("ok", "{}")])
    failed = chat(api_client, json_schema=schema)
    assert failed["status"] == "failed"
    assert "does not match the schema: (root): 'total' is a required property" in \
        failed["error"]["message"]


def test_temperature_zero_repeats_come_from_the_cache(api_client, llm):
    first = chat(api_client, temperature=0)
    second = chat(api_client, temperature=0)
    assert first["result"]["cached"] is False and second["result"]["cached"] is True
    assert second["result"]["text"] == first["result"]["text"]
    assert len(llm.seen) == 1
    assert [r.cached for r in history()] == [False, True]
    assert [float(r.cost_estimate) for r in history()] == [0.000072, 0.0]  # the cache is free
    chat(api_client, temperature=0.5)
    chat(api_client, temperature=0.5)
    assert len(llm.seen) == 3  # never cached above 0


@pytest.mark.parametrize("settings_overrides", [{
    "http_allow": ("127.0.0.1",), "ai_user_per_minute": 1,
    "ai_providers": (("local", SERVER.url + "/v1"),)}])
def test_over_the_rate_limit_the_node_fails_rate_limited(api_client, llm):
    assert chat(api_client)["status"] == "succeeded"
    node = {"id": "ask", "type": "ai.chat", "timeout_s": 2, "params": {
        "provider": "local", "model": "small", "prompt": "again"}}
    run = api_client.run_node(node)
    assert run["status"] == "failed"
    assert "rate limited" in run["error"]["message"]
    assert len(llm.seen) == 1


@pytest.mark.parametrize("settings_overrides", [{
    "http_allow": ("127.0.0.1",), "ai_daily_tokens": 20,
    "ai_providers": (("local", SERVER.url + "/v1"),)}])
def test_a_spent_daily_budget_fails_the_node_and_the_run_endpoint_answers_429(api_client, llm):
    assert chat(api_client)["status"] == "succeeded"  # 16 tokens of 20
    assert chat(api_client)["status"] == "succeeded"  # 32: now over
    workflow = api_client.post("/workflows", {"name": "AI", "nodes": [
        {"id": "start", "type": "trigger.manual"},
        {"id": "ask", "type": "ai.chat", "params": {"provider": "local", "model": "small",
                                                    "prompt": "hi"}}],
        "connections": [{"from": "start", "to": "ask"}]}).get_json()
    answer = api_client.post(f"/workflows/{workflow['id']}/run", {"input": {}})
    assert answer.status_code == 429
    assert "AI budget for today is spent" in answer.get_json()["error"]["message"]
    assert 0 < int(answer.headers["Retry-After"]) <= 86400
    plain = api_client.post("/workflows", {"name": "No AI", "nodes": [
        {"id": "start", "type": "trigger.manual"}], "connections": []}).get_json()
    assert api_client.post(f"/workflows/{plain['id']}/run", {"input": {}}).status_code == 202
    assert len(llm.seen) == 2


def test_a_run_from_the_editor_streams_the_answer_to_its_socket(app, llm):
    """The editor's runs stream: each piece of the answer reaches the run's WebSocket as it
    comes, appended to the running node; the stored output is the whole answer."""
    from app.services import executions, workflows
    from tests.integration.test_live import Browser, HeldQueue, receive_all, serve, states

    server, thread = serve(app)
    host = f"127.0.0.1:{server.server_port}"
    try:
        alice = Browser(app)
        with app.app_context():
            from app.models import User

            user = db.session.scalar(select(User).where(User.email == alice.email))
            flow = workflows.create(user, {"name": "Streamed", "nodes": [
                {"id": "start", "type": "trigger.manual"},
                {"id": "ask", "type": "ai.chat",
                 "params": {"provider": "local", "model": "small", "prompt": "Hi"}}],
                "connections": [{"from": "start", "to": "ask"}]})
            held = HeldQueue(app)
            run, _new = executions.start_manual(user, flow.id, {}, stream_answers=True)
        socket = alice.socket(host, f"/ws/executions/{run.id}")
        socket.receive(timeout=5)  # the state first
        from app.live.hub import hub_for

        # pieces are not replayed to a late subscriber: let the hub's subscription be live
        assert hub_for(app).ready.wait(5)
        held.release()
        # until the run's own status says succeeded (a batch may hold "running" for the run
        # and "succeeded" for its first node: that is not the end)
        messages = receive_all(socket, lambda got: (f"run-status-{run.id}", "succeeded")
                               in states(got))
        pieces = [m for m in messages if f'beforeend:#stream-{run.id}-ask' in m]
        spans = [piece for m in pieces for piece in re.findall(
            rf'beforeend:#stream-{run.id}-ask">(.*?)</span>', m, re.S)]
        assert "".join(spans) == "Hello Ann" and len(spans) >= 2, messages  # in pieces
        running = next(i for i, m in enumerate(messages)
                       if f'id="stream-{run.id}-ask"' in m)
        assert running < messages.index(pieces[0])  # the node's answer box came first
        socket.close()
    finally:
        server.shutdown()
        thread.join(timeout=5)
    row = history()[-1]
    assert row.assistant_message == "Hello Ann" and row.completion_tokens == 3
