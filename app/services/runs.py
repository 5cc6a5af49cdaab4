"""The worker's side of a run: claim it, run the engine, record each node, finish exactly once.

Correctness rests on the database, not on the queue:
- A claim moves the run from ``queued`` to ``running`` and increments ``epoch``; every later
  write of the run says ``WHERE id = :id AND epoch = :epoch``. A worker whose write touches no
  row has been fenced out (its lease passed and the reaper handed the run on) and stops.
- Node rows are keyed (execution, node, attempt): a succeeded node is read back on resume and
  never run again. Pure logic nodes are recorded in small batches (their re-run after a crash
  is harmless and invisible); a node with side effects (HTTP, AI, apps, waits) is recorded
  ``running`` before it starts, so a crash mid-node resumes it with the same attempt number,
  and so the same idempotency key.
- The per-workflow slot in Redis (``locks.WorkflowSlot``) enforces ``settings.concurrency``; a
  run that finds every slot taken is deferred 5 s, never dropped.
- The reaper (in the clock) hands back runs whose lease passed: queued runs nobody claimed
  (a lost publish), running runs whose worker died, and parked runs that are due.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

import redis
from flask import current_app
from sqlalchemy import bindparam, func, insert, select, update

from app import engine, logs, metrics
from app.db import db
from app.live import events
from app.models import FINAL_STATES, Execution, ExecutionNode, WorkflowVersion, utcnow
from app.services import executions, workflows
from app.services.locks import WorkflowSlot

log = logging.getLogger(__name__)

DEFER = timedelta(seconds=5)
FLUSH_INTERVAL_S = 0.25
SIDE_EFFECT_TYPES = ("http.", "ai.", "integration.", "logic.wait")


class Fenced(Exception):
    """Another worker holds this run now; this one must stop writing."""


def store() -> redis.Redis:
    return current_app.extensions["jobsprint.store"]


def lease_length() -> timedelta:
    return timedelta(seconds=current_app.config["SETTINGS"].run_lease_s)


# --- claiming ---------------------------------------------------------------------------

RUNS = Execution.__table__  # hot paths use Core statements: the ORM's bulk path costs ~40%
NODES = ExecutionNode.__table__
# Every node row written names the same columns (a Core executemany needs one shape).
NODE_ROW = dict.fromkeys(("output", "output_name", "error", "resume_at", "started_at",
                          "finished_at"))


@dataclass(slots=True)
class Claim:
    """A run this worker now holds, with what it needs to run it."""

    epoch: int
    user_id: uuid.UUID
    workflow_id: uuid.UUID
    workflow_version: int
    trigger_node_id: str | None
    input: Any
    started_at: datetime | None  # None: first claimed now
    deliveries: int
    retry_of_id: uuid.UUID | None
    cancel_requested: bool


# The hot statements are built once: building and cache-keying a statement per call cost
# more CPU than running it; they run on a plain connection (no ORM session or transaction
# snapshot) in a transaction of their own.
CLAIMED = {
    "status": "running", "epoch": RUNS.c.epoch + 1, "deliveries": RUNS.c.deliveries + 1,
    "lease_expires_at": bindparam("lease", type_=RUNS.c.lease_expires_at.type),
    "started_at": func.coalesce(RUNS.c.started_at, bindparam("now", type_=RUNS.c.started_at.type)),
    "updated_at": bindparam("now")}
CLAIM_RETURNS = (RUNS.c.epoch, RUNS.c.user_id, RUNS.c.workflow_id, RUNS.c.workflow_version,
                 RUNS.c.trigger_node_id, RUNS.c.input, RUNS.c.started_at, RUNS.c.deliveries,
                 RUNS.c.retry_of_id, RUNS.c.cancel_requested)
# A claim skips a row another transaction holds (SKIP LOCKED; SQLite has one writer): a
# worker frozen in the middle of its claim must not stall the others. What it skipped is still
# queued, or taken by that holder; if neither, the reaper publishes it again.
_CLAIM = (update(RUNS)
          .where(RUNS.c.id == select(RUNS.c.id)
                 .where(RUNS.c.id == bindparam("run_id"), RUNS.c.status == "queued")
                 .with_for_update(skip_locked=True).scalar_subquery(),
                 RUNS.c.status == "queued")
          .values(CLAIMED).returning(*CLAIM_RETURNS))
INSERT_NODES = insert(NODES)


@cache
def fenced_update(keys: frozenset[str]):
    """``UPDATE executions SET <keys> WHERE id = :run_id AND epoch = :run_epoch``."""
    return (update(RUNS)
            .where(RUNS.c.id == bindparam("run_id"), RUNS.c.epoch == bindparam("run_epoch"))
            .values({key: bindparam(key, type_=RUNS.c[key].type) for key in sorted(keys)}))


def claim(execution_id: uuid.UUID) -> Claim | None:
    """Take a queued run in one statement: everything the worker needs to run it (its new
    ``epoch`` among them), or None if it is not ours to run."""
    now = utcnow()
    with db.engine.begin() as connection:
        row = connection.execute(_CLAIM, {"run_id": execution_id, "now": now,
                                          "lease": now + lease_length()}).one_or_none()
    return None if row is None else claimed_from(row._mapping, now)


def claimed_from(row, now: datetime) -> Claim:
    """The Claim of a row that ``CLAIM_RETURNS`` returned for a claim made at ``now``."""
    claimed = Claim(**{column.name: row[column.name] for column in CLAIM_RETURNS})
    if claimed.started_at == now:
        # The first claim: the run's timeout counts from now (the engine's own clock).
        claimed.started_at = None
    return claimed


def unclaim(execution_id: uuid.UUID, epoch: int, first: bool) -> None:
    """Give a claimed run back (its workflow has no free slot): queued again, due after the
    deferral, as if this delivery had not happened."""
    values: dict[str, Any] = {"status": "queued", "deliveries": RUNS.c.deliveries - 1,
                              "lease_expires_at": utcnow() + DEFER}
    if first:
        values["started_at"] = None
    db.session.execute(update(RUNS).where(RUNS.c.id == execution_id, RUNS.c.epoch == epoch)
                       .values(**values))
    db.session.commit()


def deferred_marker(workflow_id: uuid.UUID) -> str:
    return f"wfdeferred:{workflow_id}"


def postpone(execution_id: uuid.UUID, epoch: int) -> None:
    """A queued run read but not claimed (app.services.run_batches) found its workflow's
    slots taken: due again after the deferral."""
    now = utcnow()
    db.session.execute(update(RUNS).where(RUNS.c.id == execution_id, RUNS.c.epoch == epoch,
                                          RUNS.c.status == "queued")
                       .values(lease_expires_at=now + DEFER, updated_at=now))
    db.session.commit()


def defer(execution_id: uuid.UUID, workflow_id: uuid.UUID, epoch: int, first: bool = False, *,
          claimed: bool = True) -> None:
    """Give the run back (``claimed``: this worker claimed it; else it is still queued); the
    reaper publishes it again after ``DEFER``, or sooner, when a run of the same workflow
    frees its slot (``wake_deferred``)."""
    if claimed:
        unclaim(execution_id, epoch, first)
    else:
        postpone(execution_id, epoch)
    try:
        store().set(deferred_marker(workflow_id), 1, ex=int(DEFER.total_seconds() * 2))
    except redis.RedisError as exc:
        log.warning("could not mark workflow %s as having deferred runs: %s", workflow_id, exc)


def wake_deferred(workflow_id: uuid.UUID) -> list[uuid.UUID]:
    """A slot of ``workflow_id`` was freed: publish its longest-deferred run now instead of
    when its deferral ends, so a burst on a concurrency-1 workflow runs back to back rather
    than one run per deferral period. Only runs when some run of the workflow was deferred
    recently (a Redis marker the caller checked)."""
    now = utcnow()
    candidate = (select(Execution.id)
                 .where(Execution.status == "queued", Execution.lease_expires_at > now,
                        Execution.lease_expires_at <= now + DEFER,
                        Execution.workflow_id == workflow_id)
                 .order_by(Execution.lease_expires_at).limit(1))
    if not db.is_sqlite:
        candidate = candidate.with_for_update(skip_locked=True)
    ids = list(db.session.scalars(candidate))
    if ids:
        db.session.execute(update(Execution)
                           .where(Execution.id.in_(ids), Execution.status == "queued")
                           .values(lease_expires_at=now + executions.publish_grace()))
    db.session.commit()
    if ids:
        executions.publish(ids)
    return ids


def reap(limit: int = 500) -> list[uuid.UUID]:
    """Hand back every run whose lease passed, fencing out its old holder; returns their ids
    (the caller publishes them)."""
    now = utcnow()
    due = (select(Execution.id)
           .where(Execution.status.in_(("queued", "running", "waiting")),
                  Execution.lease_expires_at < now)
           .order_by(Execution.lease_expires_at).limit(limit))
    if not db.is_sqlite:
        due = due.with_for_update(skip_locked=True)
    ids = list(db.session.scalars(due))
    if ids:
        db.session.execute(
            update(Execution).where(Execution.id.in_(ids),
                                    Execution.status.in_(("queued", "running", "waiting")))
            .values(status="queued", epoch=Execution.epoch + 1,
                    lease_expires_at=now + executions.publish_grace(), updated_at=now))
    db.session.commit()
    return ids


# --- the definition a run executes -------------------------------------------------------

_GRAPHS: OrderedDict[tuple[uuid.UUID, int], tuple[Any, dict]] = OrderedDict()
_GRAPHS_MAX = 512
_graphs_lock = threading.Lock()


def _definition(workflow_id: uuid.UUID, version: int) -> dict | None:
    current = workflows.cached_definition(workflow_id)
    if current is not None and current["version"] == version:
        return current["definition"]
    return db.session.scalar(select(WorkflowVersion.definition).where(
        WorkflowVersion.workflow_id == workflow_id, WorkflowVersion.version == version))


def load_graph(workflow_id: uuid.UUID, version: int):
    """The validated graph and definition of one workflow version. A version never changes,
    so it is validated once per process and kept (LRU), with no I/O on later runs."""
    key = (workflow_id, version)
    with _graphs_lock:
        if key in _GRAPHS:
            _GRAPHS.move_to_end(key)
            return _GRAPHS[key]
    definition = _definition(workflow_id, version)
    if definition is None:
        return None, None
    loaded = (engine.validate({"name": "run", **definition}).graph, definition)
    with _graphs_lock:
        _GRAPHS[key] = loaded
        if len(_GRAPHS) > _GRAPHS_MAX:
            _GRAPHS.popitem(last=False)
    return loaded


def concurrency_of(definition: dict | None) -> int:
    """The workflow's ``settings.concurrency`` (at least 1; 1 when unset)."""
    return max(1, int(((definition or {}).get("settings") or {}).get("concurrency", 1)))


