"""What a run reports (``NodeResult`` per node attempt, ``RunResult`` at the end), what a
resumed run is told about nodes that already ran (``NodeState``), and the run's options."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.engine.sandbox import RenderLimits

__all__ = ["NodeResult", "NodeState", "RunOptions", "RunResult"]


@dataclass(frozen=True, slots=True)
class NodeResult:
    """One node attempt, as reported to ``RunCallbacks.node_finished``.

    ``status``: succeeded | failed | skipped | waiting. ``key`` is the node id, or
    ``id[i]`` for the i-th item of a split's sub-branch (``id[i][j]`` when nested).
    A failed attempt that will be retried has no ``output_name``; a failed node whose
    ``on_error`` let the run go on carries the output it passed on. ``resume_at`` is set for
    a parked wait, and for a failed attempt whose retry was parked until then.
    A skipped node has attempt 0: it never ran. A parked wait that finishes when the run
    resumes has no ``started_at`` (it started in an earlier stretch of the run).
    """

    key: str
    node_id: str
    status: str
    attempt: int
    output: Any = None
    output_name: str | None = None
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    item_index: int | None = None
    resume_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class NodeState:
    """The latest stored result of a node key, given to a resumed run.

    succeeded, skipped, and failed with an ``output_name`` (on_error continue/error_output):
    the node is not run again; its output feeds downstream as before.
    failed without ``output_name``: the next attempt runs (not before ``resume_at``), or, if
    no attempt is left, the run fails there again with ``error``.
    running: the worker died mid-node; the same attempt runs again, with the same
    idempotency key, so that external services can recognise the repeat.
    waiting: a parked wait; it succeeds once ``resume_at`` has passed, else the run parks again.
    """

    status: str
    output: Any = None
    output_name: str | None = None
    attempts: int = 1
    resume_at: datetime | None = None
    error: str | None = None


@dataclass
class RunResult:
    """How a run (or this stretch of it) ended: succeeded | failed | cancelled | parked.

    ``result`` (succeeded runs only) is the output of the last node that succeeded, in
    execution order, outside split sub-branches. ``error`` is ``{"node_id", "message"}``.
    ``resume_at`` says when a parked run is due. ``node_results`` lists what was reported.
    """

    status: str
    result: Any = None
    error: dict | None = None
    resume_at: datetime | None = None
    node_results: list[NodeResult] = field(default_factory=list)


@dataclass(frozen=True)
class RunOptions:
    max_output_bytes: int = 10_000_000
    inline_wait_max_s: float = 5.0  # longer waits (and retry backoffs) park the run
    secrets: Iterable[str] = ()  # values masked as *** in stored errors
    render_limits: RenderLimits = field(default_factory=RenderLimits)
    # When the run first started: settings.timeout_s counts from here (waits included), so a
    # run resumed after a crash does not get a fresh timeout. None: from this call.
    started_at: datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "secrets", tuple(self.secrets))
