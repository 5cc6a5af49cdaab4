"""The webhook intake's group commit, against the real database of each run mode: a batch
stores each delivery once (a repeat inside the batch too), a bad delivery fails alone, a
database outage is a 503 that stores nothing, and the stored runs are published."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.db import db
from app.models import Execution, TriggerEvent, Webhook
from app.services import intake
from tests.integration import webhook_signing as signing
from tests.integration.test_webhooks import BODY, Api, raw


@pytest.fixture
def api(client, auth):
    return Api(client, auth.register_api()["token"])


@pytest.fixture
def linked(api):
    """(webhook_id, user_id, [(workflow_id, node_id)]) of an active webhook workflow."""
    workflow_id = api.workflow()
    hook = db.session.scalars(select(Webhook)).one()
    db.session.commit()
    return hook.id, hook.user_id, [(uuid.UUID(workflow_id), "hook")]


def pending(linked, key: str, **changes) -> intake.Pending:
    webhook_id, user_id, links = linked
    fields = {"webhook_id": webhook_id, "user_id": user_id, "links": links,
              "payload": {"body": {"key": key}}, "dedupe_key": key, **changes}
    return intake.Pending(**fields)


def count(model) -> int:
    found = db.session.scalar(select(func.count()).select_from(model))
    db.session.commit()
    return found


def test_a_batch_stores_each_delivery_once_even_a_repeat_inside_it(app, linked):
    box = intake.Intake(app)
    first, repeat, other = (pending(linked, "a"), pending(linked, "a"),
                            pending(linked, "b"))
    with app.app_context():
        box._take([first, repeat, other])
    assert [p.outcome for p in (first, repeat, other)] == ["accepted", "replayed", "accepted"]
    assert all(p.error is None and p.done.is_set() for p in (first, repeat, other))
    assert count(TriggerEvent) == 2
    runs = db.session.execute(select(Execution.id, Execution.status, Execution.input,
                                     Execution.trigger_event_id)).all()
    db.session.commit()
    assert {r.trigger_event_id for r in runs} == {first.event_id, other.event_id}
    # queued when stored; the app's in-process workers may have taken them since
    assert {r.status for r in runs} <= {"queued", "running", "succeeded"}
    assert {r.id for r in runs} == {first.runs[0][0], other.runs[0][0]}
    assert repeat.runs == []


def test_a_bad_delivery_in_a_batch_fails_alone(app, linked):
    box = intake.Intake(app)
    good, bad, also_good = (pending(linked, "a"),
                            pending(linked, "b", webhook_id=uuid.uuid4()),  # no such webhook
                            pending(linked, "c"))
    with app.app_context():
        box._take([good, bad, also_good])
    assert isinstance(bad.error, IntegrityError) and bad.done.is_set()
    assert good.outcome == also_good.outcome == "accepted"
    assert count(TriggerEvent) == 2
    assert count(Execution) == 2


def test_a_deactivated_workflow_gets_no_event_and_no_run(app, api, linked):
    _hook_id, _user_id, links = linked
    assert api.post(f"/api/v1/workflows/{links[0][0]}/deactivate").status_code == 200
    box = intake.Intake(app)
    late = pending(linked, "a")  # read the cached config before the deactivation
    with app.app_context():
        box._take([late])
    assert late.outcome == "gone" and late.error is None
    assert count(TriggerEvent) == 0 and count(Execution) == 0


def test_a_delivery_gets_a_run_for_each_linked_workflow_still_active(app, api, linked):
    webhook_id, user_id, links = linked
    inactive = uuid.UUID(api.workflow(active=False))
    both = pending(linked, "a", links=[(inactive, "hook"), *links])
    alone = pending(linked, "b", links=[(inactive, "hook")])
    box = intake.Intake(app)
    with app.app_context():
        box._take([both, alone])
    assert (both.outcome, alone.outcome) == ("accepted", "gone")
    assert both.runs == [(both.run_ids[1], links[0][0])]
    runs = db.session.execute(select(Execution.id, Execution.workflow_id,
                                     Execution.trigger_event_id, Execution.input)).all()
    events = db.session.scalars(select(TriggerEvent)).all()
    db.session.commit()
    assert [(r.id, r.workflow_id, r.trigger_event_id, r.input) for r in runs] == [
        (both.run_ids[1], links[0][0], both.event_id, {"body": {"key": "a"}})]
    assert [(e.id, e.webhook_id, e.user_id, e.dedupe_key, e.payload) for e in events] == [
        (both.event_id, webhook_id, user_id, "a", {"body": {"key": "a"}})]


def test_the_thread_takes_everything_waiting_up_to_the_batch_limit(app, linked):
    box = intake.Intake(app, max_batch=3)
    for key in "abcde":
        box._waiting.append(pending(linked, key))
    assert [p.dedupe_key for p in box._next_batch()] == ["a", "b", "c"]
    assert [p.dedupe_key for p in box._next_batch()] == ["d", "e"]


def test_concurrent_deliveries_share_commits(app, client, api):
    """Forty deliveries arriving together are stored in fewer transactions than deliveries,
    each answered with its own event and run."""
    workflow_id = api.workflow()
    info = api.webhook(workflow_id)
    path = "/hooks/" + info["url"].rsplit("/", 1)[1]
    box = intake.intake_for(app)
    # Hold the intake thread on its first batch until everyone is waiting behind it.
    gate_open = threading.Event()
    real_store = box._store

    held: list[int] = []

    def gated_store(batch):
        held.append(len(batch))
        gate_open.wait(10)
        return real_store(batch)

    box._store = gated_store

    def post(i):
        data = raw({**BODY, "order_id": i})
        return client.post(path, data=data, headers={
            "Content-Type": "application/json", **signing.jobsprint(info["secret"], data)})

    with ThreadPoolExecutor(max_workers=40) as pool:
        futures = [pool.submit(post, i) for i in range(40)]
        deadline = time.monotonic() + 10
        while (len(box._waiting) + sum(held) < 40) and time.monotonic() < deadline:
            time.sleep(0.01)
        gate_open.set()
        answers = [f.result() for f in futures]
    assert [a.status_code for a in answers] == [202] * 40, answers[0].get_data(as_text=True)
    assert len({a.get_json()["execution_ids"][0] for a in answers}) == 40
    assert box.batches == 2  # the first batch, then all that queued behind it
    assert count(Execution) == 40


@pytest.mark.parametrize("mode", ["production"])
def test_a_database_outage_is_a_503_that_stores_nothing(app, client, api):
    workflow_id = api.workflow()
    info = api.webhook(workflow_id)
    path = "/hooks/" + info["url"].rsplit("/", 1)[1]
    url = db.engine.url
    with socket.socket() as probe:  # a port nobody listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    first = raw({**BODY, "order_id": 1})
    assert client.post(path, data=first, headers={  # the webhook's config is now cached
        "Content-Type": "application/json", **signing.jobsprint(info["secret"], first)}
        ).status_code == 202
    data = raw({**BODY, "order_id": 2})
    headers = {"Content-Type": "application/json", **signing.jobsprint(info["secret"], data)}
    db.configure(url.set(port=dead_port).render_as_string(hide_password=False))
    try:
        answer = client.post(path, data=data, headers=headers)
    finally:
        db.configure(url.render_as_string(hide_password=False))
    assert answer.status_code == 503, answer.get_data(as_text=True)
    assert answer.headers["Retry-After"] == "5"
    assert "database is unavailable" in answer.get_json()["error"]["message"]
    assert count(TriggerEvent) == 1
    again = client.post(path, data=data, headers=headers)  # the sender retries: stored once
    assert again.status_code == 202
    assert count(TriggerEvent) == 2
