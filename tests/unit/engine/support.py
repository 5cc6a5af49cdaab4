"""Helpers for the engine tests: a fake clock, recording callbacks, fake ports, definitions."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from app.engine import NodeResult, NodeState, Ports, RunOptions, run_graph, validate

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
EXECUTION = {"id": "exec-1", "workflow_id": "wf-1"}


class FakeClock:
    """Time stands still until a test (or a sleep) moves it."""

    def __init__(self, now: datetime = START) -> None:
        self.current = now
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self.current

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.current += timedelta(seconds=seconds)

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


class Recorder:
    """Callbacks that remember what they were told, and can act as the store on resume."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []  # ("started", (key, attempt, input)) or
        # ("finished", NodeResult), in the order they came

    def node_started(self, key: str, attempt: int, input: Any) -> None:
        self.events.append(("started", (key, attempt, input)))

    def node_finished(self, result: NodeResult) -> None:
        self.events.append(("finished", result))

    @property
    def started(self) -> list[tuple[str, int, Any]]:
        return [event for kind, event in self.events if kind == "started"]

    @property
    def finished(self) -> list[NodeResult]:
        return [event for kind, event in self.events if kind == "finished"]

    def result(self, key: str) -> NodeResult:
        """The last result reported for ``key``."""
        return [r for r in self.finished if r.key == key][-1]

    def statuses(self) -> dict[str, str]:
        return {r.key: r.status for r in self.finished}

    def started_keys(self) -> list[str]:
        return [key for key, _, _ in self.started]

    def states(self, events: int | None = None) -> dict[str, NodeState]:
        """What a store would give back on resume after the first ``events`` events (all by
        default): the latest result of each key, or "running" for a key started since."""
        states: dict[str, NodeState] = {}
        for kind, event in self.events[:events]:
            if kind == "started":
                states[event[0]] = NodeState("running", attempts=event[1])
            else:
                states[event.key] = NodeState(
                    event.status, output=event.output, output_name=event.output_name,
                    attempts=event.attempt, resume_at=event.resume_at, error=event.error)
        return states


class FakeHttp:
    """An HTTP port that answers from a list of responses (an exception is raised)."""

    def __init__(self, *responses: Any, clock: FakeClock | None = None,
                 takes_s: float = 0) -> None:
        self.responses = list(responses) or [{"status": 200, "headers": {}, "body": "ok"}]
        self.calls: list[dict] = []
        self.clock = clock
        self.takes_s = takes_s

    def request(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        if self.clock is not None:
            self.clock.advance(self.takes_s)
        response = self.responses[min(len(self.calls), len(self.responses)) - 1]
        if isinstance(response, BaseException):
            raise response
        return response


def node(node_id: str, node_type: str, **fields: Any) -> dict:
    return {"id": node_id, "type": node_type, **fields}


def edge(source: str, target: str, output: str | None = None) -> dict:
    connection = {"from": source, "to": target}
    if output is not None:
        connection["output"] = output
    return connection


def definition(nodes: list[dict], connections: list[dict], **extra: Any) -> dict:
    return {"name": "test", "nodes": nodes, "connections": connections, **extra}


def chain(*nodes: dict, trigger: str = "start") -> dict:
    """A manual trigger followed by ``nodes`` in a line."""
    all_nodes = [node(trigger, "trigger.manual"), *nodes]
    ids = [n["id"] for n in all_nodes]
    return definition(all_nodes, [edge(a, b) for a, b in zip(ids, ids[1:], strict=False)])


def graph_of(defn: dict):
    checked = validate(defn)
    assert checked.errors == [], checked.errors
    return checked.graph


def run(defn: dict, trigger_output: Any = None, *, trigger_id: str | None = "start",
        recorder: Recorder | None = None, clock: FakeClock | None = None,
        ports: Ports | None = None, resume: dict | None = None,
        options: RunOptions | None = None):
    """Validate and run ``defn``; returns (RunResult, Recorder)."""
    recorder = recorder or Recorder()
    result = run_graph(graph_of(defn), trigger_id=trigger_id, trigger_output=trigger_output,
                       execution=EXECUTION, callbacks=recorder, ports=ports,
                       clock=clock or FakeClock(), resume=resume, options=options)
    return result, recorder


def finishes_within(seconds: float, work) -> Any:
    """Run ``work`` in a thread and fail the test if it has not finished within ``seconds``
    (wall clock): a guard against hangs that asserts no timing of its own."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not finish within {seconds}s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def json_like(floats: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(
        st.none() | st.booleans() | st.integers() | floats | st.text(max_size=20),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(
            st.text(max_size=8), children, max_size=4),
        max_leaves=20)


json_values = json_like(st.floats(allow_nan=False, allow_infinity=False))
# What json.loads never gives but a Python caller might: NaN and infinities.
loose_values = json_like(st.floats())