def side_effect_nodes(definition: dict | None) -> set[str]:
    """The ids of the nodes that act outside the run (recorded before they start)."""
    return {node["id"] for node in (definition or {}).get("nodes", [])
            if str(node.get("type", "")).startswith(SIDE_EFFECT_TYPES)}


# --- recording a run ----------------------------------------------------------------------

class RunRecorder:
    """The engine's callbacks for one claimed run: stores node results, then publishes them."""

    def __init__(self, execution_id: uuid.UUID, user_id: uuid.UUID, workflow_id: uuid.UUID,
                 epoch: int, existing: set[tuple[str, int]], side_effect_nodes: set[str],
                 cancelled: bool = False, graph=None):
        self.execution_id = execution_id
        self.nodes = graph.nodes if graph is not None else {}  # for the node metrics' label
        self.user_id = user_id
        self.workflow_id = workflow_id
        self.epoch = epoch
        self.existing = existing
        self.side_effect_nodes = side_effect_nodes
        self.pending: list[dict] = []
        self.started: dict[str, Any] = {}
        self.last_flush = time.monotonic()
        # set (by this run's worker or its lease keeper) once the run turns out another's
        self.fenced = False
        # The claim read cancel_requested: the next look at the database is a second away.
        self._cancel_checked_at = time.monotonic()
        self._cancelled = cancelled

    # engine callbacks
    def node_started(self, key: str, attempt: int, input: Any) -> None:
        if self.fenced:
            raise Fenced(str(self.execution_id))
        now = utcnow()
        self.started[key] = now
        node_id = key.split("[", 1)[0]
        if node_id in self.side_effect_nodes:
            self.pending.append({"node_key": key, "node_id": node_id, "attempt": attempt,
                                 "status": "running", "started_at": now})
            self.flush()

    def node_finished(self, result) -> None:
        if self.fenced:
            raise Fenced(str(self.execution_id))
        if result.started_at is not None and result.finished_at is not None:
            node = self.nodes.get(result.node_id)
            metrics.node_finished(node.type.name if node is not None else "unknown",
                                  (result.finished_at - result.started_at).total_seconds())
        self.pending.append({
            "node_key": result.key, "node_id": result.node_id, "attempt": result.attempt,
            "status": result.status, "output": result.output,
            "output_name": result.output_name,
            "error": {"message": result.error} if isinstance(result.error, str)
            else result.error,
            "resume_at": getattr(result, "resume_at", None),
            "started_at": self.started.get(result.key, result.started_at),
            "finished_at": result.finished_at or utcnow()})
        if (result.node_id in self.side_effect_nodes or result.status == "waiting"
                or time.monotonic() - self.last_flush > FLUSH_INTERVAL_S):
            self.flush()

    def begin(self) -> None:
        """The run starts now (the runs of a batch wait for each other): its flush and
        cancellation clocks count from here."""
        self.last_flush = self._cancel_checked_at = time.monotonic()

    def is_cancelled(self) -> bool:
        now = time.monotonic()
        if now - self._cancel_checked_at > 1.0:
            self._cancel_checked_at = now
            self._cancelled = bool(db.session.scalar(
                select(Execution.cancel_requested).where(Execution.id == self.execution_id)))
            db.session.commit()
        return self._cancelled

    # storage
    def flush(self, final: dict | None = None) -> None:
        """Commit pending node rows (and the final state) in one fenced transaction."""
        now = utcnow()
        values = {"lease_expires_at": now + lease_length(), "updated_at": now, **(final or {})}
        with db.engine.begin() as connection:
            touched = connection.execute(
                fenced_update(frozenset(values)),
                {"run_id": self.execution_id, "run_epoch": self.epoch, **values}).rowcount
            if not touched:
                self.fenced = True
                raise Fenced(str(self.execution_id))  # rolls the transaction back
            inserts = self.write_known_nodes(connection)
            if inserts:
                connection.execute(INSERT_NODES, inserts)
        events.publish_many(store(), self.user_id, self.committed(final))

    def write_known_nodes(self, connection) -> list[dict]:
        """Update the pending node rows that exist already (a resumed attempt); return the
        others, as rows to insert (the caller inserts them in the same transaction)."""
        inserts = []
        for row in self.pending:
            ident = (row["node_key"], row["attempt"])
            if ident in self.existing:
                connection.execute(
                    update(NODES)
                    .where(NODES.c.execution_id == self.execution_id,
                           NODES.c.node_key == row["node_key"],
                           NODES.c.attempt == row["attempt"])
                    .values(**{k: v for k, v in row.items()
                               if k not in ("node_key", "attempt")
                               # a resumed wait does not know when it started; keep the row's
                               and not (k == "started_at" and v is None)}))
            else:
                self.existing.add(ident)
                inserts.append({**NODE_ROW, "id": uuid.uuid4(),
                                "execution_id": self.execution_id, **row})
        return inserts

    def committed(self, final: dict | None = None) -> list[dict]:
        """The pending rows (and ``final``) are committed: forget them; the events to
        publish."""
        flushed, self.pending = self.pending, []
        self.last_flush = time.monotonic()
        published = [self._node_event(row) for row in flushed]
        if final:
            outcome = ((final.get("result"), final.get("error"))
                       if final["status"] in FINAL_STATES else None)
            published.append(events.run_event(self.execution_id, self.workflow_id,
                                              final["status"], outcome=outcome))
        return published

    def _node_event(self, row: dict) -> dict:
        error = row.get("error")
        return {"type": "node", "execution_id": str(self.execution_id),
                "workflow_id": str(self.workflow_id), "node_id": row["node_key"],
                "status": row["status"], "attempt": row["attempt"],
                "error": error.get("message") if isinstance(error, dict) else error}

    def finish(self, result) -> None:
        self.flush(final_values(result))


