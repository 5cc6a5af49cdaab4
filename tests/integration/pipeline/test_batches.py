"""Pure runs in batches, through real workers on RabbitMQ: a burst of first deliveries is
run and written together, each run once; runs with side effects in the same burst are run one
at a time; a worker killed in the middle of a batch (its runs run, not yet written) loses no
run and finishes none twice; a worker stopped there and resumed after its runs were handed on
and finished elsewhere writes nothing."""

from __future__ import annotations

import signal
import time
import uuid

import pytest
import redis
from sqlalchemy import func, select, text

from app.db import db
from app.models import Execution
from tests.integration.pipeline.conftest import LEASE_S, Pipeline, wait_for

# Set nodes per pure run in the fault tests: a batch then spends nearly all its time running
# (read, not yet written), so a kill or a stop soon lands inside one.
CHAIN = 150


@pytest.fixture
def backend() -> str:
    return "rabbitmq"  # the backend that hands workers batches


def pure_chain(pipe: Pipeline, concurrency: int = 50, length: int = CHAIN) -> str:
    nodes = [{"id": f"set{n}", "type": "logic.set",
              "params": {"fields": {f"f{n}": "{{ input.n * 2 }}" if n == 0 else f"{{{{ {n} }}}}"},
                         "keep": "all"}}
             for n in range(length)]
    return pipe.workflow(nodes, concurrency=concurrency, name="Pure")


def statuses(pipe: Pipeline, execution_ids: list[str]) -> dict[str, int]:
    with pipe.app.app_context():
        rows = db.session.execute(
            select(Execution.status, func.count()).where(
                Execution.id.in_([uuid.UUID(e) for e in execution_ids]))
            .group_by(Execution.status)).all()
        db.session.commit()
    return dict(rows)


def finish_times(pipe: Pipeline, execution_ids: list[str]) -> int:
    """How many distinct commit times (updated_at) the finished runs have."""
    with pipe.app.app_context():
        count = db.session.scalar(select(func.count(func.distinct(Execution.updated_at))).where(
            Execution.id.in_([uuid.UUID(e) for e in execution_ids])))
        db.session.commit()
    return count


def assert_all_succeeded_once(pipe: Pipeline, execution_ids: list[str], length: int) -> None:
    for n, execution_id in enumerate(execution_ids):
        run = pipe.assert_once(execution_id)
        assert run.status == "succeeded", (run.status, run.error)
        nodes = pipe.node_rows(execution_id)
        assert sorted(r.node_key for r in nodes) == sorted(
            ["start", *(f"set{k}" for k in range(length))])
        assert {r.status for r in nodes} == {"succeeded"}
        assert run.result["f0"] == n * 2 and run.result[f"f{length - 1}"] == length - 1


@pytest.mark.parametrize("concurrency", [1, 50])
def test_a_burst_of_pure_runs_is_finished_in_batches_each_once(pipeline: Pipeline,
                                                               concurrency: int):
    pipe = pipeline
    workflow_id = pure_chain(pipe, concurrency=concurrency, length=3)
    # Queued before any worker runs: the first worker's threads find them waiting.
    execution_ids = [pipe.run(workflow_id, {"n": n}) for n in range(120)]
    pipe.clock()  # wakes deferred runs of the concurrency-1 workflow if a wake is missed
    pipe.worker(threads=2)
    wait_for(lambda: statuses(pipe, execution_ids).get("succeeded") == len(execution_ids),
             60, "every run to succeed", pipe.logs)
    assert_all_succeeded_once(pipe, execution_ids, 3)
    if concurrency > 1:
        # Runs finished in one batch share their commit's time.
        assert finish_times(pipe, execution_ids) < len(execution_ids) / 2


def test_runs_with_side_effects_in_a_burst_run_one_at_a_time(pipeline: Pipeline):
    pipe = pipeline
    pure = pure_chain(pipe, length=2)
    calls = pipe.workflow([pipe.hit("call", "/hit/burst")], concurrency=50, name="Calls")
    execution_ids = []
    for n in range(40):
        execution_ids.append(pipe.run(pure, {"n": n}))
        execution_ids.append(pipe.run(calls, {"n": n}))
    pipe.worker(threads=2)
    wait_for(lambda: statuses(pipe, execution_ids).get("succeeded") == len(execution_ids),
             60, "every run to succeed", pipe.logs)
    assert_all_succeeded_once(pipe, execution_ids[0::2], 2)
    for execution_id in execution_ids[1::2]:
        assert pipe.assert_once(execution_id).status == "succeeded"
    keys = pipe.sink.keys("/hit/burst")
    assert sorted(keys) == sorted(f"{e}:call:1" for e in execution_ids[1::2])
    assert set(keys.values()) == {1}


