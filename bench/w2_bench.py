"""W2 (DESIGN.md): runs started through the API on the real stack, beside its parts' speed.

    .venv/bin/python bench/w2_bench.py [--backends inline,rq,rabbitmq] [--workers 1,2]
        [--runs 2000] [--clients 24] [--latency-seconds 10] [--latency-rate 10] [--profile DIR]

For each backend and worker count it starts the stack as the Procfile does, as subprocesses:
one gunicorn web process (gthread, 8 threads), N ``python -m jobs.worker`` and one
``python -m jobs.scheduler``, on PostgreSQL ``jobsprint_bench`` (dropped, created and migrated
with ``python -m jobs.release`` for every round), Redis db 12 and, for rabbitmq, the queue
``bench.runs``. "inline" is not a production mode (inline means embedded), so it is measured as
the embedded default, the way scripts/run starts it: SQLite in a temporary
JOBSPRINT_INSTANCE_PATH, no DATABASE_URL/REDIS_URL/QUEUE_URL, one gunicorn process (64 threads)
whose in-process workers (JOBSPRINT_WORKER_THREADS, default 4) run the runs; it is one row,
``backend=embedded workers=inproc``.

A round registers a user, takes a token, creates and activates two workflows of three nodes
(trigger.manual -> logic.set total = amount * 2, email lower-cased -> logic.set one more
field; settings.concurrency 50, so the per-workflow slot never serialises runs), warms the
stack up with 40 runs, then:
- throughput: ``--runs`` POST .../run from ``--clients`` threads, each with its own keep-alive
  requests.Session: accepted/s (client side, first POST to last 202), then finished/s from the
  database (min(created_at) to max(finished_at) of those runs), and the runs that failed, that
  never reached a final state (lost), that were delivered more than once, or whose result is
  wrong;
- latency: one POST every 1/rate s for ``--latency-seconds``; p50/p99 of finished_at -
  created_at (database timestamps), plus p50 of created_at -> started_at (pickup) and of the
  client's send -> finished_at;
- CPU: milliseconds per run of each process of the stack (from /proc) during the throughput
  phase, their sum, the ceiling that sum puts on a machine with this many cores, and the busy
  CPU of the machine outside those processes (other work sharing it: noisy figures).

The parts are measured in the same run, before the first round and after the last: Redis PING
round trips on one connection (db 12), PostgreSQL single-row INSERT + commit via psycopg on a
scratch table, RabbitMQ persistent publishes into a scratch quorum queue waiting for each
confirm (pika BlockingConnection), and SQLite INSERT + commit (WAL, synchronous=NORMAL, as the
embedded default sets it). Ratios (``vs_pg_commits=`` …) use the first measurement; the second,
and the spread between them, show how steady the machine was.

One line per figure; nothing is asserted. ``--profile DIR`` runs py-spy on the web process and
every worker during each throughput phase (samples holding the GIL: where CPU goes) and writes
collapsed stacks (``*.txt``) there; it costs CPU, so figures from such a run are not comparable.
Every subprocess is stopped on exit, Ctrl-C or error; one that dies early has its stderr tail
printed.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import math
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pika
import psycopg
import redis
import requests
from sqlalchemy import create_engine, func, select
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.models import Execution  # noqa: E402  (models import no Flask)

PYTHON = str(ROOT / ".venv" / "bin" / "python")
GUNICORN = str(ROOT / ".venv" / "bin" / "gunicorn")
PY_SPY = str(ROOT / ".venv" / "bin" / "py-spy")

ADMIN_PG = "postgresql://postgres@127.0.0.1:5432/test"
BENCH_DB = "jobsprint_bench"
BENCH_PG = f"postgresql://postgres@127.0.0.1:5432/{BENCH_DB}"
DATABASE_URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{BENCH_DB}"
REDIS_URL = "redis://127.0.0.1:6379/12"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
QUEUE_NAME = "bench.runs"
SCRATCH_QUEUE = "bench.runs.scratch"
QUEUE_URLS = {"rq": REDIS_URL, "rabbitmq": AMQP_URL}
FINAL = ("succeeded", "failed", "cancelled")
RUN_BODY = {"amount": 12.5, "email": "A@B.com"}
PASSWORD = "w2 bench password, long enough"

# Settings every process of a round must not inherit from the caller's shell.
CLEARED_ENV = ("DATABASE_URL", "REDIS_URL", "QUEUE_URL", "SECRET_KEY", "PORT",
               "WEB_CONCURRENCY", "WEB_THREADS")


def figure(label: str, name: str, value, **context) -> None:
    if isinstance(value, float):
        shown = f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"
    else:
        shown = f"{value:,}" if isinstance(value, int) else str(value)
    details = "".join(f" {key}={val}" for key, val in context.items())
    print(f"{label} {name}={shown}{details}", flush=True)


def ratio(value: float, part: float | None) -> str:
    return f"{value / part:.3f}" if part else "n/a"


def percentile(values: list[float], q: float) -> float:
    """Nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# --- the parts ----------------------------------------------------------------------------

