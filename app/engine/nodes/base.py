"""What a node type is, and what its run function is given and returns."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from app.engine.errors import NodeError
from app.engine.expressions import RenderLimits, render
from app.engine.ports import Clock, Ports

ParamProblems = Iterable[tuple[tuple[str | int, ...], str]]

__all__ = ["NodeContext", "NodeError", "NodeOutput", "NodeType", "as_condition", "outputs",
           "port_unavailable"]


@dataclass(frozen=True, slots=True)
class NodeOutput:
    """What a node produced, and on which of its outputs. ``resume_at`` asks the runner to
    wait until then (sleeping, or parking the run for long waits) before the node succeeds."""

    value: Any
    output: str = "main"
    resume_at: datetime | None = None


@dataclass(slots=True)
class NodeContext:
    """Everything a run function may use. ``params`` are rendered already, except the node
    type's ``lazy_params``, which the run function renders itself with ``render``. Params and
    inputs may be shared with other nodes and runs: read them, never modify them."""

    node_id: str
    key: str
    params: dict
    input: Any
    inputs: dict[str, Any]  # the outputs of the active predecessors, by node id
    variables: dict
    ports: Ports
    clock: Clock
    attempt: int
    idempotency_key: str
    deadline: datetime | None
    credential_id: str | None
    render_limits: RenderLimits = field(default_factory=RenderLimits)

    def render(self, value: Any, **extra: Any) -> Any:
        """Render a lazy param, with ``extra`` variables (``item``, ``index``) added."""
        variables = {**self.variables, **extra} if extra else self.variables
        return render(value, variables, limits=self.render_limits)


def port_unavailable(node_type: str) -> NodeError:
    return NodeError(f"{node_type} is not available in this run")


def outputs(*names: str) -> Callable[[dict], list[str]]:
    """An ``outputs`` function for a node type whose outputs do not depend on its params."""
    return lambda params: list(names)


@dataclass(frozen=True, eq=False)
class NodeType:
    """A kind of node: its settings form (``params_schema``, with UI hints: ``title``,
    ``description``, ``default``, ``enum``, ``format`` of cron/expression/json/textarea,
    ``x-kind: keyvalue`` for string maps, ``x-secret``), its outputs and its run function.

    ``check_params`` adds the checks a JSON Schema cannot express (a valid cron string); it
    gets params that passed the schema and yields (path inside params, message).
    """

    name: str
    group: str
    label: str
    description: str
    params_schema: dict
    run: Callable[[NodeContext], NodeOutput]
    outputs: Callable[[dict], list[str]] = outputs("main")
    is_trigger: bool = False
    lazy_params: frozenset[str] = frozenset()
    check_params: Callable[[dict], ParamProblems] | None = None

    @cached_property
    def defaults(self) -> dict:
        properties = self.params_schema.get("properties", {})
        return {name: spec["default"] for name, spec in properties.items() if "default" in spec}

    def as_dict(self) -> dict:
        """The palette entry the editor builds its settings form from."""
        return {"name": self.name, "group": self.group, "label": self.label,
                "description": self.description, "is_trigger": self.is_trigger,
                "params_schema": self.params_schema}


def as_condition(value: Any) -> bool:
    """A condition's rendered value as true or false. Text must say true/false (or yes/no,
    1/0) so that a mistyped template fails loudly instead of counting as true."""
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "yes", "1"):
            return True
        if text in ("false", "no", "0", ""):
            return False
        shown = value if len(value) <= 40 else value[:40] + "…"
        raise NodeError(f"the condition gave the text {shown!r}; expected true or false")
    return bool(value)
