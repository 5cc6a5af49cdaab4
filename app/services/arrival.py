"""A webhook delivery that waits for its run (``respond: when_finished``) has its run run
where it arrived, when the run is pure.

The sender waits for that run anyway. Sent through the broker, a run that takes a tenth of a
millisecond costs a worker's pickup (the broker's delivery, the worker's read, claim and
write: 7-11 ms of W1's 18-29 ms at c=10 in bench/webhook_bench.py) and about half of the
CPU of the whole request. So when every node of the workflow is pure (no node with side
effects: nothing leaves the run), the request thread marks the run a candidate, and the
process's intake thread, just before it stores the batch the delivery is in, runs the batch's
candidates in memory (app.services.in_memory) while it holds their workflows' concurrency
slots (one Redis round trip for the batch). It then stores the trigger events and those runs
already finished, with their node rows, in the same statement — each only if its workflow's
active version is still the one that ran (else the run is stored queued, like any other, and
a worker runs it) — and publishes the runs' events (queued, running, each node, the final
state) and frees the slots once that is committed.

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
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis

from app.services import in_memory, runs
from app.services.locks import WorkflowSlot, acquire_all, release_all

if TYPE_CHECKING:
    from app.services.intake import Pending

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class Candidate:
    """A run to try on arrival: its workflow version is pure."""

    execution_id: uuid.UUID  # chosen in advance
    user_id: uuid.UUID
    workflow_id: uuid.UUID
    version: int
    graph: Any
    concurrency: int
    trigger_node_id: str
    payload: dict


@dataclass(slots=True, eq=False)
class Arrival:
    """A run that ran on arrival, not yet stored."""

    ran: in_memory.Ran
    version: int  # the workflow version that ran: the run is stored finished only if active
    slot: WorkflowSlot = field(repr=False)  # held until the intake has stored it


def candidate(link: dict, execution_id: uuid.UUID, user_id: uuid.UUID, payload: dict
              ) -> Candidate | None:
    """On the request thread: ``link``'s run as a candidate if its workflow is pure (no I/O:
    the graph of a version is kept by the process); else None."""
    version = link.get("version")
    if version is None:  # a config cached by an older release
        return None
    workflow_id = uuid.UUID(link["workflow_id"])
    graph, definition = runs.load_graph(workflow_id, version)
    if graph is None or runs.side_effect_nodes(definition):
        return None
    return Candidate(execution_id, user_id, workflow_id, version, graph,
                     runs.concurrency_of(definition), link["node_id"], payload)


def run_all(batch: list[Pending]) -> None:
    """On the intake thread, before the batch is stored: run its candidates in memory, one
    after another, holding one slot per workflow (taken in one round trip, in the name of
    the workflow's first candidate; the intake frees them once the batch is stored). A
    candidate whose slot is taken, or that cannot finish in memory, is left to be stored
    queued."""
    candidates = [(p, c) for p in batch for c in p.candidates]
    if not candidates:
        return
    store = runs.store()
    slots: dict[uuid.UUID, WorkflowSlot] = {}
    for _p, c in candidates:
        if c.workflow_id not in slots:
            slots[c.workflow_id] = WorkflowSlot(store, str(c.workflow_id), c.concurrency,
                                                holder=str(c.execution_id))
    try:
        acquire_all(store, list(slots.values()))
    except redis.RedisError as exc:
        log.warning("workflow slots unavailable (%s); %d runs go through the queue", exc,
                    len(candidates))
        return
    used: set[int] = set()
    for p, c in candidates:
        slot = slots[c.workflow_id]
        if not slot.held:
            continue  # stored queued: a worker defers it until a slot frees
        recorder = in_memory.recorder_for(c.execution_id, c.user_id, c.workflow_id, 0, c.graph)
        ran = in_memory.run(recorder, c.graph, c.trigger_node_id, c.payload)
        if ran is not None:
            p.arrived[c.execution_id] = Arrival(ran, c.version, slot)
            used.add(id(slot))
    unused = [slot for slot in slots.values() if slot.held and id(slot) not in used]
    if unused:
        release(unused)


def slots_of(batch: list[Pending]) -> list[WorkflowSlot]:
    """The distinct slots the batch's runs on arrival hold."""
    return list({id(a.slot): a.slot for p in batch for a in p.arrived.values()}.values())


def release(slots: list[WorkflowSlot]) -> None:
    """Free ``slots`` (best effort: they expire anyway)."""
    try:
        release_all(runs.store(), slots, [])
    except redis.RedisError as exc:
        log.warning("could not free %d workflow slots (they expire): %s", len(slots), exc)
