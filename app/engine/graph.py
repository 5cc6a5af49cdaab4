"""Workflow definitions: validation, and the graph the runner executes.

``validate`` never raises: whatever JSON it is given, it returns every problem at once, each
with the path the editor uses to point at a node and field (``nodes[3].params.url``). The
graph comes back only when there is no error. Warnings (a node no trigger reaches, a repeated
connection) do not prevent running.

All algorithms are iterative and linear in the size of the definition, and params are
checked once per distinct (type, params) pair: a 10,000-node chain validates in well under
200 ms.
"""

from __future__ import annotations

import gc
import json
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from app.engine.expressions import expression_problems, is_template
from app.engine.nodes.base import NodeType
from app.engine.problems import Problem, join_path
from app.engine.registry import get_node_type, node_types
from app.engine.schema import design_time_validator, schema_problems, templates_constrained
from app.engine.topology import cycles, reachable, topological_order

__all__ = ["Edge", "Graph", "Limits", "Node", "Problem", "SubBranch", "Validation", "validate"]

MAX_ID_CHARS = 64
MAX_NAME_CHARS = 200
MAX_TIMEOUT_S = 24 * 3600
MAX_RETRIES = 10
MAX_BACKOFF_FACTOR = 10
MAX_CYCLE_IDS_SHOWN = 40
ON_ERROR = ("stop", "continue", "error_output")
DEFAULT_RETRY = MappingProxyType({"max": 3, "backoff_s": 1, "factor": 2})
NO_RETRY = MappingProxyType({"max": 0, "backoff_s": 1, "factor": 2})
NODE_FIELDS = frozenset({"id", "type", "name", "credential_id", "params", "retry", "on_error",
                         "timeout_s", "position"})
_BASIC_NODE_FIELDS = frozenset({"id", "type", "params"})
_ID = re.compile(r"[A-Za-z0-9_-]+")
_MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    max_nodes: int = 2000
    max_bytes: int = 2 * _MIB


class Edge(NamedTuple):
    source: str
    output: str
    target: str
    index: int  # the connection's position in the definition


@dataclass(frozen=True, slots=True)
class Node:
    """A validated node. ``params`` have the type's defaults filled in; ``templated`` says
    whether any (non-lazy) param needs rendering, ``recheck`` whether the rendered params must
    be checked against the schema again (a template sat where the schema constrains)."""

    id: str
    type: NodeType
    params: dict
    index: int
    name: str | None = None
    credential_id: str | None = None
    retry: Mapping = field(default_factory=lambda: NO_RETRY)
    on_error: str = "stop"
    timeout_s: float | None = None
    templated: bool = False
    recheck: bool = False

    @property
    def max_attempts(self) -> int:
        return self.retry["max"] + 1


@dataclass(frozen=True, slots=True)
class SubBranch:
    """The nodes a split runs once per item: those reachable from its "item" output, minus the
    sub-branches of splits nested in it, in topological order; ``sink`` is the last one, whose
    output is gathered per item."""

    split_id: str
    nodes: tuple[str, ...]
    sink: str | None


@dataclass(frozen=True)
class Graph:
    name: str
    settings: Mapping[str, Any]
    nodes: Mapping[str, Node]
    edges: tuple[Edge, ...]
    incoming: Mapping[str, tuple[Edge, ...]]
    outgoing: Mapping[str, tuple[Edge, ...]]
    order: tuple[str, ...]  # every node, topologically; ties in definition order
    top_level: tuple[str, ...]  # the order without the nodes inside sub-branches
    triggers: tuple[str, ...]
    sub_branches: Mapping[str, SubBranch]

    @property
    def timeout_s(self) -> float | None:
        return self.settings.get("timeout_s")


@dataclass
class Validation:
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    graph: Graph | None = None

    @property
    def ok(self) -> bool:
        return not self.errors


def validate(definition: Any, limits: Limits | None = None) -> Validation:
    """Check a workflow definition; the graph comes back only when there is no error."""
    with _cyclic_gc_paused():
        return _Validator(limits or Limits()).validate(definition)


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Validation allocates a few objects per node, none in a reference cycle; meanwhile the
    cyclic collector would traverse the whole definition several times for nothing (measured:
    over a quarter of the time at 100,000 nodes, and growing faster than linearly)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass(frozen=True, slots=True)
