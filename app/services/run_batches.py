"""Running several pure runs at once: the queue hands a worker thread the deliveries that
gathered while it was busy, and their bookkeeping is shared.

A run one at a time (app.services.runs) costs two transactions (its claim, its final write),
four Redis round trips and an ack; most of a short run's time. A pure run (no node with side
effects: nothing leaves the run, so running it needs nothing but its input, and running it
twice is invisible) needs no claim before it runs: a batch of first deliveries of pure
workflows costs, for all its runs together, one read of their rows, one Redis round trip for
their workflows' slots (one slot per workflow: the batch runs one run at a time), and then,
once they ran, one write that claims and finishes them at once — each run's final state
only ``WHERE status = 'queued' AND epoch = <the epoch read>``, with its node rows (on
PostgreSQL one statement sent on its own; on SQLite one transaction) — and one round trip
for their events (running, each node, the final state) and the slots' release.

Everything else in the batch — a redelivery (it may have node rows to resume from), a retry,
a run whose cancellation was asked, a workflow with side effects, a version that no longer
exists — is handed back untouched, for the queue to run one at a time; so is a pure run that
takes longer than ``runs.FLUSH_INTERVAL_S``, would wait to retry a node (a batch never sleeps)
or fails unexpectedly (it stops, and runs again claimed, its nodes shown as they finish).

Correctness: until the write, a run of the batch is still ``queued`` and nothing of it is
stored or published. The write goes in only if nobody moved the run meanwhile: claimed by
another worker (a duplicate delivery), cancelled, or handed on by the reaper (each changes
its status or epoch; of two workers finishing the same run, the second finds it no longer
queued). A worker killed before the write leaves the run queued, and the reaper publishes it
again once its lease passes, as for a lost publish. So a run is lost by nothing and finished
once.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import bindparam, select, update

from app import columnar, logs
from app.db import db
from app.live import events
from app.models import utcnow
from app.services import in_memory, runs
from app.services.locks import WorkflowSlot, acquire_all, release_all

log = logging.getLogger(__name__)

RUNS = runs.RUNS
# The read reaches rows by their ids alone: with ``status = 'queued'`` beside the ids,
# PostgreSQL may take the (status, lease) index when its statistics say few runs are queued
# (a table not yet analyzed, or a burst after a quiet spell), and then read every queued row
# (a former claim did so once per queued row: 4-12 ms for one run with 400 queued). The
# status is checked here, on the rows read, and again by the write.
_READ = select(RUNS.c.id, RUNS.c.status, RUNS.c.epoch, RUNS.c.user_id, RUNS.c.workflow_id,
               RUNS.c.workflow_version, RUNS.c.trigger_node_id, RUNS.c.input,
               RUNS.c.deliveries, RUNS.c.retry_of_id, RUNS.c.cancel_requested).where(
    RUNS.c.id.in_(bindparam("run_ids", expanding=True)))
# What the write sets besides the final state: the claim's bookkeeping, done at once.
_CLAIM_AND_FINISH = {"epoch": RUNS.c.epoch + 1, "deliveries": RUNS.c.deliveries + 1}
# SQLite: one fenced UPDATE per run, in one transaction (its rowcount says which went in).
_FINISH_ONE = (update(RUNS).where(RUNS.c.id == bindparam("run_id"),
                                  RUNS.c.epoch == bindparam("run_epoch"),
                                  RUNS.c.status == "queued")
               .values(**_CLAIM_AND_FINISH,
                       **{name: bindparam(name, type_=RUNS.c[name].type) for name in (
                           "status", "result", "error", "started_at", "finished_at",
                           "lease_expires_at", "updated_at")}))
_FINAL_COLUMNS = ("id", "epoch", "status", "result", "error", "started_at", "finished_at")
def _pg_finish_statement() -> tuple[str, dict]:
    """PostgreSQL: the batch's write as one statement (run on its own, no BEGIN/COMMIT):
    ``f`` the final states, ``u`` the runs still queued at the epoch read, finished and
    claimed at once, ``n`` the node rows of those. Answers the ids written."""
    insert_nodes, node_defaults = in_memory.pg_insert_nodes(
        "n.execution_id IN (SELECT u.id FROM u)")
    assignments = ", ".join(
        [f'"{name}" = {columnar.value(RUNS, name, "f")}'
         for name in _FINAL_COLUMNS if name not in ("id", "epoch")]
        + ['"epoch" = x.epoch + 1', '"deliveries" = x.deliveries + 1',
           '"lease_expires_at" = NULL', '"updated_at" = %(now)s'])
    sql = f"""
