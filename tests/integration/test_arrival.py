"""A webhook delivery's pure run runs on arrival (app.services.arrival), against the real
services of each run mode: the intake takes the slots of its batch's runs, stores them
finished with their node rows and publishes their events, whether the sender waits for the
run or not; whatever cannot finish there (side effects, a newer version, a taken slot, a run
too heavy or too late) is stored queued and a worker runs it; an outage stores nothing and
frees the slot; and the slots' script survives Redis losing it."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import fakeredis
import pytest
import redis
from sqlalchemy import func, select
from werkzeug.datastructures import Headers

from app.db import db
from app.live.hub import Subscriber, hub_for
from app.models import Execution, ExecutionNode, TriggerEvent, Workflow
from app.services import arrival, executions, in_memory, intake, runs, webhooks
from app.services.locks import _ACQUIRE_SCRIPT, WorkflowSlot, acquire_all
from tests.integration import webhook_signing as signing
from tests.integration.test_live import PrivateRedis
from tests.integration.test_webhooks import BODY, Api, definition, deliver, raw, signed

RESULT = {"total": 25.0, "email": "a@b.com"}  # what definition()'s "calc" makes of BODY
WHEN_FINISHED = {"respond": "when_finished", "timeout_s": 15}


@pytest.fixture
def api(client, auth):
    return Api(client, auth.register_api()["token"])


@pytest.fixture
def published(monkeypatch) -> list[str]:
    """The ids of every run handed to the queue (it still gets them)."""
    seen: list[str] = []
    publish = executions.publish

    def record(execution_ids):
        seen.extend(str(i) for i in execution_ids)
        publish(execution_ids)

    monkeypatch.setattr(executions, "publish", record)
    return seen


@pytest.fixture
def tried(monkeypatch) -> list[tuple[str, bool, int]]:
    """Each delivery as the intake is about to store it: its first run's id, whether that
    run ran on arrival, and the members of the slot set of its workflow."""
    seen: list[tuple[str, bool, int]] = []
    store = intake.Intake._store

    def record(self, batch):
        for pending in batch:
            run_id, (workflow_id, _node) = pending.run_ids[0], pending.links[0]
            seen.append((str(run_id), run_id in pending.arrived,
                         runs.store().zcard(f"wflock:{workflow_id}")))
        return store(self, batch)

    monkeypatch.setattr(intake.Intake, "_store", record)
    return seen


def hooked(api, body=None) -> tuple[str, str, str]:
    """An active workflow behind a webhook: (workflow_id, path, secret)."""
    workflow_id = api.workflow(body or definition(WHEN_FINISHED))
    info = api.webhook(workflow_id)
    return workflow_id, "/hooks/" + info["url"].rsplit("/", 1)[1], info["secret"]


def run_row(execution_id: str) -> Execution:
    row = db.session.get(Execution, uuid.UUID(execution_id))
    db.session.expunge_all()
    db.session.commit()
    return row


def node_rows(execution_id: str) -> list[tuple[str, int, str]]:
    rows = db.session.execute(
        select(ExecutionNode.node_key, ExecutionNode.attempt, ExecutionNode.status)
        .where(ExecutionNode.execution_id == uuid.UUID(execution_id))
        .order_by(ExecutionNode.node_key)).all()
    db.session.commit()
    return [tuple(row) for row in rows]


def active_version(workflow_id: str) -> int:
    version = db.session.scalar(select(Workflow.version)
                                .where(Workflow.id == uuid.UUID(workflow_id)))
    db.session.commit()
    return version


def count(model) -> int:
    found = db.session.scalar(select(func.count()).select_from(model))
    db.session.commit()
    return found


def slot_members(app, workflow_id: str) -> int:
    return app.extensions["jobsprint.store"].zcard(f"wflock:{workflow_id}")


def eventually(check, timeout: float = 10.0) -> None:
    """Wait until ``check()`` holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# --- run on arrival -----------------------------------------------------------------------