class _ParamsReport:
    """What checking one (type, params) pair found; shared by the nodes that have them."""

    problems: tuple[tuple[tuple[str | int, ...], str], ...]
    params: dict  # with the type's defaults filled in
    templated: bool
    recheck: bool


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _serialized_size(definition: Any) -> int | str:
    """The definition's size in bytes as compact UTF-8 JSON, or why it is not JSON."""
    try:
        text = json.dumps(definition, ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False)
        return len(text.encode("utf-8", "surrogatepass"))
    except RecursionError:
        return "it is nested too deeply"
    except (TypeError, ValueError) as exc:
        return str(exc)


class _Validator:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []
        self.params_reports: dict[tuple[str, str], _ParamsReport] = {}
        self.saw_trigger = False  # a node of a trigger type, valid or not

    def error(self, path: str, message: str, node_id: str | None = None) -> None:
        self.errors.append(Problem(path, message, node_id))

    def warn(self, path: str, message: str, node_id: str | None = None) -> None:
        self.warnings.append(Problem(path, message, node_id))

    def done(self, graph: Graph | None = None) -> Validation:
        return Validation(self.errors, self.warnings, None if self.errors else graph)

    # --- the whole definition --------------------------------------------------------------

    def validate(self, definition: Any) -> Validation:
        if not isinstance(definition, dict):
            self.error("", "the workflow definition must be a JSON object")
            return self.done()
        size = _serialized_size(definition)
        if isinstance(size, str):
            self.error("", f"the workflow definition is not valid JSON: {size}")
            return self.done()
        if size > self.limits.max_bytes:
            self.error("", f"the workflow definition is {size / _MIB:.1f} MiB, over the "
                           f"{self.limits.max_bytes / _MIB:g} MiB limit")
            return self.done()
        name = self.check_name(definition.get("name"))
        settings = self.check_settings(definition.get("settings", {}))
        raw_nodes = self.check_list(definition, "nodes")
        raw_connections = self.check_list(definition, "connections")
        if raw_nodes is not None and len(raw_nodes) > self.limits.max_nodes:
            self.error("nodes", f"{len(raw_nodes):,} nodes, over the limit of "
                                f"{self.limits.max_nodes:,}")
            return self.done()
        nodes, positions = self.check_nodes(raw_nodes or [])
        edges = self.check_connections(raw_connections or [], nodes, positions)
        if raw_nodes is not None and not self.saw_trigger:
            self.error("nodes", "the workflow needs a trigger (trigger.manual, "
                                "trigger.schedule or trigger.webhook)")
        return self.analyse(name, settings, nodes, positions, edges)

    def check_name(self, name: Any) -> str:
        if name is None:
            self.error("name", "is required")
        elif not isinstance(name, str) or not name.strip():
            self.error("name", "must be a non-empty string")
        elif len(name) > MAX_NAME_CHARS:
            self.error("name", f"must be at most {MAX_NAME_CHARS} characters")
        else:
            return name
        return ""

    def check_settings(self, settings: Any) -> dict:
        if not isinstance(settings, dict):
            self.error("settings", "must be an object")
            return {}
        concurrency = settings.get("concurrency", 1)
        if not _is_int(concurrency) or concurrency < 1:
            self.error("settings.concurrency", "must be a whole number, at least 1")
        timeout = settings.get("timeout_s")
        if timeout is not None and (not _is_number(timeout) or not 0 < timeout <= MAX_TIMEOUT_S):
            self.error("settings.timeout_s",
                       f"must be a number of seconds above 0, at most {MAX_TIMEOUT_S}")
        return settings

    def check_list(self, definition: dict, key: str) -> list | None:
        value = definition.get(key)
        if value is None:
            self.error(key, "is required")
        elif not isinstance(value, list):
            self.error(key, "must be a list")
        else:
            return value
        return None

    # --- nodes ------------------------------------------------------------------------------

    def check_nodes(self, raw_nodes: list) -> tuple[dict[str, Node], dict[str, int]]:
        """The nodes that are valid, by id; and where every well-named node is, by id (so
        that a connection to a node with, say, an unknown type is not also reported)."""
        nodes: dict[str, Node] = {}
        positions: dict[str, int] = {}
        for index, raw in enumerate(raw_nodes):
            node_id = self.check_id(index, raw, positions)
            if node_id is not None:
                positions[node_id] = index
            node = self.check_node(index, raw, node_id)
            if node is not None:
                nodes[node.id] = node
        return nodes, positions

    def check_id(self, index: int, raw: Any, positions: dict[str, int]) -> str | None:
        if not isinstance(raw, dict):
            return None
        node_id = raw.get("id")
        if isinstance(node_id, str) and len(node_id) <= MAX_ID_CHARS and _ID.fullmatch(node_id):
            if node_id not in positions:
                return node_id
            message = f"'{node_id}' is already the id of nodes[{positions[node_id]}]"
        elif node_id is None:
            message = "is required"
        elif not isinstance(node_id, str) or not node_id:
            message = "must be a non-empty string"
        else:
            message = f"must be at most {MAX_ID_CHARS} letters, digits, '_' or '-'"
        self.error(f"nodes[{index}].id", message)
        return None

    def check_node(self, index: int, raw: Any, node_id: str | None) -> Node | None:
        if not isinstance(raw, dict):
            self.error(f"nodes[{index}]", "must be an object")
            return None
        errors_before = len(self.errors)
        type_name = raw.get("type")
        node_type = get_node_type(type_name) if isinstance(type_name, str) else None
        if node_type is None:
            self.report_type(index, raw.get("type"), node_id)
        elif node_type.is_trigger:
            self.saw_trigger = True
        params = raw.get("params", {})
        if not isinstance(params, dict):
            self.error(f"nodes[{index}].params", "must be an object", node_id)
            params = None
        report = None
        if node_type is not None and params is not None:
            report = self.params_report(node_type, params)
            for path, message in report.problems:
                self.error(join_path("nodes", index, "params", *path), message, node_id)
        common = self.check_common_fields(index, raw, node_id)
        if len(self.errors) > errors_before or node_id is None:
            return None
        return Node(id=node_id, type=node_type, params=report.params, index=index,
                    templated=report.templated, recheck=report.recheck, **common)

    def report_type(self, index: int, name: Any, node_id: str | None) -> None:
        if name is None:
            message = "is required"
        elif not isinstance(name, str):
            message = "must be a string"
        else:
            known = ", ".join(t.name for t in node_types())
            message = f"unknown node type '{name[:100]}' (known: {known})"
        self.error(f"nodes[{index}].type", message, node_id)

    def params_report(self, node_type: NodeType, params: dict) -> _ParamsReport:
        key = (node_type.name, repr(params))  # repr: C-fast, and distinct for JSON values
        report = self.params_reports.get(key)
        if report is None:
            report = self.params_reports[key] = _check_params(node_type, params)
        return report

    def check_common_fields(self, index: int, raw: dict, node_id: str | None) -> dict:
        """The fields every node may have; returns those to keep on the ``Node``."""
        common: dict[str, Any] = {}
        if _BASIC_NODE_FIELDS.issuperset(raw):
            return common  # the usual case, and the fast one
        prefix = f"nodes[{index}]"
        if "name" in raw:
            name = raw["name"]
            if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME_CHARS):
                self.error(f"{prefix}.name",
                           f"must be a string of at most {MAX_NAME_CHARS} characters", node_id)
            common["name"] = name
        if "credential_id" in raw:
            credential = raw["credential_id"]
            if credential is not None and (not isinstance(credential, str) or not credential):
                self.error(f"{prefix}.credential_id", "must be a credential id or null",
                           node_id)
            common["credential_id"] = credential
        if "retry" in raw:
            common["retry"] = self.check_retry(index, raw["retry"], node_id)
        if "on_error" in raw:
            if raw["on_error"] not in ON_ERROR:
                self.error(f"{prefix}.on_error", "must be one of " + ", ".join(ON_ERROR),
                           node_id)
            common["on_error"] = raw["on_error"]
        if "timeout_s" in raw:
            timeout = raw["timeout_s"]
            if not _is_number(timeout) or not 0 < timeout <= MAX_TIMEOUT_S:
                self.error(f"{prefix}.timeout_s",
                           f"must be a number of seconds above 0, at most {MAX_TIMEOUT_S}",
                           node_id)
            common["timeout_s"] = timeout
        if "position" in raw:
            position = raw["position"]
            if not (isinstance(position, list) and len(position) == 2
                    and all(_is_number(v) for v in position)):
                self.error(f"{prefix}.position", "must be [x, y]", node_id)
        for extra in sorted(map(str, raw.keys() - NODE_FIELDS)):
            self.warn(join_path("nodes", index, extra), "is not a node field and is ignored",
                      node_id)
        return common

    def check_retry(self, index: int, retry: Any, node_id: str | None) -> Mapping:
        path = f"nodes[{index}].retry"
        if not isinstance(retry, dict):
            self.error(path, 'must be an object like {"max": 3, "backoff_s": 1, "factor": 2}',
                       node_id)
            return NO_RETRY
        merged = {**DEFAULT_RETRY, **retry}
        if not _is_int(merged["max"]) or not 0 <= merged["max"] <= MAX_RETRIES:
            self.error(f"{path}.max", f"must be a whole number from 0 to {MAX_RETRIES}", node_id)
        if not _is_number(merged["backoff_s"]) or not 0 <= merged["backoff_s"] <= MAX_TIMEOUT_S:
            self.error(f"{path}.backoff_s",
                       f"must be a number of seconds from 0 to {MAX_TIMEOUT_S}", node_id)
        if not _is_number(merged["factor"]) or not 1 <= merged["factor"] <= MAX_BACKOFF_FACTOR:
            self.error(f"{path}.factor", f"must be a number from 1 to {MAX_BACKOFF_FACTOR}",
                       node_id)
        for extra in sorted(retry.keys() - DEFAULT_RETRY.keys()):
            self.error(join_path("nodes", index, "retry", extra),
                       "is not a retry setting (max, backoff_s, factor)", node_id)
        return MappingProxyType(merged)

    # --- connections ------------------------------------------------------------------------

    def check_connections(self, raw_connections: list, nodes: dict[str, Node],
                          positions: dict[str, int]) -> list[Edge]:
        edges: list[Edge] = []
        seen: dict[tuple[str, str, str], int] = {}
        outputs_of: dict[str, list[str]] = {}
        for index, raw in enumerate(raw_connections):
            if not isinstance(raw, dict):
                self.error(f"connections[{index}]",
                           'must be an object like {"from": "a", "to": "b"}')
                continue
            source = self.check_end(index, "from", raw.get("from"), positions)
            target = self.check_end(index, "to", raw.get("to"), positions)
            output = raw.get("output", "main")
            if not isinstance(output, str):
                self.error(f"connections[{index}].output", "must be a string", source)
                continue
            if source is None or target is None:
                continue
            source_node, target_node = nodes.get(source), nodes.get(target)
            if source_node is not None:
                if source not in outputs_of:
                    outputs_of[source] = _outputs(source_node)
                if output not in outputs_of[source]:
                    self.error(f"connections[{index}].output",
                               f"'{output[:100]}' is not an output of '{source}' "
                               f"(it has: {', '.join(outputs_of[source])})", source)
                    continue
            if target_node is not None and target_node.type.is_trigger:
                self.error(f"connections[{index}].to",
                           f"'{target}' is a trigger; a trigger cannot have inputs", target)
                continue
            if source == target:
                self.error(f"connections[{index}]", f"connects '{source}' to itself", source)
                continue
            if (source, output, target) in seen:
                self.warn(f"connections[{index}]",
                          f"repeats connections[{seen[source, output, target]}]", source)
                continue
            seen[source, output, target] = index
            edges.append(Edge(source, output, target, index))
        return edges

    def check_end(self, index: int, end: str, node_id: Any,
                  positions: dict[str, int]) -> str | None:
        if isinstance(node_id, str) and node_id in positions:
            return node_id
        if node_id is None:
            message = "is required"
        elif not isinstance(node_id, str):
            message = "must be a node id"
        else:
            message = f"there is no node '{node_id[:100]}'"
        self.error(f"connections[{index}].{end}", message)
        return None

    # --- the graph as a whole ---------------------------------------------------------------

    def analyse(self, name: str, settings: dict, nodes: dict[str, Node],
                positions: dict[str, int], edges: list[Edge]) -> Validation:
        ids = list(positions)  # definition order
        outgoing: dict[str, list[Edge]] = {node_id: [] for node_id in ids}
        incoming: dict[str, list[Edge]] = {node_id: [] for node_id in ids}
        for edge in edges:
            outgoing[edge.source].append(edge)
            incoming[edge.target].append(edge)
        order = topological_order(ids, outgoing, incoming)
        if len(order) < len(ids):
            ordered = set(order)
            for cycle in cycles([i for i in ids if i not in ordered], outgoing):
                closing = next(e for e in outgoing[cycle[-1]] if e.target == cycle[0])
                self.error(f"connections[{closing.index}]", _cycle_message(cycle), cycle[0])
            return self.done()
        triggers = [node_id for node_id in ids
                    if node_id in nodes and nodes[node_id].type.is_trigger]
        reached = reachable(triggers, outgoing)
        for node_id in ids:
            if node_id not in reached and node_id in nodes:
                self.warn(f"nodes[{positions[node_id]}]",
                          f"no trigger leads to '{node_id}', so it never runs", node_id)
        sub_branches, owner = self.check_sub_branches(nodes, positions, order, outgoing,
                                                      incoming)
        if self.errors:
            return self.done()
        return self.done(Graph(
            name=name, settings=MappingProxyType(dict(settings)),
            nodes=MappingProxyType(nodes), edges=tuple(edges),
            incoming=MappingProxyType({k: tuple(v) for k, v in incoming.items()}),
            outgoing=MappingProxyType({k: tuple(v) for k, v in outgoing.items()}),
            order=tuple(order), top_level=tuple(n for n in order if n not in owner),
            triggers=tuple(triggers), sub_branches=MappingProxyType(sub_branches)))

    def check_sub_branches(self, nodes: dict[str, Node], positions: dict[str, int],
                           order: list[str], outgoing: dict[str, list[Edge]],
                           incoming: dict[str, list[Edge]],
                           ) -> tuple[dict[str, SubBranch], dict[str, str]]:
        """Each split's sub-branch: the nodes reachable from its "item" output. They may take
        input only from each other and from that output (so they can run once per item), and
        must end in one node, whose outputs are gathered."""
        splits = [n for n in order if n in nodes and nodes[n].type.name == "logic.split"]
        reach: dict[str, set[str]] = {}
        for split in splits:
            starts = [e.target for e in outgoing[split] if e.output == "item"]
            members = reach[split] = reachable(starts, outgoing)
            for member in (n for n in order if n in members):
                for edge in incoming[member]:
                    if edge.source in members or (edge.source == split
                                                  and edge.output == "item"):
                        continue
                    if edge.source == split:
                        message = (f"the '{edge.output}' output of '{split}' leads into the "
                                   f"nodes it runs per item")
                    else:
                        message = (f"'{member}' runs once per item of '{split}', so it can "
                                   f"only take input from that split's item output and the "
                                   f"nodes after it, not from '{edge.source}'")
                    self.error(f"connections[{edge.index}]", message, member)
        owner: dict[str, str] = {}
        for split in sorted(splits, key=lambda s: len(reach[s]), reverse=True):
            owner.update(dict.fromkeys(reach[split], split))  # the innermost split wins
        sub_branches = {}
        for split in splits:
            body = tuple(n for n in order if owner.get(n) == split)
            sinks = [n for n in body if not any(owner.get(e.target) == split
                                                for e in outgoing[n])]
            if body and len(sinks) != 1:
                self.error(f"nodes[{positions[split]}]",
                           f"the nodes '{split}' runs per item must end in one node whose "
                           f"output is gathered; they end in {', '.join(sinks)} "
                           f"(join them with a logic.merge)", split)
            sub_branches[split] = SubBranch(split, body, sinks[0] if len(sinks) == 1 else None)
        return sub_branches, owner


