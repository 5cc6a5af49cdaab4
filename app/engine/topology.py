"""Graph algorithms over node ids and the links between them (anything with a ``target``).
All iterative: a 100,000-node chain or cycle must not hit the recursion limit."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Protocol


class Link(Protocol):
    target: str


def topological_order(ids: list[str], outgoing: Mapping[str, Sequence[Link]],
                       incoming: Mapping[str, Sequence[Link]]) -> list[str]:
    """Kahn's algorithm; nodes left out are on or after a cycle."""
    waiting = {node_id: len(incoming[node_id]) for node_id in ids}
    ready = deque(node_id for node_id in ids if not waiting[node_id])
    order = []
    while ready:
        node_id = ready.popleft()
        order.append(node_id)
        for edge in outgoing[node_id]:
            waiting[edge.target] -= 1
            if not waiting[edge.target]:
                ready.append(edge.target)
    return order


def reachable(starts: list[str], outgoing: Mapping[str, Sequence[Link]]) -> set[str]:
    seen = set(starts)
    stack = list(starts)
    while stack:
        for edge in outgoing[stack.pop()]:
            if edge.target not in seen:
                seen.add(edge.target)
                stack.append(edge.target)
    return seen


def cycles(ids: list[str], outgoing: Mapping[str, Sequence[Link]]) -> list[list[str]]:
    """One cycle per strongly connected component of ``ids`` (Tarjan's algorithm, iterative),
    starting at the component's first node in definition order."""
    candidates = set(ids)
    index_of: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found = []
    for root in ids:
        if root in index_of:
            continue
        work = [(root, 0)]
        while work:
            node_id, next_edge = work.pop()
            if next_edge == 0:
                index_of[node_id] = low[node_id] = len(index_of)
                stack.append(node_id)
                on_stack.add(node_id)
            edges = outgoing[node_id]
            while next_edge < len(edges):
                target = edges[next_edge].target
                next_edge += 1
                if target not in candidates:
                    continue
                if target not in index_of:
                    work.append((node_id, next_edge))
                    work.append((target, 0))
                    break
                if target in on_stack:
                    low[node_id] = min(low[node_id], index_of[target])
            else:
                if low[node_id] == index_of[node_id]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node_id:
                            break
                    if len(component) > 1:
                        found.append(_cycle_through(component, ids, outgoing))
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node_id])
    return found


def _cycle_through(component: list[str], ids: list[str],
                    outgoing: Mapping[str, Sequence[Link]]) -> list[str]:
    """The shortest cycle through the component's first node (breadth-first search)."""
    members = set(component)
    start = next(node_id for node_id in ids if node_id in members)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node_id = queue.popleft()
        for edge in outgoing[node_id]:
            if edge.target == start:
                path = [node_id]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return path[::-1]
            if edge.target in members and edge.target not in came_from:
                came_from[edge.target] = node_id
                queue.append(edge.target)
    raise AssertionError("a strongly connected component always has a cycle")