def test_a_pure_run_is_answered_and_stored_finished_by_the_intake_without_the_queue(
        app, api, client, published, tried):
    workflow_id, path, secret = hooked(api)
    answer = signed(client, path, secret)
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json() == RESULT
    assert answer.headers["X-Jobsprint-Run-Status"] == "succeeded"
    run_id = answer.headers["X-Jobsprint-Execution-Id"]
    assert tried == [(run_id, True, 1)]  # it ran holding its workflow's slot

    run = run_row(run_id)
    assert (run.status, run.result, run.error) == ("succeeded", RESULT, None)
    assert (run.deliveries, run.epoch, run.lease_expires_at) == (0, 0, None)
    assert run.started_at is not None and run.finished_at >= run.started_at
    assert run.workflow_version == active_version(workflow_id)
    assert str(run.trigger_event_id) == answer.headers["X-Jobsprint-Event-Id"]
    assert count(TriggerEvent) == 1
    assert node_rows(run_id) == [("calc", 1, "succeeded"), ("hook", 1, "succeeded")]
    assert run_id not in published
    assert slot_members(app, workflow_id) == 0


def test_a_pure_run_whose_sender_does_not_wait_is_stored_finished_before_the_202(
        app, api, client, published, tried):
    workflow_id, path, secret = hooked(api, definition())  # respond: immediately
    answer = signed(client, path, secret)
    assert answer.status_code == 202, answer.get_json()
    (run_id,) = answer.get_json()["execution_ids"]
    assert tried == [(run_id, True, 1)]
    run = run_row(run_id)  # read at once: finished by the statement that stored the event
    assert (run.status, run.result, run.deliveries) == ("succeeded", RESULT, 0)
    assert run.workflow_version == active_version(workflow_id)
    assert node_rows(run_id) == [("calc", 1, "succeeded"), ("hook", 1, "succeeded")]
    assert run_id not in published
    assert slot_members(app, workflow_id) == 0


def test_the_intake_takes_its_batchs_slots_in_order_and_a_run_without_one_goes_queued(
        app, api, client):
    """Two runs on arrival of a concurrency-1 workflow in one batch: the first gets the
    slot, the second is forgotten (its delivery stores it queued)."""
    workflow_id, path, secret = hooked(api)
    with app.app_context():
        hook = webhooks.lookup(path.rsplit("/", 1)[1])
        batch = []
        for order_id in (1, 2):
            data = raw({**BODY, "order_id": order_id})
            headers = Headers({"Content-Type": "application/json",
                               **signing.jobsprint(secret, data)})
            pending = webhooks.check(hook, data, headers, {})
            assert webhooks.try_on_arrival(hook, pending)
            batch.append(pending)
        arrival.hold(batch)
        assert [set(p.arrived) for p in batch] == [{batch[0].run_ids[0]}, set()]
        assert slot_members(app, workflow_id) == 1
        arrival.release(arrival.slots_of(batch))
        assert slot_members(app, workflow_id) == 0


def test_a_run_on_arrival_publishes_queued_running_each_node_then_its_final_state(
        app, api, client):
    workflow_id, path, secret = hooked(api)
    user_id = db.session.get(Workflow, uuid.UUID(workflow_id)).user_id
    db.session.commit()
    hub = hub_for(app)
    listener = Subscriber(user_id)
    assert hub.register(listener)
    try:
        answer = signed(client, path, secret)
        assert answer.status_code == 200, answer.get_json()
        run_id = answer.headers["X-Jobsprint-Execution-Id"]
        heard: list[dict] = []
        deadline = time.monotonic() + 5
        while not any(e["type"] == "run" and e["status"] == "succeeded" for e in heard):
            assert time.monotonic() < deadline, f"timed out; heard {heard}"
            heard += [event.data for event in listener.wait(0.5)[0]]
    finally:
        hub.unregister(listener)
    assert {e["execution_id"] for e in heard} == {run_id}
    assert [(e["type"], e.get("node_id"), e["status"]) for e in heard] == [
        ("run", None, "queued"), ("run", None, "running"), ("node", "hook", "succeeded"),
        ("node", "calc", "succeeded"), ("run", None, "succeeded")]
    assert heard[-1]["outcome"] == {"result": RESULT, "error": None}


