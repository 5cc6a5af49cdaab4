"""integration.mcp against a real MCP server (the ``mcp`` SDK's MCPServer over streamable
HTTP, served by uvicorn in this process) with two tools: listing them, calling one with
templated arguments and the node's credential, a failing tool, and the SSRF rules."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn
from mcp.server.mcpserver import Context, MCPServer

TOKEN = "mcp-secret-" + "m" * 20
SEEN_AUTH: list[str | None] = []


def _server():
    server = MCPServer("jobsprint-test")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @server.tool()
    def shout(text: str, ctx: Context) -> str:
        """Upper-case a text; refuses an empty one."""
        request = getattr(ctx.request_context, "request", None)
        SEEN_AUTH.append(request.headers.get("authorization") if request is not None else None)
        if not text:
            raise ValueError("nothing to shout")
        return text.upper()

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(server.streamable_http_app(), host="127.0.0.1", port=port,
                            log_level="warning", lifespan="on")
    runner = uvicorn.Server(config)
    threading.Thread(target=runner.run, daemon=True).start()
    deadline = time.monotonic() + 15
    while not runner.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/mcp", runner


@pytest.fixture(scope="module")
def mcp_url():
    url, runner = _server()
    yield url
    runner.should_exit = True


@pytest.fixture
def settings_overrides():
    return {"http_allow": ("127.0.0.1",)}


class Api:
    def __init__(self, client):
        self.client = client

    def run(self, params, credential_id=None):
        node = {"id": "tool", "type": "integration.mcp", "params": params}
        if credential_id:
            node["credential_id"] = credential_id
        return self.client.run_node(node, {"x": 20, "word": "hello"})

    def post(self, path, body=None):
        return self.client.post(path, body)


@pytest.fixture
def api(api_client):
    return Api(api_client)


def test_a_tool_is_called_with_templated_arguments(api, mcp_url):
    run = api.run({"server_url": mcp_url, "tool": "add",
                   "arguments": {"a": "{{ input.x }}", "b": 22}})
    assert run["status"] == "succeeded", run
    assert run["result"] in (42, {"result": 42})


def test_the_credential_is_sent_and_a_failing_tool_fails_the_node(api, mcp_url):
    credential = api.post("/credentials", {"name": "mcp", "kind": "bearer",
                                           "secret": {"token": TOKEN}}).get_json()
    SEEN_AUTH.clear()
    run = api.run({"server_url": mcp_url, "tool": "shout",
                   "arguments": {"text": "{{ input.word }}"}}, credential["id"])
    assert run["status"] == "succeeded", run
    assert run["result"] in ("HELLO", {"result": "HELLO"})
    assert SEEN_AUTH[-1] == f"Bearer {TOKEN}"
    failed = api.run({"server_url": mcp_url, "tool": "shout", "arguments": {"text": ""}})
    assert failed["status"] == "failed"
    assert "the tool 'shout' failed" in failed["error"]["message"]
    assert TOKEN not in str(failed)


def test_tools_are_listed_for_the_editor(app, mcp_url):
    import uuid

    from app.services.mcp_port import McpPort
    from app.services.ssrf import AllowList

    with app.app_context():
        tools = McpPort(AllowList.parse(["127.0.0.1"]), uuid.uuid4()).list_tools(mcp_url, None)
    assert {t["name"]: t["description"] for t in tools} == {
        "add": "Add two numbers.", "shout": "Upper-case a text; refuses an empty one."}
    assert set(tools[0]["input_schema"]["properties"]) in ({"a", "b"}, {"text"})


@pytest.mark.parametrize("settings_overrides", [{}])  # loopback not allowed
def test_a_loopback_server_is_refused_without_the_allow_list(api, mcp_url):
    run = api.run({"server_url": mcp_url, "tool": "add", "arguments": {"a": 1, "b": 2}})
    assert run["status"] == "failed"
    assert "127.0.0.1" in run["error"]["message"] and "loopback" in run["error"]["message"]


def test_the_editor_lists_the_tools_of_the_nodes_server(app, client, user, token, mcp_url):
    from app.services import workflows
    from tests.integration.test_editor import Editor

    with app.app_context():
        flow = workflows.create(user, {"name": "Tools", "nodes": [
            {"id": "start", "type": "trigger.manual"},
            {"id": "tool", "type": "integration.mcp",
             "params": {"server_url": mcp_url, "tool": "add"}}],
            "connections": [{"from": "start", "to": "tool"}]})
    editor = Editor(client, token, flow.id)
    assert "List the server's tools" in editor.do("select", node="tool")
    tools = client.get(f"{editor.base}/nodes/tool/mcp-tools").get_data(as_text=True)
    assert "<code>add</code> — Add two numbers." in tools
    assert "arguments: a, b" in tools
