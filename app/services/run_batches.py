"""Running several pure runs at once: the queue hands a worker thread the deliveries that
gathered while it was busy, and their bookkeeping is shared.

A run one at a time (app.services.runs) costs two transactions, four Redis round trips and an
ack; most of a short run's time. A batch of first deliveries of pure workflows (no node with
side effects: nothing leaves the run, so running it needs nothing but its input) costs, for
all its runs together: one transaction to sort and claim them (a SELECT that locks their
rows, then one UPDATE of the pure queued ones), one round trip for their workflows' slots (one
slot per workflow: the batch runs one run at a time), one for their "running" events, one
transaction for their final states (one statement fenced by each run's epoch:
``app.columnar`` on PostgreSQL, an executemany of the same fenced update on SQLite) and node
rows (one INSERT), one round trip for their events and the slots' release. The runs
themselves go one after another on the calling thread, each with its own recorder.

Everything else in the batch — a redelivery (it may have node rows to resume from), a retry,
a run whose cancellation was asked, a workflow with side effects, a version that no longer
exists — is handed back untouched, for the queue to run one at a time.

Correctness is the same as one at a time: every run is claimed by its epoch and finished by a
write fenced by it; a run fenced out meanwhile (the reaper handed it on) writes nothing and
publishes nothing. Until the batch's final transaction commits, every run of it is ``running``
and the lease keeper renews its lease; a worker killed before the commit leaves them to the
reaper (the queue delivers them again, and their claim then finds nothing to do), so a run is
lost by nothing and finished once.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import bindparam, select, update

from app import columnar, engine, logs
from app.db import db
from app.live import events
from app.models import utcnow
from app.services import runs
from app.services.locks import WorkflowSlot, acquire_all, release_all

log = logging.getLogger(__name__)

RUNS = runs.RUNS
# The claim reaches rows by their ids alone: with ``status = 'queued'`` beside the ids,
# PostgreSQL may take the (status, lease) index when its statistics say few runs are queued
# (a table not yet analyzed, or a burst after a quiet spell), and then read every queued row
# for each claim — the former ``id IN (SELECT … FOR UPDATE SKIP LOCKED) AND status = …`` did
# so once per queued row (4-12 ms for one run with 400 queued). The sort locks the rows it
# reads (SKIP LOCKED: a row another worker is claiming is left to it) and checks the status
# itself; the claim then updates the locked queued rows by id. SQLite ignores the lock (the
# SELECT runs before its write transaction begins), so there the claim checks the status.
_SORT = select(RUNS.c.id, RUNS.c.status, RUNS.c.workflow_id, RUNS.c.workflow_version,
               RUNS.c.deliveries, RUNS.c.retry_of_id, RUNS.c.cancel_requested).where(
    RUNS.c.id.in_(bindparam("run_ids", expanding=True))).with_for_update(skip_locked=True)
_CLAIM_LOCKED = (update(RUNS).where(RUNS.c.id.in_(bindparam("run_ids", expanding=True)))
                 .values(runs.CLAIMED).returning(RUNS.c.id, *runs.CLAIM_RETURNS))
_CLAIM_QUEUED = _CLAIM_LOCKED.where(RUNS.c.status == "queued")
_EPOCHS = select(RUNS.c.id, RUNS.c.epoch).where(
    RUNS.c.id.in_(bindparam("run_ids", expanding=True)))


@dataclass(slots=True, eq=False)
class _Run:
    """One run of the batch on its way through."""

    id: uuid.UUID
    claim: runs.Claim
    graph: Any
    slot: WorkflowSlot
    recorder: runs.RunRecorder
    began: datetime
    final: dict | None = None


def run_batch(execution_ids: list[str]) -> list[str]:
    """Queue handler for several deliveries: runs the pure first deliveries among them and
    returns the ids to run one at a time (``runs.run_execution``). Returns once every run it
    kept is committed; raises only on infrastructure failure (none of them is then finished)."""
    try:
        return _run_batch([uuid.UUID(execution_id) for execution_id in execution_ids])
    finally:
        db.remove()


def _run_batch(ids: list[uuid.UUID]) -> list[str]:
    batch, single = _sort_and_claim(ids)
    batch = _take_slots(batch)
    keeper = runs.lease_keeper()
    for run in batch:
        keeper.track(run.recorder, run.slot)
    try:
        events.publish_each(runs.store(), [
            (run.claim.user_id, events.run_event(run.id, run.claim.workflow_id, "running"))
            for run in batch])
        finished = [run for run in batch if _execute(run)]
        finished = _finish(finished)
    finally:
        for run in batch:
            keeper.untrack(run.id)
    _settle(batch, finished)
    return [str(execution_id) for execution_id in single]


def _sort_and_claim(ids: list[uuid.UUID]) -> tuple[list[_Run], list[uuid.UUID]]:
    """One transaction: claim the pure first deliveries among ``ids``; returns them, and the
    ids still queued that must run one at a time. Ids no longer queued are dropped: as for
    one run's claim, they are finished, held elsewhere or duplicates."""
    now = utcnow()
    with db.engine.begin() as connection:
        pure, single = _sort(connection.execute(_SORT, {"run_ids": ids}).all(), ids)
        if not pure:
            return [], single
        rows = connection.execute(_CLAIM_QUEUED if db.is_sqlite else _CLAIM_LOCKED, {
            "run_ids": pure, "now": now, "lease": now + runs.lease_length()}).all()
    return _claimed(_in_order(rows, ids), now), single


