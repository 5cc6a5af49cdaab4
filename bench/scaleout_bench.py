"""Scale-out (issue 9): the Procfile under honcho, 2 web, 3 worker and 2 clock processes, on
PostgreSQL, Redis and RabbitMQ, a mixed load, one worker and one clock SIGKILLed midway.

    .venv/bin/python bench/scaleout_bench.py [--seconds 120] [--kill-after 45]
        [--webhook-rate 3] [--webhook-clients 4] [--manual-rate 1] [--schedules 20]
        [--wait-seconds 1] [--side-effect-ms 200] [--lease-seconds 6] [--all-metrics]

The stack. ``honcho start -f Procfile`` runs the Procfile as it is, twice, as two machines
would: formation A ``-c web=2,worker=2,clock=1 web worker clock`` and formation B
``-c worker=1,clock=1 worker clock`` (2 web, 3 workers, 2 clocks in all). Two, because honcho
(like foreman) stops every process of a formation as soon as one of them exits: a worker
killed inside A would take A's web processes down with it. The release phase runs first as
``honcho start -f Procfile release``. Environment: PostgreSQL ``jobsprint_scaleout`` (dropped
and created), Redis db 11 (``BENCH_REDIS_URL``), RabbitMQ queue ``scaleout.runs``,
JOBSPRINT_RUN_LEASE_S ``--lease-seconds`` (so a killed worker's runs are handed on within the
run), JOBSPRINT_HTTP_ALLOW=127.0.0.1, a fresh PROMETHEUS_MULTIPROC_DIR shared by both
formations; all removed at the end. Honcho gives web.1 the port ``-p`` and web.2 the next one.

The workflows (one user, settings.concurrency 50): trigger → logic.wait ``--wait-seconds``
(runs are in flight when a process dies) → http.request POST to a counting server on
127.0.0.1, which records each request's Idempotency-Key (``{execution}:{node}:{attempt}``) and
answers after ``--side-effect-ms`` → logic.set ``done``. Triggers: one webhook workflow (signed
deliveries at ``--webhook-rate`` per second in all from ``--webhook-clients`` threads,
alternating between web.1 and web.2), one manual workflow (POST .../run at
``--manual-rate``, alternating too), and ``--schedules`` workflows on ``* * * * *`` (cron has
minute resolution, so many workflows give dozens of slots).

The fault. At the minute boundary nearest to ``--kill-after`` within the middle half of the
load (else at ``--kill-after``), formation B's worker and clock get SIGKILL, back to back; A
goes on alone. At a boundary the bench watches pg_stat_activity for up to ``FIRE_WATCH_S``
and kills the moment B's clock is inside the transaction that fires slots (its connection is
found by client port; its last statement wrote a trigger event, a run or a schedule's next
time, and it has not committed), which happens when B's clock, not A's, claims that minute's
slots (about one time in two): ``clock_state`` says which it was, and ``fired_after_kill``
how many slots' runs were created after the kill (by A's clock).

After ``--seconds`` the load stops, the schedule workflows are deactivated, and the bench waits
(bounded) for every run to reach a final state. One line per figure:
- started runs by trigger (database), accepted requests (client), rejected or unanswered ones;
- finished runs by status, wrong results;
- lost: accepted but no run, runs never final, schedule slots that should have fired and did
  not, succeeded runs whose side effect the counting server never saw;
- duplicated: a schedule slot with more than one run or trigger event, a trigger event with
  more than one run, a node that succeeded twice in execution_nodes, a side effect sent under
  two different idempotency keys (the node ran twice); ``side_effect_key_repeats`` counts the
  same key received again, which is the designed at-least-once retry of a node cut off mid-
  request (the receiver deduplicates on the key), not a duplicate run;
- runs running at the kill and runs delivered more than once (handed on), deliveries/s;
- the parts (w2_bench.measure_parts) before and after;
- ``/metrics`` of web.1: the ``jobsprint_*`` lines (histogram buckets only with
  ``--all-metrics``), whether web.2 answers the same counters, and jobsprint_runs_total
  against the database;
- the processes left over after the stop (must be 0).
Nothing is asserted; the exit status is 1 when a run was lost or duplicated (the logs are
then kept and their folder printed). Loopback only.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import requests
import w2_bench as w2
from w2_bench import FINAL, figure, percentile, ratio
from webhook_bench import signature

ROOT = w2.ROOT
HONCHO = str(ROOT / ".venv" / "bin" / "honcho")
LABEL = "SO"
DB_NAME = "jobsprint_scaleout"
PG_URL = f"postgresql://postgres@127.0.0.1:5432/{DB_NAME}"
DATABASE_URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB_NAME}"
# Not 12-15: the other benches and the test suites flush those.
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
QUEUE_NAME = "scaleout.runs"
SCRATCH_QUEUE = "scaleout.runs.scratch"
# Every process of the stack carries this variable: how the leftovers are found after the stop;
# and FORMATION_MARKER, the formation it belongs to (both number their processes worker.1, …).
MARKER = "JOBSPRINT_SCALEOUT_BENCH"
FORMATION_MARKER = "JOBSPRINT_SCALEOUT_FORMATION"
SIDE_EFFECT_NODE = "post"
# Slots due this close to the deactivation may or may not fire (the clock ticks every second).
SLOT_MARGIN = timedelta(seconds=5)
# How long after a minute boundary to wait for formation B's clock to be firing that minute.
FIRE_WATCH_S = 3.0
# A connection of the given client ports inside the transaction that fires due slots
# (schedules.fire_due): pg_stat_activity shows the last statement a connection ran.
FIRING_QUERY = (
    "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 60) FROM pg_stat_activity "
    "WHERE datname = %s AND client_port = ANY(%s) AND xact_start IS NOT NULL AND ("
    "query ILIKE '%%trigger_events%%' OR query ILIKE 'INSERT INTO executions%%' "
    "OR query ILIKE 'UPDATE schedules%%')")


# --- the counting server: the side effect a duplicate would show in ------------------------

class SideEffects:
    """An HTTP server on 127.0.0.1 that records the Idempotency-Key of every request at its
    arrival, then answers after ``delay_s`` (a slow external API: a worker killed meanwhile
    leaves the node cut off mid-request)."""

    def __init__(self, delay_s: float) -> None:
        self.keys: list[str] = []
        self.lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with recorder.lock:
                    recorder.keys.append(self.headers.get("Idempotency-Key") or "")
                time.sleep(delay_s)
                body = b'{"ok": true}'
                with contextlib.suppress(OSError):  # the caller may have died meanwhile
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hit"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def by_execution(self) -> dict[str, Counter]:
        """{execution id: Counter of the keys it sent}, for the side-effect node."""
        found: dict[str, Counter] = defaultdict(Counter)
        with self.lock:
            keys = list(self.keys)
        for key in keys:
            execution_id, _, rest = key.partition(":")
            if rest.rpartition(":")[0] == SIDE_EFFECT_NODE:
                found[execution_id][key] += 1
        return found


# --- the processes ---------------------------------------------------------------------------

def _read_proc(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:  # gone, or not ours
        return b""


def marked_processes(token: str) -> list[int]:
    """Pids of every live process started with ``MARKER=token`` in its environment."""
    wanted = f"{MARKER}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if wanted in _read_proc(pid, "environ").split(b"\0"):
            state = _read_proc(pid, "stat").rpartition(b")")[2].split()[:1]
            if state != [b"Z"]:  # a zombie is dead; its parent just has not reaped it yet
                found.append(pid)
    return found


def honcho_process(pid: int) -> tuple[str, str, list[str]]:
    """(formation, HONCHO_PROCESS_NAME, argv) of one process."""
    env = dict(item.split(b"=", 1) for item in _read_proc(pid, "environ").split(b"\0")
               if b"=" in item)
    argv = [a.decode(errors="replace") for a in _read_proc(pid, "cmdline").split(b"\0") if a]
    return (env.get(FORMATION_MARKER.encode(), b"").decode(),
            env.get(b"HONCHO_PROCESS_NAME", b"").decode(), argv)


class Formation:
    """One ``honcho start`` of the Procfile, its output in a file."""

    def __init__(self, name: str, args: list[str], env: dict, logs: Path) -> None:
        self.name = name
        self.log = logs / f"honcho-{name}.log"
        self.env = {**env, FORMATION_MARKER: name}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([HONCHO, "start", "-f", "Procfile", "--no-colour",
                                          *args], cwd=ROOT, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def check(self) -> None:
        if self.proc.poll() is not None:
            print(f"--- formation {self.name} stopped (rc={self.proc.returncode}); its log "
                  f"ends:\n{self.output()[-4000:]}", file=sys.stderr, flush=True)
            raise RuntimeError(f"honcho formation {self.name} stopped")

    def pid_of(self, process: str, module: str) -> int:
        """The Python process of this formation's ``process`` (e.g. worker.1) running
        ``module`` (not the shell honcho may have started it with)."""
        for pid in marked_processes(self.env[MARKER]):
            formation, name, argv = honcho_process(pid)
            is_python = bool(argv) and "python" in argv[0] and "-m" in argv
            if (formation, name) == (self.name, process) and is_python and module in argv:
                return pid
        raise RuntimeError(f"formation {self.name}: no {process} running {module}")

    def stop(self) -> None:
        """SIGTERM to honcho, which passes it on (and SIGKILLs what is left after 5 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def port_pair() -> int:
    """A port p on 127.0.0.1 with p + 1 free too (honcho numbers web.2 after web.1)."""
    for _ in range(100):
        port = w2.free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


class Stack:
    """Release, then formations A and B; everything they started is stopped by ``stop``."""

    def __init__(self, args, logs: Path) -> None:
        self.logs = logs
        self.port = port_pair()
        self.urls = [f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.port + 1}"]
        self.token = uuid.uuid4().hex
        env = {k: v for k, v in os.environ.items()
               if k not in w2.CLEARED_ENV and not k.startswith(("JOBSPRINT_", "PROMETHEUS_"))}
        env.update(
            PATH=f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}",
            PYTHONUNBUFFERED="1", DATABASE_URL=DATABASE_URL, REDIS_URL=REDIS_URL,
            QUEUE_URL=w2.AMQP_URL, JOBSPRINT_QUEUE_NAME=QUEUE_NAME,
            SECRET_KEY=secrets.token_urlsafe(48),
            JOBSPRINT_KEK=base64.b64encode(secrets.token_bytes(32)).decode(),
            JOBSPRINT_BASE_URL=self.urls[0], JOBSPRINT_INSTANCE_PATH=str(logs / "instance"),
            JOBSPRINT_HTTP_ALLOW="127.0.0.1", JOBSPRINT_RUN_LEASE_S=str(args.lease_seconds),
            JOBSPRINT_API_RATE_LIMIT="1000000 per minute",
            PROMETHEUS_MULTIPROC_DIR=str(logs / "metrics"), **{MARKER: self.token})
        self.env = env
        self.formations: list[Formation] = []
        self.b_killed = False  # from then on formation B's end is expected

    def start(self) -> None:
        release = subprocess.run([HONCHO, "start", "-f", "Procfile", "--no-colour", "release"],
                                 cwd=ROOT, env=self.env, capture_output=True, text=True,
                                 timeout=180)
        if release.returncode or "migrations applied" not in release.stdout:
            raise RuntimeError(f"release failed:\n{release.stdout[-3000:]}")
        self.a = Formation("A", ["-p", str(self.port), "-c", "web=2,worker=2,clock=1",
                                 "web", "worker", "clock"], self.env, self.logs)
        self.formations.append(self.a)
        self.b = Formation("B", ["-c", "worker=1,clock=1", "worker", "clock"], self.env,
                           self.logs)
        self.formations.append(self.b)
        self._wait_ready()

    def check(self) -> None:
        for formation in self.formations:
            if not (self.b_killed and formation is self.b):
                formation.check()

    def _wait_ready(self, timeout: float = 120.0) -> None:
        """Both web processes answer /readyz 200; 3 workers and 2 clocks said they run."""
        deadline = time.monotonic() + timeout
        pending = list(self.urls)
        while time.monotonic() < deadline:
            self.check()
            for url in list(pending):
                with contextlib.suppress(requests.RequestException):
                    if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                        pending.remove(url)
            logs = self.a.output() + self.b.output()
            if (not pending and logs.count("jobsprint worker:") >= 3
                    and logs.count("jobsprint clock: running") >= 2):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the stack was not ready within {timeout:.0f} s "
                           f"(web not ready: {pending})")

    def victims(self) -> tuple[int, int]:
        """The pids of formation B's worker and clock."""
        return (self.b.pid_of("worker.1", "jobs.worker"),
                self.b.pid_of("clock.1", "jobs.scheduler"))

    def kill_b(self, worker: int, clock: int) -> None:
        """SIGKILL formation B's worker and clock, back to back. (Honcho then SIGTERMs
        whatever of B it still sees running: at most the shell that ran a victim.)"""
        self.b_killed = True
        os.kill(worker, signal.SIGKILL)
        os.kill(clock, signal.SIGKILL)

    def gone(self, pids: tuple[int, ...], timeout: float = 10.0) -> bool:
        """Whether every one of ``pids`` has exited (or is a zombie) within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not set(pids) & set(marked_processes(self.token)):
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> list[int]:
        """Stop both formations; the pids still alive afterwards (killed, and reported)."""
        for formation in self.formations:
            formation.stop()
        self.formations = []
        deadline = time.monotonic() + 10
        left = marked_processes(self.token)
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = marked_processes(self.token)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return left


# --- the workflows and the load -------------------------------------------------------------

def definition(name: str, trigger: dict, args, side_effect_url: str) -> dict:
    return {
        "name": name,
        "nodes": [
            {"id": "start", **trigger},
            {"id": "pause", "type": "logic.wait", "params": {"seconds": args.wait_seconds}},
            {"id": SIDE_EFFECT_NODE, "type": "http.request",
             "params": {"method": "POST", "url": side_effect_url, "body_type": "json",
                        "json": {"workflow": name}, "timeout_s": 30}},
            {"id": "done", "type": "logic.set", "params": {"fields": {"done": True}}},
        ],
        "connections": [{"from": "start", "to": "pause"},
                        {"from": "pause", "to": SIDE_EFFECT_NODE},
                        {"from": SIDE_EFFECT_NODE, "to": "done"}],
        "settings": {"concurrency": 50, "timeout_s": 300},
    }


class Api:
    """The signed-in user's calls: create, (de)activate, webhook details."""

    def __init__(self, base_url: str) -> None:
        self.client = w2.Client(base_url)  # registers a user and takes a token
        self.base = base_url

    def call(self, method: str, path: str, **kwargs) -> dict:
        reply = self.client.setup.request(method, f"{self.base}/api/v1{path}",
                                          headers=self.client.headers, timeout=30, **kwargs)
        reply.raise_for_status()
        return reply.json()

    def workflow(self, body: dict) -> str:
        workflow_id = self.call("POST", "/workflows", json=body)["id"]
        self.call("POST", f"/workflows/{workflow_id}/activate")
        return workflow_id


