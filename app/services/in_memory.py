"""Running a pure run in memory, before anything of it is stored.

A pure run (no node with side effects: nothing leaves the run) needs nothing but its graph and
its input, and running it twice is invisible. Two places run such runs before they are
claimed and write the outcome in one statement afterwards: a worker's batch of first
deliveries (app.services.run_batches) and a web process receiving a webhook delivery
(app.services.arrival). Here is what they share: a recorder that keeps every node row in
memory, and the engine call.

A run that goes on past its budget (``runs.FLUSH_INTERVAL_S`` unless its caller gives a
smaller one; checked as each node starts, and whenever the engine asks for a write), would
wait to retry a node, or fails unexpectedly, gives up: ``run`` returns None, nothing of it was
stored, and it goes through the queue and runs claimed, one at a time.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app import columnar, engine, logs
from app.db import db
from app.live import events
from app.models import utcnow
from app.services import runs

log = logging.getLogger(__name__)


NODE_COLUMNS = ("id", "execution_id", "node_key", "node_id", "attempt", "status", "output",
                "output_name", "error", "resume_at", "started_at", "finished_at")


def pg_insert_nodes(condition: str) -> tuple[str, dict]:
    """PostgreSQL: an ``INSERT INTO execution_nodes`` of the node rows of runs that ran in
    memory, sent as arrays (``node_arrays``): those whose ``n.execution_id`` meets
    ``condition`` (SQL over ``n``); and the parameters of the table's defaults, to send too."""
    missing = columnar.defaults(runs.NODES, NODE_COLUMNS)
    columns = ", ".join(f'"{name}"' for name in [*NODE_COLUMNS, *missing])
    values = ", ".join([*(columnar.value(runs.NODES, name, "n") for name in NODE_COLUMNS),
                        *(f"%(n_default_{name})s" for name in missing)])
    rows = columnar.source(runs.NODES, NODE_COLUMNS, prefix="n_", alias="n")
    sql = (f"INSERT INTO execution_nodes ({columns}) SELECT {values} FROM {rows} "  # noqa: S608
           f"WHERE {condition}")
    return sql, {f"n_default_{name}": value for name, value in missing.items()}


def node_arrays(rows: list[dict]) -> dict[str, list]:
    """The parameters of ``pg_insert_nodes``'s statement for ``rows`` (``Ran.node_rows``)."""
    return columnar.arrays(runs.NODES, NODE_COLUMNS, rows, prefix="n_")


class TakesLonger(Exception):
    """The run went on past its budget: it gives up, to run again claimed."""


class UnclaimedRecorder(runs.RunRecorder):
    """A recorder that keeps everything in memory: the run is not claimed, so nothing of it
    may be written before its caller's write. Once the run has gone on for its budget
    (``runs.FLUSH_INTERVAL_S`` unless given; checked as each node starts, and a pure graph
    asks for a write after ``runs.FLUSH_INTERVAL_S``) it stops."""

    budget_s: float | None = None  # else runs.FLUSH_INTERVAL_S, read as each node starts
    clock: Callable[[], float] = time.monotonic  # what the budget is counted in
    _began: float = 0.0

    def begin(self) -> None:
        super().begin()
        self._began = self.clock()

    def spent(self) -> float:
        """How much of its budget the run has spent so far."""
        return self.clock() - self._began

    def node_started(self, key: str, attempt: int, input: Any) -> None:
        budget = runs.FLUSH_INTERVAL_S if self.budget_s is None else self.budget_s
        if self.spent() > budget:
            raise TakesLonger(str(self.execution_id))
        super().node_started(key, attempt, input)

    def flush(self, final: dict | None = None) -> None:
        raise TakesLonger(str(self.execution_id))


@dataclass(slots=True, eq=False)
class Ran:
    """A run that ran in memory: its final state and node rows, none of it stored yet."""

    execution_id: uuid.UUID
    user_id: uuid.UUID
    workflow_id: uuid.UUID
    recorder: UnclaimedRecorder
    began: datetime  # the run's started_at
    final: dict  # status, result, error, finished_at, lease_expires_at (None)

    def node_rows(self) -> list[dict]:
        """The run's node rows, as ``execution_nodes`` rows to insert."""
        return [{**runs.NODE_ROW, "id": uuid.uuid4(), "execution_id": self.execution_id, **row}
                for row in self.recorder.pending]

    def events(self) -> list[dict]:
        """Once its write is committed: the run's events (running, each node, the final
        state), to publish."""
        return [events.run_event(self.execution_id, self.workflow_id, "running"),
                *self.recorder.committed(self.final)]


def recorder_for(execution_id: uuid.UUID, user_id: uuid.UUID, workflow_id: uuid.UUID,
                 epoch: int, graph, budget_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> UnclaimedRecorder:
    """A recorder for a run in memory; ``budget_s`` counted by ``clock`` from the run's
    start."""
    recorder = UnclaimedRecorder(execution_id, user_id, workflow_id, epoch, set(), set(),
                                 graph=graph)
    recorder.budget_s = budget_s
    recorder.clock = clock
    return recorder


def run(recorder: UnclaimedRecorder, graph, trigger_node_id: str, trigger_output: Any,
        render_limits: engine.RenderLimits | None = None) -> Ran | None:
    """Run the engine on ``graph`` in memory: the run once its final state is known, or None
    if it is to run again claimed (it takes longer than its budget, would wait to retry a
    node, or failed unexpectedly; nothing of it is kept)."""
    execution_id = recorder.execution_id
    token = logs.execution_id.set(str(execution_id))
    began = utcnow()
    recorder.begin()
    try:
        result = engine.run_graph(
            graph, trigger_id=trigger_node_id, trigger_output=trigger_output,
            execution={"id": str(execution_id), "workflow_id": str(recorder.workflow_id)},
            callbacks=recorder, ports=engine.Ports(is_cancelled=recorder.is_cancelled),
            options=engine.RunOptions(started_at=None, inline_wait_max_s=0.0,
                                      render_limits=render_limits or engine.RenderLimits()))
        if result.status == "parked":  # a retry to wait for: claimed, it may wait
            return None
        return Ran(execution_id, recorder.user_id, recorder.workflow_id, recorder, began,
                   {**runs.final_values(result), "started_at": began})
    except TakesLonger:
        log.info("run %s takes longer than running in memory allows; it runs again on its "
                 "own", execution_id)
        db.session.rollback()
        return None
    except Exception:  # noqa: BLE001 - one run's fault must not sink its batch or request
        log.exception("run %s failed while it ran in memory; it runs again on its own",
                      execution_id)
        db.session.rollback()
        return None
    finally:
        logs.execution_id.reset(token)