def final_values(result) -> dict:
    """The run's columns once the engine returned ``result``: a final state, or parked."""
    if result.status == "parked":
        return {"status": "waiting", "resume_at": result.resume_at,
                "lease_expires_at": result.resume_at}
    return {"status": result.status, "result": result.result, "error": result.error,
            "finished_at": utcnow(), "lease_expires_at": None}


# --- lease keeping ------------------------------------------------------------------------

class LeaseKeeper:
    """Renews the lease (database) and the slot (Redis) of every run this process holds."""

    def __init__(self, app) -> None:
        self.app = app
        self.lease = timedelta(seconds=app.config["SETTINGS"].run_lease_s)
        self.active: dict[uuid.UUID, tuple[RunRecorder, WorkflowSlot]] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def track(self, recorder: RunRecorder, slot: WorkflowSlot) -> None:
        with self.lock:
            self.active[recorder.execution_id] = (recorder, slot)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name="lease-keeper",
                                               daemon=True)
                self.thread.start()

    def untrack(self, execution_id: uuid.UUID) -> None:
        with self.lock:
            self.active.pop(execution_id, None)

    def _loop(self) -> None:
        interval = self.lease.total_seconds() / 3
        while True:
            time.sleep(interval)
            with self.lock:
                held = list(self.active.values())
            if not held:
                continue
            with self.app.app_context():
                self.renew(held, self.lease)

    @staticmethod
    def renew(held, lease: timedelta) -> None:
        lease = utcnow() + lease
        with db.engine.begin() as conn:
            for recorder, _slot in held:
                renewed = conn.execute(
                    update(Execution).where(Execution.id == recorder.execution_id,
                                            Execution.epoch == recorder.epoch,
                                            Execution.status == "running")
                    .values(lease_expires_at=lease)).rowcount
                if not renewed:
                    recorder.fenced = True
        for recorder, slot in held:
            if recorder.fenced:
                continue  # the run is another worker's now, and so is its slot
            try:
                slot.renew()
            except redis.RedisError as exc:
                log.warning("could not renew workflow slot %s: %s", slot.key, exc)


