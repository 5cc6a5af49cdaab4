"""A local HTTP server for tests that stand in for another service (an API, n8n): it records
every request and answers with whatever the test's ``answer`` function returns."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: object  # parsed JSON, or None


@dataclass
class Stream:
    """An answer sent a piece at a time (server-sent events), ``delay_s`` between pieces."""

    pieces: list[bytes]
    delay_s: float = 0.0
    content_type: str = "text/event-stream"


@dataclass
class LocalService:
    answer: Callable[[Seen], tuple[int, object]]
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def start(self) -> LocalService:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                request = Seen(self.command, parts.path, parse_qs(parts.query),
                               {k.lower(): v for k, v in self.headers.items()},
                               json.loads(raw) if raw else None)
                service.seen.append(request)
                status, body = service.answer(request)
                if isinstance(body, Stream):
                    self.send_response(status)
                    self.send_header("Content-Type", body.content_type)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for piece in body.pieces:
                        self.wfile.write(piece)
                        self.wfile.flush()
                        time.sleep(body.delay_s)
                    self.close_connection = True
                    return
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _handle  # noqa: N815 - stdlib names

            def log_message(self, *_args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
