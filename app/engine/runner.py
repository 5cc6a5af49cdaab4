"""Runs a validated graph, reporting every node through callbacks.

A run starts at the trigger that fired and visits the nodes in topological order. A node runs
once all its predecessors are resolved, if at least one connection into it is active (its
source finished on that output); otherwise it is skipped. A node with several active inputs
runs once, its ``input`` being the first active predecessor's output in connection order;
``nodes`` holds them all, and logic.merge outputs them all.

Per node: params are rendered, retries follow the node's ``retry`` with backoff (short
backoffs sleep, long ones park the run), ``timeout_s`` is a cooperative deadline (handed to
ports and waits; a node returning after it fails), outputs must be JSON within
``max_output_bytes``, and ``on_error`` decides whether a failure stops the run.

Splits run their sub-branch once per item, keying those node results ``id[i]``.
Resuming with the states of a previous stretch of the run skips what is done: see
``NodeState`` for what each status means.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from app.engine.errors import ExpressionError, NodeError, sanitize_error
from app.engine.expressions import render
from app.engine.graph import Graph, Node
from app.engine.nodes.base import NodeContext, NodeOutput
from app.engine.ports import Clock, Ports, RunCallbacks, SystemClock
from app.engine.results import NodeResult, NodeState, RunOptions, RunResult
from app.engine.schema import schema_problems, strict_validator

__all__ = ["NodeResult", "NodeState", "RunOptions", "RunResult", "backoff_delay",
           "run_graph", "sanitize_error"]

MAX_BACKOFF_S = 24 * 3600


def backoff_delay(retry: Mapping, attempt: int) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based) before the next one:
    ``backoff_s * factor ** (attempt - 1)``, at most a day. {"backoff_s": 1, "factor": 2}
    waits 1, 2, 4… seconds."""
    delay = retry.get("backoff_s", 1) * retry.get("factor", 2) ** (attempt - 1)
    return min(float(delay), MAX_BACKOFF_S)


def run_graph(graph: Graph, *, trigger_id: str | None, trigger_output: Any, execution: dict,
              callbacks: RunCallbacks, ports: Ports | None = None, clock: Clock | None = None,
              resume: Mapping[str, NodeState] | None = None,
              options: RunOptions | None = None) -> RunResult:
    """Run ``graph`` from the trigger ``trigger_id`` (None: the first trigger), whose output
    is ``trigger_output``. ``execution`` is ``{"id", "workflow_id"}``. Exceptions raised by
    ``callbacks`` propagate untouched; nothing else escapes."""
    run = _Run(graph, execution, callbacks, ports or Ports(), clock or SystemClock(),
               resume or {}, options or RunOptions())
    return run.start(trigger_id, trigger_output)


class _Halt(Exception):
    """Ends the run early: cancelled, parked, or failed (a node failed with on_error "stop",
    or the run ran out of time: ``fatal``, which a split cannot absorb)."""

    def __init__(self, status: str, *, error: dict | None = None,
                 resume_at: datetime | None = None, fatal: bool = False) -> None:
        super().__init__(status)
        self.status = status
        self.error = error
        self.resume_at = resume_at
        self.fatal = fatal


@dataclass(slots=True)
class _Outcome:
    """How a node resolved; ``output_name`` None means it passes nothing on (skipped)."""

    output_name: str | None
    value: Any = None


@dataclass(slots=True)
class _Scope:
    """The nodes run together: the top level, or one item of a split's sub-branch."""

    order: tuple[str, ...]
    outcomes: dict[str, _Outcome]
    outputs: dict[str, Any]  # the ``nodes`` variable of templates
    suffix: str = ""  # "[i]" for the i-th item of a sub-branch ("[i][j]" nested)
    item_index: int | None = None
    extra: dict = field(default_factory=dict)  # item and index


