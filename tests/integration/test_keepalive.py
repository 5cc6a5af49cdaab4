"""The web process's worker class (app.web.keepalive) under real gunicorn: a keep-alive
connection's next request is served by the thread that answered, while it comes within the
linger; a connection quiet (or closed) past it gives its thread back to the pool."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = Path(sys.executable).with_name("gunicorn")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path) -> Iterator[callable]:
    """Starts gunicorn with the lingering worker and ``threads`` threads; stops it with
    SIGTERM, which it must obey promptly even with a connection lingering."""
    started: list[subprocess.Popen] = []

    def start(threads: int) -> int:
        port = _free_port()
        config = tmp_path / "gunicorn.conf.py"
        config.write_text("")  # not the project's: this is gunicorn with a bare WSGI app
        proc = subprocess.Popen(
            [str(GUNICORN), "-c", str(config), "--bind", f"127.0.0.1:{port}",
             "--workers", "1", "--threads", str(threads), "--worker-class",
             "tests.integration.keepalive_server.SlowLingeringWorker",
             "tests.integration.keepalive_server:app"],
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        started.append(proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return port
            except OSError:
                time.sleep(0.05)
        raise AssertionError("gunicorn did not start")

    yield start
    for proc in started:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _get(conn: http.client.HTTPConnection) -> str:
    conn.request("GET", "/")
    reply = conn.getresponse()
    assert reply.status == 200
    return reply.read().decode()


def test_back_to_back_requests_stay_on_the_thread_that_answered(server):
    port = server(threads=8)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    threads = {_get(conn) for _ in range(30)}
    conn.close()
    # Through gthread's poller each request would go to whichever of the 8 threads is free.
    assert len(threads) == 1


@pytest.mark.parametrize("quiet", ["idle", "closed"])
def test_a_connection_quiet_past_the_linger_gives_its_thread_back(server, quiet):
    port = server(threads=2)
    first = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    _get(first)  # its thread lingers on it
    if quiet == "closed":
        first.close()
    busy = socket.create_connection(("127.0.0.1", port))
    busy.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")  # the other thread, for 5 s
    time.sleep(0.2)
    other = http.client.HTTPConnection("127.0.0.1", port, timeout=4)
    _get(other)  # only the first connection's thread can answer: once its linger ends
    other.close()
    busy.close()
    if quiet == "idle":
        # The idle connection went back to the poller, and is served again from there.
        _get(first)
        first.close()


def test_a_thread_lingers_only_while_there_are_fewer_connections_than_threads(server):
    port = server(threads=1)
    first = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    _get(first)
    # Were the one thread lingering on the first connection, this would time out first.
    other = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    _get(other)
    first.close()
    other.close()