@dataclass
class Tally:
    """What one kind of client sent and got back."""

    accepted: set[str] = field(default_factory=set)  # execution ids answered 202
    codes: Counter = field(default_factory=Counter)  # non-202 answers and exceptions
    latencies: list[float] = field(default_factory=list)
    per_port: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, port: int, status, ids: list[str], seconds: float) -> None:
        with self.lock:
            if status == 202:
                self.accepted.update(ids)
                self.per_port[port] += 1
                self.latencies.append(seconds)
            else:
                self.codes[status] += 1


def paced(rate: float, t0: float, end: float, indices) -> int | None:
    """The next index to send, after sleeping until its time; None once past ``end``."""
    index = next(indices)
    due = t0 + index / rate
    if due >= end:
        return None
    delay = due - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    return index


def webhook_client(urls: list[str], path: str, secret: bytes, rate: float, t0: float,
                   end: float, indices, tally: Tally) -> None:
    """Signed deliveries, each to web.1 or web.2 by turn, one keep-alive connection each."""
    targets = [urlsplit(url) for url in urls]
    conns = [http.client.HTTPConnection(t.hostname, t.port, timeout=30) for t in targets]
    try:
        while (index := paced(rate, t0, end, indices)) is not None:
            which = index % len(conns)
            body = json.dumps({"delivery": index}).encode()
            headers = {"Content-Type": "application/json",
                       "X-Jobsprint-Signature": signature(secret, body)}
            began = time.monotonic()
            try:
                conns[which].request("POST", path, body, headers)
                reply = conns[which].getresponse()
                data = reply.read()
            except (OSError, http.client.HTTPException) as exc:
                conns[which].close()
                tally.add(targets[which].port, f"unanswered:{type(exc).__name__}", [], 0.0)
                continue
            ids = json.loads(data).get("execution_ids", []) if reply.status == 202 else []
            tally.add(targets[which].port, reply.status, ids, time.monotonic() - began)
    finally:
        for conn in conns:
            conn.close()