def _sort(rows, ids: list[uuid.UUID]) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """(pure first deliveries, the rest still queued), in the order of ``ids``."""
    pure, single = [], []
    for row in _in_order([row for row in rows if row.status == "queued"], ids):
        graph, definition = runs.load_graph(row.workflow_id, row.workflow_version)
        if (graph is None or row.deliveries or row.retry_of_id is not None
                or row.cancel_requested or runs.side_effect_nodes(definition)):
            single.append(row.id)
        else:
            pure.append(row.id)
    return pure, single


def _in_order(rows, ids: list[uuid.UUID]) -> list:
    """``rows`` (with an ``id``) in the order of ``ids``: the first delivered comes first."""
    order = {execution_id: n for n, execution_id in enumerate(ids)}
    return sorted(rows, key=lambda row: order[row.id])


def _claimed(rows, now: datetime) -> list[_Run]:
    """The batch's runs, from the rows its claim returned."""
    store = runs.store()
    slots: dict[uuid.UUID, WorkflowSlot] = {}
    batch = []
    for row in rows:
        claim = runs.claimed_from(row._mapping, now)
        graph, definition = runs.load_graph(claim.workflow_id, claim.workflow_version)
        slot = slots.get(claim.workflow_id)
        if slot is None:
            # The batch runs one run at a time: one slot per workflow is enough, held in the
            # name of the workflow's first run (its redelivery after a crash takes it back).
            slot = slots[claim.workflow_id] = WorkflowSlot(
                store, str(claim.workflow_id), runs.concurrency_of(definition),
                holder=str(row.id))
        batch.append(_Run(
            id=row.id, claim=claim, graph=graph, began=claim.started_at or now, slot=slot,
            recorder=runs.RunRecorder(row.id, claim.user_id, claim.workflow_id, claim.epoch,
                                      set(), set(), graph=graph)))
    return batch


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
            runs.defer(run.id, run.claim.workflow_id, run.claim.epoch,
                       run.claim.started_at is None)
    return [run for run in batch if run.slot.held]


