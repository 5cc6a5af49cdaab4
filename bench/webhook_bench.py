"""W1 and W2 (DESIGN.md) through signed webhooks, on the production stack, beside its parts.

    .venv/bin/python bench/webhook_bench.py [--concurrency 1,10,50] [--seconds 10]
        [--w2-seconds 10] [--workers 2] [--worker-threads 4] [--web-threads 32]
        [--web-processes 2] [--client wrk|python]
        [--profile DIR]

The stack is w2_bench's (imported, not copied): gunicorn with ``--web-processes`` gthread
worker processes (2 by default, as the Procfile's ``WEB_CONCURRENCY``; ``--web-threads``
threads each: a when_finished request holds one thread while it waits, so there must be more
threads than clients), ``--workers`` ``python -m jobs.worker`` on RabbitMQ (queue
``bench.runs``) and one ``python -m jobs.scheduler``, on PostgreSQL ``jobsprint_bench``
(dropped, created and migrated), Redis db 12; all removed at the end.

Workflows: trigger.webhook (auth jobsprint; respond when_finished for W1, immediately for W2,
each workload's webhooks owned by a user of its own)
-> logic.set (total = amount * 2, email lower-cased), settings.concurrency 50 (as w2_bench, so
the per-workflow slot never serialises runs). Every request has a distinct order_id (no replay
dedupe) and a fresh ``X-Jobsprint-Signature: t=<now>,v1=HMAC-SHA256(secret, "<t>.<body>")``.
The load comes from wrk (``--client wrk``, the default when ``wrk`` is on PATH: Debian's
package) with a Lua script that sends requests signed just before the level, one keep-alive
connection per client, back to back; it takes ~0.05 ms CPU per request. ``--client python``:
threads, each with its own keep-alive ``http.client`` connection, signing as they send
(~0.25 ms CPU per request, taken from the two cores the stack runs on).

- W1: for each concurrency, ``--seconds`` of requests: requests/s (first send to last answer),
  p50/p99 of the round trip; every answer must be 200 with total 25.0 and email "a@b.com"
  (``wrong_answers`` counts the others, ``codes`` lists non-200s). Where the time went, from
  the runs' rows: ``pickup`` (stored -> began running in a worker; 0 for a run that ran on
  arrival, in the web process, before it was stored) and ``run`` (began -> final state),
  p50/p99; the rest of the round trip is the web process's (the store included), the final
  write's and the network's.
- W2: for each concurrency (its own workflow), ``--w2-seconds`` of requests: accepted/s and
  p50/p99 of the 202; then, from the database once all are final (or stalled 45 s):
  finished/s (min(created_at) -> max(finished_at)), failed_runs, lost_runs (accepted, never
  final), wrong_results, drain_seconds (last 202 -> last run final).
- ``W2 c=<top> workers=held``: the top level again with the queue workers paused (SIGSTOP)
  until the last 202, then resumed to drain: what the web process stores and queues when it
  has the machine's two cores to itself (as when workers run on other machines).
- ``cpu_ms_per_request``: CPU per request of each process of the stack during the level
  (W2: including the drain), from /proc, as w2_bench's CpuMeter.
- Memory: RSS (MB) and threads of gunicorn's (first) worker process idle (after setup and a short
  warm-up), after W1 and after W2.
- Parts (w2_bench.measure_parts): Redis PING, PostgreSQL INSERT + commit, RabbitMQ confirmed
  publish, before and after; ``part=machine load_avg_1m`` at start and end.

``--profile DIR``: py-spy (w2_bench.Profiler: GIL samples, collapsed stacks) on the web
process and the workers during W1 at the middle concurrency and W2 at the highest; its own CPU
makes that run's figures incomparable. One line per figure; nothing is asserted.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import hmac
import http.client
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import w2_bench as w2
from w2_bench import FINAL, figure, percentile, ratio

BACKEND = "rabbitmq"
AMOUNT, EMAIL = 12.5, "A@B.com"
LABEL = "WH"


def definition(name: str, respond: str) -> dict:
    return {
        "name": name,
        "nodes": [
            {"id": "hook", "type": "trigger.webhook",
             "params": {"respond": respond, "auth": "jobsprint", "timeout_s": 30}},
            {"id": "calc", "type": "logic.set", "params": {"fields": {
                "total": "{{ input.body.amount * 2 }}",
                "email": "{{ input.body.email | lower }}"}}},
        ],
        "connections": [{"from": "hook", "to": "calc"}],
        "settings": {"concurrency": 50, "timeout_s": 300},
    }


def right_result(result) -> bool:
    return (isinstance(result, dict) and result.get("total") == 25.0
            and result.get("email") == "a@b.com")


def rss(pid: int) -> tuple[float, int]:
    """Resident MB and thread count of one process."""
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"])


def signature(secret: bytes, body: bytes) -> str:
    """``X-Jobsprint-Signature`` for ``body`` sent now: ``t=<now>,v1=HMAC-SHA256(secret,
    "<t>.<raw body>")``."""
    t = str(int(time.time()))
    v1 = hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={v1}"


class Hook:
    """One activated webhook workflow: where to POST and how to sign."""

    def __init__(self, client: w2.Client, stack: w2.Stack, name: str, respond: str) -> None:
        session, base = client.setup, client.base
        reply = session.post(f"{base}/api/v1/workflows", json=definition(name, respond),
                             headers=client.headers, timeout=30)
        reply.raise_for_status()
        self.workflow_id = reply.json()["id"]
        session.post(f"{base}/api/v1/workflows/{self.workflow_id}/activate",
                     headers=client.headers, timeout=30).raise_for_status()
        reply = session.get(f"{base}/api/v1/workflows/{self.workflow_id}/webhook",
                            headers=client.headers, timeout=30)
        reply.raise_for_status()
        info = reply.json()
        # The URL names JOBSPRINT_BASE_URL's host; the token is what counts.
        self.path = urlsplit(info["url"]).path
        self.secret = info["secret"].encode()
        target = urlsplit(stack.url)
        self.host, self.port = target.hostname, target.port

    def request(self, order_id: int) -> tuple[bytes, dict]:
        body = json.dumps({"order_id": order_id, "amount": AMOUNT, "email": EMAIL}).encode()
        return body, {"Content-Type": "application/json",
                      "X-Jobsprint-Signature": signature(self.secret, body)}


ORDER_IDS = itertools.count(1)  # next() is atomic under the GIL: never a repeated order_id


class Load:
    """``clients`` threads POSTing back to back for ``seconds``."""

    def __init__(self, hook: Hook, clients: int, seconds: float, expect: int) -> None:
        self.hook, self.clients, self.seconds, self.expect = hook, clients, seconds, expect
        self.latencies: list[float] = []
        self.codes: Counter = Counter()
        self.wrong = 0
        self.last_answer = 0.0
        self.elapsed = 0.0

    def _answer_ok(self, status: int, data: bytes) -> bool:
        try:
            payload = json.loads(data)
        except ValueError:
            return False
        if self.expect == 200:
            return right_result(payload)
        return isinstance(payload, dict) and len(payload.get("execution_ids") or []) == 1

    def _client(self, ready: threading.Barrier, stop_at: list[float]) -> None:
        hook = self.hook
        conn = http.client.HTTPConnection(hook.host, hook.port, timeout=60)
        latencies, codes, wrong = [], Counter(), 0
        ready.wait()
        deadline = stop_at[0]
        last = 0.0
        while time.perf_counter() < deadline:
            body, headers = hook.request(next(ORDER_IDS))
            began = time.perf_counter()
            try:
                conn.request("POST", hook.path, body, headers)
                reply = conn.getresponse()
                data = reply.read()
                status = reply.status
            except (OSError, http.client.HTTPException) as exc:
                codes[type(exc).__name__] += 1
                conn.close()
                conn = http.client.HTTPConnection(hook.host, hook.port, timeout=60)
                continue
            last = time.perf_counter()
            latencies.append(last - began)
            codes[status] += 1
            if status == self.expect and not self._answer_ok(status, data):
                wrong += 1
        conn.close()
        with self.lock:
            self.latencies.extend(latencies)
            self.codes.update(codes)
            self.wrong += wrong
            self.last_answer = max(self.last_answer, last)

    def run(self) -> Load:
        self.lock = threading.Lock()
        ready = threading.Barrier(self.clients + 1)
        stop_at = [0.0]
        threads = [threading.Thread(target=self._client, args=(ready, stop_at), daemon=True)
                   for _ in range(self.clients)]
        for thread in threads:
            thread.start()
        started = time.perf_counter()
        stop_at[0] = started + self.seconds
        ready.wait()
        for thread in threads:
            thread.join()
        self.elapsed = max(self.last_answer - started, 1e-9)
        return self

    @property
    def ok(self) -> int:
        return self.codes.get(self.expect, 0)

    @property
    def p50_ms(self) -> float:
        return percentile([x * 1000 for x in self.latencies], 0.50)

    @property
    def p99_ms(self) -> float:
        return percentile([x * 1000 for x in self.latencies], 0.99)

    @property
    def answered(self) -> int:
        return len(self.latencies)

    def print_codes(self, label: str) -> None:
        others = {k: v for k, v in self.codes.items() if k != self.expect}
        if others:
            figure(label, "rejected", sum(others.values()),
                   codes=",".join(f"{k}:{v}" for k, v in sorted(others.items(), key=str)))


# wrk's script: each connection sends the next of the requests signed beforehand (one per
# line of the file: signature, tab, body), counts answers by status and checks each expected
# answer's body; done() prints one line the bench parses.
WRK_SCRIPT = r"""
local path, file, expect, patterns = %(path)s, %(file)s, %(expect)d, {%(patterns)s}
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  reqs, sent, codes, wrong = {}, 0, {}, 0
  for line in io.lines(file) do
    local sig, body = line:match("^([^\t]+)\t(.*)$")
    reqs[#reqs + 1] = wrk.format("POST", path, {["Content-Type"] = "application/json",
                                                ["X-Jobsprint-Signature"] = sig}, body)
  end