WITH f AS (SELECT * FROM {columnar.source(RUNS, _FINAL_COLUMNS, prefix="f_", alias="f")}),
u AS (UPDATE executions AS x SET {assignments} FROM f
      WHERE x.id = f.id AND x.epoch = f.epoch AND x.status = 'queued' RETURNING x.id),
n AS ({insert_nodes})
SELECT id FROM u
"""  # noqa: S608 - every name is fixed here; the values travel as parameters
    return sql, node_defaults


_PG_FINISH, _PG_FINISH_DEFAULTS = _pg_finish_statement()


@dataclass(slots=True, eq=False)
class _Run:
    """One run of the batch on its way through."""

    id: uuid.UUID
    epoch: int  # as read: the write goes in only if it is still this
    claim: runs.Claim
    graph: Any
    slot: WorkflowSlot
    recorder: in_memory.UnclaimedRecorder
    ran: in_memory.Ran | None = None  # once it ran: its final state and node rows


def run_batch(execution_ids: list[str]) -> list[str]:
    """Queue handler for several deliveries: runs the pure first deliveries among them and
    returns the ids to run one at a time (``runs.run_execution``). Returns once every run it
    kept is committed; raises only on infrastructure failure (none of them is then finished)."""
    try:
        return _run_batch([uuid.UUID(execution_id) for execution_id in execution_ids])
    finally:
        db.remove()


def _run_batch(ids: list[uuid.UUID]) -> list[str]:
    batch, single = _read(ids)
    ran: list[_Run] = []
    try:
        batch = _take_slots(batch)
        for run in batch:
            if _execute(run):
                ran.append(run)
            else:  # it runs again claimed, one at a time
                single.append(run.id)
        written = _finish(ran)
    except BaseException:
        _release(batch)
        raise
    _settle(batch, written)
    return [str(execution_id) for execution_id in single]


def _read(ids: list[uuid.UUID]) -> tuple[list[_Run], list[uuid.UUID]]:
    """One read: the pure first deliveries among ``ids`` (to run here), and the ids still
    queued that must run one at a time. Ids no longer queued are dropped: as for one run's
    claim, they are finished, held elsewhere or duplicates."""
    rows = _autocommit(lambda connection: connection.execute(_READ, {"run_ids": ids}).all())
    store = runs.store()
    slots: dict[uuid.UUID, WorkflowSlot] = {}
    batch: list[_Run] = []
    single: list[uuid.UUID] = []
    for row in _in_order([row for row in rows if row.status == "queued"], ids):
        graph, definition = runs.load_graph(row.workflow_id, row.workflow_version)
        if (graph is None or row.deliveries or row.retry_of_id is not None
                or row.cancel_requested or runs.side_effect_nodes(definition)):
            single.append(row.id)
            continue
        slot = slots.get(row.workflow_id)
        if slot is None:
            # The batch runs one run at a time: one slot per workflow is enough, held in the
            # name of the workflow's first run.
            slot = slots[row.workflow_id] = WorkflowSlot(
                store, str(row.workflow_id), runs.concurrency_of(definition),
                holder=str(row.id))
        claim = runs.Claim(epoch=row.epoch, user_id=row.user_id, workflow_id=row.workflow_id,
                           workflow_version=row.workflow_version,
                           trigger_node_id=row.trigger_node_id, input=row.input,
                           started_at=None, deliveries=row.deliveries, retry_of_id=None,
                           cancel_requested=False)
        batch.append(_Run(
            id=row.id, epoch=row.epoch, claim=claim, graph=graph, slot=slot,
            recorder=in_memory.recorder_for(row.id, row.user_id, row.workflow_id, row.epoch,
                                            graph)))
    return batch, single


def _autocommit(statement):
    """``statement(connection)`` as a statement of its own: on PostgreSQL without BEGIN and
    COMMIT (one round trip, not three)."""
    if db.is_sqlite:
        with db.engine.begin() as connection:
            return statement(connection)
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        return statement(connection)


def _in_order(rows, ids: list[uuid.UUID]) -> list:
    """``rows`` (with an ``id``) in the order of ``ids``: the first delivered comes first."""
    order = {execution_id: n for n, execution_id in enumerate(ids)}
    return sorted(rows, key=lambda row: order[row.id])


def _distinct_slots(batch: list[_Run]) -> list[WorkflowSlot]:
    return list({id(run.slot): run.slot for run in batch}.values())


def _take_slots(batch: list[_Run]) -> list[_Run]:
    """The runs whose workflow's slot the batch got; the others are deferred, as one run
    is."""
    try:
        acquire_all(runs.store(), _distinct_slots(batch))
    except redis.RedisError as exc:
        log.warning("workflow slots unavailable (%s); running on the database fence alone", exc)
        return batch
    for run in batch:
        if not run.slot.held:
            runs.defer(run.id, run.claim.workflow_id, run.epoch, claimed=False)
    return [run for run in batch if run.slot.held]


def _execute(run: _Run) -> bool:
    """Run one run of the batch in memory (``in_memory.run``): True once its final state is
    known; False if it is to run again claimed."""
    run.ran = in_memory.run(run.recorder, run.graph, run.claim.trigger_node_id, run.claim.input)
    return run.ran is not None


def _finish(ran: list[_Run]) -> list[_Run]:
    """Claim and finish every run that ran, with its node rows, where it is still queued at
    the epoch read; returns the runs written (the others moved meanwhile)."""
    if not ran:
        return []
    # In id order: two batches writing the same runs (a duplicate delivery) lock their rows
    # in the same order, so neither waits for the other in a cycle.
    ran = sorted(ran, key=lambda run: run.id)
    now = utcnow()
    nodes = [row for run in ran for row in run.ran.node_rows()]
    if db.is_sqlite:
        written = _finish_sqlite(ran, nodes, now)
    else:
        finals = [{"id": run.id, "epoch": run.epoch, **{name: run.ran.final[name] for name in (
            "status", "result", "error", "started_at", "finished_at")}} for run in ran]
        written = _autocommit(lambda connection: set(connection.exec_driver_sql(_PG_FINISH, {
            **columnar.arrays(RUNS, _FINAL_COLUMNS, finals, prefix="f_"),
            **in_memory.node_arrays(nodes),
            **_PG_FINISH_DEFAULTS, "now": now}).scalars()))
    kept = [run for run in ran if run.id in written]
    if len(kept) < len(ran):
        log.info("%d runs of the batch were handed to another worker; this one writes "
                 "nothing of them", len(ran) - len(kept))
    return kept


def _finish_sqlite(ran: list[_Run], nodes: list[dict], now: datetime) -> set[uuid.UUID]:
    written: set[uuid.UUID] = set()
    with db.engine.begin() as connection:
        for run in ran:
            if connection.execute(_FINISH_ONE, {
                    "run_id": run.id, "run_epoch": run.epoch, "updated_at": now,
                    **{name: run.ran.final.get(name) for name in (
                        "status", "result", "error", "started_at", "finished_at",
                        "lease_expires_at")}}).rowcount:
                written.add(run.id)
        rows = [row for row in nodes if row["execution_id"] in written]
        if rows:
            connection.execute(runs.INSERT_NODES, rows)
    return written


def _release(batch: list[_Run]) -> None:
    """Free the batch's slots after a failure (best effort: they expire anyway)."""
    try:
        release_all(runs.store(), _distinct_slots(batch), [])
    except redis.RedisError:
        log.warning("could not free %d workflow slots", len(_distinct_slots(batch)))