def lease_keeper() -> LeaseKeeper:
    keeper = current_app.extensions.get("jobsprint.lease_keeper")
    if keeper is None:
        keeper = current_app.extensions.setdefault(
            "jobsprint.lease_keeper", LeaseKeeper(current_app._get_current_object()))
    return keeper


# --- the queue handler --------------------------------------------------------------------

def _ports(recorder: RunRecorder) -> engine.Ports:
    from app.services.ai import AiForRun
    from app.services.credentials import HttpWithCredentials
    from app.services.mcp_port import McpPort
    from app.services.ssrf import AllowList

    port = current_app.extensions.get("jobsprint.http_port")
    allow = AllowList.parse(current_app.config["SETTINGS"].http_allow)
    http = HttpWithCredentials(port, recorder.user_id) if port else None
    return engine.Ports(http=http, mcp=McpPort(allow, recorder.user_id),
                        ai=AiForRun(http, recorder.user_id, str(recorder.execution_id))
                        if http else None,
                        is_cancelled=recorder.is_cancelled)


def _resume_state(execution_id: uuid.UUID) -> tuple[dict, set[tuple[str, int]]]:
    rows = db.session.execute(
        select(ExecutionNode.node_key, ExecutionNode.attempt, ExecutionNode.status,
               ExecutionNode.output, ExecutionNode.output_name, ExecutionNode.resume_at,
               ExecutionNode.error)
        .where(ExecutionNode.execution_id == execution_id)
        .order_by(ExecutionNode.node_key, ExecutionNode.attempt)).all()
    latest = {}
    for row in rows:
        latest[row.node_key] = engine.NodeState(
            status=row.status, output=row.output, output_name=row.output_name,
            attempts=row.attempt, resume_at=row.resume_at,
            error=row.error.get("message") if isinstance(row.error, dict) else row.error)
    return latest, {(row.node_key, row.attempt) for row in rows}


