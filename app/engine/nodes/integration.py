"""integration.mcp: call a tool on an MCP server (Zapier's, say) through the injected port."""

from __future__ import annotations

from app.engine.nodes.base import NodeContext, NodeOutput, NodeType, port_unavailable
from app.engine.nodes.http import check_url


def run_mcp(ctx: NodeContext) -> NodeOutput:
    if ctx.ports.mcp is None:
        raise port_unavailable("integration.mcp")
    value = ctx.ports.mcp.call_tool(
        server_url=ctx.params["server_url"], tool=ctx.params["tool"],
        arguments=ctx.params["arguments"], idempotency_key=ctx.idempotency_key,
        credential_id=ctx.credential_id, deadline=ctx.deadline)
    return NodeOutput(value)


MCP = NodeType(
    name="integration.mcp", group="Apps", label="MCP tool",
    description="Calls a tool on an MCP server (e.g. Zapier's) and outputs its result.",
    params_schema={
        "type": "object", "additionalProperties": False, "required": ["server_url", "tool"],
        "properties": {
            "server_url": {"type": "string", "minLength": 1, "maxLength": 2048,
                           "title": "Server URL", "description": "The MCP server's URL."},
            "tool": {"type": "string", "minLength": 1, "maxLength": 200, "title": "Tool"},
            "arguments": {"type": "object", "default": {}, "title": "Arguments",
                          "format": "json", "description": "The tool's arguments; values "
                                                           "may be expressions."},
        }},
    run=run_mcp, check_params=lambda params: check_url(params, "server_url"))

NODE_TYPES = (MCP,)
