"""app.services.run_batches against the real database (both modes): what a batch runs, what
it hands back untouched, and that a run moved while its batch ran (handed on by the reaper,
cancelled, finished by another worker) gets nothing written. The runs are queued with no
worker consuming them, and the test calls the batch handler itself, as the queue would."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import event, select, update

from app.db import db
from app.models import Execution, ExecutionNode
from app.services import run_batches, runs
from app.services.locks import WorkflowSlot


@pytest.fixture
def settings_overrides() -> dict:
    # Runs stay queued until the test hands them over; one test queues hundreds.
    return {"inline_workers": False, "api_rate_limit": "10000 per minute"}


@pytest.fixture
def api(client, auth):
    headers = {"Authorization": f"Bearer {auth.register_api()['token']}"}

    class Api:
        def workflow(self, nodes: list[dict], concurrency: int = 5) -> str:
            all_nodes = [{"id": "start", "type": "trigger.manual", "params": {}}, *nodes]
            response = client.post("/api/v1/workflows", headers=headers, json={
                "name": "Batch", "nodes": all_nodes, "settings": {"concurrency": concurrency},
                "connections": [{"from": a["id"], "to": b["id"]}
                                for a, b in zip(all_nodes, all_nodes[1:], strict=False)]})
            assert response.status_code == 201, response.get_json()
            return response.get_json()["id"]

        def run(self, workflow_id: str, n: int) -> str:
            response = client.post(f"/api/v1/workflows/{workflow_id}/run", headers=headers,
                                   json={"input": {"n": n}})
            assert response.status_code == 202, response.get_json()
            return response.get_json()["execution_id"]

    return Api()


DOUBLE = {"id": "double", "type": "logic.set", "params": {"fields": {"v": "{{ input.n * 2 }}"}}}
CALL = {"id": "call", "type": "http.request", "params": {"url": "http://127.0.0.1:9/never"}}


def run_row(app, execution_id: str) -> Execution:
    with app.app_context():
        row = db.session.get(Execution, uuid.UUID(execution_id))
        db.session.expunge_all()
        db.session.commit()
        return row


def node_keys(app, execution_id: str) -> list[str]:
    with app.app_context():
        keys = list(db.session.scalars(select(ExecutionNode.node_key).where(
            ExecutionNode.execution_id == uuid.UUID(execution_id))))
        db.session.commit()
        return sorted(keys)


def test_a_batch_runs_its_pure_first_deliveries_and_hands_back_the_rest(app, api):
    pure = api.workflow([DOUBLE])
    calls = api.workflow([CALL])
    pure_ids = [api.run(pure, n) for n in range(5)]
    call_ids = [api.run(calls, n) for n in range(2)]
    redelivered = api.run(pure, 99)
    with app.app_context():  # as if a worker had claimed it once and died
        db.session.execute(update(Execution).where(Execution.id == uuid.UUID(redelivered))
                           .values(deliveries=1))
        db.session.commit()
    unknown = str(uuid.uuid4())

    with app.app_context():
        left = run_batches.run_batch([*pure_ids, *call_ids, redelivered, unknown])

    assert sorted(left) == sorted([*call_ids, redelivered])
    for n, execution_id in enumerate(pure_ids):
        run = run_row(app, execution_id)
        assert (run.status, run.epoch, run.deliveries) == ("succeeded", 1, 1)
        assert run.result == {"n": n, "v": n * 2}
        assert run.finished_at is not None and run.lease_expires_at is None
        assert node_keys(app, execution_id) == ["double", "start"]
    for execution_id in [*call_ids, redelivered]:  # untouched: still queued, never claimed
        run = run_row(app, execution_id)
        assert (run.status, run.epoch) == ("queued", 0)
        assert node_keys(app, execution_id) == []
    # A finished run delivered again in a later batch is left alone.
    with app.app_context():
        assert run_batches.run_batch(pure_ids[:2]) == []
    assert run_row(app, pure_ids[0]).epoch == 1


def reaped_while_its_batch_runs(monkeypatch, victim: uuid.UUID) -> None:
    """Just before ``victim`` runs in its batch, the reaper decides its worker was gone: a new
    epoch, queued again."""
    execute = run_batches._execute

    def reaper_strikes(run):
        if run.id == victim:
            with db.engine.begin() as connection:
                connection.execute(update(Execution).where(Execution.id == victim).values(
                    status="queued", epoch=Execution.epoch + 1))
        return execute(run)

    monkeypatch.setattr(run_batches, "_execute", reaper_strikes)


def test_a_run_handed_on_while_its_batch_ran_writes_nothing(app, api, monkeypatch, caplog):
    pure = api.workflow([DOUBLE])
    ids = [api.run(pure, n) for n in range(4)]
    reaped_while_its_batch_runs(monkeypatch, uuid.UUID(ids[1]))
    with app.app_context():
        assert run_batches.run_batch(ids) == []

    fenced = run_row(app, ids[1])
    assert (fenced.status, fenced.epoch, fenced.result) == ("queued", 1, None)
    assert node_keys(app, ids[1]) == []
    for n in (0, 2, 3):
        assert run_row(app, ids[n]).status == "succeeded"
        assert node_keys(app, ids[n]) == ["double", "start"]
    assert "1 runs of the batch were handed to another worker" in caplog.text


def test_a_run_cancelled_or_finished_elsewhere_while_its_batch_ran_is_left_as_it_is(
        app, api, client, auth, monkeypatch):
    pure = api.workflow([DOUBLE])
    ids = [api.run(pure, n) for n in range(3)]
    cancelled, elsewhere = uuid.UUID(ids[0]), uuid.UUID(ids[1])
    execute = run_batches._execute
    struck: set[uuid.UUID] = set()

    def meanwhile(run):
        if run.id not in struck:
            struck.add(run.id)
            if run.id == cancelled:  # the owner cancels it while it is still queued
                with db.engine.begin() as connection:
                    connection.execute(update(Execution).where(Execution.id == cancelled)
                                       .values(status="cancelled", epoch=Execution.epoch + 1))
            if run.id == elsewhere:  # a duplicate delivery: another worker's batch wins
                with app.app_context():
                    assert run_batches.run_batch([ids[1]]) == []
        return execute(run)

    monkeypatch.setattr(run_batches, "_execute", meanwhile)
    with app.app_context():
        assert run_batches.run_batch(ids) == []
    assert (run_row(app, ids[0]).status, node_keys(app, ids[0])) == ("cancelled", [])
    other = run_row(app, ids[1])
    assert (other.status, other.epoch, other.deliveries) == ("succeeded", 1, 1)
    assert node_keys(app, ids[1]) == ["double", "start"]  # written once, by the winner
    assert run_row(app, ids[2]).status == "succeeded"


def test_a_pure_run_longer_than_a_batch_allows_is_handed_back_with_nothing_written(
        app, api, monkeypatch):
    pure = api.workflow([DOUBLE, {**DOUBLE, "id": "again"}])
    ids = [api.run(pure, n) for n in range(2)]
    monkeypatch.setattr(runs, "FLUSH_INTERVAL_S", 0.0)  # every run is past its budget
    with app.app_context():
        assert sorted(run_batches.run_batch(ids)) == sorted(ids)
    for execution_id in ids:
        run = run_row(app, execution_id)
        assert (run.status, run.epoch, run.deliveries, run.started_at) == ("queued", 0, 0, None)
        assert node_keys(app, execution_id) == []
    with app.app_context():  # as the queue then does: one at a time, claimed
        for execution_id in ids:
            runs.run_execution(execution_id)
    assert [run_row(app, execution_id).status for execution_id in ids] == ["succeeded"] * 2
    assert node_keys(app, ids[0]) == ["again", "double", "start"]


def test_a_slot_held_in_the_name_of_a_run_another_worker_took_is_left_to_it(
        app, api, monkeypatch):
    single = api.workflow([DOUBLE], concurrency=1)
    ids = [api.run(single, n) for n in range(2)]
    taken = uuid.UUID(ids[0])  # the batch's first run: its slot is held in this run's name
    execute = run_batches._execute

    def another_worker_takes_it(run):
        if run.id == taken:  # the reaper handed it on, and another worker claimed it
            with db.engine.begin() as connection:
                connection.execute(update(Execution).where(Execution.id == taken).values(
                    status="running", epoch=Execution.epoch + 1))
            assert WorkflowSlot(runs.store(), single, 1, holder=str(taken)).acquire()
        return execute(run)

    monkeypatch.setattr(run_batches, "_execute", another_worker_takes_it)
    with app.app_context():
        assert run_batches.run_batch(ids) == []
        # Freeing it would let a second run of this concurrency-1 workflow start meanwhile.
        assert runs.store().zscore(f"wflock:{single}", str(taken)) is not None
    assert run_row(app, ids[0]).status == "running"  # nothing written by the batch
    assert run_row(app, ids[1]).status == "succeeded"


def test_a_slot_held_in_the_name_of_a_run_handed_back_to_the_queue_is_freed(
        app, api, monkeypatch):
    """The batch's first run is reaped while the batch runs (queued again, a new epoch) and
    nobody has taken it yet: the batch frees the slot it holds in that run's name, or the
    concurrency-1 workflow would stall until the hold expired (5 min), every later batch
    finding its slot taken unless that run happened to come first."""
    single = api.workflow([DOUBLE], concurrency=1)
    ids = [api.run(single, n) for n in range(2)]
    reaped_while_its_batch_runs(monkeypatch, uuid.UUID(ids[0]))
    with app.app_context():
        assert run_batches.run_batch(ids) == []
        assert runs.store().zcard(f"wflock:{single}") == 0
    assert run_row(app, ids[0]).status == "queued"  # for the queue to run again
    assert run_row(app, ids[1]).status == "succeeded"


def test_a_pure_run_that_would_wait_to_retry_is_handed_back_and_never_sleeps(app, api):
    flaky = {"id": "flaky", "type": "logic.set", "retry": {"max": 2, "backoff_s": 0.05},
             "params": {"fields": {"v": "{{ input.n // 0 }}"}}}
    retrying = api.workflow([flaky])
    quick = api.workflow([DOUBLE])
    ids = [api.run(retrying, 1), api.run(quick, 2)]
    with app.app_context():
        assert run_batches.run_batch(ids) == [ids[0]]  # to run claimed, where it may wait
    run = run_row(app, ids[0])
    assert (run.status, run.epoch, run.deliveries) == ("queued", 0, 0)
    assert node_keys(app, ids[0]) == []
    assert run_row(app, ids[1]).status == "succeeded"


def test_a_batch_takes_one_slot_per_workflow_and_defers_runs_whose_slot_is_taken(app, api):
    single = api.workflow([DOUBLE], concurrency=1)
    ids = [api.run(single, n) for n in range(3)]
    with app.app_context():
        other = WorkflowSlot(runs.store(), single, 1, holder="another worker's run")
        assert other.acquire()
        assert run_batches.run_batch(ids) == []
    for execution_id in ids:  # given back, due after the deferral, as one run would be
        run = run_row(app, execution_id)
        assert (run.status, run.deliveries, run.started_at) == ("queued", 0, None)
        assert run.lease_expires_at is not None
    with app.app_context():
        other.release()
        # The batch runs its runs one at a time under one slot: a concurrency of 1 holds.
        assert run_batches.run_batch(ids) == []
        assert runs.store().zcard(f"wflock:{single}") == 0  # released after the batch
    assert [run_row(app, execution_id).status for execution_id in ids] == ["succeeded"] * 3


@pytest.mark.parametrize("mode", ["production"], indirect=True)
def test_a_batch_of_a_few_runs_reads_only_their_rows_however_many_are_queued(app, api):
    """The batch reaches its rows by id, whatever PostgreSQL's statistics say: in a table not
    yet analyzed a former claim took the (status, lease) index and read every queued row once
    per queued row (~9 buffers per queued run). Counted in buffers, which timing does not
    sway: the batch's read and write, explained again (in a transaction rolled back) for runs
    still queued among 300."""
    pure = api.workflow([DOUBLE], concurrency=50)
    ids = [api.run(pure, n) for n in range(300)]
    ran: list[tuple[str, dict]] = []

    def record(_conn, _cursor, statement, parameters, _context, _many):
        ran.append((statement, parameters))

    with app.app_context():
        event.listen(db.engine, "before_cursor_execute", record)
        try:
            assert run_batches.run_batch(ids[:2]) == []
        finally:
            event.remove(db.engine, "before_cursor_execute", record)
        # The read and the write: the statements given the runs' ids (one by one, or as an
        # array).
        first = uuid.UUID(ids[0])
        claim = [(sql, params) for sql, params in ran if isinstance(params, dict) and any(
            value == first or (isinstance(value, list) and first in value)
            for value in params.values())]
        assert len(claim) == 2, [sql for sql, _ in ran]
        others = {uuid.UUID(ids[0]): uuid.UUID(ids[100]), uuid.UUID(ids[1]): uuid.UUID(ids[101])}

        def swap(value):
            if isinstance(value, list):
                return [others.get(item, item) if isinstance(item, uuid.UUID) else item
                        for item in value]
            return others.get(value, value) if isinstance(value, uuid.UUID) else value

        buffers = 0
        with db.engine.connect() as connection:
            for sql, params in claim:
                params = {key: swap(value) for key, value in params.items()}
                if "n_id" in params:  # the write's node rows: new ones
                    params["n_id"] = [uuid.uuid4() for _ in params["n_id"]]
                plan = connection.exec_driver_sql(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params).scalar()
                plan = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
                buffers += plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]
            connection.rollback()
    assert [run_row(app, execution_id).status for execution_id in ids[:2]] == ["succeeded"] * 2
    assert buffers < 100, buffers
