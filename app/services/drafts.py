"""The editor's working copy of a workflow: changed a step at a time, saved as a version.

A draft is one user's unsaved edit of one workflow, kept in the store (``draft:{workflow}:
{user}``, 7 days) with the version it started from, what is selected, and form input that
could not be parsed yet (``raw``: the text of a JSON field or a number, so a typo is shown
back as typed, with its error, and never lost). Every change pushes the previous state on an
undo stack (``…:undo``, the last 50). ``save`` stores the draft as the workflow's next version
through ``workflows.update`` (which validates it and refuses a stale base version) and drops
the draft; an unchanged draft is simply the workflow.

Operations never validate: a draft may be invalid while it is being built. ``problems`` says
what is wrong, each problem with its node id and its path, for the canvas and the form.
"""

from __future__ import annotations

import copy
import json
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from app import engine
from app.errors import NotFound, Problem, ValidationFailed
from app.models import User, Workflow
from app.services import workflows

TTL_S = 7 * 24 * 3600
UNDO_DEPTH = 50
GRID_X, GRID_Y, ORIGIN = 220, 100, (30, 30)
_ID_CHARS = re.compile(r"[^a-z0-9_]+")


@dataclass
class Draft:
    workflow_id: str
    base_version: int
    definition: dict  # name, nodes, connections, settings
    selected: str | None = None  # a node id
    selected_edge: int | None = None  # an index into connections
    raw: dict[str, str] = field(default_factory=dict)  # "node_id.param" -> unparsed text
    changed: bool = False

    def node(self, node_id: str | None) -> dict | None:
        return next((n for n in self.definition["nodes"] if n.get("id") == node_id), None)

    def as_json(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"), default=str)


def _store():
    return current_app.extensions["jobsprint.store"]


def _key(workflow_id: Any, user_id: Any) -> str:
    return f"draft:{workflow_id}:{user_id}"


def _from_workflow(workflow: Workflow) -> Draft:
    definition = copy.deepcopy(workflows.export(workflow))
    return Draft(str(workflow.id), workflow.version, laid_out(definition))


def load(user: User, workflow_id: str) -> tuple[Workflow, Draft]:
    """The user's draft of the workflow, or a fresh one from its current version."""
    workflow = workflows.get_owned(user.id, workflow_id)
    raw = _store().get(_key(workflow.id, user.id))
    if raw:
        data = json.loads(raw)
        if data.get("base_version") <= workflow.version:
            return workflow, Draft(**data)
    return workflow, _from_workflow(workflow)


def _put(user: User, draft: Draft) -> None:
    _store().set(_key(draft.workflow_id, user.id), draft.as_json(), ex=TTL_S)


def change(user: User, workflow_id: str, edit: Callable[[Draft], None]) -> Draft:
    """Apply ``edit`` to the draft, keeping the state before it for ``undo``."""
    _workflow, draft = load(user, workflow_id)
    before = draft.as_json()
    edit(draft)
    draft.changed = True
    pipe = _store().pipeline(transaction=False)
    pipe.lpush(_key(draft.workflow_id, user.id) + ":undo", before)
    pipe.ltrim(_key(draft.workflow_id, user.id) + ":undo", 0, UNDO_DEPTH - 1)
    pipe.expire(_key(draft.workflow_id, user.id) + ":undo", TTL_S)
    pipe.execute()
    _put(user, draft)
    return draft


def select(user: User, workflow_id: str, node_id: str | None = None,
           edge: int | None = None) -> Draft:
    """Selection is not an edit: it is kept, but not undone."""
    _workflow, draft = load(user, workflow_id)
    draft.selected = node_id if draft.node(node_id) else None
    connections = draft.definition["connections"]
    draft.selected_edge = edge if edge is not None and 0 <= edge < len(connections) else None
    _put(user, draft)
    return draft


def undo(user: User, workflow_id: str) -> Draft:
    workflow, draft = load(user, workflow_id)
    previous = _store().lpop(_key(workflow.id, user.id) + ":undo")
    if previous is None:
        return draft
    restored = Draft(**json.loads(previous))
    _put(user, restored)
    return restored


def discard(user: User, workflow_id: str) -> None:
    workflow = workflows.get_owned(user.id, workflow_id)
    _store().delete(_key(workflow.id, user.id), _key(workflow.id, user.id) + ":undo")


def save(user: User, workflow_id: str) -> Workflow:
    """The draft becomes the next version (a 400 lists its problems; a 409 if someone saved
    since it started). The draft and its undo stack go."""
    _workflow, draft = load(user, workflow_id)
    if draft.raw:
        raise ValidationFailed("some fields are not valid yet", [
            Problem(_raw_path(draft, key), "is not valid; fix or clear it")
            for key in sorted(draft.raw)])
    saved = workflows.update(user, workflow_id, {**draft.definition,
                                                 "version": draft.base_version})
    discard(user, workflow_id)
    return saved


def restore(user: User, workflow_id: str, version: int) -> Draft:
    """Put an earlier version in the draft (saving it makes it the newest version)."""
    found = next((v for v in workflows.versions(user, workflow_id) if v.version == version),
                 None)
    if found is None:
        raise NotFound(f"there is no version {version}")
    definition = laid_out({"name": found.name, **{
        key: copy.deepcopy((found.definition or {}).get(key, {} if key == "settings" else []))
        for key in workflows.DEFINITION_KEYS}})

    def edit(draft: Draft) -> None:
        draft.definition, draft.raw = definition, {}
        draft.selected, draft.selected_edge = None, None

    return change(user, workflow_id, edit)


# --- the editor's last run --------------------------------------------------------------

def _run_key(workflow_id: Any, user_id: Any) -> str:
    return f"editor-run:{workflow_id}:{user_id}"


def remember_run(user: User, workflow_id: Any, run_id: Any, input_text: str) -> None:
    _store().set(_run_key(workflow_id, user.id), json.dumps(
        {"run_id": str(run_id), "input": input_text}), ex=TTL_S)


def last_run(user: User, workflow_id: Any) -> dict:
    """{"run_id", "input"} of the last run started from the editor ({} if none)."""
    raw = _store().get(_run_key(workflow_id, user.id))
    return json.loads(raw) if raw else {}


def run(user: User, workflow_id: str, input_text: str):
    """Save the draft if it changed, then start a manual run with ``input_text`` (JSON)."""
    from app.services import executions

    try:
        data = json.loads(input_text or "{}")
    except json.JSONDecodeError as exc:
        raise ValidationFailed("the run input is not valid JSON", [Problem(
            "input", f"{exc.msg} at line {exc.lineno} column {exc.colno}")]) from None
    _workflow, draft = load(user, workflow_id)
    if draft.changed:
        save(user, workflow_id)
    execution, _new = executions.start_manual(user, workflow_id, data, stream_answers=True)
    remember_run(user, workflow_id, execution.id, input_text)
    return execution


def _raw_path(draft: Draft, key: str) -> str:
    node_id, _, param = key.partition(".")
    index = next((i for i, n in enumerate(draft.definition["nodes"]) if n.get("id") == node_id),
                 0)
    return f"nodes[{index}].params.{param}"


# --- edits ----------------------------------------------------------------------------------

def new_node_id(definition: dict, type_name: str) -> str:
    base = _ID_CHARS.sub("_", type_name.rsplit(".", 1)[-1].lower()).strip("_") or "node"
    taken = {n.get("id") for n in definition["nodes"]}
    if base not in taken:
        return base
    n = 2
    while f"{base}_{n}" in taken:
        n += 1
    return f"{base}_{n}"


def add_node(draft: Draft, type_name: str) -> str:
    node_type = engine.get_node_type(type_name)
    if node_type is None:
        raise ValidationFailed("unknown node type", [Problem("type", f"no node type "
                                                                     f"{type_name!r}")])
    nodes = draft.definition["nodes"]
    node_id = new_node_id(draft.definition, type_name)
    anchor = draft.node(draft.selected) or (nodes[-1] if nodes else None)
    if anchor and anchor.get("position"):
        x, y = anchor["position"][0] + GRID_X, anchor["position"][1]
    else:
        x, y = ORIGIN
    taken = {tuple(n.get("position") or ()) for n in nodes}
    while (x, y) in taken:
        y += GRID_Y
    nodes.append({"id": node_id, "type": type_name,
                  "params": copy.deepcopy(node_type.defaults), "position": [x, y]})
    if anchor is not None and not node_type.is_trigger:
        outputs = output_names(anchor)
        if outputs and not any(c["from"] == anchor["id"] for c in draft.definition["connections"]):
            draft.definition["connections"].append(_edge(anchor["id"], outputs[0], node_id))
    draft.selected, draft.selected_edge = node_id, None
    return node_id


def _edge(source: str, output: str, target: str) -> dict:
    edge = {"from": source, "to": target}
    if output != "main":
        edge["output"] = output
    return edge


def output_names(node: dict) -> list[str]:
    node_type = engine.get_node_type(str(node.get("type")))
    if node_type is None:
        return []
    try:
        names = node_type.outputs(node.get("params") or {})
    except Exception:  # noqa: BLE001 - params being edited; show the plain output
        names = ["main"]
    if node.get("on_error") == "error_output":
        names = [*names, "error"]
    return names


def move(draft: Draft, node_id: str, x: float, y: float) -> None:
    node = draft.node(node_id)
    if node is None:
        raise NotFound("no such node")
    node["position"] = [max(0, min(20000, round(x))), max(0, min(20000, round(y)))]


def connect(draft: Draft, source: str, output: str, target: str) -> None:
    problems = []
    node = draft.node(source)
    if node is None:
        problems.append(Problem("from", "no such node"))
    elif output not in output_names(node):
        problems.append(Problem("output", f"'{source}' has no output '{output}'"))
    if draft.node(target) is None:
        problems.append(Problem("to", "no such node"))
    elif source == target:
        problems.append(Problem("to", "a node cannot feed itself"))
    if problems:
        raise ValidationFailed("cannot connect these", problems)
    edge = _edge(source, output, target)
    if edge not in draft.definition["connections"]:
        draft.definition["connections"].append(edge)
    draft.selected_edge = None


def delete_node(draft: Draft, node_id: str) -> None:
    if draft.node(node_id) is None:
        raise NotFound("no such node")
    draft.definition["nodes"] = [n for n in draft.definition["nodes"] if n.get("id") != node_id]
    draft.definition["connections"] = [c for c in draft.definition["connections"]
                                       if node_id not in (c.get("from"), c.get("to"))]
    draft.raw = {k: v for k, v in draft.raw.items() if not k.startswith(node_id + ".")}
    draft.selected = None if draft.selected == node_id else draft.selected
    draft.selected_edge = None


def delete_edge(draft: Draft, index: int) -> None:
    if not 0 <= index < len(draft.definition["connections"]):
        raise NotFound("no such connection")
    del draft.definition["connections"][index]
    draft.selected_edge = None


def set_node(draft: Draft, node_id: str, name: str | None, params: dict[str, Any],
             raw: dict[str, str], credential_id: str | None = None) -> None:
    """New settings from the node's form: parsed params, and the text of fields that did not
    parse (kept as typed, reported by ``problems``)."""
    node = draft.node(node_id)
    if node is None:
        raise NotFound("no such node")
    node["params"] = params
    if name:
        node["name"] = name
    else:
        node.pop("name", None)
    if credential_id:
        node["credential_id"] = credential_id
    else:
        node.pop("credential_id", None)
    draft.raw = {k: v for k, v in draft.raw.items() if not k.startswith(node_id + ".")}
    draft.raw.update({f"{node_id}.{key}": text for key, text in raw.items()})


def set_name(draft: Draft, name: str) -> None:
    draft.definition["name"] = name


# --- reading --------------------------------------------------------------------------------

def problems(draft: Draft) -> list[engine.Problem]:
    """What is wrong with the draft: the engine's validation, and fields that did not parse."""
    found = list(engine.validate(draft.definition).errors)
    for key in sorted(draft.raw):
        node_id = key.partition(".")[0]
        found.append(engine.Problem(_raw_path(draft, key), "is not valid; fix or clear it",
                                    node_id))
    return found


def laid_out(definition: dict) -> dict:
    """The definition with a position for every node that has none: a layered layout
    (triggers on the left, each node one column right of its furthest input)."""
    nodes = definition.get("nodes") or []
    if all(isinstance(n, dict) and n.get("position") for n in nodes):
        return definition
    ids = {n.get("id") for n in nodes if isinstance(n, dict)}
    children: dict[str, list[str]] = defaultdict(list)
    waiting: dict[str, int] = dict.fromkeys(ids, 0)  # inputs not placed yet
    for edge in definition.get("connections") or []:
        if isinstance(edge, dict) and edge.get("to") in ids and edge.get("from") in ids:
            children[edge["from"]].append(edge["to"])
            waiting[edge["to"]] += 1
    depth = dict.fromkeys(ids, 0)
    ready = [node_id for node_id, count in waiting.items() if count == 0]
    while ready:  # Kahn's order; nodes on a cycle (invalid anyway) stay in column 0
        node_id = ready.pop()
        for child in children[node_id]:
            depth[child] = max(depth[child], depth[node_id] + 1)
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)

    def column(node_id: str) -> int:
        return depth.get(node_id, 0)

    rows: dict[int, int] = defaultdict(int)
    for node in nodes:
        if not isinstance(node, dict):
            continue
        col = column(node.get("id"))
        if not node.get("position"):
            node["position"] = [ORIGIN[0] + col * GRID_X, ORIGIN[1] + rows[col] * GRID_Y]
        rows[col] += 1
    return definition