end
function request()
  sent = sent + 1
  return reqs[sent] or wrk.format("GET", "/requests-file-exhausted")
end
function response(status, headers, body)
  codes[status] = (codes[status] or 0) + 1
  if status == expect then
    for _, pattern in ipairs(patterns) do
      if not body:find(pattern) then wrong = wrong + 1; break end
    end
  end
end
function done(summary, latency, requests)
  local all, bad = {}, 0
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("codes")) do all[status] = (all[status] or 0) + n end
    bad = bad + thread:get("wrong")
  end
  local parts = {}
  for status, n in pairs(all) do parts[#parts + 1] = status .. ":" .. n end
  local e = summary.errors
  io.write(string.format("WRK duration_us=%%d wrong=%%d p50_us=%%d p99_us=%%d codes=%%s " ..
    "errors=connect:%%d,read:%%d,write:%%d,timeout:%%d\n", summary.duration, bad,
    latency:percentile(50), latency:percentile(99), table.concat(parts, ","),
    e.connect, e.read, e.write, e.timeout))
end
"""
# Lua patterns all found in an expected answer: W1 the last node's output, W2 one execution id.
WRK_PATTERNS = {200: ['"total":%s*25%.0[,}%s]', '"email":%s*"a@b%.com"'],
                202: ['"execution_ids":%s*%[%s*"[^"]+"%s*%]']}


class WrkLoad:
    """The same load as ``Load`` from wrk (C, one event-loop thread): ``clients`` keep-alive
    connections POSTing back to back for ``seconds``, each request signed beforehand (the
    signatures' timestamps stay well inside the 300 s tolerance). wrk gives p50/p99, not each
    latency; requests in flight at the deadline are abandoned unanswered (the server may still
    take them: ``extra_runs``)."""

    MAX_RATE = 5000  # requests/s signed beforehand; more is reported as 404s, not replays

    def __init__(self, hook: Hook, clients: int, seconds: float, expect: int) -> None:
        self.hook, self.clients, self.seconds, self.expect = hook, clients, seconds, expect
        self.codes: Counter = Counter()
        self.wrong = 0
        self.elapsed = 0.0
        self.p50_ms = self.p99_ms = 0.0

    def run(self) -> WrkLoad:
        hook = self.hook
        with tempfile.TemporaryDirectory(prefix="webhook-bench-") as tmp:
            requests_file = Path(tmp, "requests.tsv")
            with requests_file.open("w") as out:
                for _ in range(int(self.MAX_RATE * self.seconds) + 1000):
                    body, headers = hook.request(next(ORDER_IDS))
                    out.write(f"{headers['X-Jobsprint-Signature']}\t{body.decode()}\n")
            script = Path(tmp, "load.lua")
            script.write_text(WRK_SCRIPT % {
                "path": lua_string(hook.path), "file": lua_string(str(requests_file)),
                "expect": self.expect,
                "patterns": ", ".join(map(lua_string, WRK_PATTERNS[self.expect]))})
            done = subprocess.run(
                ["wrk", "-t1", f"-c{self.clients}", f"-d{self.seconds:g}s", "--timeout", "60s",
                 "-s", str(script), f"http://{hook.host}:{hook.port}"],
                capture_output=True, text=True, timeout=self.seconds + 120, check=True)
        line = next((x for x in done.stdout.splitlines() if x.startswith("WRK ")), None)
        if line is None:
            raise RuntimeError(f"wrk printed no summary: {done.stdout}{done.stderr}")
        fields = dict(item.split("=", 1) for item in line.split()[1:])
        self.elapsed = int(fields["duration_us"]) / 1e6
        self.wrong = int(fields["wrong"])
        self.p50_ms = int(fields["p50_us"]) / 1000
        self.p99_ms = int(fields["p99_us"]) / 1000
        for item in filter(None, fields["codes"].split(",")):
            status, n = item.split(":")
            self.codes[int(status)] += int(n)
        for item in fields["errors"].split(","):
            kind, n = item.split(":")
            if int(n):
                self.codes[f"wrk_{kind}"] += int(n)
        return self

    @property
    def ok(self) -> int:
        return self.codes.get(self.expect, 0)

    @property
    def answered(self) -> int:
        return sum(n for status, n in self.codes.items() if isinstance(status, int))

    def print_codes(self, label: str) -> None:
        Load.print_codes(self, label)


def lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string of ASCII text is a valid Lua string literal


def print_stages(label: str, rows) -> None:
    """Where a W1 run's time went, from its row: stored -> began running in a worker
    (pickup: its claim, or for a batch of pure runs the moment it started) and began -> its
    final state (run; a batch's write comes after), p50/p99 in ms. The rest of the round trip
    is the web process's (reading and storing the delivery, answering after the final event),
    the write's and the network's."""
    rows = [r for r in rows if r.started_at is not None and r.finished_at is not None]
    if not rows:
        return
    pickup = [(r.started_at - r.created_at).total_seconds() * 1000 for r in rows]
    run = [(r.finished_at - r.started_at).total_seconds() * 1000 for r in rows]
    figure(label, "pickup_p50_ms", percentile(pickup, 0.5), runs=len(rows))
    figure(label, "pickup_p99_ms", percentile(pickup, 0.99))
    figure(label, "run_p50_ms", percentile(run, 0.5))
    figure(label, "run_p99_ms", percentile(run, 0.99))


def print_cpu(label: str, meter: w2.CpuMeter, requests_done: int) -> None:
    cpu, unaccounted = meter.stop()
    if not requests_done:
        return
    per = {group: used * 1000 / requests_done for group, used in cpu.items()}
    context = {group: f"{value:.2f}" for group, value in sorted(per.items())}
    context["unaccounted"] = f"{unaccounted * 1000 / requests_done:.2f}"
    figure(label, "cpu_ms_per_request", sum(per.values()), **context)


def print_rss(stack: w2.Stack, when: str) -> None:
    mb, threads = rss(stack.pids()["web"])
    figure(LABEL, "web_rss_mb", mb, when=when, threads=threads)


def parts_context(value: float, parts: dict[str, float]) -> dict[str, str]:
    return {"vs_pg_commits": ratio(value, parts.get("pg")),
            "vs_redis_round_trips": ratio(value, parts.get("redis")),
            "vs_rabbitmq_confirms": ratio(value, parts.get("rabbitmq"))}


def run(args, parts: dict[str, float]) -> None:
    levels = [int(c) for c in args.concurrency.split(",")]
    w2.recreate_database()
    w2.flush_redis()
    w2.delete_rabbitmq_queues()
    stack = w2.Stack(BACKEND, args.workers, args.web_threads, args.web_processes)
    if args.worker_threads:
        stack.env["JOBSPRINT_WORKER_THREADS"] = str(args.worker_threads)
    w2._STACKS.append(stack)
    results = None
    try:
        stack.start()
        results = w2.Results(stack.db_url)
        client = w2.Client(stack.url)
        # W2's webhooks belong to another user: W1's waiting requests keep their user's live
        # channel subscribed for 30 s after the last one (app.live.hub), and W2 measures
        # deliveries nobody watches.
        other = w2.Client(stack.url)
        w1_hook = Hook(client, stack, "W1 webhook when_finished", "when_finished")
        w2_hooks = {c: Hook(other, stack, f"W2 webhook immediately c={c}", "immediately")
                    for c in levels}
        held_hook = Hook(other, stack, "W2 webhook immediately, workers held", "immediately")
        common = {"backend": BACKEND, "workers": args.workers, "client": args.client,
                  "web": f"gthread{args.web_processes}x{args.web_threads}"}
        print_rss(stack, "idle_before_warmup")
        # Warm-up: connections, caches, the validated graph, every webhook's cached config.
        Load(w1_hook, 4, 2.0, 200).run()
        for hook in [*w2_hooks.values(), held_hook]:
            body, headers = hook.request(next(ORDER_IDS))
            conn = http.client.HTTPConnection(hook.host, hook.port, timeout=30)
            conn.request("POST", hook.path, body, headers)
            conn.getresponse().read()
            conn.close()
        warm = {c: 1 for c in levels}
        time.sleep(1.0)
        print_rss(stack, "idle")

        middle = levels[len(levels) // 2]
        for c in levels:
            label = f"W1 c={c}"
            profiler = w2.Profiler(args.profile if c == middle else None, f"w1-c{c}")
            profiler.start(stack)
            meter = w2.CpuMeter(stack)
            meter.start()
            began = datetime.now(UTC)
            load = args.load(w1_hook, c, args.seconds, 200).run()
            profiler.stop()
            per_s = load.ok / load.elapsed
            figure(label, "requests_per_s", per_s, seconds=f"{load.elapsed:.1f}",
                   answers=load.ok, **common, **parts_context(per_s, parts))
            figure(label, "p50_ms", load.p50_ms)
            figure(label, "p99_ms", load.p99_ms)
            figure(label, "wrong_answers", load.wrong)
            load.print_codes(label)
            print_cpu(label, meter, load.answered)
            print_stages(label, [r for r in results.rows(w1_hook.workflow_id)
                                 if r.created_at >= began])
        print_rss(stack, "after_w1")

        top = levels[-1]
        for c in levels:
            w2_level(f"W2 c={c}", w2_hooks[c], c, warm[c], args, stack, results, common,
                     parts, profile=args.profile if c == top else None)
        # The same at the top level with the queue workers paused until the last 202: what the
        # web process takes in (stored and queued) when it has the machine to itself.
        w2_level(f"W2 c={top} workers=held", held_hook, top, 1, args, stack, results, common,
                 parts, hold=True)
        print_rss(stack, "after_w2")
    finally:
        if results is not None:
            results.close()
        w2._STACKS.remove(stack)
        stack.stop()


def w2_level(label: str, hook: Hook, c: int, warm: int, args, stack: w2.Stack,
             results: w2.Results, common: dict, parts: dict[str, float], *,
             profile: str | None = None, hold: bool = False) -> None:
    """One W2 level: accepted/s and its latency, then finished/s and losses from the DB."""
    profiler = w2.Profiler(profile, label.replace(" ", "-").replace("=", ""))
    profiler.start(stack)
    meter = w2.CpuMeter(stack)
    meter.start()
    if hold:
        stack.hold_workers(True)
    try:
        load = args.load(hook, c, args.w2_seconds, 202).run()
    finally:
        if hold:
            stack.hold_workers(False)
    last_202 = time.perf_counter()
    profiler.stop()
    per_s = load.ok / load.elapsed
    figure(label, "accepted_per_s", per_s, seconds=f"{load.elapsed:.1f}",
           accepted=load.ok, **common, **parts_context(per_s, parts))
    figure(label, "accept_p50_ms", load.p50_ms)
    figure(label, "accept_p99_ms", load.p99_ms)
    figure(label, "wrong_answers", load.wrong)
    load.print_codes(label)
    expected = warm + load.ok
    # wrk abandons the requests in flight at its deadline; the server may take them all the
    # same (extra_runs), and they must finish too.
    time.sleep(0.5)
    done = results.wait_final(stack, hook.workflow_id,
                              max(expected, len(results.rows(hook.workflow_id))))
    drained = time.perf_counter() - last_202
    print_cpu(label, meter, load.ok)
    rows = results.rows(hook.workflow_id)
    # The warm-up delivery was made before W1: leave it out of the span.
    measured = sorted(rows, key=lambda r: r.created_at)[warm:]
    finished = [r for r in measured if r.status in FINAL and r.finished_at is not None]
    if finished:
        span = (max(r.finished_at for r in finished)
                - min(r.created_at for r in measured)).total_seconds()
        fin_per_s = len(finished) / span
        figure(label, "finished_per_s", fin_per_s, runs=len(finished),
               **parts_context(fin_per_s, parts))
    figure(label, "drain_seconds", drained)
    counts = Counter(r.status for r in rows)
    figure(label, "failed_runs", counts.get("failed", 0) + counts.get("cancelled", 0))
    figure(label, "lost_runs", max(expected, len(rows)) - done)
    figure(label, "extra_runs", max(0, len(rows) - expected))
    figure(label, "wrong_results",
           sum(1 for r in rows if r.status == "succeeded" and not right_result(r.result)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,10,50")
    parser.add_argument("--seconds", type=float, default=10.0, help="W1 seconds per level")
    parser.add_argument("--w2-seconds", type=float, default=10.0, help="W2 seconds per level")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-threads", type=int, default=None,
                        help="threads per queue worker (default: the setting's, 4)")
    parser.add_argument("--web-threads", type=int, default=32)
    parser.add_argument("--web-processes", type=int, default=2,
                        help="gunicorn worker processes of the web (each its own intake)")
    parser.add_argument("--profile", metavar="DIR", default=None)
    parser.add_argument("--client", choices=["wrk", "python"],
                        default="wrk" if shutil.which("wrk") else "python",
                        help="load client: wrk (C; apt-get install wrk) if on PATH, else "
                             "Python threads")
    args = parser.parse_args()
    args.load = WrkLoad if args.client == "wrk" else Load

    def on_term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    atexit.register(w2.stop_all)
    began = time.monotonic()
    try:
        w2.recreate_database()
        before = w2.measure_parts("start", [BACKEND])
        run(args, before)
        w2.recreate_database()
        after = w2.measure_parts("end", [BACKEND])
        for key in before:
            figure(f"part={key}", "mean_per_s", (before[key] + after[key]) / 2,
                   spread_pct=f"{abs(before[key] - after[key]) * 100 / max(before[key], 1):.0f}")
        figure(LABEL, "bench_seconds", time.monotonic() - began, cpus=os.cpu_count())
    except KeyboardInterrupt:
        print("interrupted; stopping the stack", file=sys.stderr, flush=True)
        return 130
    finally:
        w2.stop_all()
        try:
            w2.delete_rabbitmq_queues()
            w2.flush_redis()
            w2.drop_database()
        except Exception as exc:  # noqa: BLE001 - clean-up is best effort, say why it failed
            print(f"clean-up: {exc!r}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
