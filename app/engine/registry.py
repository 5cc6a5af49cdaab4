"""The node types, in palette order."""

from __future__ import annotations

from app.engine.nodes import ai, apps, http, integration, logic, trigger
from app.engine.nodes.base import NodeContext, NodeOutput, NodeType

__all__ = ["NodeContext", "NodeOutput", "NodeType", "get_node_type", "node_types"]

_NODE_TYPES: tuple[NodeType, ...] = (
    *trigger.NODE_TYPES, *logic.NODE_TYPES, *http.NODE_TYPES, *ai.NODE_TYPES,
    *integration.NODE_TYPES, *apps.NODE_TYPES)
_BY_NAME = {node_type.name: node_type for node_type in _NODE_TYPES}


def node_types() -> tuple[NodeType, ...]:
    return _NODE_TYPES


def get_node_type(name: str) -> NodeType | None:
    return _BY_NAME.get(name)