def test_a_worker_killed_in_the_middle_of_a_batch_loses_no_run(pipeline: Pipeline):
    pipe = pipeline
    execution_ids, doomed, caught = stopped_in_a_batch(pipe)
    doomed.kill()
    pipe.worker(threads=2)
    wait_for(lambda: statuses(pipe, execution_ids).get("succeeded") == len(execution_ids),
             90, "every run to succeed after the kill", pipe.logs)
    assert_all_succeeded_once(pipe, execution_ids, CHAIN)
    assert pipe.execution(caught).status == "succeeded"  # queued in the batch at the kill


def test_a_stopped_worker_finishing_a_batch_late_writes_nothing(pipeline: Pipeline):
    pipe = pipeline
    execution_ids, stale, _caught = stopped_in_a_batch(pipe)
    time.sleep(LEASE_S * 2)  # the leases pass; the clock hands the batch's runs on
    pipe.worker(threads=2)
    wait_for(lambda: statuses(pipe, execution_ids).get("succeeded") == len(execution_ids),
             90, "every run to succeed", pipe.logs)
    before = [_snapshot(pipe, e) for e in execution_ids]
    stale.signal(signal.SIGCONT)
    # Its batch's write finds its runs moved; or, its run in progress having outlived the
    # batch's budget while it was stopped, the run goes one at a time and finds nothing
    # left to claim.
    wait_for(lambda: "handed to another worker" in stale.log()
             or "takes longer than running in memory allows" in stale.log(), 20,
             "the stopped worker to notice its runs moved", pipe.logs)
    time.sleep(1.0)  # room for a wrong late write
    assert [_snapshot(pipe, e) for e in execution_ids] == before
    assert stale.alive()
    assert_all_succeeded_once(pipe, execution_ids, CHAIN)


def _snapshot(pipe: Pipeline, execution_id: str) -> tuple:
    run = pipe.execution(execution_id)
    return ((run.status, run.epoch, run.finished_at, run.result, run.updated_at),
            [(r.node_key, r.attempt, r.status, r.output, r.finished_at)
             for r in pipe.node_rows(execution_id)])


def stopped_in_a_batch(pipe: Pipeline) -> tuple[list[str], object, str]:
    """120 queued runs of a long pure chain, a clock and one single-thread worker, SIGSTOPped
    once some runs have finished, in the middle of a batch; also the id of a run of that
    batch, still queued."""
    workflow_id = pure_chain(pipe)
    execution_ids = [pipe.run(workflow_id, {"n": n}) for n in range(120)]
    pipe.clock()
    worker = pipe.worker(threads=1)
    wait_for(lambda: statuses(pipe, execution_ids).get("succeeded", 0) >= 10, 60,
             "some runs finished", pipe.logs)
    caught = stop_inside_a_batch(pipe, worker, workflow_id)
    return execution_ids, worker, caught


def stop_inside_a_batch(pipe: Pipeline, proc, workflow_id: str) -> str:
    """SIGSTOP ``proc`` (the only worker) between its batch's read and its write, and outside
    any statement; returns the id of a run of that batch. A batch holds its workflow's slot
    in Redis in the name of its first run from before the runs run until after their write:
    the worker is inside a batch when it holds the slot, and before the write while that run
    is still queued."""
    store = redis.Redis.from_url(pipe.env["REDIS_URL"])
    try:
        for _attempt in range(200):
            proc.signal(signal.SIGSTOP)
            time.sleep(0.05)  # a statement already sent finishes
            holders = [h.decode() for h in store.zrange(f"wflock:{workflow_id}", 0, -1)]
            with pipe.app.app_context(), db.engine.connect() as connection:
                busy = connection.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND state <> 'idle'")).scalar()
            if not busy and len(holders) == 1 and statuses(pipe, holders) == {"queued": 1}:
                return holders[0]
            proc.signal(signal.SIGCONT)
            time.sleep(0.02)
    finally:
        store.close()
    raise AssertionError("never found the worker inside a batch, before its write")
