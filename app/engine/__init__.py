"""The workflow engine: pure Python, no Flask, no database, no queue, no network.

``validate`` turns a definition into a ``Graph`` (or every problem with it); ``run_graph``
runs a graph, reporting each node through callbacks, with I/O done by injected ``Ports``.
"""

from app.engine.errors import ExpressionError, NodeError, sanitize_error
from app.engine.expressions import RenderLimits, render
from app.engine.graph import Graph, Limits, Problem, Validation, validate
from app.engine.nodes.base import NodeContext, NodeOutput, NodeType
from app.engine.nodes.trigger import trigger_payload_schema_errors
from app.engine.ports import AiPort, Clock, HttpPort, McpPort, Ports, RunCallbacks, SystemClock
from app.engine.registry import get_node_type, node_types
from app.engine.results import NodeResult, NodeState, RunOptions, RunResult
from app.engine.runner import backoff_delay, run_graph
from app.engine.serialize import dumps_definition, loads_definition

__all__ = [
    "AiPort", "Clock", "ExpressionError", "Graph", "HttpPort", "Limits", "McpPort",
    "NodeContext", "NodeError", "NodeOutput", "NodeResult", "NodeState", "NodeType", "Ports",
    "Problem", "RenderLimits", "RunCallbacks", "RunOptions", "RunResult", "SystemClock",
    "Validation", "backoff_delay", "dumps_definition", "get_node_type", "loads_definition",
    "node_types", "render", "run_graph", "sanitize_error", "trigger_payload_schema_errors",
    "validate",
]
