"""n8n workflow JSON, both ways: pure translation, no database.

``to_n8n`` turns a Jobsprint definition into n8n's workflow JSON; ``from_n8n`` turns n8n's JSON
into a Jobsprint definition and a report. Supported both ways: the webhook, schedule and manual
triggers, Set (Edit Fields), IF, Switch, Merge, HTTP Request, Wait and No Operation. Simple
expressions are translated (``{{ $json.x }}`` ↔ ``{{ input.x }}``, ``$('Name').item.json.x`` /
``$node["Name"].json.x`` ↔ ``nodes.<id>.x``). Nothing is dropped silently: a node n8n has and
Jobsprint has not becomes a No Operation node with the same connections, and the report names
it, as it names every expression or parameter it could not translate.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

BASE = "n8n-nodes-base."
_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass
class Report:
    """What an import could not carry over, node by node (``node`` is the n8n node's name)."""

    items: list[dict] = field(default_factory=list)

    def add(self, node: str | None, message: str) -> None:
        self.items.append({"node": node, "message": message})


# --- expressions ----------------------------------------------------------------------------

_JAVASCRIPT = re.compile(r"JSON\.|=>|\.length\b|\.to[A-Z]\w*\(|\.includes\(|\bnew\s+[A-Z]")
_N8N_NODE_REF = re.compile(
    r"""\$\(\s*(['"])(?P<a>.+?)\1\s*\)\.(?:item|first\(\))\.json|\$node\[\s*(['"])(?P<b>.+?)\3\s*\]\.json""")


def expression_from_n8n(value: Any, ids: dict[str, str], report: Report, node: str) -> Any:
    """An n8n parameter value (``=…`` marks an expression) as a Jobsprint value."""
    if not isinstance(value, str) or not value.startswith("="):
        return value
    text = value[1:]

    def node_ref(match: re.Match) -> str:
        name = match.group("a") or match.group("b")
        return f"nodes.{ids[name]}" if name in ids else match.group(0)

    text = _N8N_NODE_REF.sub(node_ref, text)
    text = re.sub(r"\$json\b", "input", text)
    for js, ours in (("===", "=="), ("!==", "!="), ("&&", " and "), ("||", " or ")):
        text = text.replace(js, ours)
    if "$" in text:
        report.add(node, f"expression not translated (uses n8n variables): {value[:200]}")
    elif _JAVASCRIPT.search(text):
        report.add(node, f"expression kept as written (JavaScript; rewrite it): {value[:200]}")
    return text


def expression_to_n8n(value: Any, names: dict[str, str]) -> Any:
    """A Jobsprint value as an n8n parameter value (templates become ``=`` expressions)."""
    if not isinstance(value, str) or "{{" not in value:
        return value
    text = re.sub(r"\bnodes\.([A-Za-z0-9_-]+)",
                  lambda m: f"$('{names.get(m.group(1), m.group(1))}').item.json", value)
    text = re.sub(r"\binput\b", "$json", text)
    return "=" + text


# --- Jobsprint → n8n ------------------------------------------------------------------------

def _n8n_node(node: dict, names: dict[str, str]) -> tuple[str, int | float, dict]:
    kind, params = node.get("type"), node.get("params") or {}
    ex = lambda v: expression_to_n8n(v, names)  # noqa: E731 - local shorthand
    if kind == "trigger.manual":
        return BASE + "manualTrigger", 1, {}
    if kind == "trigger.webhook":
        return BASE + "webhook", 2, {
            "httpMethod": "POST", "path": node["id"],
            "responseMode": "lastNode" if params.get("respond") == "when_finished"
            else "onReceived"}
    if kind == "trigger.schedule":
        return BASE + "scheduleTrigger", 1.2, {"rule": {"interval": [
            {"field": "cronExpression", "expression": params.get("cron", "* * * * *")}]}}
    if kind == "logic.set":
        return BASE + "set", 3.4, {
            "mode": "manual", "includeOtherFields": params.get("keep", "all") == "all",
            "assignments": {"assignments": [
                {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{node['id']}/{k}")), "name": k,
                 "value": ex(v), "type": "string"}
                for k, v in (params.get("fields") or {}).items()]}}
    if kind == "logic.if":
        return BASE + "if", 2, {"conditions": {
            "options": {"caseSensitive": True, "typeValidation": "loose"},
            "combinator": "and", "conditions": [{
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, node["id"])),
                "leftValue": ex(params.get("condition", True)), "rightValue": "",
                "operator": {"type": "boolean", "operation": "true", "singleValue": True}}]}}
    if kind == "logic.switch":
        return BASE + "switch", 3, {"rules": {"values": [
            {"outputKey": case["name"], "renameOutput": True, "conditions": {
                "combinator": "and", "conditions": [{
                    "leftValue": ex(case["condition"]), "rightValue": "",
                    "operator": {"type": "boolean", "operation": "true",
                                 "singleValue": True}}]}}
            for case in params.get("cases") or []]},
            "options": {"fallbackOutput": "extra"}}
    if kind == "logic.merge":
        return BASE + "merge", 3, {"mode": "append"}
    if kind == "logic.wait":
        return BASE + "wait", 1.1, {"resume": "timeInterval",
                                    "amount": params.get("seconds", 1), "unit": "seconds"}
    if kind == "http.request":
        query = params.get("query") or {}
        headers = params.get("headers") or {}
        body = {}
        if params.get("json") is not None and params.get("body_type", "json") == "json":
            body = {"sendBody": True, "specifyBody": "json", "jsonBody": ex(
                params["json"] if isinstance(params["json"], str)
                else json.dumps(params["json"]))}
        return BASE + "httpRequest", 4.2, {
            "method": params.get("method", "GET"), "url": ex(params.get("url", "")),
            "sendQuery": bool(query), "queryParameters": {"parameters": [
                {"name": k, "value": ex(v)} for k, v in query.items()]},
            "sendHeaders": bool(headers), "headerParameters": {"parameters": [
                {"name": k, "value": ex(v)} for k, v in headers.items()]},
            **body, "options": {"timeout": int(float(params.get("timeout_s", 30)) * 1000)}}
    return BASE + "noOp", 1, {}


