"""validate(): every problem, with its path, all at once; and the graph it builds."""

from __future__ import annotations

import json

import pytest

from app.engine import Limits, Problem, validate
from tests.unit.engine.support import chain, definition, edge, node

DESIGN_EXAMPLE = {
    "name": "Orders",
    "nodes": [
        {"id": "hook", "type": "trigger.webhook", "params": {"respond": "when_finished"},
         "position": [80, 120]},
        {"id": "calc", "type": "logic.set",
         "params": {"fields": {"total": "{{ input.body.amount * 2 }}",
                               "email": "{{ input.body.email | lower }}"}}},
        {"id": "big", "type": "logic.if", "params": {"condition": "{{ input.total > 100 }}"}},
        {"id": "post", "type": "http.request", "credential_id": None,
         "params": {"method": "POST", "url": "https://example.com/in",
                    "json": "{{ input | tojson }}"}}],
    "connections": [{"from": "hook", "to": "calc"}, {"from": "calc", "to": "big"},
                    {"from": "big", "output": "true", "to": "post"}],
    "settings": {"concurrency": 1, "timeout_s": 300},
}


def problems(defn, limits=None) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in validate(defn, limits).errors]


def paths(defn, limits=None) -> list[str]:
    return [p.path for p in validate(defn, limits).errors]


def test_the_design_example_is_valid():
    checked = validate(DESIGN_EXAMPLE)
    assert checked.errors == [] and checked.warnings == [] and checked.ok
    graph = checked.graph
    assert graph.order == ("hook", "calc", "big", "post")
    assert graph.triggers == ("hook",)
    assert graph.timeout_s == 300
    assert graph.nodes["post"].params["method"] == "POST"
    assert graph.nodes["post"].params["timeout_s"] == 30  # the schema's default filled in
    assert [e.target for e in graph.outgoing["big"]] == ["post"]


def test_problem_as_dict_has_path_and_message_only():
    assert Problem("nodes[1].id", "bad", "x").as_dict() == {"path": "nodes[1].id",
                                                           "message": "bad"}


@pytest.mark.parametrize("value", [None, [], "workflow", 3, 1.5, True])
def test_a_definition_must_be_an_object(value):
    assert problems(value) == [("", "the workflow definition must be a JSON object")]


def test_top_level_shape_problems_come_together():
    assert problems({"name": " ", "nodes": {}, "connections": "x",
                     "settings": {"concurrency": 0, "timeout_s": -1}}) == [
        ("name", "must be a non-empty string"),
        ("settings.concurrency", "must be a whole number, at least 1"),
        ("settings.timeout_s", "must be a number of seconds above 0, at most 86400"),
        ("nodes", "must be a list"),
        ("connections", "must be a list"),
    ]


def test_missing_top_level_fields():
    assert problems({}) == [("name", "is required"), ("nodes", "is required"),
                            ("connections", "is required")]


def test_settings_must_be_an_object_and_concurrency_not_a_bool():
    assert paths({**chain(), "settings": []}) == ["settings"]
    assert paths({**chain(), "settings": {"concurrency": True}}) == ["settings.concurrency"]


def test_too_many_nodes_is_reported_before_any_node_is_checked():
    defn = definition([{"bogus": i} for i in range(5)], [])
    assert problems(defn, Limits(max_nodes=4)) == [("nodes", "5 nodes, over the limit of 4")]


def test_size_is_checked_first():
    defn = chain(node("a", "logic.set", params={"fields": {"x": "y" * 3000}}))
    defn["nodes"].append("garbage that would be reported otherwise")
    [(path, message)] = problems(defn, Limits(max_bytes=2048))
    assert path == "" and "over the 0.00195312 MiB limit" in message


def test_a_definition_that_is_not_json_is_reported():
    assert problems({"name": "x", "nodes": [{1, 2}], "connections": []})[0][0] == ""
    assert "not valid JSON" in problems({"name": float("nan"), "nodes": [],
                                         "connections": []})[0][1]
    looped: dict = {"name": "x", "nodes": [], "connections": []}
    looped["self"] = looped
    assert problems(looped) == [("", "the workflow definition is not valid JSON: "
                                     "Circular reference detected")]


