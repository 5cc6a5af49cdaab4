"""Many runs of one workflow at once: the per-workflow concurrency limit holds across
workers, every run finishes, and none runs twice; and a node whose output is too large fails
its run cleanly without taking the worker down."""

from __future__ import annotations

import pytest

from tests.integration.pipeline.conftest import Pipeline


@pytest.mark.parametrize("concurrency", [1, 5])
def test_fifty_runs_at_once_honour_the_concurrency_limit(pipeline: Pipeline, concurrency: int):
    pipe = pipeline
    path = f"/hit/limit{concurrency}"
    workflow_id = pipe.workflow([pipe.hit("call", path, sleep=0.1)], concurrency=concurrency)
    pipe.clock()
    pipe.worker(threads=4)
    pipe.worker(threads=4)
    execution_ids = [pipe.run(workflow_id, {"n": n}) for n in range(50)]
    for execution_id in execution_ids:
        assert pipe.finished(execution_id, timeout=90).status == "succeeded"
        pipe.assert_once(execution_id)
    keys = pipe.sink.keys(path)
    assert sorted(keys) == sorted(f"{e}:call:1" for e in execution_ids)
    assert set(keys.values()) == {1}
    assert pipe.sink.peak(path) <= concurrency
    if concurrency > 1:
        assert pipe.sink.peak(path) > 1, "runs of a concurrency-5 workflow never overlapped"


def test_a_node_output_over_10_mb_fails_the_run_and_the_worker_lives_on(pipeline: Pipeline):
    pipe = pipeline
    # 6 MB of '"' is 12 MB once escaped in the node's JSON output.
    big = pipe.workflow([
        {"id": "big", "type": "http.request",
         "params": {"url": f"{pipe.sink.url}/big?bytes=6000000",
                    "max_response_bytes": 10_000_000}},
        pipe.hit("after", "/hit/after")])
    small = pipe.workflow([pipe.hit("fine", "/hit/fine")], name="Small")
    worker = pipe.worker(threads=1)
    failed = pipe.finished(pipe.run(big))
    assert failed.status == "failed"
    assert failed.error["node_id"] == "big"
    assert "over the 10 MB limit" in failed.error["message"]
    assert pipe.sink.count("/hit/after") == 0
    pipe.assert_once(str(failed.id))
    assert pipe.finished(pipe.run(small)).status == "succeeded"
    assert worker.alive()
