"""Group commit of accepted webhook deliveries: many requests, one transaction.

A delivery is verified and checked on its request thread; what it must store (one trigger
event, one queued run per active linked workflow) is handed to the process's intake thread,
which writes everything that gathered since its last commit atomically: the linked workflows
still active are read, the events inserted (ON CONFLICT DO NOTHING, so a repeat of an accepted
delivery is recognised by the unique (webhook_id, dedupe_key), even inside one batch), and a
queued run per active link of each new event — on PostgreSQL in one statement sent on its own
(``_PG_STORE``), on SQLite in one transaction of three. Then it announces the runs and
counts the deliveries in one Redis pipeline and publishes the runs to the queue in one batch,
and only then wakes the requests: a 202 still means stored and handed to the queue.

A delivery may bring runs already run, in memory, on arrival (app.services.arrival): the
intake takes their slots (one round trip for the batch), stores them finished, in the same
statement, and frees their slots after the commit; the queue gets only the runs stored
queued.

Under load the batches grow by themselves (whatever arrived during the previous commit), so
a commit, a Redis round trip and a broker confirm are shared by every delivery in the batch; a
lone delivery waits for nothing but its own commit. The request threads hold no database
connection at all.

A batch that fails is retried one delivery per transaction, so a bad delivery fails alone; a
database outage fails each delivery with the error (a 503 for the client) and stores nothing.
A crash after the commit and before the publish leaves queued runs whose lease runs out: the
clock's reaper publishes them again, as for any run.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis
from flask import Flask, current_app
from sqlalchemy import bindparam, insert, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError

from app import columnar, logs
from app.db import db
from app.errors import ServiceError
from app.live import events
from app.models import Execution, TriggerEvent, Workflow, utcnow
from app.services import arrival, executions, in_memory, runs
from app.services.locks import release_all

if TYPE_CHECKING:
    from app.services.arrival import Arrival

log = logging.getLogger(__name__)
WORKFLOWS = Workflow.__table__
EVENTS = TriggerEvent.__table__
RUNS = Execution.__table__

MAX_BATCH = 500
IDLE_EXIT_S = 60.0  # an idle intake thread ends; the next delivery starts another
STORE_TIMEOUT_S = 10.0  # a request waits this long for its batch, then answers 503


class IntakeUnavailable(ServiceError):
    status = 503
    code = "service_unavailable"


class Done:
    """A one-shot signal from the intake thread (its only setter) to one waiting request:
    a flag and a lock, where a ``threading.Event`` builds a condition, and its wait a lock
    more (a twentieth of a web process's CPU under W2)."""

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._set = False
        self._lock = threading.Lock()
        self._lock.acquire()  # released once, by ``set``

    def set(self) -> None:
        if not self._set:
            self._set = True
            self._lock.release()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        if self._set:
            return True
        if not self._lock.acquire(timeout=timeout):
            return False
        self._lock.release()
        return True


@dataclass(eq=False)
class Pending:
    """One delivery on its way in, and what became of it."""

    webhook_id: uuid.UUID
    user_id: uuid.UUID
    links: list[tuple[uuid.UUID, str]]  # (workflow_id, node_id) per linked trigger node
    payload: dict
    dedupe_key: str
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)
    # the id each link's run gets if it is created (known before the commit, so a waiter can
    # listen for the run's events before it exists)
    run_ids: list[uuid.UUID] = field(default_factory=list)
    # after the commit: "accepted" (runs set), "replayed" or "gone" (no active workflow)
    outcome: str | None = None
    runs: list[tuple[uuid.UUID, uuid.UUID]] = field(default_factory=list)  # (run, workflow)
    error: BaseException | None = None
    done: Done = field(default_factory=Done)  # set once it is stored, or failed
    # runs that ran on arrival (app.services.arrival), by run id: stored finished if their
    # workflow version is still the active one (``finished`` says which)
    arrived: dict[uuid.UUID, Arrival] = field(default_factory=dict)
    finished: set[uuid.UUID] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not self.run_ids:
            self.run_ids = [uuid.uuid4() for _link in self.links]