def manual_client(urls: list[str], workflow_id: str, headers: dict, rate: float, t0: float,
                  end: float, tally: Tally) -> None:
    sessions = [requests.Session() for _ in urls]
    indices = itertools.count()
    try:
        while (index := paced(rate, t0, end, indices)) is not None:
            which = index % len(urls)
            began = time.monotonic()
            try:
                reply = sessions[which].post(f"{urls[which]}/api/v1/workflows/{workflow_id}/run",
                                             json={"input": {"n": index}}, headers=headers,
                                             timeout=30)
            except requests.RequestException as exc:
                tally.add(urlsplit(urls[which]).port, f"unanswered:{type(exc).__name__}", [],
                          0.0)
                continue
            ids = [reply.json()["execution_id"]] if reply.status_code == 202 else []
            tally.add(urlsplit(urls[which]).port, reply.status_code, ids,
                      time.monotonic() - began)
    finally:
        for session in sessions:
            session.close()


def kill_time(t0: float, args) -> tuple[float, bool]:
    """Monotonic time of the kill, and whether it is a minute boundary: the boundary nearest
    to --kill-after within the middle half of the load (with the default 120 s there always is
    one), else --kill-after itself."""
    wall_t0 = time.time() - time.monotonic() + t0
    first, last = wall_t0 + args.seconds * 0.25, wall_t0 + args.seconds * 0.75
    boundaries = [minute * 60 for minute in range(int(first // 60), int(last // 60) + 2)
                  if first <= minute * 60 <= last]
    if not boundaries:
        return t0 + args.kill_after, False
    wanted = wall_t0 + args.kill_after
    return t0 + min(boundaries, key=lambda b: abs(b - wanted)) - wall_t0, True


def tcp_ports(pid: int) -> list[int]:
    """Local ports of the TCP sockets ``pid`` holds: a connection to PostgreSQL shows as
    ``client_port`` in pg_stat_activity."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:["):-1])
    ports = []
    for line in _read_proc(pid, "net/tcp").decode().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 9 and fields[9] in inodes:
            ports.append(int(fields[1].rpartition(":")[2], 16))
    return ports


def watch_clock_firing(conn, clock_pid: int, until: float) -> str | None:
    """Polls until the clock ``clock_pid`` is inside the transaction that fires slots; the
    statement it is at, or None if it was not by ``until`` (monotonic)."""
    while time.monotonic() < until:
        ports = tcp_ports(clock_pid)
        if ports:
            row = conn.execute(FIRING_QUERY, (DB_NAME, ports)).fetchone()
            if row:
                return row[0]
        time.sleep(0.005)
    return None


# --- reading the outcome from the database ------------------------------------------------

def not_final(conn) -> int:
    return conn.execute("SELECT count(*) FROM executions WHERE status NOT IN "
                        "('succeeded', 'failed', 'cancelled')").fetchone()[0]


def wait_final(stack: Stack, conn, stall_s: float = 60.0, cap_s: float = 300.0) -> float:
    """Seconds until no run is left unfinished (or no progress for ``stall_s``)."""
    began = last_change = time.monotonic()
    last = None
    while True:
        stack.check()
        left = not_final(conn)
        now = time.monotonic()
        if left == 0:
            return now - began
        if left != last:
            last, last_change = left, now
        if now - last_change > stall_s or now - began > cap_s:
            return now - began
        time.sleep(0.5)


def expected_slots(activated: datetime, deactivated: datetime) -> set[datetime]:
    """Minute boundaries a ``* * * * *`` schedule active over that span must have fired."""
    first = activated.replace(second=0, microsecond=0) + timedelta(minutes=1)
    slots = set()
    while first <= deactivated - SLOT_MARGIN:
        slots.add(first)
        first += timedelta(minutes=1)
    return slots


def report(conn, parts: dict[str, float], hooks: Tally, manual: Tally,
           schedule_ids: list[str], activated: datetime, killed_at: datetime,
           deactivated: datetime, side_effects: SideEffects, load_seconds: float) -> int:
    """Prints the run's figures; returns how many runs were lost or duplicated."""
    rows = conn.execute("SELECT id::text, trigger_type, status, deliveries, result, "
                        "workflow_id::text, input->>'scheduled_for', trigger_event_id::text, "
                        "created_at FROM executions").fetchall()
    by_id = {r[0]: r for r in rows}
    started = Counter(r[1] for r in rows)
    for trigger in ("webhook", "manual", "schedule"):
        figure(LABEL, "runs_started", started.get(trigger, 0), trigger=trigger)
    others = sum(v for k, v in started.items() if k not in ("webhook", "manual", "schedule"))
    if others:
        figure(LABEL, "runs_started", others, trigger="other")
    for name, tally in (("webhook", hooks), ("manual", manual)):
        figure(LABEL, "accepted", len(tally.accepted), trigger=name,
               **{f"port_{port}": count for port, count in sorted(tally.per_port.items())})
        if tally.codes:
            figure(LABEL, "not_accepted", sum(tally.codes.values()), trigger=name,
                   codes=",".join(f"{k}:{v}" for k, v in sorted(tally.codes.items(), key=str)))
    statuses = Counter(r[2] for r in rows)
    for status in (*FINAL, "queued", "running", "waiting"):
        if status in FINAL or statuses.get(status):
            figure(LABEL, "runs_finished" if status in FINAL else "runs_unfinished",
                   statuses.get(status, 0), status=status)
    figure(LABEL, "wrong_results", sum(1 for r in rows if r[2] == "succeeded" and not (
        isinstance(r[4], dict) and r[4].get("done") is True)))

    # Lost.
    accepted = hooks.accepted | manual.accepted
    no_row = accepted - by_id.keys()
    never_final = [r for r in rows if r[2] not in FINAL]
    fired: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        if r[1] == "schedule" and r[6]:
            fired[r[5]][datetime.fromisoformat(r[6].replace("Z", "+00:00"))] += 1
    expected = expected_slots(activated, deactivated)
    missed = sum(len(expected - fired[w].keys()) for w in schedule_ids)
    effects = side_effects.by_execution()
    no_effect = [r for r in rows if r[2] == "succeeded" and r[0] not in effects]
    figure(LABEL, "lost", len(no_row), what="accepted_without_run")
    figure(LABEL, "lost", len(never_final), what="never_final")
    figure(LABEL, "lost", missed, what="schedule_slot_not_fired",
           slots_expected=len(expected) * len(schedule_ids),
           fired_after_kill=sum(1 for r in rows if r[1] == "schedule" and r[8] > killed_at))
    figure(LABEL, "lost", len(no_effect), what="succeeded_without_side_effect")

    # Duplicated.
    slot_twice = sum(1 for slots in fired.values() for n in slots.values() if n > 1)
    event_twice = conn.execute(
        "SELECT count(*) FROM (SELECT dedupe_key FROM trigger_events WHERE kind = 'schedule' "
        "GROUP BY dedupe_key HAVING count(*) > 1) d").fetchone()[0]
    runs_per_event = Counter(r[7] for r in rows if r[7])
    node_twice = conn.execute(
        "SELECT count(*) FROM (SELECT execution_id, node_key FROM execution_nodes "
        "WHERE status = 'succeeded' GROUP BY execution_id, node_key "
        "HAVING count(*) > 1) d").fetchone()[0]
    two_keys = sum(1 for keys in effects.values() if len(keys) > 1)
    repeats = sum(n - 1 for keys in effects.values() for n in keys.values())
    unknown = [e for e in effects if e not in by_id]
    figure(LABEL, "duplicated", slot_twice, what="schedule_slot_with_two_runs")
    figure(LABEL, "duplicated", event_twice, what="schedule_slot_with_two_events")
    figure(LABEL, "duplicated", sum(1 for n in runs_per_event.values() if n > 1),
           what="trigger_event_with_two_runs")
    figure(LABEL, "duplicated", node_twice, what="node_succeeded_twice")
    figure(LABEL, "duplicated", two_keys, what="side_effect_under_two_keys")
    figure(LABEL, "side_effect_key_repeats", repeats,
           note="same_key_resent_after_a_cut_off_request")
    if unknown:
        figure(LABEL, "side_effects_of_unknown_runs", len(unknown))

    figure(LABEL, "runs_delivered_more_than_once", sum(1 for r in rows if (r[3] or 0) > 1))
    per_s = len(hooks.accepted) / load_seconds
    figure(LABEL, "webhook_deliveries_per_s", per_s, seconds=f"{load_seconds:.0f}",
           vs_pg_commits=ratio(per_s, parts.get("pg")),
           vs_redis_round_trips=ratio(per_s, parts.get("redis")),
           vs_rabbitmq_confirms=ratio(per_s, parts.get("rabbitmq")))
    finished = sum(1 for r in rows if r[2] in FINAL)
    figure(LABEL, "runs_finished_per_s", finished / load_seconds, note="over_the_load_time")
    ms = [x * 1000 for x in hooks.latencies]
    figure(LABEL, "webhook_accept_p50_ms", percentile(ms, 0.50))
    figure(LABEL, "webhook_accept_p99_ms", percentile(ms, 0.99))
    return (len(no_row) + len(never_final) + missed + len(no_effect) + slot_twice + event_twice
            + node_twice + two_keys)


def print_metrics(urls: list[str], conn, all_lines: bool) -> None:
    """``/metrics`` of web.1, its jobsprint_* lines; web.2's counters compared with them."""
    answers = []
    for url in urls:
        reply = requests.get(f"{url}/metrics", timeout=30)
        if reply.status_code != 200:
            figure(LABEL, "metrics", "missing", url=url, status=reply.status_code)
            return
        answers.append([line for line in reply.text.splitlines()
                        if line.startswith("jobsprint_")])
    buckets = 0
    for line in answers[0]:
        if "_bucket{" in line and not all_lines:
            buckets += 1
            continue
        print(f"{LABEL} metric {line}", flush=True)
    if buckets:
        print(f"{LABEL} metric ({buckets} _bucket lines left out; --all-metrics prints them)")

    def counters(lines: list[str]) -> dict[str, float]:
        return {name: float(value) for name, _, value in (line.rpartition(" ") for line in lines)
                if name.partition("{")[0].endswith(("_total", "_count"))}

    figure(LABEL, "metrics_counters_same_on_web2",
           "yes" if counters(answers[0]) == counters(answers[1]) else "no")
    totals = counters(answers[0])
    for status, count in conn.execute("SELECT status, count(*) FROM executions "
                                      "GROUP BY status ORDER BY status").fetchall():
        key = f'jobsprint_runs_total{{status="{status}"}}'
        figure(LABEL, "metrics_runs_total_vs_db", f"{totals.get(key, 0):.0f}/{count}",
               status=status)


# --- the whole run --------------------------------------------------------------------------

def run(args, parts: dict[str, float], logs: Path) -> int:
    stack = Stack(args, logs)
    side_effects = SideEffects(args.side_effect_ms / 1000)
    try:
        stack.start()
        figure(LABEL, "formation", "A", processes="web=2,worker=2,clock=1",
               ports=f"{stack.port},{stack.port + 1}")
        figure(LABEL, "formation", "B", processes="worker=1,clock=1")
        api = Api(stack.urls[0])
        hook_id = api.workflow(definition(
            "scale-out webhook", {"type": "trigger.webhook",
                                  "params": {"respond": "immediately", "auth": "jobsprint"}},
            args, side_effects.url))
        hook = api.call("GET", f"/workflows/{hook_id}/webhook")
        manual_id = api.workflow(definition("scale-out manual",
                                            {"type": "trigger.manual", "params": {}},
                                            args, side_effects.url))
        activated = datetime.now(UTC)
        schedule_ids = [api.workflow(definition(
            f"scale-out schedule {n}",
            {"type": "trigger.schedule", "params": {"cron": "* * * * *", "timezone": "UTC"}},
            args, side_effects.url)) for n in range(args.schedules)]
        activated = max(activated, datetime.now(UTC))  # a slot is certain after the last one

        hooks, manual = Tally(), Tally()
        t0 = time.monotonic()
        end = t0 + args.seconds
        indices = itertools.count()  # next() is atomic under the GIL
        threads = [threading.Thread(target=webhook_client, daemon=True, args=(
            stack.urls, urlsplit(hook["url"]).path, hook["secret"].encode(),
            args.webhook_rate, t0, end, indices, hooks)) for _ in range(args.webhook_clients)]
        threads.append(threading.Thread(target=manual_client, daemon=True, args=(
            stack.urls, manual_id, api.client.headers, args.manual_rate, t0, end, manual)))
        for thread in threads:
            thread.start()

        kill_at, at_boundary = kill_time(t0, args)
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            while time.monotonic() < kill_at - 0.2:
                stack.check()
                time.sleep(min(0.5, max(0.0, kill_at - 0.2 - time.monotonic())))
            worker, clock = stack.victims()
            firing = None
            if at_boundary:
                firing = watch_clock_firing(conn, clock, kill_at + FIRE_WATCH_S)
            stack.kill_b(worker, clock)
            killed_at = datetime.now(UTC)
            running = conn.execute(
                "SELECT count(*) FROM executions WHERE status = 'running'").fetchone()[0]
            figure(LABEL, "killed", f"worker={worker},clock={clock}", signal="SIGKILL",
                   at_s=f"{time.monotonic() - t0:.1f}", wall=f"{killed_at:%H:%M:%S.%f}"[:-3],
                   runs_running=running,
                   exited="yes" if stack.gone((worker, clock)) else "no")
            figure(LABEL, "clock_state", "firing_slots" if firing else "not_firing",
                   **({"statement": repr(firing)} if firing else {}))
            while time.monotonic() < end:
                stack.check()
                time.sleep(0.5)
            for thread in threads:
                thread.join(60)
            load_seconds = time.monotonic() - t0
            for workflow_id in schedule_ids:
                api.call("POST", f"/workflows/{workflow_id}/deactivate")
            deactivated = datetime.now(UTC)
            drain = wait_final(stack, conn)
            figure(LABEL, "drain_seconds", drain)
            figure(LABEL, "formation_b_exited", "yes" if stack.b.proc.poll() is not None
                   else "no", formation_a="running" if stack.a.proc.poll() is None else "no")
            stack.check()
            damaged = report(conn, parts, hooks, manual, schedule_ids, activated, killed_at,
                             deactivated, side_effects, load_seconds)
            print_metrics(stack.urls, conn, args.all_metrics)
    finally:
        side_effects.close()
        left = stack.stop()
        figure(LABEL, "processes_left_after_stop", len(left),
               **({"pids": ",".join(map(str, left))} if left else {}))
    return damaged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="length of the load")
    parser.add_argument("--kill-after", type=float, default=45.0)
    parser.add_argument("--webhook-rate", type=float, default=3.0, help="deliveries/s in all")
    parser.add_argument("--webhook-clients", type=int, default=4)
    parser.add_argument("--manual-rate", type=float, default=1.0, help="manual runs/s")
    parser.add_argument("--schedules", type=int, default=20, help="'* * * * *' workflows")
    parser.add_argument("--wait-seconds", type=float, default=1.0,
                        help="logic.wait in every run (inline: at most 5)")
    parser.add_argument("--side-effect-ms", type=float, default=200.0)
    parser.add_argument("--lease-seconds", type=float, default=6.0)
    parser.add_argument("--all-metrics", action="store_true")
    args = parser.parse_args()
    if not 0 < args.kill_after < args.seconds:
        parser.error("--kill-after must lie within --seconds")

    def on_term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    logs = Path(tempfile.mkdtemp(prefix="scaleout-"))
    began = time.monotonic()
    damaged = None  # set once the run's figures are printed
    resources = {"redis_url": REDIS_URL, "pg_url": PG_URL, "scratch_queue": SCRATCH_QUEUE}
    try:
        w2.recreate_database(DB_NAME)
        w2.flush_redis(REDIS_URL)
        w2.delete_rabbitmq_queues(QUEUE_NAME, SCRATCH_QUEUE)
        before = w2.measure_parts("start", ["rabbitmq"], **resources)
        damaged = run(args, before, logs)
        after = w2.measure_parts("end", ["rabbitmq"], **resources)
        for key in before:
            figure(f"part={key}", "mean_per_s", (before[key] + after[key]) / 2,
                   spread_pct=f"{abs(before[key] - after[key]) * 100 / max(before[key], 1):.0f}")
        figure(LABEL, "bench_seconds", time.monotonic() - began, cpus=os.cpu_count())
    except KeyboardInterrupt:
        print("interrupted; the stack is stopped", file=sys.stderr, flush=True)
        return 130
    finally:
        try:
            w2.delete_rabbitmq_queues(QUEUE_NAME, SCRATCH_QUEUE)
            w2.flush_redis(REDIS_URL)
            w2.drop_database(DB_NAME)
        except Exception as exc:  # noqa: BLE001 - clean-up is best effort, say why it failed
            print(f"clean-up: {exc!r}", file=sys.stderr, flush=True)
        if damaged == 0:
            shutil.rmtree(logs, ignore_errors=True)
        else:  # something was lost or duplicated, or the run failed: the evidence
            print(f"{LABEL} logs kept in {logs}", flush=True)
    return 1 if damaged else 0


if __name__ == "__main__":
    sys.exit(main())
