"""run_graph: order, skipping, retries, on_error, limits, timeouts, cancellation, parking,
splits, merges, resuming, and what reaches the callbacks."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.engine import NodeState, Ports, RunOptions, backoff_delay, run_graph, sanitize_error
from tests.unit.engine.support import (
    EXECUTION,
    FakeClock,
    FakeHttp,
    Recorder,
    chain,
    definition,
    edge,
    graph_of,
    node,
    run,
)


def http(node_id: str = "call", **fields) -> dict:
    return node(node_id, "http.request", params={"url": "https://example.com/x"}, **fields)


def set_total(node_id: str, expression: str = "{{ input.total + 1 }}") -> dict:
    return node(node_id, "logic.set", params={"fields": {"total": expression}})


# --- order, inputs and results -------------------------------------------------------------

def test_a_chain_runs_in_order_and_the_result_is_the_last_output():
    result, recorder = run(chain(set_total("a"), set_total("b")), {"total": 1})
    assert result.status == "succeeded" and result.error is None
    assert result.result == {"total": 3}
    assert recorder.started_keys() == ["start", "a", "b"]
    assert [(r.key, r.status, r.attempt) for r in recorder.finished] == [
        ("start", "succeeded", 1), ("a", "succeeded", 1), ("b", "succeeded", 1)]
    assert result.node_results == recorder.finished


def test_the_trigger_is_recorded_like_any_node():
    _, recorder = run(chain(), {"hello": "world"})
    assert recorder.started == [("start", 1, {"hello": "world"})]
    start = recorder.result("start")
    assert (start.output, start.output_name, start.item_index) == ({"hello": "world"}, "main",
                                                                   None)
    assert start.started_at is not None and start.finished_at is not None


def test_templates_see_nodes_trigger_and_execution():
    defn = chain(set_total("a"), node("b", "logic.set", params={"fields": {
        "from_a": "{{ nodes.a.total }}", "from_trigger": "{{ trigger.total }}",
        "run": "{{ execution.id }}/{{ execution.workflow_id }}"}, "keep": "set_only"}))
    result, _ = run(defn, {"total": 1})
    assert result.result == {"from_a": 2, "from_trigger": 1, "run": "exec-1/wf-1"}


def test_only_the_fired_trigger_runs_and_other_branches_are_skipped():
    defn = definition(
        [node("manual", "trigger.manual"), node("hook", "trigger.webhook"),
         node("a", "logic.noop"), node("b", "logic.noop"), node("c", "logic.noop")],
        [edge("manual", "a"), edge("hook", "b"), edge("b", "c")])
    result, recorder = run(defn, 1, trigger_id="hook")
    assert recorder.statuses() == {"manual": "skipped", "hook": "succeeded", "a": "skipped",
                                   "b": "succeeded", "c": "succeeded"}
    assert "a" not in recorder.started_keys() and "manual" not in recorder.started_keys()
    assert recorder.result("a").attempt == 0
    assert result.result == 1


def test_without_a_trigger_id_the_first_trigger_fires():
    result, recorder = run(chain(), 5, trigger_id=None)
    assert result.status == "succeeded" and recorder.started_keys() == ["start"]


def test_an_unknown_trigger_fails_the_run_without_running_anything():
    result, recorder = run(chain(node("a", "logic.noop")), trigger_id="a")
    assert result.status == "failed"
    assert result.error == {"node_id": "a", "message": "'a' is not a trigger of this workflow"}
    assert recorder.finished == []


def test_the_untaken_branch_of_an_if_is_skipped():
    defn = definition(
        [node("start", "trigger.manual"),
         node("big", "logic.if", params={"condition": "{{ input.total > 100 }}"}),
         node("yes", "logic.noop"), node("yes2", "logic.noop"), node("no", "logic.noop")],
        [edge("start", "big"), edge("big", "yes", "true"), edge("yes", "yes2"),
         edge("big", "no", "false")])
    result, recorder = run(defn, {"total": 5})
    assert recorder.statuses() == {"start": "succeeded", "big": "succeeded",
                                   "yes": "skipped", "yes2": "skipped", "no": "succeeded"}
    assert recorder.result("big").output_name == "false"
    assert result.result == {"total": 5}


def test_a_node_with_several_active_inputs_runs_once_with_the_first_in_connection_order():
    defn = definition(
        [node("start", "trigger.manual"), set_total("a", "{{ 1 }}"),
         set_total("b", "{{ 2 }}"),
         node("join", "logic.set", params={"fields": {"seen": "{{ [nodes.a.total, "
                                                              "nodes.b.total] }}"}})],
        [edge("start", "a"), edge("start", "b"), edge("b", "join"), edge("a", "join")])
    result, recorder = run(defn, {})
    assert recorder.started_keys().count("join") == 1
    assert result.result == {"total": 2, "seen": [1, 2]}  # input: b, first connected


def test_merge_outputs_its_active_inputs_by_node_id():
    defn = definition(
        [node("start", "trigger.manual"),
         node("check", "logic.if", params={"condition": "{{ input.go }}"}),
         set_total("a", "{{ 1 }}"), set_total("b", "{{ 2 }}"), set_total("c", "{{ 3 }}"),
         node("merge", "logic.merge")],
        [edge("start", "check"), edge("check", "a", "true"), edge("check", "b", "false"),
         edge("start", "c"), edge("a", "merge"), edge("b", "merge"), edge("c", "merge")])
    result, _ = run(defn, {"go": True})
    assert result.result == {"a": {"go": True, "total": 1}, "c": {"go": True, "total": 3}}


# --- retries and errors --------------------------------------------------------------------

def test_backoff_delay():
    retry = {"max": 3, "backoff_s": 1, "factor": 2}
    assert [backoff_delay(retry, attempt) for attempt in (1, 2, 3)] == [1, 2, 4]
    assert backoff_delay({"backoff_s": 0.5, "factor": 3}, 3) == 4.5
    assert backoff_delay({"backoff_s": 3600, "factor": 10}, 10) == 24 * 3600


def test_retries_sleep_with_exponential_backoff_and_keep_idempotency_keys_distinct():
    clock = FakeClock()
    port = FakeHttp(RuntimeError("boom 1"), RuntimeError("boom 2"), {"status": 200})
    result, recorder = run(chain(http(retry={"max": 3, "backoff_s": 1, "factor": 2})),
                           clock=clock, ports=Ports(http=port))
    assert result.status == "succeeded" and result.result == {"status": 200}
    assert clock.sleeps == [1, 2]
    assert [c["idempotency_key"] for c in port.calls] == [
        "exec-1:call:1", "exec-1:call:2", "exec-1:call:3"]
    assert [(r.status, r.attempt, r.error) for r in recorder.finished[1:]] == [
        ("failed", 1, "RuntimeError: boom 1"), ("failed", 2, "RuntimeError: boom 2"),
        ("succeeded", 3, None)]
    assert [(k, a) for k, a, _ in recorder.started] == [("start", 1), ("call", 1), ("call", 2),
                                                       ("call", 3)]


def test_when_retries_run_out_the_run_fails_at_that_node():
    clock = FakeClock()
    port = FakeHttp(RuntimeError("down"))
    defn = chain(http(retry={"max": 2, "backoff_s": 0.5, "factor": 3}), node("after",
                                                                             "logic.noop"))
    result, recorder = run(defn, clock=clock, ports=Ports(http=port))
    assert result.status == "failed"
    assert result.error == {"node_id": "call", "message": "RuntimeError: down"}
    assert clock.sleeps == [0.5, 1.5] and len(port.calls) == 3
    assert "after" not in recorder.statuses()
    last = recorder.result("call")
    assert (last.status, last.attempt, last.output_name) == ("failed", 3, None)


def test_on_error_continue_passes_the_error_on_main():
    defn = chain(http(on_error="continue"),
                 node("after", "logic.set", params={"fields": {"saw": "{{ input.error.message }}"},
                                                   "keep": "set_only"}))
    result, recorder = run(defn, ports=Ports(http=FakeHttp(ValueError("bad gateway"))))
    assert result.status == "succeeded" and result.result == {"saw": "ValueError: bad gateway"}
    failed = recorder.result("call")
    assert (failed.status, failed.output_name, failed.output) == (
        "failed", "main", {"error": {"message": "ValueError: bad gateway"}})


def test_on_error_continue_on_a_node_without_main_uses_its_last_output():
    defn = definition(
        [node("start", "trigger.manual"),
         node("check", "logic.if", params={"condition": "{{ input.nope() }}"},
              on_error="continue"),
         node("yes", "logic.noop"), node("no", "logic.noop")],
        [edge("start", "check"), edge("check", "yes", "true"), edge("check", "no", "false")])
    _, recorder = run(defn, {})
    assert recorder.result("check").output_name == "false"
    assert recorder.statuses()["no"] == "succeeded" and recorder.statuses()["yes"] == "skipped"


def test_on_error_error_output_sends_error_and_input_on_error():
    defn = definition(
        [node("start", "trigger.manual"), http(on_error="error_output"),
         node("ok", "logic.noop"), node("handle", "logic.noop")],
        [edge("start", "call"), edge("call", "ok"), edge("call", "handle", "error")])
    result, recorder = run(defn, {"order": 7}, ports=Ports(http=FakeHttp(OSError("refused"))))
    assert recorder.statuses()["ok"] == "skipped"
    assert result.result == {"error": {"message": "OSError: refused"}, "input": {"order": 7}}


def test_the_result_is_the_last_node_that_succeeded():
    defn = chain(set_total("a", "{{ 1 }}"), http(on_error="continue"))
    result, _ = run(defn, {}, ports=Ports(http=FakeHttp(RuntimeError("x"))))
    assert result.status == "succeeded" and result.result == {"total": 1}


def test_a_missing_port_fails_the_node_clearly():
    result, _ = run(chain(http()))
    assert result.error == {"node_id": "call",
                            "message": "http.request is not available in this run"}


def test_expression_errors_fail_the_node_with_the_param_path():
    result, _ = run(chain(set_total("a", "{{ input.total / 0 }}")), {"total": 1})
    assert result.error == {"node_id": "a", "message": "params.fields.total: "
                                                       "ZeroDivisionError: division by zero"}


def test_rendered_params_are_checked_against_the_schema():
    defn = chain(node("call", "http.request", params={"url": "https://x.test",
                                                      "timeout_s": "{{ input.timeout }}"}))
    port = FakeHttp()
    result, _ = run(defn, {"timeout": "soon"}, ports=Ports(http=port))
    assert result.error == {"node_id": "call",
                            "message": "params.timeout_s: 'soon' is not of type 'number'"}
    result, _ = run(defn, {"timeout": 5}, ports=Ports(http=port))
    assert result.status == "succeeded" and port.calls[-1]["timeout_s"] == 5


def test_stored_errors_are_sanitized_and_mask_secrets():
    port = FakeHttp(RuntimeError("token sk-live-123456 rejected by /srv/app/client.py"))
    result, recorder = run(chain(http()), ports=Ports(http=port),
                           options=RunOptions(secrets=["sk-live-123456"]))
    assert result.error["message"] == "RuntimeError: token *** rejected by …/client.py"
    assert recorder.result("call").error == result.error["message"]


# --- limits ---------------------------------------------------------------------------------

def test_outputs_over_the_size_limit_fail_the_node():
    port = FakeHttp({"body": "x" * 12_300_000})
    result, _ = run(chain(http()), ports=Ports(http=port))
    assert result.error == {"node_id": "call",
                            "message": "output is 12.3 MB, over the 10 MB limit"}
    small = RunOptions(max_output_bytes=1000)
    result, _ = run(chain(http()), ports=Ports(http=FakeHttp({"body": "é" * 600})),
                    options=small)
    assert result.error["message"] == "output is 0.0 MB, over the 0.001 MB limit"


def test_outputs_must_be_json():
    result, _ = run(chain(http()), ports=Ports(http=FakeHttp({"when": object()})))
    assert result.error["message"].startswith("the output is not JSON: Object of type object")
    result, _ = run(chain(http()), ports=Ports(http=FakeHttp({"x": float("inf")})))
    assert result.error["message"].startswith("the output is not JSON: Out of range float")


def test_a_node_that_returns_after_its_timeout_fails():
    clock = FakeClock()
    port = FakeHttp({"status": 200}, clock=clock, takes_s=3)
    result, _ = run(chain(http(timeout_s=2)), clock=clock, ports=Ports(http=port))
    assert result.error == {"node_id": "call", "message": "timed out after 2s"}
    assert port.calls[0]["deadline"] == clock.current - timedelta(seconds=1)


def test_the_run_timeout_stops_the_run():
    clock = FakeClock()
    defn = {**chain(http(), node("after", "logic.noop")), "settings": {"timeout_s": 10}}
    port = FakeHttp({"status": 200}, clock=clock, takes_s=11)
    result, recorder = run(defn, clock=clock, ports=Ports(http=port))
    assert result.status == "failed"
    assert result.error == {"node_id": "after",
                            "message": "the run took longer than its 10s limit"}
    assert port.calls[0]["deadline"] is not None
    assert "after" not in recorder.statuses()


def test_a_resumed_run_keeps_the_timeout_of_its_first_start():
    clock = FakeClock()
    defn = {**chain(http(), node("after", "logic.noop")), "settings": {"timeout_s": 10}}
    port = FakeHttp({"status": 200}, clock=clock, takes_s=4)
    first_start = clock.current - timedelta(seconds=8)
    result, recorder = run(defn, clock=clock, ports=Ports(http=port),
                           options=RunOptions(started_at=first_start))
    assert result.error == {"node_id": "after",
                            "message": "the run took longer than its 10s limit"}
    assert port.calls[0]["deadline"] == first_start + timedelta(seconds=10)


def test_cancellation_is_checked_before_each_node():
    checks = []

    def is_cancelled():
        checks.append(True)
        return len(checks) > 2

    result, recorder = run(chain(set_total("a"), set_total("b"), set_total("c")),
                           {"total": 0}, ports=Ports(is_cancelled=is_cancelled))
    assert result.status == "cancelled" and result.error is None
    assert recorder.started_keys() == ["start", "a"]


# --- callbacks ------------------------------------------------------------------------------

class Fenced(Exception):
    pass


@pytest.mark.parametrize("hook", ["node_started", "node_finished"])
def test_exceptions_from_callbacks_propagate_untouched(hook):
    fenced = Fenced("another worker owns this run")

    class Failing(Recorder):
        def node_started(self, key, attempt, input):
            if hook == "node_started" and key == "b":
                raise fenced
            super().node_started(key, attempt, input)

        def node_finished(self, result):
            if hook == "node_finished" and result.key == "b":
                raise fenced
            super().node_finished(result)

    defn = chain(set_total("a"), node("b", "logic.noop", on_error="continue",
                                      retry={"max": 2}))
    with pytest.raises(Fenced) as caught:
        run(defn, {"total": 0}, recorder=Failing())
    assert caught.value is fenced


def test_exceptions_from_callbacks_inside_a_split_propagate_untouched():
    fenced = Fenced("stop")

    class Failing(Recorder):
        def node_started(self, key, attempt, input):
            if key == "each_item[1]":
                raise fenced
            super().node_started(key, attempt, input)

    defn = definition([node("start", "trigger.manual"),
                       node("each", "logic.split", on_error="continue"),
                       node("each_item", "logic.noop")],
                      [edge("start", "each"), edge("each", "each_item", "item")])
    with pytest.raises(Fenced) as caught:
        run(defn, [1, 2, 3], recorder=Failing())
    assert caught.value is fenced


def test_sanitize_error():
    assert sanitize_error(ValueError("bad value")) == "ValueError: bad value"
    assert sanitize_error(KeyError("x")) == "KeyError: 'x'"
    assert sanitize_error(RuntimeError()) == "RuntimeError"
    assert sanitize_error(RuntimeError(
        "failed in /usr/lib/python3/site-packages/x/y.py, line 3")) == (
        "RuntimeError: failed in …/y.py, line 3")
    assert sanitize_error(OSError(r"C:\Users\me\secret.txt missing")) == (
        r"OSError: …/secret.txt missing")
    assert sanitize_error(RuntimeError("see https://example.com/a/b and ./rel/path")) == (
        "RuntimeError: see https://example.com/a/b and ./rel/path")
    assert sanitize_error(TypeError("<function helper at 0x7f3a2b1c0d10> and "
                                    "<app.Thing object at 0x7f00aa55bb66>")) == (
        "TypeError: <function helper> and <app.Thing>")
    assert sanitize_error(RuntimeError("key=hunter22 k=ab"), secrets=["hunter22", "ab"]) == (
        "RuntimeError: key=*** k=ab")  # too short to mask
    long = sanitize_error(RuntimeError("x" * 5000))
    assert len(long) == 2000 and long.endswith("…")
    traceback_free = sanitize_error(ZeroDivisionError("division by zero"))
    assert "Traceback" not in traceback_free and "\n" not in traceback_free


# --- waiting and parking --------------------------------------------------------------------

def wait_chain(seconds: float, **fields) -> dict:
    return chain(set_total("a"), node("pause", "logic.wait", params={"seconds": seconds},
                                      **fields), set_total("b"))


def test_a_short_wait_sleeps_inline():
    clock = FakeClock()
    result, _ = run(wait_chain(3), {"total": 0}, clock=clock)
    assert result.status == "succeeded" and result.result == {"total": 2}
    assert clock.sleeps == [3]


def test_a_wait_longer_than_its_timeout_times_out():
    clock = FakeClock()
    result, _ = run(wait_chain(4, timeout_s=1), {"total": 0}, clock=clock)
    assert result.error == {"node_id": "pause", "message": "timed out after 1s"}
    assert clock.sleeps == [1]


def test_a_long_wait_parks_the_run_and_resumes_when_due():
    clock = FakeClock()
    first, recorder = run(wait_chain(3600), {"total": 0}, clock=clock)
    due = clock.current + timedelta(seconds=3600)
    assert (first.status, first.resume_at, clock.sleeps) == ("parked", due, [])
    waiting = recorder.result("pause")
    assert (waiting.status, waiting.resume_at, waiting.attempt) == ("waiting", due, 1)

    clock.advance(1800)
    early, early_recorder = run(wait_chain(3600), {"total": 0}, clock=clock,
                                resume=recorder.states())
    assert (early.status, early.resume_at) == ("parked", due)
    assert early_recorder.finished == [] and early_recorder.started == []

    clock.advance(1800)
    later, later_recorder = run(wait_chain(3600), {"total": 0}, clock=clock,
                                resume=recorder.states())
    assert later.status == "succeeded" and later.result == {"total": 2}
    assert later_recorder.started_keys() == ["b"]
    assert [(r.key, r.status) for r in later_recorder.finished] == [("pause", "succeeded"),
                                                                    ("b", "succeeded")]


def test_a_long_backoff_parks_the_run_instead_of_sleeping():
    clock = FakeClock()
    defn = chain(http(retry={"max": 2, "backoff_s": 60, "factor": 2}))
    port = FakeHttp(RuntimeError("busy"), {"status": 200})
    first, recorder = run(defn, clock=clock, ports=Ports(http=port))
    assert first.status == "parked" and clock.sleeps == []
    assert first.resume_at == clock.current + timedelta(seconds=60)
    assert recorder.result("call").resume_at == first.resume_at

    clock.advance(60)
    second, second_recorder = run(defn, clock=clock, ports=Ports(http=port),
                                  resume=recorder.states())
    assert second.status == "succeeded"
    assert second_recorder.started == [("call", 2, None)]
    assert port.calls[-1]["idempotency_key"] == "exec-1:call:2"


# --- splits ---------------------------------------------------------------------------------

def split_definition(**split_fields) -> dict:
    return definition(
        [node("start", "trigger.manual"), node("each", "logic.split", **split_fields),
         node("double", "logic.set", params={
             "fields": {"value": "{{ item * 2 }}", "at": "{{ index }}"}, "keep": "set_only"}),
         node("after", "logic.set", params={"fields": {"count": "{{ input | length }}"},
                                            "keep": "set_only"})],
        [edge("start", "each"), edge("each", "double", "item"), edge("each", "after", "done")])


def test_a_split_runs_its_sub_branch_per_item_and_gathers_the_results():
    result, recorder = run(split_definition(), [1, 2, 3])
    assert result.result == {"count": 3}
    split = recorder.result("each")
    assert (split.output_name, split.output) == (
        "done", [{"value": 2, "at": 0}, {"value": 4, "at": 1}, {"value": 6, "at": 2}])
    assert recorder.started_keys() == ["start", "each", "double[0]", "double[1]", "double[2]",
                                       "after"]
    assert [(r.key, r.node_id, r.item_index) for r in recorder.finished
            if r.node_id == "double"] == [("double[0]", "double", 0), ("double[1]", "double", 1),
                                          ("double[2]", "double", 2)]
    assert recorder.result("double[1]").output == {"value": 4, "at": 1}


def test_a_split_items_param_and_an_empty_list():
    result, recorder = run(split_definition(params={"items": "{{ input.rows }}"}),
                           {"rows": []})
    assert recorder.result("each").output == [] and result.result == {"count": 0}


def test_a_split_over_max_items_fails():
    result, _ = run(split_definition(params={"max_items": 2}), [1, 2, 3])
    assert result.error == {"node_id": "each", "message": "3 items, over max_items (2)"}


def test_a_failing_item_fails_the_split_which_may_continue():
    defn = split_definition(on_error="continue", retry={"max": 3})
    defn["nodes"][2]["params"]["fields"]["value"] = "{{ 10 / item }}"
    clock = FakeClock()
    result, recorder = run(defn, [1, 0, 2], clock=clock)
    assert recorder.statuses()["double[1]"] == "failed"
    assert "double[2]" not in recorder.statuses()
    failure = recorder.result("each")
    assert failure.error == "double[1]: params.fields.value: ZeroDivisionError: division by zero"
    assert failure.output_name == "done" and clock.sleeps == []  # no retry of the items
    assert result.status == "succeeded"


def test_items_a_sub_branch_filters_out_are_not_gathered():
    defn = definition(
        [node("start", "trigger.manual"), node("each", "logic.split"),
         node("odd", "logic.if", params={"condition": "{{ item % 2 }}"}),
         node("keep", "logic.noop")],
        [edge("start", "each"), edge("each", "odd", "item"), edge("odd", "keep", "true")])
    result, recorder = run(defn, [1, 2, 3])
    assert result.result == [1, 3]
    assert recorder.statuses()["keep[1]"] == "skipped"


def test_nested_splits_key_their_nodes_by_both_indexes():
    defn = definition(
        [node("start", "trigger.manual"), node("rows", "logic.split"),
         node("cells", "logic.split", params={"items": "{{ item }}"}),
         node("cell", "logic.set", params={"fields": {"v": "{{ item * 10 }}"},
                                           "keep": "set_only"})],
        [edge("start", "rows"), edge("rows", "cells", "item"), edge("cells", "cell", "item")])
    result, recorder = run(defn, [[1, 2], [3]])
    assert result.result == [[{"v": 10}, {"v": 20}], [{"v": 30}]]
    assert [k for k in recorder.started_keys() if k.startswith("cell")] == [
        "cells[0]", "cell[0][0]", "cell[0][1]", "cells[1]", "cell[1][0]"]


def test_a_skipped_split_reports_its_sub_branch_skipped():
    defn = definition(
        [node("start", "trigger.manual"), node("never", "logic.if", params={"condition": False}),
         node("each", "logic.split"), node("double", "logic.noop")],
        [edge("start", "never"), edge("never", "each", "true"),
         edge("each", "double", "item")])
    _, recorder = run(defn, [1])
    assert recorder.statuses()["each"] == "skipped"
    assert recorder.statuses()["double"] == "skipped"


def test_a_wait_inside_a_split_parks_and_resumes_the_right_item():
    defn = definition(
        [node("start", "trigger.manual"), node("each", "logic.split"),
         node("pause", "logic.wait", params={"seconds": "{{ 600 if item == 2 else 0 }}"}),
         node("tag", "logic.set", params={"fields": {"v": "{{ item }}"}, "keep": "set_only"})],
        [edge("start", "each"), edge("each", "pause", "item"), edge("pause", "tag")])
    clock = FakeClock()
    first, recorder = run(defn, [1, 2, 3], clock=clock)
    assert first.status == "parked"
    assert recorder.result("pause[1]").status == "waiting"
    clock.advance(600)
    second, second_recorder = run(defn, [1, 2, 3], clock=clock, resume=recorder.states())
    assert second.result == [{"v": 1}, {"v": 2}, {"v": 3}]
    assert second_recorder.started_keys() == ["each", "tag[1]", "pause[2]", "tag[2]"]


# --- resuming -------------------------------------------------------------------------------

def test_resume_does_not_rerun_succeeded_nodes():
    port = FakeHttp({"status": 200})
    defn = chain(http(), set_total("a", "{{ 1 }}"))
    _, recorder = run(defn, ports=Ports(http=port))
    states = recorder.states()
    del states["a"]
    result, second = run(defn, ports=Ports(http=port), resume=states)
    assert len(port.calls) == 1 and second.started_keys() == ["a"]
    assert result.result == {"status": 200, "total": 1}


def test_a_node_that_was_running_runs_again_with_the_same_attempt_and_key():
    port = FakeHttp({"status": 201})
    states = {"start": NodeState("succeeded", output={"x": 1}, output_name="main"),
              "call": NodeState("running", attempts=2)}
    result, recorder = run(chain(http(retry={"max": 3})), ports=Ports(http=port),
                           resume=states)
    assert recorder.started == [("call", 2, {"x": 1})]
    assert port.calls[0]["idempotency_key"] == "exec-1:call:2"
    assert result.result == {"status": 201}


def test_a_failed_node_that_was_passed_on_is_not_run_again():
    states = {"start": NodeState("succeeded", output=1),
              "call": NodeState("failed", output={"error": {"message": "x"}},
                                output_name="main", attempts=1, error="x")}
    result, recorder = run(chain(http(on_error="continue"), node("after", "logic.noop")),
                           resume=states)
    assert recorder.started_keys() == ["after"]
    assert recorder.result("after").output == {"error": {"message": "x"}}
    assert result.result == {"error": {"message": "x"}}


def test_a_node_that_failed_for_good_fails_the_resumed_run_again():
    states = {"start": NodeState("succeeded", output=1),
              "call": NodeState("failed", attempts=1, error="RuntimeError: down")}
    result, recorder = run(chain(http()), resume=states)
    assert result.error == {"node_id": "call", "message": "RuntimeError: down"}
    assert recorder.started == []


def test_run_graph_reuses_a_graph_across_runs():
    graph = graph_of(chain(set_total("a")))
    results = [run_graph(graph, trigger_id="start", trigger_output={"total": n},
                         execution=EXECUTION, callbacks=Recorder()).result for n in range(3)]
    assert results == [{"total": 1}, {"total": 2}, {"total": 3}]


def test_a_param_whose_template_gives_null_counts_as_not_set():
    defn = chain(node("call", "http.request", params={"url": "{{ input.url }}",
                                                      "timeout_s": "{{ input.timeout }}"}))
    port = FakeHttp()
    result, _ = run(defn, {"url": "https://x.test"}, ports=Ports(http=port))
    assert result.status == "succeeded" and port.calls[0]["timeout_s"] == 30
    result, _ = run(defn, {}, ports=Ports(http=port))
    assert result.error == {"node_id": "call", "message": "params.url: is required"}