DEDUPE = ("webhook_id", "dedupe_key")  # a repeat of an accepted delivery stores nothing
_INSERT_NEW_EVENTS = (sqlite.insert(EVENTS).on_conflict_do_nothing(index_elements=DEDUPE)
                      .returning(EVENTS.c.id))
_INSERT_RUNS = insert(RUNS)  # on SQLite; _PG_STORE on PostgreSQL


# On PostgreSQL the whole store is one statement, run on its own (autocommit: no BEGIN and
# COMMIT round trips): the deliveries (``d``) and their links (``l``, one per linked trigger
# node, with the run id chosen in advance) go in as arrays; ``a`` is the linked workflows
# still active; ``e`` inserts the events of deliveries with an active workflow (a repeat of
# an accepted delivery is skipped by the unique (webhook_id, dedupe_key)); ``r`` inserts a
# run for each link of an inserted event to an active workflow: queued, or finished when it
# ran on arrival (a link with the version that ran and the final state) and that version is
# still the active one; ``n`` inserts the node rows of the runs stored finished. It answers
# which workflows were active, which events and runs it inserted, and which runs finished.
# Five round trips (BEGIN, the SELECT, two INSERTs, COMMIT) became one: under W1 at c=10 the
# intake's store took 4.2 ms.
_DELIVERY_COLUMNS = ("id", "user_id", "webhook_id", "dedupe_key", "payload")
_FINAL_COLUMNS = ("status", "result", "error", "started_at", "finished_at")
_LINK_COLUMNS = ("trigger_event_id", "workflow_id", "trigger_node_id", "id",
                 "workflow_version", *_FINAL_COLUMNS)  # the last ones NULL unless it ran
_EVENT_VALUES = {"id": "d.id", "user_id": "d.user_id", "webhook_id": "d.webhook_id",
                 "dedupe_key": "d.dedupe_key", "payload": columnar.value(EVENTS, "payload", "d"),
                 "kind": "'webhook'", "received_at": "%(now)s"}
_RAN = "l.workflow_version = a.version"  # it ran on arrival, and that version is active
_RUN_VALUES = {"id": "l.id", "user_id": "d.user_id", "workflow_id": "l.workflow_id",
               "workflow_version": "a.version", "trigger_type": "'webhook'",
               "trigger_node_id": "l.trigger_node_id", "trigger_event_id": "l.trigger_event_id",
               "input": columnar.value(EVENTS, "payload", "d"),
               "status": f"CASE WHEN {_RAN} THEN l.status ELSE 'queued' END",
               **{name: f"CASE WHEN {_RAN} THEN {columnar.value(RUNS, name, 'l')} END"
                  for name in _FINAL_COLUMNS if name != "status"},
               "lease_expires_at": f"CASE WHEN {_RAN} THEN NULL ELSE %(lease)s END",
               # a run that ran on arrival existed (in memory) from when it began
               "created_at": f"CASE WHEN {_RAN} THEN l.started_at ELSE %(now)s END",
               "updated_at": "%(now)s"}


def _insert_select(table, values: dict[str, str], prefix: str) -> tuple[str, str, dict]:
    """The column list and SELECT list of an INSERT of ``values`` (column: SQL expression),
    the table's scalar defaults added as parameters; and those parameters."""
    missing = columnar.defaults(table, values)
    columns = ", ".join(f'"{name}"' for name in [*values, *missing])
    expressions = ", ".join([*values.values(), *(f"%({prefix}{name})s" for name in missing)])
    return columns, expressions, {prefix + name: value for name, value in missing.items()}


