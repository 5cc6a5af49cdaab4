"""Properties over random graphs and random junk (hypothesis)."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from app.engine import Ports, validate
from tests.unit.engine.support import (
    FakeClock,
    definition,
    edge,
    json_values,
    loose_values,
    node,
    run,
)

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])




@st.composite
def dags(draw, min_nodes: int = 2, max_nodes: int = 14):
    """(number of nodes, edges i → j with i < j, definition order): node 0 is the trigger."""
    size = draw(st.integers(min_nodes, max_nodes))
    pairs = [(i, j) for i in range(size) for j in range(i + 1, size)]
    edges = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=3 * size)) if pairs \
        else []
    order = draw(st.permutations(range(size)))
    return size, edges, order


def dag_definition(size, edges, order, make_node=None) -> dict:
    make_node = make_node or (lambda i: node(f"n{i}", "logic.noop"))
    nodes = {0: node("n0", "trigger.manual"), **{i: make_node(i) for i in range(1, size)}}
    return definition([nodes[i] for i in order], [edge(f"n{i}", f"n{j}") for i, j in edges])


def reachable_from(start, edges):
    seen, stack = {start}, [start]
    while stack:
        current = stack.pop()
        for i, j in edges:
            if i == current and j not in seen:
                seen.add(j)
                stack.append(j)
    return seen


@PROPERTY_SETTINGS
@given(dags())
def test_topological_order_respects_every_edge(dag):
    size, edges, order = dag
    checked = validate(dag_definition(size, edges, order))
    assert checked.errors == []
    position = {node_id: index for index, node_id in enumerate(checked.graph.order)}
    assert len(position) == size
    for i, j in edges:
        assert position[f"n{i}"] < position[f"n{j}"]


@PROPERTY_SETTINGS
@given(dags(min_nodes=3), st.data())
def test_a_back_edge_is_always_reported_as_a_real_cycle(dag, data):
    size, edges, order = dag
    i = data.draw(st.integers(1, size - 2))
    j = data.draw(st.integers(i + 1, size - 1))
    if j not in reachable_from(i, edges):
        edges = [*edges, (i, j)]
    defn = dag_definition(size, [*edges, (j, i)], order)
    cycles = [p for p in validate(defn).errors if p.message.startswith("cycle: ")]
    assert cycles
    connected = {(f"n{a}", f"n{b}") for a, b in [*edges, (j, i)]}
    for problem in cycles:
        ids = problem.message.removeprefix("cycle: ").split(" → ")
        assert ids[0] == ids[-1] == problem.node_id and len(ids) >= 3
        assert len(set(ids[:-1])) == len(ids) - 1
        for a, b in zip(ids, ids[1:], strict=False):
            assert (a, b) in connected
        closing = defn["connections"][int(re.fullmatch(r"connections\[(\d+)]",
                                                       problem.path)[1])]
        assert (closing["from"], closing["to"]) == (ids[-2], ids[-1])


class CountingHttp:
    """An HTTP port whose answer depends on its request only, and that counts its calls."""

    def __init__(self):
        self.calls: list[str] = []

    def request(self, **kwargs):
        self.calls.append(kwargs["idempotency_key"])
        return {"echo": kwargs["json"], "url": kwargs["url"]}


def resumable_node(kind: int, i: int) -> dict:
    if kind == 0:
        return node(f"n{i}", "logic.set", params={"fields": {
            f"f{i}": "{{ (input.total or 0) + " + str(i) + " }}", "total": f"{{{{ {i} }}}}"}})
    if kind == 1:
        return node(f"n{i}", "http.request", params={
            "method": "POST", "url": f"https://example.com/{i}", "json": "{{ input }}"})
    if kind == 2:
        return node(f"n{i}", "logic.if", params={"condition": "{{ (input.total or 0) % 2 }}"})
    return node(f"n{i}", "logic.merge")


@PROPERTY_SETTINGS
@given(dags(max_nodes=10), st.data())
def test_resuming_after_any_prefix_gives_the_same_outputs_and_reruns_nothing(dag, data):
    size, edges, order = dag
    kinds = data.draw(st.lists(st.integers(0, 3), min_size=size, max_size=size))

    defn = dag_definition(size, edges, order, lambda i: resumable_node(kinds[i], i))
    types = {n["id"]: n["type"] for n in defn["nodes"]}
    for connection in defn["connections"]:  # an if's connections name one of its outputs
        if types[connection["from"]] == "logic.if":
            connection["output"] = "true" if int(connection["to"][1:]) % 2 else "false"
    assume(validate(defn).ok)

    full_port = CountingHttp()
    full, full_recorder = run(defn, {"total": 1}, trigger_id="n0", clock=FakeClock(),
                              ports=Ports(http=full_port))
    assert full.status == "succeeded"

    # The worker dies after any event: what it had stored is all the next one knows.
    cut = data.draw(st.integers(0, len(full_recorder.events)))
    states = full_recorder.states(cut)
    port = CountingHttp()
    resumed, recorder = run(defn, {"total": 1}, trigger_id="n0", clock=FakeClock(),
                            ports=Ports(http=port), resume=states)

    assert resumed.status == "succeeded" and resumed.result == full.result
    finished = {key for key, state in states.items() if state.status != "running"}
    assert not finished & set(recorder.started_keys())
    assert not finished & {call.split(":")[1] for call in port.calls}
    assert set(port.calls) <= set(full_port.calls)  # a re-run attempt reuses its key
    for key, attempt, _ in recorder.started:
        if key in states:
            assert states[key].status == "running" and states[key].attempts == attempt
    before = {r.key: (r.status, r.output) for r in full_recorder.finished
              if r.key in finished}
    after = {r.key: (r.status, r.output) for r in recorder.finished}
    assert {**before, **after} == {r.key: (r.status, r.output) for r in full_recorder.finished}
    event(f"stopped after {cut} of {len(full_recorder.events)} events; "
          f"{len(recorder.started)} nodes ran again")


node_fields = st.fixed_dictionaries({}, optional={
    "id": st.text(max_size=5) | loose_values,
    "type": st.sampled_from(["trigger.manual", "logic.set", "logic.if", "logic.split",
                             "logic.switch", "http.request", "trigger.schedule", "nope"])
    | json_values,
    "params": loose_values | st.dictionaries(
        st.sampled_from(["fields", "condition", "cases", "items", "url", "cron", "seconds",
                         "keep", "max_items", "schema"]),
        json_values | st.text(alphabet="{}%# ab.|", max_size=12), max_size=4),
    "retry": json_values, "on_error": json_values, "timeout_s": json_values,
    "position": json_values, "name": json_values, "credential_id": json_values,
})
connection_fields = st.fixed_dictionaries({}, optional={
    "from": st.sampled_from(["a", "b", "c", ""]) | json_values,
    "to": st.sampled_from(["a", "b", "c"]) | json_values,
    "output": st.sampled_from(["main", "true", "item", "done", "error"]) | json_values,
})


@st.composite
def junk_definitions(draw):
    nodes = draw(st.lists(node_fields | json_values, max_size=6))
    for index, raw in enumerate(nodes):
        if isinstance(raw, dict) and draw(st.booleans()):
            raw["id"] = "abc"[index % 3]
    return draw(st.fixed_dictionaries({}, optional={
        "name": loose_values, "nodes": st.just(nodes) | json_values,
        "connections": st.lists(connection_fields | json_values, max_size=6) | json_values,
        "settings": json_values | st.fixed_dictionaries(
            {}, optional={"concurrency": json_values, "timeout_s": json_values}),
    }))


@settings(PROPERTY_SETTINGS, max_examples=400)
@given(junk_definitions() | loose_values)
def test_validate_never_raises_on_junk(junk):
    checked = validate(junk)
    assert (checked.graph is None) == bool(checked.errors)
    for problem in checked.errors + checked.warnings:
        assert isinstance(problem.path, str) and isinstance(problem.message, str)