def test_node_ids():
    defn = definition(
        [node("start", "trigger.manual"), node("", "logic.noop"), node("a b", "logic.noop"),
         node("x" * 65, "logic.noop"), node(7, "logic.noop"), {"type": "logic.noop"},
         node("start", "logic.noop")], [])
    assert problems(defn) == [
        ("nodes[1].id", "must be a non-empty string"),
        ("nodes[2].id", "must be at most 64 letters, digits, '_' or '-'"),
        ("nodes[3].id", "must be at most 64 letters, digits, '_' or '-'"),
        ("nodes[4].id", "must be a non-empty string"),
        ("nodes[5].id", "is required"),
        ("nodes[6].id", "'start' is already the id of nodes[0]"),
    ]


def test_node_types_and_params_objects():
    defn = definition([node("start", "trigger.manual"), node("a", "logic.nope"), {"id": "b"},
                       node("c", 5), node("d", "logic.noop", params=[1]), "not a node"], [])
    found = problems(defn)
    assert found[0][0] == "nodes[1].type" and found[0][1].startswith(
        "unknown node type 'logic.nope' (known: trigger.manual, trigger.schedule")
    assert found[1:4] == [("nodes[2].type", "is required"), ("nodes[3].type", "must be a string"),
                          ("nodes[4].params", "must be an object")]
    assert ("nodes[5]", "must be an object") in found


def test_params_problems_carry_the_node_id_and_the_full_param_path():
    defn = chain(node("post", "http.request", params={
        "method": "FETCH", "url": 5, "query": {"page": 2}, "timeout_s": 0, "bogus": 1}))
    errors = validate(defn).errors
    assert [(p.path, p.node_id) for p in errors] == [
        ("nodes[1].params.bogus", "post"), ("nodes[1].params.method", "post"),
        ("nodes[1].params.query.page", "post"), ("nodes[1].params.timeout_s", "post"),
        ("nodes[1].params.url", "post")]
    assert errors[0].message == "is not a known parameter"
    assert errors[2].message == "2 is not of type 'string'"


def test_a_missing_required_param_is_reported_at_its_own_path():
    assert problems(chain(node("post", "http.request"))) == [
        ("nodes[1].params.url", "is required")]


def test_nested_param_paths():
    defn = chain(node("route", "logic.switch", params={"cases": [
        {"name": "a", "condition": True}, {"name": "", "condition": True}, {"condition": 1}]}))
    assert problems(defn) == [
        ("nodes[1].params.cases[1].name", "'' should be non-empty"),
        ("nodes[1].params.cases[2].name", "is required")]


def test_templates_stand_in_for_any_value_at_validation_time():
    defn = chain(node("post", "http.request", params={
        "url": "{{ input.url }}", "method": "{{ input.method }}", "timeout_s": "{{ 5 }}"}))
    checked = validate(defn)
    assert checked.errors == []
    assert checked.graph.nodes["post"].templated and checked.graph.nodes["post"].recheck


def test_values_used_as_written_must_not_be_templates():
    defn = chain(node("route", "logic.switch", params={"cases": "{{ input.cases }}"}))
    assert paths(defn) == ["nodes[1].params.cases"]


def test_semantic_param_checks():
    defn = definition([
        node("cron", "trigger.schedule", params={"cron": "61 * * * *", "timezone": "Mars/Base"}),
        node("every_second", "trigger.schedule", params={"cron": "* * * * * *"}),
        node("nick", "trigger.schedule", params={"cron": "@hourly"}),
        node("hook", "trigger.webhook", params={"schema": {"type": "nope"}}),
        node("route", "logic.switch", params={"cases": [
            {"name": "a", "condition": True}, {"name": "a", "condition": True},
            {"name": "default", "condition": True}]}),
        node("set", "logic.set", params={"fields": {"a..b": 1}}),
        node("get", "http.request", params={"url": "ftp://example.com"}),
        node("tool", "integration.mcp", params={"server_url": "mcp.example.com", "tool": "x"}),
    ], [edge("cron", "route"), edge("route", "set", "a"), edge("set", "get"),
        edge("get", "tool")])
    assert problems(defn) == [
        ("nodes[0].params.cron", "is not a valid cron expression (five fields: minute hour "
                                 "day-of-month month day-of-week, e.g. '*/15 * * * *')"),
        ("nodes[0].params.timezone", "is not a known time zone (e.g. 'Europe/Paris', 'UTC')"),
        ("nodes[1].params.cron", "is not a valid cron expression (five fields: minute hour "
                                 "day-of-month month day-of-week, e.g. '*/15 * * * *')"),
        ("nodes[3].params.schema.type", "is not a valid JSON Schema: 'nope' is not valid under "
                                        "any of the given schemas"),
        ("nodes[4].params.cases[1].name", "another case is already named 'a'"),
        ("nodes[4].params.cases[2].name", "'default' is reserved for another output"),
        ('nodes[5].params.fields["a..b"]',
         "is not a valid path (use names separated by dots: a.b.c)"),
        ("nodes[6].params.url", "must start with http:// or https://"),
        ("nodes[7].params.server_url", "must start with http:// or https://"),
    ]


