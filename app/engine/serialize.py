"""Definitions as canonical JSON text: the same definition always gives the same bytes, so
stored versions can be compared and hashed, and ``dumps(loads(dumps(d))) == dumps(d)``.

Known objects get a fixed key order (top: name, nodes, connections, settings; node: id, type,
name, credential_id, params, retry, on_error, timeout_s, position; connection: from, output,
to; retry: max, backoff_s, factor), any other keys following sorted; a connection's output is
written even when it is the default "main". Params are written as they are: their key order
can matter (logic.set sets fields in order).
"""

from __future__ import annotations

import json
from typing import Any

TOP_KEYS = ("name", "nodes", "connections", "settings")
NODE_KEYS = ("id", "type", "name", "credential_id", "params", "retry", "on_error",
             "timeout_s", "position")
CONNECTION_KEYS = ("from", "output", "to")
RETRY_KEYS = ("max", "backoff_s", "factor")


def dumps_definition(definition: dict) -> str:
    return json.dumps(_canonical(definition), ensure_ascii=False, indent=2, allow_nan=False)


def loads_definition(text: str | bytes) -> dict:
    """Parse a definition; raises ``ValueError`` unless the text is one JSON object."""
    definition = json.loads(text, parse_constant=_refuse_constant)
    if not isinstance(definition, dict):
        raise ValueError("a workflow definition must be a JSON object")
    return definition


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _ordered(value: dict, first: tuple[str, ...]) -> dict:
    ordered = {key: value[key] for key in first if key in value}
    ordered.update((key, value[key]) for key in sorted(value.keys() - set(first), key=str))
    return ordered


def _canonical(definition: dict) -> dict:
    out = _ordered(definition, TOP_KEYS)
    if isinstance(out.get("nodes"), list):
        out["nodes"] = [_canonical_node(node) if isinstance(node, dict) else node
                        for node in out["nodes"]]
    if isinstance(out.get("connections"), list):
        out["connections"] = [
            _ordered({"output": "main", **connection}, CONNECTION_KEYS)
            if isinstance(connection, dict) else connection
            for connection in out["connections"]]
    if isinstance(out.get("settings"), dict):
        out["settings"] = _ordered(out["settings"], ())
    return out


def _canonical_node(node: dict) -> dict:
    out = _ordered(node, NODE_KEYS)
    if isinstance(out.get("retry"), dict):
        out["retry"] = _ordered(out["retry"], RETRY_KEYS)
    return out