def _settle(batch: list[_Run], written: list[_Run]) -> None:
    """After the write: publish the written runs' events (running, each node, the final
    state) and free the slots (one round trip), wake the workflows with deferred runs, count
    the finished runs."""
    published = [(run.claim.user_id, event) for run in written for event in run.ran.events()]
    workflows = list(dict.fromkeys(run.claim.workflow_id for run in batch))
    try:
        # A slot held in the name of a run that moved meanwhile is freed too, unless that
        # run's new holder took it back as its own (locks: a hold is freed only by its taker).
        waiting = release_all(runs.store(), _distinct_slots(batch),
                              [runs.deferred_marker(workflow_id) for workflow_id in workflows],
                              also=lambda pipe: events.queue_each(pipe, published))
    except redis.RedisError as exc:
        log.warning("could not publish %d events nor free %d workflow slots: %s",
                    len(published), len(_distinct_slots(batch)), exc)
        waiting = []
    for workflow_id, has_waiting in zip(workflows, waiting, strict=False):
        if has_waiting:
            runs.wake_deferred_safely(workflow_id)
    for run in written:
        token = logs.execution_id.set(str(run.id))
        try:
            runs.count_finished(run.ran.final["status"], run.ran.began)
        finally:
            logs.execution_id.reset(token)