def test_trigger_params_are_never_templates():
    defn = definition([node("cron", "trigger.schedule", params={"cron": "{{ input.cron }}"})],
                      [])
    assert paths(defn) == ["nodes[0].params.cron"]


def test_invalid_expressions_are_caught_at_validation_time():
    defn = chain(node("calc", "logic.set", params={"fields": {
        "ok": "{{ input.a }}", "bad": "{{ input.a + }}", "deep": {"x": ["{% if %}"]},
        "filter": "{{ input | nosuchfilter }}"}}))
    assert problems(defn) == [
        ("nodes[1].params.fields.bad", "invalid expression: unexpected 'end of template'"),
        ("nodes[1].params.fields.deep.x[0]",
         "invalid expression: Expected an expression, got 'end of statement block'"),
        ("nodes[1].params.fields.filter", "invalid expression: No filter named 'nosuchfilter'."),
    ]


def test_lazy_params_are_compiled_too():
    defn = chain(node("keep", "logic.filter", params={"condition": "{{ item. }}"}))
    assert paths(defn) == ["nodes[1].params.condition"]


def test_params_nested_too_deeply():
    deep: dict = {}
    inner = deep
    for _ in range(100):
        inner["x"] = {}
        inner = inner["x"]
    found = problems(chain(node("calc", "logic.set", params={"fields": deep})))
    assert len(found) == 1 and found[0][1] == "nested more than 64 levels deep"
    assert found[0][0].startswith("nodes[1].params.fields.x.x.x")


def test_common_node_fields():
    defn = chain(node("a", "logic.noop", name=5, credential_id="", retry={
        "max": 11, "backoff_s": -1, "factor": 0.5, "jitter": True}, on_error="ignore",
        timeout_s=0, position=[1]))
    assert problems(defn) == [
        ("nodes[1].name", "must be a string of at most 200 characters"),
        ("nodes[1].credential_id", "must be a credential id or null"),
        ("nodes[1].retry.max", "must be a whole number from 0 to 10"),
        ("nodes[1].retry.backoff_s", "must be a number of seconds from 0 to 86400"),
        ("nodes[1].retry.factor", "must be a number from 1 to 10"),
        ("nodes[1].retry.jitter", "is not a retry setting (max, backoff_s, factor)"),
        ("nodes[1].on_error", "must be one of stop, continue, error_output"),
        ("nodes[1].timeout_s", "must be a number of seconds above 0, at most 86400"),
        ("nodes[1].position", "must be [x, y]"),
    ]
    assert paths(chain(node("a", "logic.noop", retry=3))) == ["nodes[1].retry"]


def test_common_node_fields_that_are_valid():
    defn = chain(node("a", "logic.noop", name="A", credential_id="cred-1",
                      retry={"max": 2}, on_error="continue", timeout_s=1.5, position=[1, 2.5]))
    a = validate(defn).graph.nodes["a"]
    assert (a.name, a.credential_id, a.on_error, a.timeout_s) == ("A", "cred-1", "continue", 1.5)
    assert dict(a.retry) == {"max": 2, "backoff_s": 1, "factor": 2} and a.max_attempts == 3


def test_unknown_node_fields_are_a_warning():
    checked = validate(chain(node("a", "logic.noop", notes="hi")))
    assert checked.errors == []
    assert [(w.path, w.message) for w in checked.warnings] == [
        ("nodes[1].notes", "is not a node field and is ignored")]


