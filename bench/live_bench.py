"""Live events: latency from an event's publish (after its commit) to its receipt by clients.

    .venv/bin/python bench/live_bench.py [--clients 100] [--events 200] [--rate 50]

Starts the web process as the Procfile's ``web`` line does (gunicorn gthread), in production
mode against PostgreSQL ``jobsprint_bench_live`` (dropped, created and migrated with ``python
-m jobs.release``) and Redis db 12, with a temporary instance path. It signs a user in through
the login form, starts one run of a one-node workflow (so the dashboard rows have a real run to
render; with no QUEUE_URL the web process runs it itself), opens ``--clients`` sockets on
``/ws/dashboard`` with that session cookie, then publishes ``--events`` run events for that run
on the user's channel at ``--rate`` per second, exactly as a worker does after its commit. Each
client notes when each event's row arrives (one selector thread for every socket, so receipt
times are not skewed by threads).

Prints, one line per figure: p50 / p99 / max ms from PUBLISH to receipt over all clients and
events, the clients that received every event, the web workers' threads and RSS with the
sockets open (and idle, and per socket), and, for comparison, the raw Redis PUBLISH round trip
measured in the same run. Nothing is asserted.

``Swarm`` (many WebSocket clients on one thread, with wsproto) and ``WebProcess`` (the
Procfile's web line as a subprocess) are shared with tests/integration/test_live_capacity.py.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PASSWORD = "correct horse battery"


def figure(label: str, name: str, value: float, unit_digits: int = 1, **context) -> None:
    details = "".join(f" {key}={val}" for key, val in context.items())
    shown = f"{value:,.{unit_digits}f}" if isinstance(value, float) else f"{value:,}"
    print(f"{label} {name}={shown}{details}", flush=True)


# --- many WebSocket clients on one thread ---------------------------------------------------

class Swarm:
    """``n`` WebSocket clients driven by one selector: cheap enough to open thousands."""

    def __init__(self, host: str, port: int, path: str, cookie: str | None = None) -> None:
        self.host, self.port, self.path = host, port, path
        self.headers = [(b"cookie", f"session={cookie}".encode())] if cookie else []
        self.selector = selectors.DefaultSelector()
        self.conns: dict[socket.socket, WSConnection] = {}
        self.received: dict[socket.socket, list[tuple[float, str]]] = {}
        self.closed: dict[socket.socket, int | None] = {}

    def open(self, n: int, batch: int = 100, timeout_s: float = 60.0) -> None:
        """Open ``n`` sockets, ``batch`` handshakes in flight at a time; each is open (and
        has had its first message, the current state) when this returns."""
        for start in range(0, n, batch):
            pending = []
            for _ in range(min(batch, n - start)):
                sock = socket.create_connection((self.host, self.port), timeout=timeout_s)
                conn = WSConnection(ConnectionType.CLIENT)
                sock.sendall(conn.send(Request(host=f"{self.host}:{self.port}",
                                               target=self.path, extra_headers=self.headers)))
                pending.append((sock, conn))
            for sock, conn in pending:
                self._handshake(sock, conn, timeout_s)
            self.wait_for(lambda s: len(self.received[s]) >= 1, timeout_s,
                          [sock for sock, _ in pending])

    def _handshake(self, sock: socket.socket, conn: WSConnection, timeout_s: float) -> None:
        sock.settimeout(timeout_s)
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the socket during the handshake")
            conn.receive_data(data)
            for event in conn.events():
                if isinstance(event, AcceptConnection):
                    sock.setblocking(False)
                    self.conns[sock] = conn
                    self.received[sock] = []
                    self.selector.register(sock, selectors.EVENT_READ)
                    # Frames that came with the 101 are already in wsproto's buffer.
                    self._take(sock, conn, time.perf_counter())
                    return
                if isinstance(event, RejectConnection):
                    raise ConnectionError(f"handshake rejected: {event.status_code}")

    def _take(self, sock, conn, now: float) -> None:
        out = b""
        for event in conn.events():
            if isinstance(event, TextMessage):
                self.received[sock].append((now, event.data))
            elif isinstance(event, Ping):
                out += conn.send(event.response())
            elif isinstance(event, CloseConnection):
                self.closed[sock] = event.code
                with contextlib.suppress(Exception):
                    out += conn.send(event.response())
        if out:
            with contextlib.suppress(OSError):
                sock.sendall(out)

    def poll(self, timeout_s: float) -> None:
        for key, _ in self.selector.select(timeout_s):
            sock = key.fileobj
            now = time.perf_counter()
            try:
                data = sock.recv(262144)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            conn = self.conns[sock]
            if not data:
                self.selector.unregister(sock)
                self.closed.setdefault(sock, None)
                continue
            conn.receive_data(data)
            self._take(sock, conn, now)

    def wait_for(self, done, timeout_s: float, socks=None) -> bool:
        """Poll until ``done(sock)`` holds for every socket (or ``timeout_s`` passes)."""
        deadline = time.monotonic() + timeout_s
        socks = list(self.conns) if socks is None else socks
        while True:
            socks = [s for s in socks if not done(s)]
            if not socks:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.poll(min(left, 0.5))

    def close_all(self) -> None:
        for sock, conn in list(self.conns.items()):
            with contextlib.suppress(Exception):
                sock.setblocking(True)
                sock.sendall(conn.send(CloseConnection(code=1000)))
            with contextlib.suppress(Exception):
                self.selector.unregister(sock)
            sock.close()
        self.conns.clear()


# --- the web process, as the Procfile starts it ---------------------------------------------

def procfile_command(kind: str = "web") -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == kind:
            return command.strip()
    raise KeyError(kind)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def production_env(database_url: str, redis_url: str, instance: Path, port: int) -> dict:
    kek = base64.b64encode(b"bench-key-encryption-key-32bytes").decode()
    return {**os.environ,
            "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}",
            "PORT": str(port), "DATABASE_URL": database_url, "REDIS_URL": redis_url,
            "SECRET_KEY": "live-bench-secret-key-long-enough-for-jobsprint",
            "JOBSPRINT_KEK": f"bench:{kek}", "JOBSPRINT_INSTANCE_PATH": str(instance),
            "JOBSPRINT_SECURE_COOKIES": "false", "LOG_LEVEL": "WARNING",
            # Sign-ins and API calls from one address, many times: not what is measured.
            "JOBSPRINT_LOGIN_RATE_LIMIT": "1000 per minute",
            "JOBSPRINT_REGISTER_RATE_LIMIT": "1000 per minute"}


class WebProcess:
    """The Procfile's ``web`` line (``$PORT`` and its defaults expanded by bash)."""

    def __init__(self, env: dict, port: int) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - open for the process life, closed in stop()
        self.proc = subprocess.Popen(["bash", "-c", "exec " + procfile_command("web")],
                                     cwd=ROOT, env=env, stdout=self.log, stderr=self.log,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(self.base + "/login", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("web did not start:\n" + self.output())
            time.sleep(0.2)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def workers(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return [int(pid) for pid in children.split()]

    def usage(self) -> dict[str, int]:
        """Threads and VmRSS (KiB) summed over gunicorn's workers (not its arbiter)."""
        total = {"Threads": 0, "VmRSS": 0}
        for pid in self.workers():
            for key, value in self.status(pid).items():
                if key in total:
                    total[key] += value
        return total

    @staticmethod
    def status(pid: int) -> dict[str, int]:
        """Threads and VmRSS (KiB) of a process."""
        fields = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("Threads", "VmRSS", "VmSize"):
                fields[key] = int(value.split()[0])
        return fields

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


def sign_in(base: str) -> tuple[requests.Session, str, dict]:
    """Register through the form: (browser session, its session cookie, API headers)."""
    browser = requests.Session()
    email = f"live-{uuid.uuid4().hex[:10]}@example.com"

    def csrf(path):
        html = browser.get(base + path).text
        return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html).group(1)

    answer = browser.post(base + "/register", data={
        "csrf_token": csrf("/register"), "email": email, "password": PASSWORD,
        "confirm": PASSWORD}, allow_redirects=False)
    assert answer.status_code in (302, 303), answer.text[:500]
    token = requests.post(base + "/api/v1/auth/token",
                          json={"email": email, "password": PASSWORD}).json()["token"]
    return browser, browser.cookies["session"], {"Authorization": f"Bearer {token}"}


def start_run(base: str, headers: dict) -> tuple[str, str]:
    """A one-node workflow and one run of it: (workflow id, run id)."""
    workflow = requests.post(base + "/api/v1/workflows", headers=headers, json={
        "name": "Live bench", "nodes": [{"id": "start", "type": "trigger.manual", "params": {}}],
        "connections": []}).json()
    run = requests.post(base + f"/api/v1/workflows/{workflow['id']}/run", headers=headers,
                        json={"input": {}}).json()
    deadline = time.monotonic() + 30
    # Finished before any socket opens: its own events must not be taken for the measured.
    while requests.get(base + f"/api/v1/executions/{run['execution_id']}",
                       headers=headers).json()["status"] != "succeeded":
        if time.monotonic() > deadline:
            raise RuntimeError("the run did not finish")
        time.sleep(0.1)
    return workflow["id"], run["execution_id"]


def fresh_database(name: str) -> str:
    from sqlalchemy import create_engine, text

    admin_url = os.environ.get("BENCH_PG_ADMIN_URL",
                               "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    subprocess.run([sys.executable, "-m", "jobs.release"], cwd=ROOT, check=True,
                   env={**os.environ, "DATABASE_URL": url, "SECRET_KEY": "x" * 40,
                        "JOBSPRINT_KEK": "k:" + base64.b64encode(b"k" * 32).decode()},
                   stdout=subprocess.DEVNULL)
    return url


def drop_database(name: str) -> None:
    from sqlalchemy import create_engine, text

    admin_url = os.environ.get("BENCH_PG_ADMIN_URL",
                               "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def user_id_of(headers: dict, base: str) -> str:
    import jwt

    token = headers["Authorization"].split()[1]
    return jwt.decode(token, options={"verify_signature": False})["sub"]


# --- the bench ------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--rate", type=float, default=50.0)
    args = parser.parse_args()

    import redis

    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
    store = redis.Redis.from_url(redis_url, decode_responses=True)
    store.flushdb()
    raw = []
    for _ in range(2000):
        t0 = time.perf_counter()
        store.publish("bench:nobody", "x")
        raw.append((time.perf_counter() - t0) * 1000)
    database = "jobsprint_bench_live"
    url = fresh_database(database)
    port = free_port()
    web = None
    with tempfile.TemporaryDirectory() as instance:
        try:
            web = WebProcess(production_env(url, redis_url, Path(instance), port), port)
            _browser, cookie, headers = sign_in(web.base)
            workflow_id, run_id = start_run(web.base, headers)
            user_id = user_id_of(headers, web.base)
            idle = web.usage()
            swarm = Swarm("127.0.0.1", port, "/ws/dashboard", cookie)
            swarm.open(args.clients)
            state = web.usage()
            latencies: list[float] = []
            statuses = ("running", "waiting")
            sent: dict[str, float] = {}
            for i in range(args.events):
                status = statuses[i % 2]
                event = {"type": "run", "execution_id": run_id, "workflow_id": workflow_id,
                         "status": status}
                # Wait until every client has the previous one: each event is timed alone.
                marker = i + 1
                sent[str(marker)] = time.perf_counter()
                store.publish(f"events:{user_id}", json.dumps(event))
                swarm.wait_for(lambda s, m=marker: len(swarm.received[s]) >= 1 + m, 10)
                for sock in swarm.conns:
                    got = swarm.received[sock]
                    if len(got) > marker:
                        latencies.append((got[marker][0] - sent[str(marker)]) * 1000)
                pause = 1 / args.rate - (time.perf_counter() - sent[str(marker)])
                if pause > 0:
                    time.sleep(pause)
            complete = sum(1 for s in swarm.conns if len(swarm.received[s]) >= 1 + args.events)
            label = f"LIVE clients={args.clients} events={args.events}"
            latencies.sort()
            figure(label, "p50_ms", statistics.median(latencies), 2)
            figure(label, "p99_ms", latencies[int(len(latencies) * 0.99) - 1], 2)
            figure(label, "max_ms", latencies[-1], 2)
            figure(label, "clients_with_every_event", complete)
            figure(label, "web_threads", state["Threads"], idle=idle["Threads"])
            figure(label, "web_rss_mib", state["VmRSS"] / 1024, 1,
                   idle=f"{idle['VmRSS'] / 1024:.1f}")
            figure(label, "rss_kib_per_socket",
                   (state["VmRSS"] - idle["VmRSS"]) / args.clients, 1)
            figure("LIVE raw", "redis_publish_round_trip_ms", statistics.median(raw), 3)
            swarm.close_all()
        finally:
            if web is not None:
                web.stop()
            drop_database(database)
            store.flushdb()


if __name__ == "__main__":
    main()
