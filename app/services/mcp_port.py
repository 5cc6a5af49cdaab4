"""The MCP port: call a tool on an MCP server over streamable HTTP (the ``mcp`` SDK), or list
its tools for the editor.

The server URL is the user's, so it goes through the SSRF rules first: its host is resolved
and every address checked (loopback, private, link-local… refused unless the admin allow-list
names the host). The SDK then connects by name, so a DNS answer that changes between the check
and the connection (rebinding) is not caught here as it is for http.request, whose guard sits
in the socket; that gap is noted in the README. The node's credential (a header, a bearer
token, an OAuth connection) is opened for the run's owner and sent as headers. The SDK is
asynchronous; each call runs its own event loop on the calling (worker) thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from app.engine import NodeError
from app.services import credentials
from app.services.ssrf import AllowList, check_address

CONNECT_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 60.0


def _check_url(url: str, allow: AllowList) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NodeError("integration.mcp: the server URL must be http(s)://host/…")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise NodeError(f"integration.mcp: cannot resolve {parts.hostname}") from None
    for info in infos:
        check_address(info[4][0], parts.hostname, allow)


def _result_value(result: Any) -> Any:
    """A tool's result as JSON: its structured content, else its text (parsed if JSON)."""
    structured = getattr(result, "structured_content", None) or getattr(
        result, "structuredContent", None)
    if structured is not None:
        return structured
    texts = [getattr(item, "text", None) for item in getattr(result, "content", []) or []]
    texts = [t for t in texts if t is not None]
    if len(texts) == 1:
        try:
            return json.loads(texts[0])
        except ValueError:
            return texts[0]
    return texts


class McpPort:
    """One run's MCP port (its owner opens the node's credential)."""

    def __init__(self, allow: AllowList, owner_id: uuid.UUID) -> None:
        self.allow = allow
        self.owner_id = owner_id

    def _headers(self, credential_id: str | None, idempotency_key: str | None) -> dict:
        headers = {}
        if credential_id:
            auth = credentials.auth_for(self.owner_id, credential_id)
            if auth.query:
                raise NodeError("integration.mcp: a credential sent in the query string "
                                "cannot be used with MCP; use a header")
            headers.update(auth.headers)
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    def call_tool(self, *, server_url: str, tool: str, arguments: dict,
                  idempotency_key: str, credential_id: str | None,
                  deadline: datetime | None) -> Any:
        _check_url(server_url, self.allow)
        headers = self._headers(credential_id, idempotency_key)
        timeout = CALL_TIMEOUT_S
        if deadline is not None:
            timeout = max(0.1, min(timeout, (deadline - datetime.now(deadline.tzinfo))
                                   .total_seconds()))
        result = self._run(self._call(server_url, headers, tool, arguments), timeout,
                           server_url)
        if getattr(result, "is_error", None) or getattr(result, "isError", None):
            raise NodeError(f"integration.mcp: the tool {tool!r} failed: "
                            f"{str(_result_value(result))[:500]}")
        return _result_value(result)

    def list_tools(self, server_url: str, credential_id: str | None) -> list[dict]:
        _check_url(server_url, self.allow)
        tools = self._run(self._list(server_url, self._headers(credential_id, None)),
                          CONNECT_TIMEOUT_S * 2, server_url)
        return [{"name": t.name, "description": t.description or "",
                 "input_schema": getattr(t, "input_schema", None)
                 or getattr(t, "inputSchema", None) or {}} for t in tools]

    @staticmethod
    def _run(coroutine, timeout: float, server_url: str):
        def run():
            return asyncio.run(asyncio.wait_for(coroutine, timeout))

        try:
            try:
                asyncio.get_running_loop()
            except RuntimeError:  # no loop on this thread (a worker, a web request)
                return run()
            # called from inside an event loop: run ours on a thread of its own
            with ThreadPoolExecutor(max_workers=1) as pool:
                return pool.submit(run).result()
        except NodeError:
            raise
        except TimeoutError:
            raise NodeError(f"integration.mcp: {urlsplit(server_url).netloc} did not answer "
                            f"within {timeout:g} s") from None
        except Exception as exc:  # noqa: BLE001 - the SDK raises many kinds; name the class
            raise NodeError(f"integration.mcp: {urlsplit(server_url).netloc}: "
                            f"{type(exc).__name__}: {str(exc)[:300]}") from None

    @staticmethod
    @contextlib.asynccontextmanager
    async def _session(server_url: str, headers: dict):
        """An initialized client session with the server, over streamable HTTP."""
        from mcp import ClientSession
        from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

        async with contextlib.AsyncExitStack() as stack:
            http = await stack.enter_async_context(create_mcp_http_client(headers=headers))
            read, write = await stack.enter_async_context(
                streamable_http_client(server_url, http_client=http))
            session = await stack.enter_async_context(ClientSession(read, write))
            await session.initialize()
            yield session

    async def _call(self, server_url: str, headers: dict, tool: str, arguments: dict):
        async with self._session(server_url, headers) as session:
            return await session.call_tool(tool, arguments or {})

    async def _list(self, server_url: str, headers: dict):
        async with self._session(server_url, headers) as session:
            return (await session.list_tools()).tools
