"""A webhook delivery that waits for its run (``respond: when_finished``) has its run run
where it arrived, when the run is pure.

The sender waits for that run anyway. Sent through the broker, a run that takes a tenth of a
millisecond costs a worker's pickup (the broker's delivery, the worker's read, claim and
write: 7-11 ms of W1's 18-29 ms at c=10 in bench/webhook_bench.py) and about half of the
CPU of the whole request. So when every node of the workflow is pure (no node with side
effects: nothing leaves the run), the request thread takes one of the workflow's concurrency
slots and runs the run in memory (app.services.in_memory), before the delivery is stored.
The process's intake thread then stores the trigger event and the run already finished, with
its node rows, in the same statement — if the workflow's active version is still the one
that ran (else the run is stored queued, like any other, and a worker runs it) — and, once
that is committed, publishes the run's events (queued, running, each node, the final state)
and frees the slot, with the rest of its batch.

The run runs on its own request's thread, so a slow one holds up nobody's delivery but its
own. It gets ``BUDGET_S`` in all (checked as each node starts; each template's time limit is
the budget too, and a run that ends past it is thrown away and stored queued), and a
workflow version whose run could not finish in memory is not tried again in this process
for ``SKIP_S``.

Nothing is lost or run twice: until the intake's commit nothing of the run exists, and then
the event and the finished run exist together; a web process killed before it stored nothing
and answered nothing (the sender's retry is the first delivery again), after it the run is
finished and a retry is a replay. Whatever cannot finish in memory (a node with side effects, a
retry to wait for, a run past its budget or failing unexpectedly, the slot taken, Redis down,
a workflow version not known here) is stored queued and goes through the queue as before.

This departs from DESIGN.md ("runs execute on queue workers") for this one case; README
"Webhooks" says why.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

import redis

from app import engine
from app.services import in_memory, runs
from app.services.locks import WorkflowSlot, release_all

log = logging.getLogger(__name__)

BUDGET_S = 0.05  # a run on arrival longer than this goes to the queue (runs there anew)
SKIP_S = 60.0  # a workflow version that could not finish in memory is not tried for this long
# A run on arrival holds its slot from its run to the intake's commit (at most the intake's
# STORE_TIMEOUT_S): a web process killed in between leaves a hold that expires this soon,
# not after a worker's TTL_S (a concurrency-1 workflow would stall for 5 minutes).
SLOT_TTL_S = 15

_skip: dict[tuple[uuid.UUID, int], float] = {}  # (workflow, version) -> monotonic until
_skip_lock = threading.Lock()


@dataclass(slots=True, eq=False)
class Arrival:
    """A run that ran on arrival, not yet stored."""

    ran: in_memory.Ran
    version: int  # the workflow version that ran: the run is stored finished only if active
    slot: WorkflowSlot = field(repr=False)  # held until the intake has stored it (it frees it)


def run(link: dict, execution_id: uuid.UUID, user_id: uuid.UUID, payload: dict
        ) -> Arrival | None:
    """On the request thread: run ``link``'s run (its id chosen in advance) in memory if its
    workflow is pure and one of its slots is free; None if it is to be stored queued."""
    version = link.get("version")
    if version is None:  # a config cached by an older release
        return None
    workflow_id = uuid.UUID(link["workflow_id"])
    if _skipped(workflow_id, version):
        return None
    graph, definition = runs.load_graph(workflow_id, version)
    if graph is None or runs.side_effect_nodes(definition):
        return None
    slot = WorkflowSlot(runs.store(), str(workflow_id), runs.concurrency_of(definition),
                        holder=str(execution_id), ttl_s=SLOT_TTL_S)
    try:
        if not slot.acquire():
            return None  # stored queued: a worker defers it until a slot frees
    except redis.RedisError as exc:
        log.warning("workflow slots unavailable (%s); the run goes through the queue", exc)
        return None
    budget = min(BUDGET_S, runs.FLUSH_INTERVAL_S)
    recorder = in_memory.recorder_for(execution_id, user_id, workflow_id, 0, graph,
                                      budget_s=budget)
    began = time.monotonic()
    # Each template gets the run's budget, not a worker's second: one that runs out fails
    # its node, and the run, past its budget, goes to the queue, to run there in full.
    ran = in_memory.run(recorder, graph, link["node_id"], payload,
                        render_limits=engine.RenderLimits(timeout_s=budget))
    if ran is not None and time.monotonic() - began > budget:
        log.info("run %s took longer than a run on arrival may; it goes to the queue",
                 execution_id)
        ran = None
    if ran is None:
        release([slot])
        with _skip_lock:
            if len(_skip) >= 10_000:
                _skip.clear()
            _skip[(workflow_id, version)] = time.monotonic() + SKIP_S
        return None
    return Arrival(ran, version, slot)


def _skipped(workflow_id: uuid.UUID, version: int) -> bool:
    until = _skip.get((workflow_id, version))
    if until is None:
        return False
    if until > time.monotonic():
        return True
    with _skip_lock:
        _skip.pop((workflow_id, version), None)
    return False


def slots_of(batch: list) -> list[WorkflowSlot]:
    """The slots the runs on arrival of ``batch`` (intake ``Pending``s) hold."""
    return [a.slot for p in batch for a in p.arrived.values()]


def release(slots: list[WorkflowSlot]) -> None:
    """Free ``slots`` (best effort: they expire anyway)."""
    try:
        release_all(runs.store(), slots, [])
    except redis.RedisError as exc:
        log.warning("could not free %d workflow slots (they expire): %s", len(slots), exc)
