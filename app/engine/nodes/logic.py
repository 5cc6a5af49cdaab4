"""Logic nodes: shape data and route it. None of them has side effects."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from app.engine.nodes.base import (
    NodeContext,
    NodeError,
    NodeOutput,
    NodeType,
    ParamProblems,
    as_condition,
    outputs,
)

MAX_WAIT_S = 30 * 24 * 3600
MAX_SPLIT_ITEMS = 100_000
RESERVED_OUTPUTS = ("default", "error")

_CONDITION = {"title": "Condition", "format": "expression",
              "description": "An expression that is true or false, "
                             "e.g. {{ input.total > 100 }}."}
_ITEMS = {"title": "Items", "format": "expression",
          "description": "An expression giving a list. Default: the input, if it is a list."}


def _object_params(properties: dict, required: tuple[str, ...] = ()) -> dict:
    schema = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def _items(ctx: NodeContext) -> list:
    """The list a filter or split works on: its ``items`` param, or else its input."""
    items = ctx.params.get("items", ctx.input)
    if not isinstance(items, list):
        source = "items" if "items" in ctx.params else "the input (set items to choose a list)"
        raise NodeError(f"{source} must be a list, not {_kind(items)}")
    return items


_KINDS = {dict: "an object", list: "a list", str: "text", bool: "true/false", int: "a number",
          float: "a number", type(None): "null"}


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


# --- logic.set ------------------------------------------------------------------------------

def run_set(ctx: NodeContext) -> NodeOutput:
    """The input object with ``fields`` set at their dotted paths, copied where it changes
    (the input is never modified). With keep "set_only", only the fields. An input that is not
    an object (a list, a number) is kept under "input" rather than dropped; null is {}."""
    source = ctx.input
    if ctx.params["keep"] == "set_only" or source is None:
        result: dict = {}
    elif isinstance(source, dict):
        result = dict(source)
    else:
        result = {"input": source}
    for path, value in ctx.params["fields"].items():
        *parents, last = path.split(".")
        target = result
        for key in parents:
            child = target.get(key)
            child = dict(child) if isinstance(child, dict) else {}
            target[key] = child
            target = child
        target[last] = value
    return NodeOutput(result)


def _check_set(params: dict) -> ParamProblems:
    fields = params["fields"]
    for path in fields if isinstance(fields, dict) else ():
        if not all(path.split(".")):
            yield ("fields", path), "is not a valid path (use names separated by dots: a.b.c)"


SET = NodeType(
    name="logic.set", group="Logic", label="Set fields",
    description="Outputs its input object with fields set (dotted paths create objects), or "
                "only those fields.",
    params_schema=_object_params({
        "fields": {"type": "object", "title": "Fields", "x-kind": "keyvalue", "default": {},
                   "description": "Path (a.b.c) → value; values may be expressions.",
                   "additionalProperties": {"title": "Value", "format": "expression"}},
        "keep": {"enum": ["all", "set_only"], "default": "all", "title": "Keep",
                 "description": "Keep the input's other fields, or output only these."},
    }),
    run=run_set, check_params=_check_set)


# --- logic.if and logic.switch --------------------------------------------------------------

def run_if(ctx: NodeContext) -> NodeOutput:
    return NodeOutput(ctx.input, "true" if as_condition(ctx.params["condition"]) else "false")


IF = NodeType(
    name="logic.if", group="Logic", label="If",
    description="Sends its input to the 'true' or the 'false' output.",
    params_schema=_object_params({"condition": {**_CONDITION, "default": True}},
                                 required=("condition",)),
    run=run_if, outputs=outputs("true", "false"))


def run_switch(ctx: NodeContext) -> NodeOutput:
    """The first case whose condition holds names the output; none does: "default". Cases are
    rendered one at a time, so a later case's condition is not evaluated after a match."""
    for index, case in enumerate(ctx.params["cases"]):
        try:
            matched = as_condition(ctx.render(case["condition"]))
        except NodeError as exc:
            raise NodeError(f"cases[{index}].condition: {exc}") from None
        if matched:
            return NodeOutput(ctx.input, case["name"])
    return NodeOutput(ctx.input, "default")


def _switch_outputs(params: dict) -> list[str]:
    cases = params.get("cases")
    if not isinstance(cases, list):
        cases = []
    names = [case["name"] for case in cases
             if isinstance(case, dict) and isinstance(case.get("name"), str)]
    return [*names, "default"]