def test_a_replay_of_a_run_on_arrival_answers_with_the_first_runs_result(
        app, api, client, published, tried):
    workflow_id, path, secret = hooked(api)
    data = raw(BODY)
    headers = signing.jobsprint(secret, data)
    first = deliver(client, path, data, headers)
    again = deliver(client, path, data, headers)
    assert first.status_code == again.status_code == 200, again.get_json()
    assert again.get_json() == first.get_json() == RESULT
    run_id = first.headers["X-Jobsprint-Execution-Id"]
    assert again.headers["X-Jobsprint-Execution-Id"] == run_id
    # the replay ran in memory too, holding the slot, before the store found the event
    assert [(ran, members) for _run, ran, members in tried] == [(True, 1), (True, 1)]
    assert count(Execution) == count(TriggerEvent) == 1
    assert run_id not in published
    assert slot_members(app, workflow_id) == 0


# --- what goes through the queue instead --------------------------------------------------

def test_a_workflow_with_a_node_with_side_effects_is_stored_queued_and_answered_from_a_worker(
        app, api, client, published, tried):
    workflow_id, path, secret = hooked(api, definition(WHEN_FINISHED, wait_s=0))
    answer = signed(client, path, secret)
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json() == RESULT
    run_id = answer.headers["X-Jobsprint-Execution-Id"]
    assert tried == [(run_id, False, 0)]  # never tried: no slot taken
    assert run_id in published
    run = run_row(run_id)
    assert run.status == "succeeded" and run.deliveries >= 1  # a worker claimed it
    assert [key for key, _attempt, _status in node_rows(run_id)] == ["calc", "hook", "pause"]
    eventually(lambda: slot_members(app, workflow_id) == 0)


def test_a_workflow_saved_again_before_the_store_has_its_run_stored_queued_on_the_new_version(
        app, api, client, published, tried, monkeypatch):
    workflow_id, path, secret = hooked(api)
    version = active_version(workflow_id)
    tripled = definition(WHEN_FINISHED)
    tripled["nodes"][1]["params"]["fields"]["total"] = "{{ input.body.amount * 3 }}"
    saved = []
    store = intake.Intake._store  # the ``tried`` recorder, which stores

    def saved_then_stored(self, batch):
        saver = threading.Thread(target=lambda: saved.append(
            api.put(f"/api/v1/workflows/{workflow_id}", tripled)))
        saver.start()
        saver.join(10)
        return store(self, batch)

    monkeypatch.setattr(intake.Intake, "_store", saved_then_stored)
    answer = signed(client, path, secret)
    assert [response.status_code for response in saved] == [200]
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json() == {"total": 37.5, "email": "a@b.com"}
    run_id = answer.headers["X-Jobsprint-Execution-Id"]
    assert tried == [(run_id, True, 1)]  # the old version ran on arrival
    assert run_id in published
    run = run_row(run_id)
    assert run.workflow_version == active_version(workflow_id) == version + 1
    assert run.deliveries >= 1
    eventually(lambda: slot_members(app, workflow_id) == 0)


def test_a_run_whose_slot_is_taken_is_stored_queued_and_finishes_once_the_slot_frees(
        app, api, client, published, tried, monkeypatch):
    monkeypatch.setattr(runs, "DEFER", timedelta(seconds=1))  # the worker's retry, sooner
    workflow_id, path, secret = hooked(api, definition(WHEN_FINISHED, concurrency=1))
    store = app.extensions["jobsprint.store"]
    foreign = WorkflowSlot(store, workflow_id, 1, holder="another-run")
    assert foreign.acquire()
    with ThreadPoolExecutor(max_workers=1) as pool:
        answering = pool.submit(signed, client, path, secret)
        # a worker found the slot taken and put the run off
        eventually(lambda: store.exists(runs.deferred_marker(uuid.UUID(workflow_id))))
        run_id = str(db.session.scalar(select(Execution.id)))
        db.session.commit()
        assert tried == [(run_id, False, 1)]
        assert run_row(run_id).status == "queued" and node_rows(run_id) == []
        assert run_id in published
        foreign.release()
        answer = answering.result(timeout=15)
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json() == RESULT
    assert answer.headers["X-Jobsprint-Execution-Id"] == run_id
    assert run_row(run_id).deliveries >= 1
    eventually(lambda: slot_members(app, workflow_id) == 0)


