"""A web process killed for real while it runs webhook deliveries on arrival.

A delivery whose trigger answers ``when_finished`` and whose workflow is pure has its run run
in memory by the web process that received it, and stored finished with the trigger event in
one statement (app.services.arrival). The claim: a web process SIGKILLed at any instant loses
no delivery it answered, and a sender that sends again (same bytes, same signature headers)
what got no answer ends with one trigger event and one succeeded run per delivery, each
node's row once — whether the dead process had stored the delivery (the resend is a replay)
or not (the resend is the first delivery again).

Real processes (gunicorn as the Procfile starts it, a worker, the clock) against the real
services; the web process is killed twice, with a new one started after each kill.
"""

from __future__ import annotations

import http.client
import json
import queue
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
import redis
from sqlalchemy import func, select

from app.db import db
from app.models import Execution, ExecutionNode, TriggerEvent
from app.services import arrival
from tests.integration import webhook_signing as signing
from tests.integration.pipeline.conftest import Pipeline, Proc, wait_for

DELIVERIES = 300
SENDERS = 10
KILL_AFTER = 100  # answers
NODE_ROWS = [("calc", 1, "succeeded"), ("hook", 1, "succeeded")]


def orders_workflow(pipe: Pipeline) -> str:
    """trigger.webhook (respond when finished) → logic.set, active; returns its id."""
    created = pipe.api("POST", "/api/v1/workflows", {
        "name": "Orders",
        "nodes": [{"id": "hook", "type": "trigger.webhook",
                   "params": {"respond": "when_finished", "timeout_s": 10}},
                  {"id": "calc", "type": "logic.set",
                   "params": {"keep": "set_only",
                              "fields": {"total": "{{ input.body.amount * 2 }}",
                                         "email": "{{ input.body.email | lower }}"}}}],
        "connections": [{"from": "hook", "to": "calc"}],
        # More slots than the runs in flight and those the kills leave taken: a killed
        # process's holds stay until they expire (``arrival.SLOT_TTL_S``, checked by
        # ``kill``), and this test is about what is stored, not about waiting for a slot.
        "settings": {"concurrency": 50}})
    assert created.status_code == 201, created.get_json()
    workflow_id = created.get_json()["id"]
    activated = pipe.api("POST", f"/api/v1/workflows/{workflow_id}/activate")
    assert activated.status_code == 200, activated.get_json()
    return workflow_id


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: object


@dataclass
class Delivery:
    order_id: int
    body: bytes
    headers: dict[str, str]
    answers: list[Answer] = field(default_factory=list)
    lost: list[float] = field(default_factory=list)  # when each try that got no answer began

    @classmethod
    def signed(cls, order_id: int, secret: str) -> Delivery:
        body = json.dumps({"order_id": order_id, "amount": order_id + 0.25,
                           "email": f"Buyer{order_id}@Example.COM"}).encode()
        return cls(order_id, body,
                   {"Content-Type": "application/json", **signing.jobsprint(secret, body)})

    @property
    def expected(self) -> dict:
        return {"total": 2 * self.order_id + 0.5, "email": f"buyer{self.order_id}@example.com"}