def redis_round_trips(n: int = 5000, url: str = REDIS_URL) -> float:
    client = redis.Redis.from_url(url)
    for _ in range(200):  # connected and warm before the timing
        client.ping()
    started = time.perf_counter()
    for _ in range(n):
        client.ping()
    elapsed = time.perf_counter() - started
    client.close()
    return n / elapsed


def pg_commits(n: int = 2000, url: str = BENCH_PG) -> float:
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS w2_scratch (id bigserial PRIMARY KEY, v text)")
        conn.commit()
        for i in range(200):  # warm before the timing
            conn.execute("INSERT INTO w2_scratch (v) VALUES (%s)", (str(i),))
            conn.commit()
        started = time.perf_counter()
        for i in range(n):
            conn.execute("INSERT INTO w2_scratch (v) VALUES (%s)", (str(i),))
            conn.commit()
        elapsed = time.perf_counter() - started
        conn.execute("DROP TABLE w2_scratch")
        conn.commit()
    return n / elapsed


def rabbitmq_confirms(n: int = 1000, queue: str = SCRATCH_QUEUE) -> float:
    properties = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        channel.confirm_delivery()  # basic_publish now waits for the broker's confirm
        for _ in range(100):  # warm before the timing
            channel.basic_publish("", queue, b"x", properties)
        started = time.perf_counter()
        for _ in range(n):
            channel.basic_publish("", queue, b"x", properties)
        elapsed = time.perf_counter() - started
        channel.queue_delete(queue)
    finally:
        connection.close()
    return n / elapsed


def sqlite_commits(n: int = 2000) -> float:
    folder = tempfile.mkdtemp(prefix="w2-sqlite-")
    try:
        conn = sqlite3.connect(os.path.join(folder, "scratch.db"))
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE scratch (id INTEGER PRIMARY KEY, v TEXT)")
        conn.commit()
        started = time.perf_counter()
        for i in range(n):
            conn.execute("INSERT INTO scratch (v) VALUES (?)", (str(i),))
            conn.commit()
        elapsed = time.perf_counter() - started
        conn.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return n / elapsed


def measure_parts(when: str, backends: list[str], *, redis_url: str = REDIS_URL,
                  pg_url: str = BENCH_PG, scratch_queue: str = SCRATCH_QUEUE
                  ) -> dict[str, float]:
    """The parts' speeds; the defaults are this bench's Redis db, database and queue (another
    bench passes its own, so that two benches never share a scratch table or queue)."""
    load1 = os.getloadavg()[0]
    figure("part=machine", "load_avg_1m", load1, when=when, cpus=os.cpu_count())
    parts = {"redis": redis_round_trips(url=redis_url), "pg": pg_commits(url=pg_url)}
    figure("part=redis", "round_trips_per_s", parts["redis"], when=when, connection="one",
           command="PING")
    figure("part=postgresql", "commits_per_s", parts["pg"], when=when,
           statement="single-row INSERT")
    if "rabbitmq" in backends:
        parts["rabbitmq"] = rabbitmq_confirms(queue=scratch_queue)
        figure("part=rabbitmq", "publish_confirm_each_per_s", parts["rabbitmq"], when=when,
               queue="quorum")
    if "embedded" in backends:
        parts["sqlite"] = sqlite_commits()
        figure("part=sqlite", "commits_per_s", parts["sqlite"], when=when, journal="wal",
               synchronous="normal")
    return parts