def to_n8n(definition: dict) -> dict:
    """n8n workflow JSON for a Jobsprint definition (node types n8n lacks become NoOp, their
    type kept in the node's notes)."""
    nodes = definition.get("nodes") or []
    names = {n["id"]: (n.get("name") or n["id"]) for n in nodes}
    out_nodes = []
    for index, node in enumerate(nodes):
        kind, version, params = _n8n_node(node, names)
        entry = {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"jobsprint/{node['id']}")),
                 "name": names[node["id"]], "type": kind, "typeVersion": version,
                 "position": list(node.get("position") or [index * 220, 0]),
                 "parameters": params}
        if kind == BASE + "noOp" and node.get("type") != "logic.noop":
            entry["notes"] = f"Jobsprint node type {node.get('type')} (no n8n equivalent)"
        out_nodes.append(entry)
    by_id = {n["id"]: n for n in nodes}
    connections: dict[str, dict] = {}
    for edge in definition.get("connections") or []:
        source = by_id.get(edge.get("from"))
        if source is None or edge.get("to") not in by_id:
            continue
        slot = _output_index(source, edge.get("output", "main"))
        outputs = connections.setdefault(names[source["id"]], {"main": []})["main"]
        while len(outputs) <= slot:
            outputs.append([])
        outputs[slot].append({"node": names[edge["to"]], "type": "main", "index": 0})
    return {"name": definition.get("name", "Workflow"), "nodes": out_nodes,
            "connections": connections, "settings": {"executionOrder": "v1"},
            "active": False}


def _output_index(node: dict, output: str) -> int:
    if node.get("type") == "logic.if":
        return 0 if output == "true" else 1
    if node.get("type") == "logic.switch":
        names = [c.get("name") for c in (node.get("params") or {}).get("cases") or []]
        return names.index(output) if output in names else len(names)
    return 0


# --- n8n → Jobsprint ------------------------------------------------------------------------

def _jobsprint_id(name: str, taken: set[str]) -> str:
    base = _ID_CHARS.sub("_", name).strip("_")[:60] or "node"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}_{n}", n + 1
    taken.add(candidate)
    return candidate