class _Run:
    def __init__(self, graph: Graph, execution: dict, callbacks: RunCallbacks, ports: Ports,
                 clock: Clock, resume: Mapping[str, NodeState], options: RunOptions) -> None:
        self.graph = graph
        self.execution = execution
        self.callbacks = callbacks
        self.ports = ports
        self.clock = clock
        self.resume = resume
        self.options = options
        self.reported: list[NodeResult] = []
        self.trigger_id: str | None = None
        self.trigger_output: Any = None
        self.result: Any = None
        timeout = graph.timeout_s
        began = options.started_at or clock.now()
        self.run_deadline = began + timedelta(seconds=timeout) if timeout else None

    def start(self, trigger_id: str | None, trigger_output: Any) -> RunResult:
        if trigger_id is None and self.graph.triggers:
            trigger_id = self.graph.triggers[0]
        trigger = self.graph.nodes.get(trigger_id) if trigger_id else None
        if trigger is None or not trigger.type.is_trigger:
            return RunResult("failed", error={"node_id": trigger_id, "message": (
                f"'{trigger_id}' is not a trigger of this workflow")})
        self.trigger_id, self.trigger_output = trigger_id, trigger_output
        top = _Scope(self.graph.top_level, outcomes={}, outputs={})
        try:
            self.run_scope(top)
        except _Halt as halt:
            return RunResult(halt.status, error=halt.error, resume_at=halt.resume_at,
                             node_results=self.reported)
        return RunResult("succeeded", result=self.result, node_results=self.reported)

    # --- visiting nodes ---------------------------------------------------------------------

    def run_scope(self, scope: _Scope) -> None:
        for node_id in scope.order:
            node = self.graph.nodes[node_id]
            key = node_id + scope.suffix
            state = self.resume.get(key)
            if state is not None and self.reuse(scope, node, state):
                continue
            if node_id == self.trigger_id:
                inputs, input = {}, self.trigger_output
            else:
                inputs = self.active_inputs(scope, node)
                if not inputs:
                    self.skip(scope, node)
                    continue
                input = next(iter(inputs.values()))
            self.check_can_go_on(node_id)
            if state is not None and state.status == "waiting":
                self.finish_wait(scope, node, key, input, state)
            elif state is not None and state.status == "running":
                self.execute(scope, node, key, input, inputs, state.attempts)
            elif state is not None and state.status == "failed":
                self.execute(scope, node, key, input, inputs, state.attempts + 1,
                             not_before=state.resume_at)
            else:
                self.execute(scope, node, key, input, inputs, 1)

    def reuse(self, scope: _Scope, node: Node, state: NodeState) -> bool:
        """Take a finished node's stored result; False when the node must run (again)."""
        if state.status == "succeeded":
            self.settle(scope, node, state.output_name or "main", state.output, success=True)
            return True
        if state.status == "skipped":
            scope.outcomes[node.id] = _Outcome(None)
            return True
        if state.status == "failed" and state.output_name is not None:
            self.settle(scope, node, state.output_name, state.output, success=False)
            return True
        if state.status == "failed" and state.attempts >= node.max_attempts:
            raise _Halt("failed", error={"node_id": node.id, "message": state.error or (
                f"'{node.id}' failed after {state.attempts} attempt(s)")})
        return False

    def active_inputs(self, scope: _Scope, node: Node) -> dict[str, Any]:
        inputs: dict[str, Any] = {}
        for edge in self.graph.incoming[node.id]:
            outcome = scope.outcomes.get(edge.source)
            if (outcome is not None and outcome.output_name == edge.output
                    and edge.source not in inputs):
                inputs[edge.source] = outcome.value
        return inputs

    def check_can_go_on(self, node_id: str) -> None:
        if self.ports.is_cancelled():
            raise _Halt("cancelled")
        if self.run_deadline is not None and self.clock.now() >= self.run_deadline:
            raise _Halt("failed", fatal=True, error={"node_id": node_id, "message": (
                f"the run took longer than its {self.graph.timeout_s:g}s limit")})

    def settle(self, scope: _Scope, node: Node, output_name: str, value: Any, *,
               success: bool) -> None:
        scope.outcomes[node.id] = _Outcome(output_name, value)
        scope.outputs[node.id] = value
        if success and not scope.suffix:
            self.result = value

    def report(self, result: NodeResult) -> None:
        self.reported.append(result)
        self.callbacks.node_finished(result)

    def skip(self, scope: _Scope, node: Node) -> None:
        """A node no active connection reaches; a skipped split skips its sub-branch too."""
        scope.outcomes[node.id] = _Outcome(None)
        skipped = [node.id]
        for node_id in skipped:  # grows as nested splits add their sub-branches
            branch = self.graph.sub_branches.get(node_id)
            skipped.extend(branch.nodes if branch else ())
        for node_id in skipped:
            self.report(NodeResult(node_id + scope.suffix, node_id, "skipped", 0,
                                   item_index=scope.item_index))

    # --- running a node ---------------------------------------------------------------------

    def execute(self, scope: _Scope, node: Node, key: str, input: Any, inputs: dict,
                attempt: int, not_before: datetime | None = None) -> None:
        """Attempts the node until it succeeds, or fails for good (then ``on_error``)."""
        while True:
            if not_before is not None and self.clock.now() < not_before:
                raise _Halt("parked", resume_at=not_before)
            self.callbacks.node_started(key, attempt, input)
            started = self.clock.now()
            deadline = self.deadline(node, started)
            output, error = self.attempt(scope, node, key, input, inputs, attempt, started,
                                         deadline)
            if error is None and output.resume_at is not None:
                output, error = self.wait(scope, node, key, attempt, output, started, deadline)
            retryable = True
            if error is None and node.id in self.graph.sub_branches:
                output, error = self.run_items(scope, node, output.value)
                retryable = False  # the sub-branch's nodes have retried already
            if error is None:
                self.succeed(scope, node, key, attempt, output, started)
                return
            if not retryable or attempt >= node.max_attempts:
                self.fail(scope, node, key, attempt, input, error, started)
                return
            delay = backoff_delay(node.retry, attempt)
            if delay > self.options.inline_wait_max_s:
                not_before = self.clock.now() + timedelta(seconds=delay)
            self.report(NodeResult(key, node.id, "failed", attempt, error=error,
                                   started_at=started, finished_at=self.clock.now(),
                                   item_index=scope.item_index, resume_at=not_before))
            if not_before is None:
                self.clock.sleep(delay)
                self.check_can_go_on(node.id)
            attempt += 1

    def deadline(self, node: Node, started: datetime) -> datetime | None:
        """When the node must be done by: its own timeout, or the run's if that is sooner."""
        if not node.timeout_s:
            return self.run_deadline
        own = started + timedelta(seconds=node.timeout_s)
        return own if self.run_deadline is None else min(own, self.run_deadline)

    def timed_out(self, node: Node) -> str:
        if node.timeout_s:
            return f"timed out after {node.timeout_s:g}s"
        return f"the run took longer than its {self.graph.timeout_s:g}s limit"

    def attempt(self, scope: _Scope, node: Node, key: str, input: Any, inputs: dict,
                attempt: int, started: datetime,
                deadline: datetime | None) -> tuple[NodeOutput | None, str | None]:
        """One call of the node's run function: its output, or the error it failed with.
        Only the node's own work is inside the ``try``: callbacks are called elsewhere."""
        variables = {"input": input, "nodes": scope.outputs, "trigger": self.trigger_output,
                     "execution": self.execution, **scope.extra}
        try:
            ctx = NodeContext(
                node_id=node.id, key=key, params=self.params(node, variables), input=input,
                inputs=inputs, variables=variables, ports=self.ports, clock=self.clock,
                attempt=attempt, idempotency_key=f"{self.execution['id']}:{key}:{attempt}",
                deadline=deadline, credential_id=node.credential_id,
                render_limits=self.options.render_limits)
            output = node.type.run(ctx)
            if node.timeout_s and self.clock.now() > started + timedelta(seconds=node.timeout_s):
                raise NodeError(self.timed_out(node))
            if output.value is not input or node.id == self.trigger_id:
                self.check_output(output.value)
            return output, None
        except Exception as exc:  # any failure of the node's own work fails the node
            return None, sanitize_error(exc, self.options.secrets)

    def params(self, node: Node, variables: dict) -> dict:
        if not node.templated:
            return node.params
        lazy = node.type.lazy_params
        eager = {k: v for k, v in node.params.items() if k not in lazy} if lazy else node.params
        try:
            rendered = render(eager, variables, limits=self.options.render_limits)
        except ExpressionError as exc:
            raise exc.at("params") from None
        if node.recheck:
            # A param whose template gives null counts as not set (its default applies).
            rendered = {**node.type.defaults,
                        **{k: v for k, v in rendered.items() if v is not None}}
            problems = schema_problems(strict_validator(node.type), rendered)
            if problems:
                path, message = problems[0]
                raise ExpressionError(message, ("params", *path))
        return {**node.params, **rendered} if lazy else rendered

    def check_output(self, value: Any) -> None:
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except RecursionError:
            raise NodeError("the output is nested too deeply to store") from None
        except (TypeError, ValueError) as exc:
            raise NodeError(f"the output is not JSON: {exc}") from None
        limit = self.options.max_output_bytes
        if len(text) * 4 > limit and (size := len(text.encode())) > limit:
            raise NodeError(f"output is {size / 1e6:.1f} MB, over the {limit / 1e6:g} MB limit")

    def wait(self, scope: _Scope, node: Node, key: str, attempt: int, output: NodeOutput,
             started: datetime, deadline: datetime | None) -> tuple[NodeOutput | None, str | None]:
        """A node asked to wait until ``output.resume_at``: sleep if that is soon (but not
        past the deadline), else report it waiting and park the run."""
        now = self.clock.now()
        delay = (output.resume_at - now).total_seconds()
        if delay > self.options.inline_wait_max_s:
            self.report(NodeResult(key, node.id, "waiting", attempt, started_at=started,
                                   item_index=scope.item_index, resume_at=output.resume_at))
            raise _Halt("parked", resume_at=output.resume_at)
        remaining = (deadline - now).total_seconds() if deadline is not None else delay
        self.clock.sleep(max(min(delay, remaining), 0.0))
        if remaining < delay:
            return None, self.timed_out(node)
        return NodeOutput(output.value, output.output), None

    def finish_wait(self, scope: _Scope, node: Node, key: str, input: Any,
                    state: NodeState) -> None:
        if state.resume_at is not None and self.clock.now() < state.resume_at:
            raise _Halt("parked", resume_at=state.resume_at)
        self.succeed(scope, node, key, state.attempts, NodeOutput(input), started=None)

    def run_items(self, scope: _Scope, split: Node,
                  items: list) -> tuple[NodeOutput | None, str | None]:
        """The split's sub-branch, once per item; gathers the sink's output of each item
        whose sink ran (an item the sub-branch filtered out contributes nothing)."""
        branch = self.graph.sub_branches[split.id]
        if not branch.nodes:
            return NodeOutput(items, "done"), None
        gathered = []
        for index, item in enumerate(items):
            item_scope = _Scope(
                branch.nodes, outcomes={split.id: _Outcome("item", item)},
                outputs=dict(scope.outputs), suffix=f"{scope.suffix}[{index}]",
                item_index=index, extra={**scope.extra, "item": item, "index": index})
            try:
                self.run_scope(item_scope)
            except _Halt as halt:
                if halt.status != "failed" or halt.fatal:
                    raise
                return None, halt.error["message"]  # it names the item's node key
            sink = item_scope.outcomes.get(branch.sink)
            if sink is not None and sink.output_name is not None:
                gathered.append(sink.value)
        return NodeOutput(gathered, "done"), None

    def succeed(self, scope: _Scope, node: Node, key: str, attempt: int, output: NodeOutput,
                started: datetime | None) -> None:
        self.report(NodeResult(key, node.id, "succeeded", attempt, output=output.value,
                               output_name=output.output, started_at=started,
                               finished_at=self.clock.now(), item_index=scope.item_index))
        self.settle(scope, node, output.output, output.value, success=True)

    def fail(self, scope: _Scope, node: Node, key: str, attempt: int, input: Any, error: str,
             started: datetime) -> None:
        """The node failed for good: stop the run, or pass the error on (``on_error``).
        "continue" passes it on the node's "main" output, or its last one if it has no
        "main" (a split's "done", an if's "false"); "error_output" on "error"."""
        if node.on_error == "stop":
            output_name, value = None, None
        elif node.on_error == "error_output":
            output_name, value = "error", {"error": {"message": error}, "input": input}
        else:
            names = node.type.outputs(node.params)
            output_name = "main" if "main" in names else names[-1]
            value = {"error": {"message": error}}
        self.report(NodeResult(key, node.id, "failed", attempt, output=value,
                               output_name=output_name, error=error, started_at=started,
                               finished_at=self.clock.now(), item_index=scope.item_index))
        if output_name is None:
            message = error if not scope.suffix else f"{key}: {error}"
            raise _Halt("failed", error={"node_id": node.id, "message": message})
        self.settle(scope, node, output_name, value, success=False)