@pytest.fixture
def arrival_runs(monkeypatch) -> list[uuid.UUID]:
    """The ids of the runs tried on arrival (not a worker's batch)."""
    seen: list[uuid.UUID] = []
    run = in_memory.run

    def record(recorder, *args, **kwargs):
        if recorder.budget_s is not None:  # a run on arrival, not a worker's batch
            seen.append(recorder.execution_id)
        return run(recorder, *args, **kwargs)

    monkeypatch.setattr(in_memory, "run", record)
    return seen


def test_a_pure_run_still_going_at_the_wall_limit_is_stored_queued_and_tried_again_next_time(
        app, api, client, published, tried, arrival_runs, monkeypatch):
    """A run that waited long for its turn at the interpreter (here: every run) is not too
    heavy: it goes to the queue, and the next delivery is tried on arrival again."""
    monkeypatch.setattr(arrival, "WALL_LIMIT_S", 0.0)
    monkeypatch.setattr(arrival, "_skip", {})
    workflow_id, path, secret = hooked(api)
    for order_id in (1, 2):
        data = raw({**BODY, "order_id": order_id})
        answer = deliver(client, path, data, signing.jobsprint(secret, data))
        assert answer.status_code == 200, answer.get_json()
        assert answer.get_json() == RESULT
        run_id = answer.headers["X-Jobsprint-Execution-Id"]
        assert tried[-1] == (run_id, False, 0)  # given up before the store: no slot taken
        assert run_id in published
        assert run_row(run_id).deliveries >= 1
    assert len(arrival_runs) == 2
    eventually(lambda: slot_members(app, workflow_id) == 0)


def test_a_pure_run_that_asks_for_a_write_in_memory_is_stored_queued_and_still_answered(
        app, api, client, published, tried, monkeypatch):
    monkeypatch.setattr(runs, "FLUSH_INTERVAL_S", 0.0)  # every run asks to write at once
    workflow_id, path, secret = hooked(api)
    answer = signed(client, path, secret)
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json() == RESULT
    run_id = answer.headers["X-Jobsprint-Execution-Id"]
    assert tried == [(run_id, False, 0)]
    assert run_id in published
    assert run_row(run_id).deliveries >= 1
    eventually(lambda: slot_members(app, workflow_id) == 0)


def test_a_run_past_its_budget_on_arrival_runs_in_full_on_a_worker_and_is_not_tried_again(
        app, api, client, published, tried, arrival_runs, monkeypatch):
    """A run on arrival that spends more than its budget of CPU time is thrown away and runs
    in full on a worker. The workflow version is then not tried on arrival for a while."""
    monkeypatch.setattr(arrival, "BUDGET_S", 0.01)
    monkeypatch.setattr(arrival, "_skip", {})
    slow = definition(WHEN_FINISHED)
    # ~30 ms of template: over the budget on arrival, well within a worker's second
    slow["nodes"][1]["params"]["fields"]["spin"] = "{% for i in range(100000) %}{% endfor %}"
    workflow_id, path, secret = hooked(api, slow)
    first = signed(client, path, secret)
    assert first.status_code == 200, first.get_json()
    assert first.get_json() == {**RESULT, "spin": ""}  # the worker's run's result
    run_id = first.headers["X-Jobsprint-Execution-Id"]
    assert [str(i) for i in arrival_runs] == [run_id]
    assert tried == [(run_id, False, 0)]
    assert run_id in published
    assert run_row(run_id).status == "succeeded"
    data = raw({**BODY, "order_id": 2})
    second = deliver(client, path, data, signing.jobsprint(secret, data))
    assert second.status_code == 200 and second.get_json() == {**RESULT, "spin": ""}
    assert len(arrival_runs) == 1  # not tried again
    assert second.headers["X-Jobsprint-Execution-Id"] in published