def _check_switch(params: dict) -> ParamProblems:
    seen = set()
    for index, case in enumerate(params["cases"]):
        name = case["name"]
        if name in RESERVED_OUTPUTS:
            yield ("cases", index, "name"), f"'{name}' is reserved for another output"
        elif name in seen:
            yield ("cases", index, "name"), f"another case is already named '{name}'"
        seen.add(name)


SWITCH = NodeType(
    name="logic.switch", group="Logic", label="Switch",
    description="Sends its input to the output of the first case that holds, else 'default'.",
    params_schema=_object_params({
        "cases": {"type": "array", "title": "Cases", "minItems": 1, "maxItems": 64,
                  "x-template": False,
                  "items": {"type": "object", "additionalProperties": False,
                            "required": ["name", "condition"],
                            "properties": {
                                "name": {"type": "string", "title": "Output name",
                                         "minLength": 1, "maxLength": 64,
                                         "x-template": False},
                                "condition": _CONDITION}}},
    }, required=("cases",)),
    run=run_switch, outputs=_switch_outputs, lazy_params=frozenset({"cases"}),
    check_params=_check_switch)


# --- logic.filter ---------------------------------------------------------------------------

def run_filter(ctx: NodeContext) -> NodeOutput:
    """The items for which ``condition`` holds, rendered with ``item`` and ``index``."""
    condition = ctx.params["condition"]
    kept = []
    for index, item in enumerate(_items(ctx)):
        try:
            if as_condition(ctx.render(condition, item=item, index=index)):
                kept.append(item)
        except NodeError as exc:
            raise NodeError(f"item {index}: {exc}") from None
    return NodeOutput(kept)


FILTER = NodeType(
    name="logic.filter", group="Logic", label="Filter",
    description="Outputs the items of a list for which a condition holds "
                "(the condition sees 'item' and 'index').",
    params_schema=_object_params({
        "items": _ITEMS,
        "condition": {**_CONDITION, "description": "Checked for each item, e.g. "
                                                   "{{ item.status == 'paid' }}."},
    }, required=("condition",)),
    run=run_filter, lazy_params=frozenset({"condition"}))


# --- logic.merge, logic.split ---------------------------------------------------------------

def run_merge(ctx: NodeContext) -> NodeOutput:
    return NodeOutput(dict(ctx.inputs))


MERGE = NodeType(
    name="logic.merge", group="Logic", label="Merge",
    description="Waits for all its inputs; outputs {node id: output} for those that ran.",
    params_schema=_object_params({}), run=run_merge)


def run_split(ctx: NodeContext) -> NodeOutput:
    """The items, on the 'item' output: the runner then runs the sub-branch once per item and
    sends the gathered results on 'done'."""
    items = _items(ctx)
    if len(items) > ctx.params["max_items"]:
        raise NodeError(f"{len(items):,} items, over max_items ({ctx.params['max_items']:,})")
    return NodeOutput(items, "item")


SPLIT = NodeType(
    name="logic.split", group="Logic", label="For each",
    description="Runs the nodes after its 'item' output once per item (with 'item' and "
                "'index'), then outputs the list of their results on 'done'.",
    params_schema=_object_params({
        "items": _ITEMS,
        "max_items": {"type": "integer", "minimum": 1, "maximum": MAX_SPLIT_ITEMS,
                      "default": 1000, "title": "Max items",
                      "description": "Fail rather than run more items than this."},
    }),
    run=run_split, outputs=outputs("item", "done"))


# --- logic.wait, logic.noop -----------------------------------------------------------------

def run_wait(ctx: NodeContext) -> NodeOutput:
    until = ctx.clock.now() + timedelta(seconds=ctx.params["seconds"])
    return NodeOutput(ctx.input, resume_at=until)


WAIT = NodeType(
    name="logic.wait", group="Logic", label="Wait",
    description="Waits, then passes its input on. Long waits free the worker until due.",
    params_schema=_object_params({
        "seconds": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S, "title": "Seconds",
                    "description": "How long to wait (at most 30 days)."},
    }, required=("seconds",)),
    run=run_wait)


def run_noop(ctx: NodeContext) -> NodeOutput:
    return NodeOutput(ctx.input)


NOOP = NodeType(
    name="logic.noop", group="Logic", label="No operation",
    description="Passes its input on unchanged.", params_schema=_object_params({}),
    run=run_noop)

NODE_TYPES = (SET, IF, SWITCH, FILTER, MERGE, SPLIT, WAIT, NOOP)