def post(url: str, delivery: Delivery) -> str:
    """Send ``delivery`` on a connection of its own: "answered", "lost" (it reached the
    server and got no answer) or "refused" (no server listening)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        try:
            connection.connect()
        except ConnectionRefusedError:
            return "refused"
        began = time.monotonic()
        try:
            connection.request("POST", parts.path, body=delivery.body, headers=delivery.headers)
            response = connection.getresponse()
            body = response.read()
        except (http.client.HTTPException, OSError):
            delivery.lost.append(began)
            return "lost"
    finally:
        connection.close()
    delivery.answers.append(Answer(response.status, dict(response.getheaders()),
                                   json.loads(body)))
    return "answered"


class Senders:
    """``SENDERS`` threads sending each of ``deliveries`` once, counting live what became of
    them."""

    def __init__(self, url: str, deliveries: list[Delivery]) -> None:
        self.url = url
        self.began = time.monotonic()
        self.todo: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
        for delivery in deliveries:
            self.todo.put(delivery)
        self.outcomes: Counter = Counter()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._send, name=f"sender-{n}")
                        for n in range(SENDERS)]
        for thread in self.threads:
            thread.start()

    def _send(self) -> None:
        while True:
            try:
                delivery = self.todo.get_nowait()
            except queue.Empty:
                return
            outcome = post(self.url, delivery)
            with self.lock:
                self.outcomes[outcome] += 1

    def answered(self) -> int:
        with self.lock:
            return self.outcomes["answered"]

    def join(self) -> Counter:
        for thread in self.threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in self.threads), "a sender is stuck"
        return self.outcomes


@dataclass
class Stored:
    events: list  # (id, dedupe_key, order_id)
    runs: list  # (id, trigger_event_id, status, result, epoch, order_id)
    nodes: dict[uuid.UUID, list[tuple[str, int, str]]]


def stored(pipe: Pipeline) -> Stored:
    with pipe.app.app_context():
        events = db.session.execute(select(
            TriggerEvent.id, TriggerEvent.dedupe_key,
            TriggerEvent.payload["body"]["order_id"].as_integer().label("order_id"))).all()
        runs = db.session.execute(select(
            Execution.id, Execution.trigger_event_id, Execution.status, Execution.result,
            Execution.epoch,
            Execution.input["body"]["order_id"].as_integer().label("order_id"))).all()
        nodes = defaultdict(list)
        for execution_id, *row in db.session.execute(select(
                ExecutionNode.execution_id, ExecutionNode.node_key, ExecutionNode.attempt,
                ExecutionNode.status)):
            nodes[execution_id].append(tuple(row))
        db.session.commit()
    return Stored(events, runs, nodes)


def assert_answer_is_the_run(delivery: Delivery, answer: Answer, event_id: uuid.UUID,
                             run_id: uuid.UUID) -> None:
    assert answer.status == 200, (delivery.order_id, answer)
    assert answer.headers["X-Jobsprint-Run-Status"] == "succeeded", answer
    assert answer.headers["X-Jobsprint-Execution-Id"] == str(run_id), answer
    assert answer.headers["X-Jobsprint-Event-Id"] == str(event_id), answer
    assert answer.body == delivery.expected, answer


def events_stored(pipe: Pipeline) -> int:
    with pipe.app.app_context():
        count = db.session.scalar(select(func.count()).select_from(TriggerEvent))
        db.session.commit()
    return count


def slot_holds_expire_soon(pipe: Pipeline, workflow_id: str) -> None:
    """The holds a killed web process left on the workflow's slots expire within
    ``arrival.SLOT_TTL_S`` (not a worker's 5 minutes): a concurrency-1 workflow would
    otherwise stall that long."""
    store = redis.Redis.from_url(pipe.env["REDIS_URL"])
    try:
        holds = store.zrange(f"wflock:{workflow_id}", 0, -1, withscores=True)
    finally:
        store.close()
    latest = time.time() + arrival.SLOT_TTL_S
    assert all(expires <= latest for _holder, expires in holds), holds


def kill(web: Proc, senders: Senders, deliveries: list[Delivery], pipe: Pipeline,
         workflow_id: str) -> str:
    """SIGKILL gunicorn's whole process group; once the senders are done, check that the kill
    hit deliveries in flight, that every delivery ever answered is stored and that the
    slots held in the dead process's name expire soon. Says what became of this round's
    deliveries."""
    killed_at = time.monotonic()
    web.kill()
    slot_holds_expire_soon(pipe, workflow_id)
    outcomes = senders.join()
    in_flight = {d.order_id for d in deliveries
                 if any(senders.began <= t < killed_at for t in d.lost)}
    assert in_flight, f"the kill hit no delivery in flight: {outcomes}"
    stored_now = {order_id for _id, _key, order_id in stored(pipe).events}
    answered = {d.order_id for d in deliveries if d.answers}
    assert answered <= stored_now, sorted(answered - stored_now)
    return (f"{outcomes['answered']} answered, {len(in_flight)} in flight at the kill "
            f"({len(in_flight & stored_now)} of them stored: resent, they are replays), "
            f"{outcomes['lost'] - len(in_flight)} reset after it, {outcomes['refused']} "
            "refused")


@pytest.mark.parametrize("backend", ["rabbitmq"])
def test_a_killed_web_process_loses_no_answered_delivery_and_a_resend_runs_nothing_twice(
        pipeline: Pipeline):
    pipe = pipeline
    workflow_id = orders_workflow(pipe)
    info = pipe.api("GET", f"/api/v1/workflows/{workflow_id}/webhook").get_json()
    path = "/hooks/" + info["url"].rsplit("/", 1)[1]
    deliveries = [Delivery.signed(order_id, info["secret"]) for order_id in range(DELIVERIES)]
    pipe.worker()  # for a run that cannot run on arrival and is stored queued
    pipe.clock()
    rounds = []

    # First kill: as soon as the database holds a delivery the senders have no answer for
    # (stored, its answer not yet written or read), so that deliveries stored but unanswered
    # are among those lost, and are resent as replays.
    web, url = pipe.web()
    senders = Senders(url + path, deliveries)
    wait_for(lambda: senders.answered() >= KILL_AFTER, 30, "answers", pipe.logs)
    deadline = time.monotonic() + 10
    while events_stored(pipe) <= senders.answered() and time.monotonic() < deadline:
        pass
    rounds.append(kill(web, senders, deliveries, pipe, workflow_id))

    # Second kill, while the unanswered are sent again: at an instant the answers alone set.
    web, url = pipe.web()
    senders = Senders(url + path, [d for d in deliveries if not d.answers])
    wait_for(lambda: senders.answered() >= KILL_AFTER // 2, 30, "answers", pipe.logs)
    time.sleep(random.uniform(0, 0.02))
    rounds.append(kill(web, senders, deliveries, pipe, workflow_id))

    # What is still unanswered, sent again to a web process left alone.
    _web, url = pipe.web()
    unanswered = [d for d in deliveries if not d.answers]
    senders = Senders(url + path, unanswered)
    assert senders.join() == Counter(answered=len(unanswered)), senders.outcomes
    print("web faults:", " | ".join(rounds), f" | {len(unanswered)} sent a third time")

    after = stored(pipe)
    events = {order_id: (event_id, key) for event_id, key, order_id in after.events}
    assert len(after.events) == len(events) == DELIVERIES
    assert sorted(events) == list(range(DELIVERIES))
    assert len({key for _id, key in events.values()}) == DELIVERIES
    runs = {run.trigger_event_id: run for run in after.runs}
    assert len(after.runs) == len(runs) == DELIVERIES
    for delivery in deliveries:
        event_id, _key = events[delivery.order_id]
        run = runs[event_id]
        assert (run.status, run.result) == ("succeeded", delivery.expected), run
        assert run.order_id == delivery.order_id
        assert sorted(after.nodes[run.id]) == NODE_ROWS, (run, after.nodes[run.id])
        assert len(delivery.answers) == 1, delivery.answers
        assert_answer_is_the_run(delivery, delivery.answers[0], event_id, run.id)
    assert sum(len(rows) for rows in after.nodes.values()) == len(NODE_ROWS) * DELIVERIES
    # Not vacuous: the runs ran on arrival (epoch 0: never claimed by a worker), but for a
    # few a loaded host may have sent through the queue.
    on_arrival = sum(1 for run in after.runs if run.epoch == 0)
    print(f"web faults: {on_arrival} of {DELIVERIES} runs ran on arrival")
    assert on_arrival > DELIVERIES // 2