def test_connection_problems():
    defn = definition(
        [node("start", "trigger.manual"), node("if", "logic.if", params={"condition": True}),
         node("a", "logic.noop"), node("b", "logic.noop", on_error="error_output")],
        [edge("start", "if"), "nope", {"to": "a"}, {"from": 1, "to": "a"},
         edge("ghost", "a"), edge("if", "phantom"), edge("if", "a"),
         edge("if", "a", "maybe"), edge("if", "a", "true"), {**edge("a", "b"), "output": 3},
         edge("a", "start"), edge("a", "a"), edge("b", "a", "error"), edge("a", "b", "error")])
    assert problems(defn) == [
        ("connections[1]", 'must be an object like {"from": "a", "to": "b"}'),
        ("connections[2].from", "is required"),
        ("connections[3].from", "must be a node id"),
        ("connections[4].from", "there is no node 'ghost'"),
        ("connections[5].to", "there is no node 'phantom'"),
        ("connections[6].output", "'main' is not an output of 'if' (it has: true, false)"),
        ("connections[7].output", "'maybe' is not an output of 'if' (it has: true, false)"),
        ("connections[9].output", "must be a string"),
        ("connections[10].to", "'start' is a trigger; a trigger cannot have inputs"),
        ("connections[11]", "connects 'a' to itself"),
        ("connections[13].output", "'error' is not an output of 'a' (it has: main)"),
    ]


def test_outputs_of_switch_and_split():
    defn = definition(
        [node("start", "trigger.manual"),
         node("route", "logic.switch", params={"cases": [{"name": "big", "condition": True}]}),
         node("each", "logic.split"), node("a", "logic.noop"), node("b", "logic.noop")],
        [edge("start", "route"), edge("route", "each", "big"), edge("route", "a", "default"),
         edge("route", "b", "small"), edge("each", "a", "items")])
    assert problems(defn) == [
        ("connections[3].output", "'small' is not an output of 'route' (it has: big, default)"),
        ("connections[4].output", "'items' is not an output of 'each' (it has: item, done)"),
    ]


def test_a_workflow_needs_a_trigger():
    defn = definition([node("a", "logic.noop")], [])
    assert problems(defn) == [("nodes", "the workflow needs a trigger (trigger.manual, "
                                        "trigger.schedule or trigger.webhook)")]


def test_several_triggers_may_share_a_workflow():
    defn = definition([node("manual", "trigger.manual"),
                       node("cron", "trigger.schedule", params={"cron": "0 9 * * 1-5"}),
                       node("a", "logic.noop")],
                      [edge("manual", "a"), edge("cron", "a")])
    assert validate(defn).graph.triggers == ("manual", "cron")


def test_cycles_name_their_nodes_in_order():
    defn = definition(
        [node("start", "trigger.manual"), node("a", "logic.noop"), node("b", "logic.noop"),
         node("c", "logic.noop"), node("x", "logic.noop"), node("y", "logic.noop")],
        [edge("start", "a"), edge("a", "b"), edge("b", "c"), edge("c", "a"),
         edge("start", "x"), edge("x", "y"), edge("y", "x")])
    errors = validate(defn).errors
    assert [(p.path, p.message, p.node_id) for p in errors] == [
        ("connections[3]", "cycle: a → b → c → a", "a"),
        ("connections[6]", "cycle: x → y → x", "x")]


def test_a_long_cycle_is_found_without_recursion_and_shortened():
    size = 100_000
    nodes = [node("start", "trigger.manual")] + [node(f"n{i}", "logic.noop")
                                                 for i in range(size)]
    connections = [edge("start", "n0")] + [edge(f"n{i}", f"n{(i + 1) % size}")
                                           for i in range(size)]
    [error] = validate(definition(nodes, connections), Limits(max_nodes=size + 1,
                                                             max_bytes=64 * 1024 * 1024)).errors
    assert error.message.startswith("cycle: n0 → n1 → n2")
    assert "… (100,000 nodes) …" in error.message and error.message.endswith("→ n0")


def test_a_long_chain_validates_without_recursion():
    size = 100_000
    defn = chain(*[node(f"n{i}", "logic.noop") for i in range(size)])
    checked = validate(defn, Limits(max_nodes=size + 1, max_bytes=64 * 1024 * 1024))
    assert checked.errors == [] and len(checked.graph.order) == size + 1