def _condition(params: dict, report: Report, name: str, ids: dict[str, str]) -> str:
    """One n8n IF/Switch condition set as one Jobsprint expression (simple cases only)."""
    block = params.get("conditions") if isinstance(params.get("conditions"), dict) else {}
    items = block.get("conditions") or []
    joiner = " and " if block.get("combinator", "and") == "and" else " or "
    parts = []
    ops = {"equals": "==", "notEquals": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<=",
           "notEqual": "!=", "larger": ">", "smaller": "<", "largerEqual": ">=",
           "smallerEqual": "<="}
    for item in items:
        left = _inner(expression_from_n8n(item.get("leftValue"), ids, report, name))
        right = _inner(expression_from_n8n(item.get("rightValue"), ids, report, name))
        operation = (item.get("operator") or {}).get("operation")
        if operation == "true":
            parts.append(f"({left})")
        elif operation == "false":
            parts.append(f"not ({left})")
        elif operation in ops:
            parts.append(f"({left}) {ops[operation]} ({right})")
        elif operation == "contains":
            parts.append(f"({right}) in ({left})")
        else:
            report.add(name, f"condition operator {operation!r} not translated; it is "
                             "always true until you edit it")
            parts.append("true")
    return "{{ " + (joiner.join(parts) or "true") + " }}"