def _execute(run: _Run) -> bool:
    """Run the engine on one run of the batch; False if it has nothing to commit (fenced, or
    failed unexpectedly: the reaper hands it on once its lease passes)."""
    token = logs.execution_id.set(str(run.id))
    run.recorder.begin()
    try:
        result = engine.run_graph(
            run.graph, trigger_id=run.claim.trigger_node_id, trigger_output=run.claim.input,
            execution={"id": str(run.id), "workflow_id": str(run.claim.workflow_id)},
            callbacks=run.recorder, ports=engine.Ports(is_cancelled=run.recorder.is_cancelled),
            options=engine.RunOptions(started_at=run.claim.started_at))
        if result.status == "parked":  # not for a pure graph; if ever, as one run would
            run.recorder.finish(result)
            return False
        run.final = runs.final_values(result)
        return True
    except runs.Fenced:
        log.info("run %s was handed to another worker; this one stops", run.id)
        db.session.rollback()
        return False
    except Exception:  # noqa: BLE001 - one run's fault must not sink the batch
        log.exception("run %s failed in its batch; the reaper hands it on", run.id)
        db.session.rollback()
        return False
    finally:
        logs.execution_id.reset(token)


def _finish(batch: list[_Run]) -> list[_Run]:
    """Commit every run's final state and node rows in one transaction; returns the runs
    whose write went in (the others were fenced out meanwhile)."""
    if not batch:
        return []
    now = utcnow()
    with db.engine.begin() as connection:
        written = _write_finals(connection, batch, now)
        kept = [run for run in batch if run.id in written]
        if len(kept) < len(batch):
            for run in batch:
                if run.id not in written:
                    run.recorder.fenced.set()
            log.info("%d runs of the batch were handed to another worker; this one writes "
                     "nothing of them", len(batch) - len(kept))
        inserts = [row for run in kept for row in run.recorder.write_known_nodes(connection)]
        if inserts:
            if db.is_sqlite:
                connection.execute(runs.INSERT_NODES, inserts)
            else:
                columnar.insert(connection, runs.NODES, inserts)
    return kept


def _write_finals(connection, batch: list[_Run], now: datetime) -> set[uuid.UUID]:
    """Each run's final state, written only while its epoch is still the batch's (one
    statement per shape of final state); the ids written."""
    written: set[uuid.UUID] = set()
    shapes: dict[frozenset, list[_Run]] = {}
    for run in batch:
        shapes.setdefault(frozenset(run.final), []).append(run)
    for shape, group in shapes.items():
        if db.is_sqlite:
            touched = connection.execute(
                runs.fenced_update(shape | {"updated_at"}),
                [{"run_id": run.id, "run_epoch": run.recorder.epoch, "updated_at": now,
                  **run.final} for run in group]).rowcount
            if touched == len(group):
                written.update(run.id for run in group)
            else:
                current = dict(connection.execute(
                    _EPOCHS, {"run_ids": [run.id for run in group]}).all())
                written.update(run.id for run in group
                               if current.get(run.id) == run.recorder.epoch)
        else:
            written.update(columnar.update(
                connection, RUNS,
                [{"id": run.id, "epoch": run.recorder.epoch, "updated_at": now, **run.final}
                 for run in group], match=("id", "epoch"), returning="id").scalars())
    return written


def _settle(batch: list[_Run], finished: list[_Run]) -> None:
    """After the commit: publish the finished runs' events and free every slot not handed on
    (one round trip), wake the workflows with deferred runs, count the finished runs."""
    published = [(run.claim.user_id, event) for run in finished
                 for event in run.recorder.committed(run.final)]
    # A slot held in the name of a run that was handed on is that run's new holder's now.
    handed_on = {str(run.id) for run in batch if run.recorder.fenced.is_set()}
    released = [slot for slot in _distinct_slots(batch) if slot.token not in handed_on]
    workflows = list(dict.fromkeys(run.claim.workflow_id for run in batch))
    try:
        waiting = release_all(runs.store(), released,
                              [runs.deferred_marker(workflow_id) for workflow_id in workflows],
                              also=lambda pipe: events.queue_each(pipe, published))
    except redis.RedisError as exc:
        log.warning("could not publish %d events nor free %d workflow slots: %s",
                    len(published), len(released), exc)
        waiting = []
    for workflow_id, has_waiting in zip(workflows, waiting, strict=False):
        if has_waiting:
            runs.wake_deferred_safely(workflow_id)
    for run in finished:
        token = logs.execution_id.set(str(run.id))
        try:
            runs.count_finished(run.final["status"], run.began)
        finally:
            logs.execution_id.reset(token)