def _pg_store_statement() -> tuple[str, dict]:
    event_columns, event_values, event_defaults = _insert_select(EVENTS, _EVENT_VALUES, "e_")
    run_columns, run_values, run_defaults = _insert_select(RUNS, _RUN_VALUES, "r_")
    insert_nodes, node_defaults = in_memory.pg_insert_nodes(
        "n.execution_id IN (SELECT r.id FROM r WHERE r.status <> 'queued')")
    sql = f"""
WITH d AS (SELECT * FROM {columnar.source(EVENTS, _DELIVERY_COLUMNS, prefix="d_", alias="d")}),
l AS (SELECT * FROM {columnar.source(RUNS, _LINK_COLUMNS, prefix="l_", alias="l")}),
a AS (SELECT w.id, w.version FROM workflows AS w
      WHERE w.id IN (SELECT l.workflow_id FROM l) AND w.active AND w.deleted_at IS NULL),
e AS (INSERT INTO trigger_events ({event_columns}) SELECT {event_values} FROM d
      WHERE EXISTS (SELECT 1 FROM l JOIN a ON a.id = l.workflow_id
                    WHERE l.trigger_event_id = d.id)
      ON CONFLICT (webhook_id, dedupe_key) DO NOTHING RETURNING id),
r AS (INSERT INTO executions ({run_columns}) SELECT {run_values}
      FROM l JOIN e ON e.id = l.trigger_event_id JOIN d ON d.id = l.trigger_event_id
      JOIN a ON a.id = l.workflow_id RETURNING id, status),
n AS ({insert_nodes})
SELECT 'active', id FROM a UNION ALL SELECT 'event', id FROM e UNION ALL SELECT 'run', id FROM r
UNION ALL SELECT 'finished', id FROM r WHERE status <> 'queued'
"""  # noqa: S608 - every name is fixed here; the values travel as parameters
    return sql, {**event_defaults, **run_defaults, **node_defaults}


_PG_STORE, _PG_STORE_DEFAULTS = _pg_store_statement()


_ACTIVE_VERSIONS = (select(WORKFLOWS.c.id, WORKFLOWS.c.version)
                    .where(WORKFLOWS.c.id.in_(bindparam("ids", expanding=True)),
                           WORKFLOWS.c.active.is_(True), WORKFLOWS.c.deleted_at.is_(None)))