def _inner(value: Any) -> str:
    """A translated value as an expression fragment (a template's inside, or a literal)."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*\{\{(.*)\}\}\s*", value, re.S)
        if match:
            return match.group(1).strip()
        return repr(value)
    return repr(value).replace("True", "true").replace("False", "false")


def _from_node(node: dict, ids: dict[str, str], report: Report) -> tuple[str, dict]:
    kind = str(node.get("type", "")).removeprefix(BASE)
    params = node.get("parameters") or {}
    name = node.get("name", "?")
    ex = lambda v: expression_from_n8n(v, ids, report, name)  # noqa: E731
    if kind == "manualTrigger":
        return "trigger.manual", {}
    if kind == "webhook":
        respond = "when_finished" if params.get("responseMode") == "lastNode" else "immediately"
        if params.get("responseMode") == "responseNode":
            report.add(name, "'Respond to Webhook' nodes are not supported; it answers "
                             "when the run finishes")
            respond = "when_finished"
        return "trigger.webhook", {"respond": respond}
    if kind == "scheduleTrigger":
        rules = ((params.get("rule") or {}).get("interval") or [{}])
        rule = rules[0]
        if rule.get("field") == "cronExpression":
            return "trigger.schedule", {"cron": rule.get("expression", "* * * * *")}
        unit = rule.get("field", "minutes")
        every = int(rule.get(f"{unit}Interval", 1) or 1)
        cron = {"minutes": f"*/{every} * * * *", "hours": f"0 */{every} * * *",
                "days": "0 0 * * *", "seconds": "* * * * *"}.get(unit)
        if cron is None or (unit == "days" and every != 1):
            report.add(name, f"schedule rule {rule!r} not translated; runs every minute")
            cron = "* * * * *"
        if unit == "seconds":
            report.add(name, "second-level schedules run every minute here")
        return "trigger.schedule", {"cron": cron}
    if kind == "set":
        fields: dict[str, Any] = {}
        for item in (params.get("assignments") or {}).get("assignments") or []:
            fields[str(item.get("name"))] = ex(item.get("value"))
        for group in (params.get("values") or {}).values():  # Set v1/v2
            for item in group if isinstance(group, list) else []:
                fields[str(item.get("name"))] = ex(item.get("value"))
        keep_all = params.get("includeOtherFields", not params.get("keepOnlySet", False))
        if "includeOtherFields" not in params and "assignments" in params:
            keep_all = False  # Set v3 keeps only the set fields unless told otherwise
        return "logic.set", {"fields": fields, "keep": "all" if keep_all else "set_only"}
    if kind == "if":
        return "logic.if", {"condition": _condition(params, report, name, ids)}
    if kind == "switch":
        cases = []
        for index, rule in enumerate((params.get("rules") or {}).get("values") or []):
            cases.append({"name": str(rule.get("outputKey") or f"output{index}"),
                          "condition": _condition(rule, report, name, ids)})
        if not cases:
            report.add(name, "a Switch without rules (or in expression mode) is not "
                             "translated; one case that is always true stands in")
            cases = [{"name": "output0", "condition": "{{ true }}"}]
        return "logic.switch", {"cases": cases}
    if kind == "merge":
        if params.get("mode", "append") != "append":
            report.add(name, f"merge mode {params.get('mode')!r} is an append here")
        return "logic.merge", {}
    if kind == "wait":
        unit = params.get("unit", "seconds")
        factor = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}.get(unit)
        if params.get("resume", "timeInterval") != "timeInterval" or factor is None:
            report.add(name, "only 'after a time interval' waits are translated; 1 s")
            return "logic.wait", {"seconds": 1}
        return "logic.wait", {"seconds": float(params.get("amount", 1)) * factor}
    if kind == "httpRequest":
        out: dict[str, Any] = {"method": params.get("method", "GET"),
                               "url": ex(params.get("url", ""))}
        query = {p.get("name"): ex(p.get("value")) for p in
                 (params.get("queryParameters") or {}).get("parameters") or [] if p.get("name")}
        headers = {p.get("name"): ex(p.get("value")) for p in
                   (params.get("headerParameters") or {}).get("parameters") or []
                   if p.get("name")}
        if query:
            out["query"] = query
        if headers:
            out["headers"] = headers
        if params.get("sendBody"):
            if params.get("specifyBody") == "json" and params.get("jsonBody") is not None:
                body = ex(params["jsonBody"])
                try:
                    out["json"] = json.loads(body) if "{{" not in str(body) else body
                except ValueError:
                    out["json"] = body
                out["body_type"] = "json"
            else:
                report.add(name, "only JSON bodies are translated; the body was left out")
                out["body_type"] = "none"
        else:
            out["body_type"] = "none"
        if node.get("credentials"):
            report.add(name, "credentials are not carried over; pick one in the node")
        return "http.request", out
    if kind == "noOp":
        return "logic.noop", {}
    report.add(name, f"node type {node.get('type')!r} is not supported; a No Operation node "
                     "stands in for it")
    return "logic.noop", {}


def from_n8n(data: dict) -> tuple[dict, Report]:
    """A Jobsprint definition (not yet validated) and the report of what did not translate."""
    report = Report()
    nodes_in = [n for n in data.get("nodes") or [] if isinstance(n, dict)]
    taken: set[str] = set()
    ids = {str(n.get("name")): _jobsprint_id(str(n.get("name") or "node"), taken)
           for n in nodes_in}
    nodes, kinds = [], {}
    for n8n_node in nodes_in:
        name = str(n8n_node.get("name"))
        kind, params = _from_node(n8n_node, ids, report)
        kinds[name] = (kind, params)
        node = {"id": ids[name], "type": kind, "params": params}
        if name != ids[name]:
            node["name"] = name[:200]
        position = n8n_node.get("position")
        if isinstance(position, list) and len(position) == 2:
            node["position"] = [max(0, round(float(p) + 400)) for p in position]
        nodes.append(node)
    connections = []
    for source_name, by_type in (data.get("connections") or {}).items():
        if source_name not in ids:
            continue
        for slot, targets in enumerate((by_type or {}).get("main") or []):
            for target in targets or []:
                if target.get("node") not in ids:
                    continue
                edge = {"from": ids[source_name], "to": ids[target["node"]]}
                output = _output_name(kinds[source_name], slot)
                if output != "main":
                    edge["output"] = output
                connections.append(edge)
    return {"name": str(data.get("name") or "Imported from n8n")[:200], "nodes": nodes,
            "connections": connections}, report


def _output_name(kind_params: tuple[str, dict], slot: int) -> str:
    kind, params = kind_params
    if kind == "logic.if":
        return "true" if slot == 0 else "false"
    if kind == "logic.switch":
        names = [c["name"] for c in params.get("cases") or []]
        return names[slot] if slot < len(names) else "default"
    return "main"


def looks_like_n8n(data: Any) -> bool:
    """n8n's JSON: nodes with ``parameters`` and connections keyed by node name."""
    return (isinstance(data, dict) and isinstance(data.get("connections"), dict)
            and any(isinstance(n, dict) and "parameters" in n for n in data.get("nodes") or []))
