"""Faults done for real, through the whole pipeline: every run ends in exactly one final
state, and no node that succeeded runs again (the sink counts each side effect).

A node that was in flight when its worker died runs again with the same attempt, so the
service it called sees the same ``Idempotency-Key`` twice: that is the contract (at least
once, recognisably), and the tests check it.
"""

from __future__ import annotations

import signal
import time

from tests.integration.pipeline.conftest import LEASE_S, Pipeline, wait_for


def slow_chain(pipe: Pipeline, sleep: float = 3.0) -> str:
    """start → before (quick) → slow (sleeps) → after (quick)."""
    return pipe.workflow([pipe.hit("before", "/hit/before"),
                          pipe.hit("slow", "/hit/slow", sleep=sleep),
                          pipe.hit("after", "/hit/after")])


def assert_each_side_effect_once(pipe: Pipeline, execution_id: str, interrupted: bool) -> None:
    run = pipe.assert_once(execution_id)
    assert run.status == "succeeded", (run.status, run.error, pipe.logs())
    assert pipe.sink.count("/hit/before") == 1
    assert pipe.sink.count("/hit/after") == 1
    slow_keys = pipe.sink.keys("/hit/slow")
    assert len(slow_keys) == 1, slow_keys  # repeated only with the same idempotency key
    assert sum(slow_keys.values()) == (2 if interrupted else 1)
    assert next(iter(slow_keys)) == f"{execution_id}:slow:1"


def test_a_worker_killed_in_the_middle_of_a_node_loses_nothing(pipeline: Pipeline):
    pipe = pipeline
    workflow_id = slow_chain(pipe)
    pipe.clock()
    doomed = pipe.worker()
    execution_id = pipe.run(workflow_id)
    wait_for(lambda: pipe.sink.running("/hit/slow"), 20, "the slow node to start", pipe.logs)
    doomed.kill()  # SIGKILL to the worker's whole process group
    pipe.worker()
    pipe.finished(execution_id)
    assert_each_side_effect_once(pipe, execution_id, interrupted=True)
    run = pipe.execution(execution_id)
    assert run.deliveries == 2 and run.epoch >= 2
    slow = [r for r in pipe.node_rows(execution_id) if r.node_key == "slow"]
    assert [(r.attempt, r.status) for r in slow] == [(1, "succeeded")]


def test_a_stopped_worker_is_fenced_out_and_writes_nothing(pipeline: Pipeline):
    pipe = pipeline
    workflow_id = slow_chain(pipe, sleep=2.0)
    pipe.clock()
    stale = pipe.worker()
    execution_id = pipe.run(workflow_id)
    wait_for(lambda: pipe.sink.running("/hit/slow"), 20, "the slow node to start", pipe.logs)
    stale.signal(signal.SIGSTOP)
    time.sleep(LEASE_S * 2)  # the lease passes; the clock hands the run on
    pipe.worker()
    pipe.finished(execution_id)
    before = (pipe.execution(execution_id), pipe.node_rows(execution_id))
    stale.signal(signal.SIGCONT)
    wait_for(lambda: "handed to another worker" in stale.log(), 20,
             "the stale worker to notice it was fenced out", pipe.logs)
    after = (pipe.execution(execution_id), pipe.node_rows(execution_id))
    assert _snapshot(*after) == _snapshot(*before)
    assert stale.alive()
    assert_each_side_effect_once(pipe, execution_id, interrupted=True)


def _snapshot(run, rows) -> tuple:
    return ((run.status, run.epoch, run.finished_at, run.result, run.updated_at),
            [(r.node_key, r.attempt, r.status, r.output, r.started_at, r.finished_at)
             for r in rows])


def test_the_same_run_delivered_twice_runs_once(pipeline: Pipeline):
    pipe = pipeline
    workflow_id = slow_chain(pipe, sleep=1.0)
    pipe.worker()
    pipe.worker()
    execution_id = pipe.run(workflow_id)
    queue = pipe.app.extensions["jobsprint.queue"]
    queue.publish([execution_id, execution_id])  # three deliveries of one run, at once
    pipe.finished(execution_id)
    queue.publish([execution_id])  # and one after it finished
    wait_for(lambda: queue.depth() == 0, 10, "the queue to drain", pipe.logs)
    time.sleep(0.5)
    assert_each_side_effect_once(pipe, execution_id, interrupted=False)
    assert pipe.execution(execution_id).deliveries == 1