class Intake:
    """The process's intake thread and the deliveries waiting for it."""

    def __init__(self, app: Flask, *, max_batch: int = MAX_BATCH) -> None:
        self.app = app
        self.max_batch = max_batch
        self._waiting: deque[Pending] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self.batches = 0  # committed batches so far (for tests and benches)

    def submit(self, pending: Pending, timeout_s: float = STORE_TIMEOUT_S) -> Pending:
        """Queue ``pending`` and wait until its batch is committed and published."""
        with self._cond:
            self._waiting.append(pending)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="webhook-intake",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()
        if not pending.done.wait(timeout_s):
            # It may still be stored later; the sender's retry is then a replay of it.
            raise IntakeUnavailable(f"the delivery was not stored within {timeout_s:g} s; "
                                    "send it again")
        if pending.error is not None:
            raise pending.error
        return pending

    def _next_batch(self) -> list[Pending] | None:
        with self._cond:
            if not self._waiting:
                self._cond.wait(IDLE_EXIT_S)
            if not self._waiting:
                self._thread = None
                return None
            count = min(len(self._waiting), self.max_batch)
            return [self._waiting.popleft() for _ in range(count)]

    def _run(self) -> None:
        with self.app.app_context():
            while (batch := self._next_batch()) is not None:
                try:
                    self._take(batch)
                except BaseException as exc:  # noqa: BLE001 - never leave a request waiting
                    log.exception("webhook intake failed on a batch of %d", len(batch))
                    for pending in batch:
                        if not pending.done.is_set():
                            pending.error = exc
                            pending.done.set()
                finally:
                    db.remove()

    def _take(self, batch: list[Pending]) -> None:
        try:
            arrival.hold(batch)  # the slots of its runs on arrival, or they go queued
            self._store_each(batch)
        except BaseException:
            arrival.release(arrival.slots_of(batch))  # else they would wait out their TTL
            raise
        self.batches += 1
        try:
            self._tell(batch)
        finally:
            for pending in batch:
                pending.done.set()

    def _store_each(self, batch: list[Pending]) -> None:
        """Store the batch; if that fails, each delivery on its own, unless the database is
        out (each then fails with the error)."""
        try:
            self._store(batch)
        except DBAPIError as exc:
            if len(batch) == 1 or exc.connection_invalidated or _is_outage(exc):
                for pending in batch:
                    pending.error = exc
            else:
                log.warning("a batch of %d deliveries failed (%s); storing them one by one",
                            len(batch), type(exc).__name__)
                for pending in batch:
                    try:
                        self._store([pending])
                    except DBAPIError as one:
                        pending.error = one

    def _store(self, batch: list[Pending]) -> None:
        """Atomically: the events that are new, and a run per active workflow, queued or
        finished (on a connection of its own: no ORM session)."""
        if db.is_sqlite:
            with db.engine.begin() as connection:
                active, inserted, finished = _store_sqlite(connection, batch)
        else:
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT"
                                                        ) as connection:
                active, inserted, finished = _store_pg(connection, batch)
        for p in batch:
            if p.event_id in inserted:
                p.outcome = "accepted"
                p.runs = [(run_id, workflow_id) for (workflow_id, _node), run_id
                          in zip(p.links, p.run_ids, strict=True) if workflow_id in active]
                p.finished = {run_id for run_id, _workflow in p.runs if run_id in finished}
            else:
                live = any(workflow_id in active for workflow_id, _node in p.links)
                p.outcome = "replayed" if live else "gone"

    def _tell(self, batch: list[Pending]) -> None:
        """After the commit: live pages, counters and the slots of runs that ran on arrival
        (one Redis pipeline), then the queue gets the runs stored queued."""
        stored = [p for p in batch if p.error is None]
        accepted = [p for p in stored if p.outcome == "accepted"]
        published = []
        for p in accepted:
            for run_id, workflow_id in p.runs:
                published.append((p.user_id, events.run_event(run_id, workflow_id, "queued")))
                if run_id in p.finished:
                    published.extend((p.user_id, event)
                                     for event in p.arrived[run_id].ran.events())

        counts = Counter((p.webhook_id, p.outcome) for p in stored
                         if p.outcome in ("accepted", "replayed"))

        def announce(pipe) -> None:
            events.queue_each(pipe, published)  # one message per user for the whole batch
            for (webhook_id, outcome), n in counts.items():  # one INCRBY per webhook
                count_into(pipe, webhook_id, outcome, n)

        workflows = list(dict.fromkeys(a.ran.workflow_id for p in batch
                                       for a in p.arrived.values()))
        try:
            waiting = release_all(current_app.extensions["jobsprint.store"],
                                  arrival.slots_of(batch),
                                  [runs.deferred_marker(w) for w in workflows], also=announce)
        except redis.RedisError as exc:
            log.warning("could not announce or count %d deliveries nor free the slots of %d "
                        "workflows: %s", len(stored), len(workflows), exc)
            waiting = []
        for workflow_id, has_waiting in zip(workflows, waiting, strict=False):
            if has_waiting:  # a run of that workflow was deferred for want of a slot
                runs.wake_deferred_safely(workflow_id)
        for p in accepted:
            for run_id in p.finished:
                ran = p.arrived[run_id].ran
                token = logs.execution_id.set(str(run_id))
                try:
                    runs.count_finished(ran.final["status"], ran.began, quiet=True)
                finally:
                    logs.execution_id.reset(token)
        run_ids = [run_id for p in accepted for run_id, _workflow in p.runs
                   if run_id not in p.finished]
        if run_ids:
            executions.publish(run_ids)


def _link_rows(batch: list[Pending]) -> list[dict]:
    """One row per link of each delivery: its run's id chosen in advance, and the workflow
    version and final state of a run that ran on arrival (else None)."""
    rows = []
    for p in batch:
        for (workflow_id, node_id), run_id in zip(p.links, p.run_ids, strict=True):
            ran = p.arrived.get(run_id)
            row = {"trigger_event_id": p.event_id, "workflow_id": workflow_id,
                   "trigger_node_id": node_id, "id": run_id,
                   "workflow_version": ran.version if ran else None}
            for name in _FINAL_COLUMNS:
                row[name] = ran.ran.final[name] if ran else None
            rows.append(row)
    return rows


def _node_rows(batch: list[Pending]) -> list[dict]:
    return [row for p in batch for ran in p.arrived.values() for row in ran.ran.node_rows()]


Stored = tuple[set[uuid.UUID], set[uuid.UUID], set[uuid.UUID]]  # active, events, finished