def _check_params(node_type: NodeType, params: dict) -> _ParamsReport:
    problems = list(expression_problems(params))
    with_defaults = {**node_type.defaults, **params}
    too_deep = any(message.startswith("nested") for _, message in problems)
    if not too_deep:  # schema validation recurses; expression_problems does not
        schema_errors = schema_problems(design_time_validator(node_type), params)
        problems.extend(schema_errors)
        if not schema_errors and node_type.check_params is not None:
            problems.extend(node_type.check_params(with_defaults))
    eager = {k: v for k, v in params.items() if k not in node_type.lazy_params}
    templated = not node_type.is_trigger and _has_template(eager)
    recheck = templated and templates_constrained(node_type.params_schema, eager)
    return _ParamsReport(tuple(problems), with_defaults, templated, recheck)


def _has_template(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif is_template(item):
            return True
    return False


def _outputs(node: Node) -> list[str]:
    names = node.type.outputs(node.params)
    return [*names, "error"] if node.on_error == "error_output" else names


def _cycle_message(cycle: list[str]) -> str:
    """``cycle: a → b → c → a``; a very long cycle is shortened in the middle."""
    shown = [*cycle, cycle[0]]
    if len(shown) > MAX_CYCLE_IDS_SHOWN:
        half = MAX_CYCLE_IDS_SHOWN // 2
        shown = [*shown[:half], f"… ({len(cycle):,} nodes) …", *shown[-half:]]
    return "cycle: " + " → ".join(shown)
