"""What the engine needs from the outside world, as Protocols: the caller injects them.

The engine itself does no I/O. A run gets ``RunCallbacks`` (to persist and publish node
results), a ``Clock``, and ``Ports`` for the nodes that talk to other systems. A port that is
not given makes its nodes fail with "<type> is not available in this run".

Ports receive the node's ``idempotency_key`` (``{execution}:{node key}:{attempt}``) to send on,
and the node's ``deadline`` (an aware datetime, or None) to finish by.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from app.engine.results import NodeResult


class RunCallbacks(Protocol):
    """Told about every node as it starts and finishes. An exception raised here propagates
    out of ``run_graph`` untouched (a worker raises to stop a run it no longer owns)."""

    def node_started(self, key: str, attempt: int, input: Any) -> None: ...

    def node_finished(self, result: NodeResult) -> None: ...


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class HttpPort(Protocol):
    def request(self, *, method: str, url: str, query: dict, headers: dict, body_type: str,
                json: Any, form: dict, raw: str | None, timeout_s: float,
                follow_redirects: bool, max_response_bytes: int, idempotency_key: str,
                credential_id: str | None, deadline: datetime | None) -> Any:
        """Send the request (refusing private addresses, see DESIGN.md) and return a JSON
        value, by convention ``{"status", "headers", "body"}``."""
        ...


class AiPort(Protocol):
    def template(self, template_id: str) -> dict:
        """The owner's prompt template ``{"system", "prompt"}`` (raw, to be rendered)."""
        ...

    def chat(self, *, provider: str, model: str, fallback_provider: str | None,
             fallback_model: str | None, template_id: str | None, system: str | None,
             prompt: str, conversation_key: str | None, temperature: float,
             max_tokens: int, json_schema: dict | None, idempotency_key: str,
             credential_id: str | None, deadline: datetime | None) -> Any:
        """Complete the prompt and return a JSON value, by convention ``{"text", "model",
        "usage"}`` (``"json"`` too when a ``json_schema`` was given)."""
        ...


class McpPort(Protocol):
    def call_tool(self, *, server_url: str, tool: str, arguments: dict, idempotency_key: str,
                  credential_id: str | None, deadline: datetime | None) -> Any:
        """Call ``tool`` on the MCP server and return its result as a JSON value."""
        ...


def never_cancelled() -> bool:
    return False


@dataclass(frozen=True, slots=True)
class Ports:
    http: HttpPort | None = None
    ai: AiPort | None = None
    mcp: McpPort | None = None
    is_cancelled: Callable[[], bool] = never_cancelled