def _store_pg(connection, batch: list[Pending]) -> Stored:
    """``_PG_STORE`` for ``batch``: the linked workflows still active, the new events, the
    runs stored finished."""
    deliveries = [{"id": p.event_id, "user_id": p.user_id, "webhook_id": p.webhook_id,
                   "dedupe_key": p.dedupe_key, "payload": p.payload} for p in batch]
    now = utcnow()
    rows = connection.exec_driver_sql(_PG_STORE, {
        **columnar.arrays(EVENTS, _DELIVERY_COLUMNS, deliveries, prefix="d_"),
        **columnar.arrays(RUNS, _LINK_COLUMNS, _link_rows(batch), prefix="l_"),
        **in_memory.node_arrays(_node_rows(batch)),
        **_PG_STORE_DEFAULTS, "now": now, "lease": now + executions.publish_grace()}).all()
    found: dict[str, set[uuid.UUID]] = {"active": set(), "event": set(), "finished": set(),
                                        "run": set()}
    for kind, row_id in rows:
        found[kind].add(row_id)
    return found["active"], found["event"], found["finished"]


def _store_sqlite(connection, batch: list[Pending]) -> Stored:
    """The same as ``_PG_STORE``, in a transaction of Core statements."""
    wanted = list({workflow_id for p in batch for workflow_id, _node in p.links})
    versions = dict(connection.execute(_ACTIVE_VERSIONS, {"ids": wanted}).all())
    live = [p for p in batch if any(w in versions for w, _node in p.links)]
    if not live:
        return set(versions), set(), set()
    now = utcnow()
    inserted = set(connection.execute(_INSERT_NEW_EVENTS, [
        {"id": p.event_id, "user_id": p.user_id, "webhook_id": p.webhook_id, "kind": "webhook",
         "dedupe_key": p.dedupe_key, "payload": p.payload, "received_at": now}
        for p in live]).scalars())
    lease = now + executions.publish_grace()
    by_event = {p.event_id: p for p in live}
    queued, finished = [], []
    for row in _link_rows([p for p in live if p.event_id in inserted]):
        version = versions.get(row["workflow_id"])
        if version is None:
            continue
        p = by_event[row["trigger_event_id"]]
        row.update(user_id=p.user_id, trigger_type="webhook", input=p.payload,
                   created_at=now, updated_at=now)
        if row["workflow_version"] == version:  # it ran on arrival, and that version is active
            finished.append({**row, "lease_expires_at": None, "created_at": row["started_at"]})
        else:  # the final columns stay NULL, as for any queued run
            queued.append({**{k: v for k, v in row.items() if k not in _FINAL_COLUMNS},
                           "workflow_version": version, "status": "queued",
                           "lease_expires_at": lease})
    for rows in (queued, finished):
        if rows:
            connection.execute(_INSERT_RUNS, rows)
    finished_ids = {row["id"] for row in finished}
    nodes = [row for row in _node_rows(live) if row["execution_id"] in finished_ids]
    if nodes:
        connection.execute(runs.INSERT_NODES, nodes)
    return set(versions), inserted, finished_ids


def _is_outage(exc: DBAPIError) -> bool:
    from sqlalchemy.exc import InterfaceError, OperationalError

    return isinstance(exc, OperationalError | InterfaceError)


def counter_key(webhook_id: Any, result: str | None = None) -> str:
    return f"webhook:{webhook_id}:deliveries" + (f":{result}" if result else "")


def count_into(pipe, webhook_id: Any, result: str, n: int = 1) -> None:
    """Delivery counters for metrics: all, and by result (accepted | replayed | rejected)."""
    pipe.incrby(counter_key(webhook_id), n)
    pipe.incrby(counter_key(webhook_id, result), n)


_intake_lock = threading.Lock()


def intake_for(app: Flask) -> Intake:
    intake = app.extensions.get("jobsprint.intake")
    if intake is None:
        with _intake_lock:
            intake = app.extensions.get("jobsprint.intake")
            if intake is None:
                intake = app.extensions["jobsprint.intake"] = Intake(app)
    return intake