# --- resources ----------------------------------------------------------------------------

def recreate_database(name: str = BENCH_DB) -> None:
    with psycopg.connect(ADMIN_PG, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str = BENCH_DB) -> None:
    with psycopg.connect(ADMIN_PG, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def flush_redis(url: str = REDIS_URL) -> None:
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


def delete_rabbitmq_queues(queue_name: str = QUEUE_NAME,
                           scratch_queue: str = SCRATCH_QUEUE) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        for queue in (queue_name, f"{queue_name}.dead", scratch_queue):
            channel.queue_delete(queue)
        channel.exchange_delete(f"{queue_name}.dead")
    finally:
        connection.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- CPU accounting -----------------------------------------------------------------------

CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of one process so far, from /proc; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def machine_busy_seconds() -> float:
    """CPU time all cores have spent busy since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICK


def pids_named(command: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == command:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def pg_backends() -> list[int]:
    with psycopg.connect(ADMIN_PG, autocommit=True) as conn:
        return [row[0] for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (BENCH_DB,))]


class CpuMeter:
    """CPU used by each part of the stack between ``start`` and ``stop``. Redis and RabbitMQ
    are whole servers (shared with anything else running); PostgreSQL counts the backends
    connected to the bench database only (its WAL writer and checkpointer are left out)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.begin: dict[str, dict[int, float]] = {}

    def _sample(self) -> dict[str, dict[int, float]]:
        groups: dict[str, list[int]] = {}
        for name, pid in self.stack.pids().items():
            if name.startswith("worker"):
                name = "worker"
            elif self.stack.backend == "embedded":
                name = "web_with_inproc_workers"
            elif name.startswith("web"):
                name = "web"
            groups.setdefault(name, []).append(pid)
        if self.stack.backend != "embedded":
            groups["clock"] = [pid for name, pid in self.stack.pids(all_processes=True).items()
                               if name == "clock"]
            groups["postgresql"] = pg_backends()
            groups["redis"] = pids_named("redis-server")
        if self.stack.backend == "rabbitmq":
            groups["rabbitmq"] = pids_named("beam.smp")
        sample = {group: {pid: cpu for pid in pids if (cpu := cpu_seconds(pid)) is not None}
                  for group, pids in groups.items()}
        # The client is this process and its reaped children (wrk, run and waited for within
        # a level); the stack's processes are reaped only when the stack stops.
        times = os.times()
        sample["client"] = {os.getpid(): times.user + times.system
                            + times.children_user + times.children_system}
        return sample

    def start(self) -> None:
        self.begin = self._sample()
        self.busy = machine_busy_seconds()

    def stop(self) -> tuple[dict[str, float], float]:
        """CPU seconds per group, and the machine's busy CPU seconds no group accounts for
        (other programs, PostgreSQL's background writers, the kernel)."""
        end = self._sample()
        busy = machine_busy_seconds() - self.busy
        used = {group: sum(cpu - self.begin.get(group, {}).get(pid, 0.0)
                           for pid, cpu in pids.items())
                for group, pids in end.items()}
        return used, max(0.0, busy - sum(used.values()))


# --- the stack ----------------------------------------------------------------------------

class Stack:
    """The processes of one round, each in its own process group, with its output in files."""

    def __init__(self, backend: str, workers: int, web_threads: int,
                 web_processes: int = 1) -> None:
        self.backend = backend
        self.workers = workers
        self.web_threads = web_threads
        self.web_processes = web_processes
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logs = Path(tempfile.mkdtemp(prefix=f"w2-{backend}-"))
        self.instance = self.logs / "instance"
        self.procs: list[tuple[str, subprocess.Popen, Path, Path]] = []
        env = {k: v for k, v in os.environ.items()
               if k not in CLEARED_ENV and not k.startswith("JOBSPRINT_")}
        env.update(JOBSPRINT_API_RATE_LIMIT="1000000000 per minute", PYTHONUNBUFFERED="1")
        if backend == "embedded":
            env["JOBSPRINT_INSTANCE_PATH"] = str(self.instance)
        else:
            env.update(DATABASE_URL=DATABASE_URL, REDIS_URL=REDIS_URL,
                       QUEUE_URL=QUEUE_URLS[backend], JOBSPRINT_QUEUE_NAME=QUEUE_NAME,
                       SECRET_KEY=secrets.token_urlsafe(48),
                       JOBSPRINT_KEK=base64.b64encode(secrets.token_bytes(32)).decode(),
                       JOBSPRINT_INSTANCE_PATH=str(self.instance))
        self.env = env

    @property
    def db_url(self) -> str:
        if self.backend == "embedded":
            return f"sqlite:///{self.instance / 'jobsprint.db'}"
        return DATABASE_URL

    def start(self) -> None:
        if self.backend != "embedded":
            release = subprocess.run([PYTHON, "-m", "jobs.release"], cwd=ROOT, env=self.env,
                                     capture_output=True, text=True, timeout=120)
            if release.returncode:
                raise RuntimeError(f"jobs.release failed:\n{release.stderr[-3000:]}")
        self._spawn("web", [GUNICORN, "--bind", f"127.0.0.1:{self.port}",
                            "--workers", str(self.web_processes),
                            "--threads", str(self.web_threads),
                            "wsgi:app"])
        self._wait_http()
        if self.backend != "embedded":
            for n in range(self.workers):
                self._spawn(f"worker{n + 1}", [PYTHON, "-m", "jobs.worker"])
            self._spawn("clock", [PYTHON, "-m", "jobs.scheduler"])
            for name, _proc, out, _err in self.procs:
                if name.startswith("worker"):
                    self._wait_output(out, "jobsprint worker:")

    def _spawn(self, name: str, argv: list[str]) -> None:
        out, err = self.logs / f"{name}.out", self.logs / f"{name}.err"
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=stdout, stderr=stderr,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append((name, proc, out, err))

    def _wait_http(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            try:
                requests.get(f"{self.url}/login", timeout=5)
                return
            except requests.RequestException:  # not listening yet, or too busy to answer
                time.sleep(0.1)
        raise RuntimeError(f"the web process did not answer within {timeout:.0f} s")

    def _wait_output(self, path: Path, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            if text in path.read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{path.name}: no {text!r} within {timeout:.0f} s")

    def pids(self, all_processes: bool = False) -> dict[str, int]:
        """The processes that do the work: gunicorn's worker (not its arbiter) and the
        queue workers (and the clock, with ``all_processes``)."""
        found = {}
        for name, proc, _out, _err in self.procs:
            if name == "web":  # web, web2, …: gunicorn's worker processes
                children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
                kids = children.read_text().split() if children.exists() else []
                for n, kid in enumerate(kids or [proc.pid]):
                    found["web" if n == 0 else f"web{n + 1}"] = int(kid)
            elif name.startswith("worker") or all_processes:
                found[name] = proc.pid
        return found

    def hold_workers(self, held: bool) -> None:
        """Pause (SIGSTOP) or resume (SIGCONT) every queue worker, to measure what the web
        process takes in while it has the machine to itself."""
        for name, proc, _out, _err in self.procs:
            if name.startswith("worker") and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGSTOP if held else signal.SIGCONT)

    def check(self) -> None:
        for name, proc, _out, err in self.procs:
            if proc.poll() is not None:
                tail = err.read_text(errors="replace")[-4000:]
                print(f"--- {name} exited with {proc.returncode}; stderr tail:\n{tail}",
                      file=sys.stderr, flush=True)
                raise RuntimeError(f"{name} died (exit {proc.returncode})")

    def stop(self) -> None:
        for _name, proc, _out, _err in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for name, proc, _out, _err in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"--- {name} ignored SIGTERM; killed", file=sys.stderr, flush=True)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs = []
        shutil.rmtree(self.logs, ignore_errors=True)


_STACKS: list[Stack] = []


def stop_all() -> None:
    while _STACKS:
        _STACKS.pop().stop()


# --- the client ---------------------------------------------------------------------------

def chain_definition(name: str) -> dict:
    return {
        "name": name,
        "nodes": [
            {"id": "start", "type": "trigger.manual", "params": {}},
            {"id": "calc", "type": "logic.set", "params": {"fields": {
                "total": "{{ input.amount * 2 }}", "email": "{{ input.email | lower }}"}}},
            {"id": "tag", "type": "logic.set", "params": {"fields": {
                "big": "{{ input.total > 100 }}"}}},
        ],
        "connections": [{"from": "start", "to": "calc"}, {"from": "calc", "to": "tag"}],
        "settings": {"concurrency": 50, "timeout_s": 300},
    }


class Client:
    def __init__(self, base_url: str) -> None:
        self.base = base_url
        email = f"w2-{uuid.uuid4().hex[:12]}@bench.example.com"
        setup = requests.Session()
        reply = setup.post(f"{base_url}/api/v1/auth/register",
                           json={"email": email, "password": PASSWORD}, timeout=30)
        reply.raise_for_status()
        reply = setup.post(f"{base_url}/api/v1/auth/token",
                           json={"email": email, "password": PASSWORD}, timeout=30)
        reply.raise_for_status()
        self.headers = {"Authorization": f"Bearer {reply.json()['token']}"}
        self.setup = setup

    def workflow(self, name: str) -> str:
        reply = self.setup.post(f"{self.base}/api/v1/workflows", json=chain_definition(name),
                                headers=self.headers, timeout=30)
        reply.raise_for_status()
        workflow_id = reply.json()["id"]
        self.setup.post(f"{self.base}/api/v1/workflows/{workflow_id}/activate",
                        headers=self.headers, timeout=30).raise_for_status()
        return workflow_id

    def fire(self, workflow_id: str, n: int, clients: int) -> tuple[float, Counter]:
        """POST ``n`` runs from ``clients`` threads; seconds from the first POST to the last
        answer, and the answers' status codes."""
        path = f"{self.base}/api/v1/workflows/{workflow_id}/run"
        counter = iter(range(n))
        take = threading.Lock()
        statuses: Counter = Counter()
        tally = threading.Lock()
        ready = threading.Barrier(clients + 1)

        def client() -> None:
            session = requests.Session()
            session.headers.update(self.headers)
            seen: Counter = Counter()
            ready.wait()
            while True:
                with take:
                    index = next(counter, None)
                if index is None:
                    break
                try:
                    code = session.post(path, json={"input": {"order_id": index, **RUN_BODY}},
                                        timeout=60).status_code
                except requests.RequestException as exc:
                    code = type(exc).__name__
                seen[code] += 1
            session.close()
            with tally:
                statuses.update(seen)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
        for thread in threads:
            thread.start()
        ready.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        return time.perf_counter() - started, statuses

    def paced(self, workflow_id: str, rate: float, seconds: float):
        """One POST every 1/rate s: [(execution id, send time, answer seconds)]."""
        path = f"{self.base}/api/v1/workflows/{workflow_id}/run"
        session = requests.Session()
        session.headers.update(self.headers)
        sent = []
        t0 = time.perf_counter()
        for index in range(int(rate * seconds)):
            delay = t0 + index / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            wall = time.time()
            began = time.perf_counter()
            reply = session.post(path, json={"input": {"order_id": index, **RUN_BODY}},
                                 timeout=60)
            answered = time.perf_counter() - began
            if reply.status_code == 202:
                sent.append((reply.json()["execution_id"], wall, answered))
        session.close()
        return sent


# --- reading results from the database ----------------------------------------------------

class Results:
    def __init__(self, url: str) -> None:
        self.engine = create_engine(url, poolclass=NullPool)

    def close(self) -> None:
        self.engine.dispose()

    def final_count(self, workflow_id: str) -> int:
        with self.engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(Execution).where(
                Execution.workflow_id == uuid.UUID(workflow_id), Execution.status.in_(FINAL)))

    def wait_final(self, stack: Stack, workflow_id: str, expected: int,
                   stall_s: float = 45.0, cap_s: float = 600.0) -> int:
        """Poll until ``expected`` runs are final, or no progress for ``stall_s``."""
        last, last_change, began = -1, time.monotonic(), time.monotonic()
        while True:
            stack.check()
            done = self.final_count(workflow_id)
            now = time.monotonic()
            if done >= expected:
                return done
            if done != last:
                last, last_change = done, now
            if now - last_change > stall_s or now - began > cap_s:
                return done
            time.sleep(0.2)

    def rows(self, workflow_id: str):
        with self.engine.connect() as conn:
            return conn.execute(
                select(Execution.id, Execution.status, Execution.created_at,
                       Execution.started_at, Execution.finished_at, Execution.deliveries,
                       Execution.result)
                .where(Execution.workflow_id == uuid.UUID(workflow_id))).all()