# --- faults -------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["production"])
def test_a_database_outage_while_storing_a_run_on_arrival_is_a_503_and_frees_the_slot(
        app, api, client, tried):
    workflow_id, path, secret = hooked(api)
    # the webhook's config and the workflow's graph are now kept by the process
    assert signed(client, path, secret).status_code == 200
    url = db.engine.url
    with socket.socket() as probe:  # a port nobody listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    data = raw({**BODY, "order_id": 2})
    headers = signing.jobsprint(secret, data)
    db.configure(url.set(port=dead_port).render_as_string(hide_password=False))
    try:
        answer = deliver(client, path, data, headers)
    finally:
        db.configure(url.render_as_string(hide_password=False))
    assert answer.status_code == 503, answer.get_data(as_text=True)
    assert "database is unavailable" in answer.get_json()["error"]["message"]
    assert [(ran, members) for _run, ran, members in tried] == [(True, 1), (True, 1)]
    assert count(TriggerEvent) == count(Execution) == 1
    assert slot_members(app, workflow_id) == 0
    again = deliver(client, path, data, headers)  # the sender retries: it runs then
    assert again.status_code == 200 and again.get_json() == RESULT
    assert count(TriggerEvent) == count(Execution) == 2


def test_a_store_that_fails_unexpectedly_frees_the_slots_of_its_runs_on_arrival(
        app, api, client, monkeypatch, caplog):
    """Not a database error (those are answered above): a fault in the intake itself. The
    delivery fails, nothing is stored, and the slot does not wait out its TTL."""
    workflow_id, path, secret = hooked(api)

    def broken(self, batch):
        raise RuntimeError("a bug in the intake")

    monkeypatch.setattr(intake.Intake, "_store", broken)
    answer = signed(client, path, secret)
    assert answer.status_code == 500
    assert "a bug in the intake" not in answer.get_data(as_text=True)
    assert "webhook intake failed on a batch of 1" in caplog.text
    assert count(TriggerEvent) == count(Execution) == 0
    assert slot_members(app, workflow_id) == 0


@pytest.fixture
def scripted_store(mode, tmp_path):
    """The store of ``mode`` to flush scripts on: in production mode a redis-server of the
    test's own (SCRIPT FLUSH empties a whole server, and others use the shared one)."""
    if mode == "embedded":
        yield fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
        return
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield redis.Redis(port=server.port, decode_responses=True)
    finally:
        server.kill()


def test_slots_are_still_taken_after_the_store_lost_its_scripts(scripted_store):
    """Alone (one call) and several in one round trip (a pipeline)."""
    store = scripted_store
    store.script_flush()
    assert store.script_exists(_ACQUIRE_SCRIPT.sha) == [False]
    assert WorkflowSlot(store, "full", 1, holder="earlier").acquire()
    store.script_flush()
    free, full = (WorkflowSlot(store, "free", 1, holder="run-1"),
                  WorkflowSlot(store, "full", 1, holder="run-2"))
    assert acquire_all(store, [free, full]) == [True, False]
    assert store.script_exists(_ACQUIRE_SCRIPT.sha) == [True]
    assert store.zrange("wflock:free", 0, -1) == ["run-1"]
    assert store.zrange("wflock:full", 0, -1) == ["earlier"]


def test_a_hold_taken_back_by_its_runs_new_holder_is_renewed_and_freed_by_it_alone(
        scripted_store):
    """A run handed on to another worker takes its own hold back; its former holder, late,
    neither frees it nor renews it away from the new one (whose release would then miss it:
    a concurrency-1 workflow stalled until the hold expired)."""
    store = scripted_store
    first, second, third = (WorkflowSlot(store, "handed-on", 1, holder="run-x")
                            for _ in range(3))
    assert first.acquire()
    time.sleep(0.01)
    assert second.acquire()  # its own member: taken back, with its own expiry
    first.release()  # late
    assert store.zrange("wflock:handed-on", 0, -1) == ["run-x"]
    time.sleep(0.01)
    assert third.acquire()  # handed on again
    assert not second.renew()  # late: renews nothing, and knows it holds nothing
    assert third.renew()
    third.release()
    assert store.zcard("wflock:handed-on") == 0
    assert WorkflowSlot(store, "handed-on", 1, holder="run-y").acquire()