def test_nodes_no_trigger_reaches_are_a_warning():
    defn = definition([node("start", "trigger.manual"), node("a", "logic.noop"),
                       node("orphan", "logic.noop"), node("after", "logic.noop")],
                      [edge("start", "a"), edge("orphan", "after")])
    checked = validate(defn)
    assert checked.errors == [] and checked.graph is not None
    assert [(w.path, w.message, w.node_id) for w in checked.warnings] == [
        ("nodes[2]", "no trigger leads to 'orphan', so it never runs", "orphan"),
        ("nodes[3]", "no trigger leads to 'after', so it never runs", "after")]


def test_a_repeated_connection_is_a_warning_and_counted_once():
    defn = definition([node("start", "trigger.manual"), node("a", "logic.noop")],
                      [edge("start", "a"), edge("start", "a", "main")])
    checked = validate(defn)
    assert [(w.path, w.message) for w in checked.warnings] == [
        ("connections[1]", "repeats connections[0]")]
    assert len(checked.graph.incoming["a"]) == 1


def split_definition(extra_nodes=(), extra_connections=()):
    return definition(
        [node("start", "trigger.manual"), node("each", "logic.split"),
         node("double", "logic.set", params={"fields": {"v": "{{ item * 2 }}"}}),
         node("tidy", "logic.noop"), node("after", "logic.noop"), *extra_nodes],
        [edge("start", "each"), edge("each", "double", "item"), edge("double", "tidy"),
         edge("each", "after", "done"), *extra_connections])


def test_a_split_sub_branch():
    graph = validate(split_definition()).graph
    branch = graph.sub_branches["each"]
    assert branch.nodes == ("double", "tidy") and branch.sink == "tidy"
    assert graph.top_level == ("start", "each", "after")


def test_a_sub_branch_takes_input_from_its_split_only():
    defn = split_definition(extra_connections=[edge("start", "tidy"),
                                               edge("each", "double", "done")])
    assert [(p.path, p.message, p.node_id) for p in validate(defn).errors] == [
        ("connections[5]", "the 'done' output of 'each' leads into the nodes it runs per item",
         "double"),
        ("connections[4]", "'tidy' runs once per item of 'each', so it can only take input "
                           "from that split's item output and the nodes after it, not from "
                           "'start'", "tidy")]


def test_a_sub_branch_ends_in_one_node():
    defn = split_definition([node("other", "logic.noop")], [edge("double", "other")])
    assert problems(defn) == [
        ("nodes[1]", "the nodes 'each' runs per item must end in one node whose output is "
                     "gathered; they end in tidy, other (join them with a logic.merge)")]


def test_nested_splits_have_their_own_sub_branches():
    defn = definition(
        [node("start", "trigger.manual"), node("rows", "logic.split"),
         node("cells", "logic.split", params={"items": "{{ item }}"}),
         node("cell", "logic.noop"), node("row", "logic.noop")],
        [edge("start", "rows"), edge("rows", "cells", "item"), edge("cells", "cell", "item"),
         edge("cells", "row", "done")])
    graph = validate(defn).graph
    assert graph.sub_branches["rows"].nodes == ("cells", "row")
    assert graph.sub_branches["rows"].sink == "row"
    assert graph.sub_branches["cells"].nodes == ("cell",)
    assert graph.top_level == ("start", "rows")


def test_every_problem_comes_at_once():
    defn = {
        "name": "", "settings": {"concurrency": "1"},
        "nodes": [node("start", "trigger.schedule", params={"cron": "nope"}),
                  node("start", "logic.noop"), node("calc", "logic.set",
                                                    params={"fields": {"x": "{{ }}"}}),
                  node("post", "http.request", params={}, on_error="never"),
                  node("a", "logic.noop"), node("b", "logic.noop")],
        "connections": [edge("calc", "post"), edge("post", "missing"), edge("a", "b"),
                        edge("b", "a")],
    }
    assert paths(defn) == [
        "name", "settings.concurrency", "nodes[0].params.cron", "nodes[1].id",
        "nodes[2].params.fields.x", "nodes[3].params.url", "nodes[3].on_error",
        "connections[1].to", "connections[3]"]


def test_validation_does_not_change_the_definition():
    defn = json.loads(json.dumps(DESIGN_EXAMPLE))
    validate(defn)
    assert defn == DESIGN_EXAMPLE