def wrong_result(result) -> bool:
    return not (isinstance(result, dict) and result.get("total") == 25.0
                and result.get("email") == "a@b.com" and "big" in result)


# --- profiling ----------------------------------------------------------------------------

class Profiler:
    """py-spy record on the busy processes of a round, for the length of one phase."""

    def __init__(self, folder: str | None, label: str) -> None:
        self.folder = Path(folder) if folder else None
        self.label = label
        self.procs: list[subprocess.Popen] = []

    def start(self, stack: Stack) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, pid in stack.pids().items():
            target = self.folder / f"{self.label}-{name}.txt"
            self.procs.append(subprocess.Popen(
                [PY_SPY, "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
                 "--threads", "--gil", "--nonblocking", "-o", str(target)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        time.sleep(1.0)  # py-spy attaches

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []


# --- one round ----------------------------------------------------------------------------

def run_round(backend: str, workers: int, args, parts: dict[str, float]) -> None:
    embedded = backend == "embedded"
    if not embedded:
        recreate_database()
        flush_redis()
        if backend == "rabbitmq":
            delete_rabbitmq_queues()
    stack = Stack(backend, workers, 64 if embedded else args.web_threads)
    _STACKS.append(stack)
    label = f"W2 backend={backend} workers={'inproc' if embedded else workers}"
    results = None
    try:
        stack.start()
        results = Results(stack.db_url)
        client = Client(stack.url)
        throughput_id = client.workflow("W2 throughput")
        latency_id = client.workflow("W2 latency")

        # Warm up every process (connections, caches, the validated graph) on the latency
        # workflow; the latency figures below count only their own runs.
        _seconds, warm = client.fire(latency_id, 40, 8)
        results.wait_final(stack, latency_id, warm[202])

        profiler = Profiler(args.profile, f"{backend}-w{workers}")
        profiler.start(stack)
        meter = CpuMeter(stack)
        meter.start()
        try:
            seconds, statuses = client.fire(throughput_id, args.runs, args.clients)
            accepted = statuses.get(202, 0)
            done = results.wait_final(stack, throughput_id, accepted)
        finally:
            cpu, unaccounted = meter.stop()
            profiler.stop()
        rows = results.rows(throughput_id)
        statuses.pop(202, None)
        figure(label, "accepted_per_s", accepted / seconds, runs=args.runs,
               clients=args.clients, vs_pg_commits=ratio(accepted / seconds, parts.get("pg")),
               vs_redis_round_trips=ratio(accepted / seconds, parts.get("redis")))
        if statuses:
            figure(label, "rejected", sum(statuses.values()),
                   codes=",".join(f"{k}:{v}" for k, v in sorted(statuses.items(), key=str)))
        finished = [r for r in rows if r.status in FINAL and r.finished_at is not None]
        if finished:
            span = (max(r.finished_at for r in finished)
                    - min(r.created_at for r in rows)).total_seconds()
            per_s = len(finished) / span
            part_context = {"vs_pg_commits": ratio(per_s, parts.get("pg")),
                            "vs_redis_round_trips": ratio(per_s, parts.get("redis"))}
            if backend == "rabbitmq":
                part_context["vs_rabbitmq_confirms"] = ratio(per_s, parts.get("rabbitmq"))
            if embedded:
                part_context = {"vs_sqlite_commits": ratio(per_s, parts.get("sqlite"))}
            figure(label, "finished_per_s", per_s, runs=len(finished), **part_context)
        counts = Counter(r.status for r in rows)
        figure(label, "failed_runs", counts.get("failed", 0) + counts.get("cancelled", 0))
        figure(label, "lost_runs", accepted - done)
        figure(label, "redelivered_runs", sum(1 for r in rows if (r.deliveries or 0) > 1))
        figure(label, "wrong_results",
               sum(1 for r in rows if r.status == "succeeded" and wrong_result(r.result)))
        if done:
            shared = {"redis": "server", "rabbitmq": "server", "postgresql": "bench_db_backends"}
            for group, used in cpu.items():
                figure(label, "cpu_ms_per_run", used * 1000 / done, process=group,
                       **({"scope": shared[group]} if group in shared else {}))
            cpu_total = sum(cpu.values())
            figure(label, "cpu_ms_per_run", cpu_total * 1000 / done, process="all")
            figure(label, "cpu_bound_runs_per_s", os.cpu_count() * done / cpu_total,
                   cpus=os.cpu_count(), note="if_nothing_else_ran")
            # Busy CPU of the machine outside the processes above: high means other work
            # (tests, builds) shared the cores and the figures of this round are noisy.
            figure(label, "cpu_ms_per_run", unaccounted * 1000 / done, process="unaccounted")

        if args.latency_seconds > 0:
            sent = client.paced(latency_id, args.latency_rate, args.latency_seconds)
            results.wait_final(stack, latency_id, warm[202] + len(sent))
            by_id = {str(r.id): r for r in results.rows(latency_id)}
            total, pickup, end_to_end, post = [], [], [], []
            for execution_id, wall, answered in sent:
                row = by_id.get(execution_id)
                post.append(answered * 1000)
                if row is None or row.finished_at is None:
                    continue
                total.append((row.finished_at - row.created_at).total_seconds() * 1000)
                if row.started_at is not None:
                    pickup.append((row.started_at - row.created_at).total_seconds() * 1000)
                end_to_end.append(
                    (row.finished_at - datetime.fromtimestamp(wall, UTC)).total_seconds()
                    * 1000)
            context = {"rate_per_s": f"{args.latency_rate:g}", "runs": len(total)}
            figure(label, "latency_p50_ms", percentile(total, 0.50), **context)
            figure(label, "latency_p99_ms", percentile(total, 0.99), **context)
            figure(label, "pickup_p50_ms", percentile(pickup, 0.50), **context)
            figure(label, "post_to_finished_p50_ms", percentile(end_to_end, 0.50), **context)
            figure(label, "post_answer_p50_ms", percentile(post, 0.50), **context)
    finally:
        if results is not None:
            results.close()
        _STACKS.remove(stack)
        stack.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="inline,rq,rabbitmq",
                        help="inline (= embedded), rq, rabbitmq")
    parser.add_argument("--workers", default="1,2", help="worker processes per round")
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--web-threads", type=int, default=8)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--latency-rate", type=float, default=10.0)
    parser.add_argument("--profile", metavar="DIR", default=None)
    args = parser.parse_args()
    backends = ["embedded" if b.strip() in ("inline", "embedded") else b.strip()
                for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"embedded", "rq", "rabbitmq"}
    if unknown:
        parser.error(f"unknown backends: {', '.join(sorted(unknown))}")
    worker_counts = [int(w) for w in args.workers.split(",")]

    def on_term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started in background
    atexit.register(stop_all)
    try:
        recreate_database()
        before = measure_parts("start", backends)
        began = time.monotonic()
        for backend in backends:
            for workers in ([1] if backend == "embedded" else worker_counts):
                run_round(backend, workers, args, before)
        recreate_database()
        after = measure_parts("end", backends)
        for key in before:
            figure(f"part={key}", "mean_per_s", (before[key] + after[key]) / 2,
                   spread_pct=f"{abs(before[key] - after[key]) * 100 / max(before[key], 1):.0f}")
        figure("W2", "bench_seconds", time.monotonic() - began)
    except KeyboardInterrupt:
        print("interrupted; stopping the stack", file=sys.stderr, flush=True)
        return 130
    finally:
        stop_all()
        try:
            delete_rabbitmq_queues()
            flush_redis()
            drop_database()
        except Exception as exc:  # noqa: BLE001 - clean-up is best effort, say why it failed
            print(f"clean-up: {exc!r}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