def run_execution(execution_id: str) -> None:
    """Queue handler: returns once the run's state is committed, or when there is nothing to
    do (finished, held elsewhere, deferred). Raises only on infrastructure failure. Every log
    line written meanwhile carries the run's id."""
    token = logs.execution_id.set(execution_id)
    try:
        _run(uuid.UUID(execution_id))
    finally:
        db.remove()
        logs.execution_id.reset(token)


def count_finished(status: str, began: datetime, *, quiet: bool = False) -> None:
    """A final state committed by this process: count it once, and say so in the log
    (``quiet``: a success at DEBUG only — a web process's runs on arrival, one per request,
    like its access log)."""
    seconds = (utcnow() - began).total_seconds()
    metrics.run_finished(status, seconds)
    log.log(logging.DEBUG if quiet and status == "succeeded" else logging.INFO,
            "run %s in %.3f s", status, seconds)


def _run(execution_id: uuid.UUID) -> None:
    run = claim(execution_id)
    if run is None:
        return  # finished, running elsewhere, or a duplicate delivery: nothing to do
    first_claim = run.started_at is None
    began = run.started_at or utcnow()
    graph, definition = load_graph(run.workflow_id, run.workflow_version)
    slot = WorkflowSlot(store(), str(run.workflow_id), concurrency_of(definition),
                        holder=str(execution_id))
    try:
        acquired = slot.acquire()
    except redis.RedisError as exc:
        log.warning("workflow slots unavailable (%s); running on the database fence alone", exc)
        acquired = True
    if not acquired:
        defer(execution_id, run.workflow_id, run.epoch, first_claim)
        return
    keeper = lease_keeper()
    release = True  # a fenced-out worker leaves the slot to the run's new holder
    try:
        # A run delivered for the first time (not a retry) has no node rows yet.
        resumed = run.deliveries > 1 or run.retry_of_id is not None
        resume, existing = _resume_state(execution_id) if resumed else ({}, set())
        side_effects = side_effect_nodes(definition)
        recorder = RunRecorder(execution_id, run.user_id, run.workflow_id, run.epoch, existing,
                               side_effects, cancelled=run.cancel_requested, graph=graph)
        events.publish_many(store(), run.user_id, [
            events.run_event(execution_id, run.workflow_id, "running")])
        if graph is None:
            recorder.flush({"status": "failed", "finished_at": utcnow(),
                            "error": {"message": "the workflow version no longer exists"}})
            count_finished("failed", began)
            return
        keeper.track(recorder, slot)
        result = engine.run_graph(
            graph, trigger_id=run.trigger_node_id, trigger_output=run.input,
            execution={"id": str(execution_id), "workflow_id": str(run.workflow_id)},
            callbacks=recorder, ports=_ports(recorder), resume=resume,
            options=engine.RunOptions(started_at=run.started_at))
        recorder.finish(result)
        if result.status == "parked":
            log.info("run parked until %s", result.resume_at)
        else:
            count_finished(result.status, began)
    except Fenced:
        log.info("run %s was handed to another worker; this one stops", execution_id)
        db.session.rollback()
        release = False
    finally:
        keeper.untrack(execution_id)
        if release:
            _give_back(slot, run.workflow_id)


def _give_back(slot: WorkflowSlot, workflow_id: uuid.UUID) -> None:
    """Free the slot and, if runs of the workflow wait for one, wake the longest waiting."""
    try:
        waiting = slot.release(check=deferred_marker(workflow_id))
    except redis.RedisError as exc:
        log.warning("could not release workflow slot %s: %s", slot.key, exc)
        return
    if waiting:
        wake_deferred_safely(workflow_id)


def wake_deferred_safely(workflow_id: uuid.UUID) -> None:
    """``wake_deferred``, or a warning if it fails (the reaper publishes deferred runs)."""
    try:
        wake_deferred(workflow_id)
    except Exception as exc:  # noqa: BLE001 - the reaper publishes deferred runs anyway
        db.session.rollback()
        log.warning("could not wake deferred runs of workflow %s: %s", workflow_id, exc)
