"""W3 and W4 (DESIGN.md): the engine's own overhead, with nothing else in the way.

W3: one run of a chain of N logic.set nodes (total = input.total + 1, email lower-cased),
    with callbacks that do nothing: per-node overhead in ms.
W4: validate an N-node chain of logic.set: ms.

Run: .venv/bin/python bench/engine_bench.py   (prints one line per figure, asserts nothing)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.engine import Limits, run_graph, validate  # noqa: E402

FIELDS = {"total": "{{ input.total + 1 }}", "email": "{{ input.email | lower }}"}
BENCH_LIMITS = Limits(max_nodes=200_000, max_bytes=512 * 1024 * 1024)


def chain(length: int) -> dict:
    nodes = [{"id": "start", "type": "trigger.manual"}]
    connections = []
    previous = "start"
    for index in range(length):
        node_id = f"set{index}"
        nodes.append({"id": node_id, "type": "logic.set", "params": {"fields": dict(FIELDS)}})
        connections.append({"from": previous, "to": node_id})
        previous = node_id
    return {"name": f"chain of {length}", "nodes": nodes, "connections": connections,
            "settings": {"concurrency": 1, "timeout_s": 3600}}


class NoCallbacks:
    def node_started(self, key, attempt, input):
        pass

    def node_finished(self, result):
        pass


def best_of(repeats: int, work) -> float:
    """The fastest of ``repeats`` runs, in seconds: the figure least disturbed by noise."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        timings.append(time.perf_counter() - started)
    return min(timings)


def w3(length: int) -> None:
    graph = validate(chain(length), BENCH_LIMITS).graph
    trigger_output = {"total": 0, "email": "Someone@Example.COM"}

    def run() -> None:
        result = run_graph(graph, trigger_id="start", trigger_output=trigger_output,
                           execution={"id": "bench", "workflow_id": "bench"},
                           callbacks=NoCallbacks())
        assert result.status == "succeeded" and result.result["total"] == length

    seconds = best_of(3, run)
    print(f"W3 chain={length} per_node_ms={seconds * 1000 / length:.4f} "
          f"total_ms={seconds * 1000:.1f}")


def w4(length: int) -> None:
    definition = chain(length)
    seconds = best_of(3 if length <= 10_000 else 2, lambda: validate(definition, BENCH_LIMITS))
    print(f"W4 nodes={length} validate_ms={seconds * 1000:.1f} "
          f"per_node_us={seconds * 1e6 / length:.2f}")


if __name__ == "__main__":
    for n in (1_000, 10_000):
        w3(n)
    for n in (1_000, 10_000, 100_000):
        w4(n)
