"""A webhook delivery's pure runs run where they arrived.

Sent through the broker, a run that takes a tenth of a millisecond costs a worker's pickup
(the broker's delivery, the worker's read, claim and write: 7-11 ms of W1's 18-29 ms at c=10
in bench/webhook_bench.py) and more CPU than the whole delivery's intake. So when every node
of a linked workflow is pure (no node with side effects: nothing leaves the run), the request
thread runs that run in memory (app.services.in_memory) before the delivery is stored,
whether its sender waits for it (``respond: when_finished``) or not. The process's intake
thread then takes the workflow's concurrency slots of its whole batch's runs in one round
trip (``hold``) and stores the trigger event and each run whose slot it got already
finished, with its node rows, in the same statement — if the workflow's active version is
still the one that ran (else the run is stored queued, like any other, and a worker runs it)
— and, once that is committed, publishes the runs' events (queued, running, each node, the
final state) and frees the slots, with the rest of its batch.

A pure run is invisible until it is stored, so it holds its slot from just before its store
to just after: as a worker's run would, from the moment anything of it can be seen. A slot
that is taken sends the run to the queue, where it waits for the slot and runs anew.

The run runs on its own request's thread, so a slow one holds up nobody's delivery but its
own. It gets ``BUDGET_S`` of that thread's CPU time (checked as each node starts and at its
end; a run past it is thrown away and stored queued), and a workflow version whose run could
not finish in memory is not tried again in this process for ``SKIP_S``. A run that merely
waited long for its turn at the interpreter (past ``WALL_LIMIT_S``, each template's limit
too) goes to the queue without its version being put off.

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
from app.services.locks import WorkflowSlot, acquire_all, release_all

log = logging.getLogger(__name__)

BUDGET_S = 0.05  # CPU seconds: a run on arrival heavier goes to the queue (runs there anew)
# A run on arrival still going after this long (waiting in turn for the interpreter, under
# load) goes to the queue as well, but its workflow version is tried again next time. It is
# also the limit of each template, and what a run in memory may go on before it would write.
WALL_LIMIT_S = runs.FLUSH_INTERVAL_S
SKIP_S = 60.0  # a workflow version that could not finish in memory is not tried for this long
# A run on arrival holds its slot across the intake's commit (at most the intake's
# STORE_TIMEOUT_S): a web process killed meanwhile leaves a hold that expires this soon,
# not after a worker's TTL_S (a concurrency-1 workflow would stall for 5 minutes).
SLOT_TTL_S = 15

_skip: dict[tuple[uuid.UUID, int], float] = {}  # (workflow, version) -> monotonic until
_skip_lock = threading.Lock()


@dataclass(slots=True, eq=False)
class Arrival:
    """A run that ran on arrival, not yet stored."""

    ran: in_memory.Ran
    version: int  # the workflow version that ran: the run is stored finished only if active
    # taken by the intake just before its store (``hold``), freed just after
    slot: WorkflowSlot = field(repr=False)


def run(link: dict, execution_id: uuid.UUID, user_id: uuid.UUID, payload: dict
        ) -> Arrival | None:
    """On the request thread: run ``link``'s run (its id chosen in advance) in memory if its
    workflow is pure; None if it is to be stored queued."""
    version = link.get("version")
    if version is None:  # a config cached by an older release
        return None
    workflow_id = uuid.UUID(link["workflow_id"])
    if _skipped(workflow_id, version):
        return None
    graph, definition = runs.load_graph(workflow_id, version)
    if graph is None or runs.side_effect_nodes(definition):
        return None
    # The budget is the request thread's CPU time: under load, threads wait for the
    # interpreter in turn, and a run that waited is not a run too heavy for a web process.
    recorder = in_memory.recorder_for(execution_id, user_id, workflow_id, 0, graph,
                                      budget_s=BUDGET_S, clock=time.thread_time)
    began = time.monotonic()
    # Each template's limit is the wall limit, not a worker's second: one stopped by it fails
    # its node, and the run, past its wall limit, goes to the queue, to run there in full.
    ran = in_memory.run(recorder, graph, link["node_id"], payload,
                        render_limits=engine.RenderLimits(timeout_s=WALL_LIMIT_S))
    late = time.monotonic() - began >= WALL_LIMIT_S
    heavy = recorder.spent() > BUDGET_S
    if ran is not None and (late or heavy):
        log.info("run %s took longer than a run on arrival may; it goes to the queue",
                 execution_id)
        ran = None
    if ran is None:
        if heavy or not late:  # too heavy, or it cannot finish in memory: not tried again
            with _skip_lock:
                if len(_skip) >= 10_000:
                    _skip.clear()
                _skip[(workflow_id, version)] = time.monotonic() + SKIP_S
        return None
    slot = WorkflowSlot(runs.store(), str(workflow_id), runs.concurrency_of(definition),
                        holder=str(execution_id), ttl_s=SLOT_TTL_S)
    return Arrival(ran, version, slot)


def hold(batch: list) -> None:
    """On the intake thread, before its store: take the slots of the runs on arrival of
    ``batch`` (intake ``Pending``s) in one round trip, in order. A run whose slot is taken, or
    every run when Redis is away, is forgotten: its delivery stores it queued."""
    taken = [(p, run_id, a) for p in batch for run_id, a in p.arrived.items()]
    if not taken:
        return
    try:
        held = acquire_all(runs.store(), [a.slot for _p, _run_id, a in taken])
    except redis.RedisError as exc:
        log.warning("workflow slots unavailable (%s); %d runs go through the queue", exc,
                    len(taken))
        held = [False] * len(taken)
    for (p, run_id, _a), ok in zip(taken, held, strict=True):
        if not ok:  # stored queued: a worker defers it until a slot frees
            del p.arrived[run_id]


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
