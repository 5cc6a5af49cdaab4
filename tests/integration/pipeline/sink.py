"""A local HTTP service that workflows call, counting what reaches it.

Every side effect of the fault tests goes through here, so "no succeeded node ran twice" is
a count: hits per path, the ``Idempotency-Key`` each carried, and how many requests of a path
were in flight at once (which is how the concurrency tests see the per-workflow limit).

    GET|POST /hit/<name>?sleep=<s>   answers {"name": <name>} after sleeping s seconds
    GET      /big?bytes=<n>          answers n bytes of '"' as text (n × 2 once in JSON)
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Hit:
    path: str
    idempotency_key: str | None
    started: float
    finished: float | None = None


@dataclass
class Sink:
    server: ThreadingHTTPServer
    hits: list[Hit] = field(default_factory=list)
    in_flight: Counter = field(default_factory=Counter)
    max_in_flight: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for hit in self.hits if hit.path == path)

    def keys(self, path: str) -> Counter:
        """How many times each idempotency key reached ``path``."""
        with self.lock:
            return Counter(hit.idempotency_key for hit in self.hits if hit.path == path)

    def running(self, path: str) -> int:
        with self.lock:
            return self.in_flight[path]

    def peak(self, path: str) -> int:
        with self.lock:
            return self.max_in_flight[path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_sink() -> Sink:
    sink: Sink

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep the test output quiet
            pass

        def do_GET(self) -> None:
            self.handle_hit()

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self.handle_hit()

        def handle_hit(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            if url.path == "/big":
                self.answer(b'"' * int(query["bytes"]), "text/plain")
                return
            hit = Hit(url.path, self.headers.get("Idempotency-Key"), time.monotonic())
            with sink.lock:
                sink.hits.append(hit)
                sink.in_flight[url.path] += 1
                sink.max_in_flight[url.path] = max(sink.max_in_flight[url.path],
                                                   sink.in_flight[url.path])
            try:
                time.sleep(float(query.get("sleep", 0)))
            finally:
                with sink.lock:
                    sink.in_flight[url.path] -= 1
                    hit.finished = time.monotonic()
            self.answer(json.dumps({"name": url.path.rsplit("/", 1)[-1]}).encode(),
                        "application/json")

        def answer(self, body: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # The worker that asked may have been killed meanwhile; the count stands.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    sink = Sink(server)
    threading.Thread(target=server.serve_forever, name="sink", daemon=True).start()
    return sink


def by_path(sink: Sink) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    with sink.lock:
        for hit in sink.hits:
            counts[hit.path] += 1
    return dict(counts)
