"""Operational signals: /healthz, /readyz (and what it says when each part is down), /metrics
(in one process, and added up over real gunicorn and worker processes), and the JSON logs with
their request and execution ids.

A part "down" is pointed at a loopback port held by this test: bound but not listening (the
connection is refused at once), or listening but never answering (each check must give up on
its own timeout). Nothing is mocked.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import redis as redis_lib
import requests
from alembic.script import ScriptDirectory
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text, update

from app import create_app
from app.config import PROJECT_ROOT
from app.db import db
from app.models import Execution, utcnow
from app.services import readiness
from tests.conftest import (
    REDIS_URL,
    TEST_KEK,
    TEST_SECRET,
    AuthActions,
    _clean_postgres,
    make_settings,
)
from tests.integration import webhook_signing as signing
from tests.integration.conftest import ApiClient
from tests.integration.local_http import LocalService

AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
# RQ's queue for the process test: the store's Redis server, the next database number.
RQ_URL = REDIS_URL.rsplit("/", 1)[0] + "/" + str((int(REDIS_URL.rsplit("/", 1)[1]) + 1) % 16)
PASSWORD = "hunter2-not-for-logs"  # noqa: S105 - a password that must never be shown
ALL_UP = {"database": "ok", "migrations": "ok", "redis": "ok", "broker": "ok"}


def _llm(seen):
    return 200, {"id": "c1", "object": "chat.completion", "model": seen.body["model"],
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": "hi"}}],
                 "usage": {"prompt_tokens": 11, "completion_tokens": 5}}


LLM = LocalService(_llm).start()


@pytest.fixture
def settings_overrides():
    return {"log_format": "json", "http_allow": ("127.0.0.1",),
            "ai_providers": (("local", LLM.url + "/v1"),)}


# --- helpers ------------------------------------------------------------------------------

def scrape(get) -> dict[tuple[str, frozenset], float]:
    """``/metrics`` as {(sample name, labels): value}."""
    answer = get("/metrics")
    assert answer.status_code == 200
    body = answer.text if hasattr(answer, "text") else answer.get_data(as_text=True)
    assert answer.headers["Content-Type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: dict, after: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port bound by this test and not listening: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections (into the backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


@pytest.fixture
def build_app(tmp_path, request):
    """Production apps with settings overrides and no in-process workers or clock (a dead
    database must not have a clock hammering it); their queues are closed afterwards."""
    made = []

    def build(mode: str = "production", **overrides):
        settings = make_settings(mode, tmp_path, request, inline_workers=False, **overrides)
        made.append(create_app(settings))
        return made[-1]

    yield build
    for app in made:
        app.extensions["jobsprint.queue"].close()
    db.remove()
    db.engine.dispose()


def ready(app) -> tuple[int, dict]:
    answer = app.test_client().get("/readyz")
    return answer.status_code, answer.get_json()


def chain(*fields: str) -> dict:
    nodes = [{"id": "start", "type": "trigger.manual"}]
    for i, expr in enumerate(fields):
        nodes.append({"id": f"set{i}", "type": "logic.set", "params": {"fields": {"v": expr}}})
    return {"name": "Chain", "nodes": nodes, "settings": {"concurrency": 10},
            "connections": [{"from": a["id"], "to": b["id"]}
                            for a, b in zip(nodes, nodes[1:], strict=False)]}


def hook_workflow() -> dict:
    return {"name": "Hook", "nodes": [
        {"id": "hook", "type": "trigger.webhook", "params": {}},
        {"id": "calc", "type": "logic.set", "params": {"fields": {"t": "{{ input.body.n }}"}}}],
        "connections": [{"from": "hook", "to": "calc"}], "settings": {"concurrency": 10}}


# --- /healthz -----------------------------------------------------------------------------

def test_healthz_answers_ok(client):
    answer = client.get("/healthz")
    assert answer.status_code == 200 and answer.get_json() == {"status": "ok"}


def test_healthz_does_no_io_so_a_dead_database_does_not_fail_it(build_app, refused_port):
    app = build_app(database_url=f"postgresql+psycopg://postgres@127.0.0.1:{refused_port}/x",
                    redis_url=f"redis://127.0.0.1:{refused_port}/0")
    answer = app.test_client().get("/healthz")
    assert answer.status_code == 200 and answer.get_json() == {"status": "ok"}


# --- /readyz ------------------------------------------------------------------------------

def test_readyz_all_up(app, mode):
    status, body = ready(app)
    assert status == 200, body
    expected = dict(ALL_UP, broker="ok (embedded)")  # the app fixture runs its queue inline
    if mode == "embedded":
        expected["redis"] = "ok (embedded)"
    assert body == {"status": "ready", "checks": expected}


@pytest.mark.parametrize("queue_url", [RQ_URL, AMQP_URL], ids=["rq", "rabbitmq"])
def test_readyz_checks_the_real_broker(build_app, queue_url):
    app = build_app(queue_url=queue_url, queue_name=f"ops.{uuid.uuid4().hex[:8]}")
    assert ready(app) == (200, {"status": "ready", "checks": ALL_UP})


def test_readyz_names_a_refused_redis_without_its_password(build_app, refused_port):
    app = build_app(redis_url=f"redis://:{PASSWORD}@127.0.0.1:{refused_port}/0")
    status, body = ready(app)
    assert status == 503 and body["status"] == "unavailable"
    checks = body["checks"]
    assert checks["redis"].startswith("down: ") and "refused" in checks["redis"].lower()
    assert {k: v for k, v in checks.items() if k != "redis"} == {
        "database": "ok", "migrations": "ok", "broker": "ok (embedded)"}
    assert PASSWORD not in json.dumps(body)


def test_readyz_names_a_refused_database_without_its_password(build_app, refused_port):
    app = build_app(
        database_url=f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:{refused_port}/x")
    status, body = ready(app)
    assert status == 503 and body["status"] == "unavailable"
    checks = body["checks"]
    assert checks["database"].startswith("down: ") and "refused" in checks["database"]
    assert checks["migrations"] == "down: the database cannot be reached"
    assert (checks["redis"], checks["broker"]) == ("ok", "ok (embedded)")
    assert PASSWORD not in json.dumps(body)


@pytest.mark.parametrize("scheme", ["redis", "amqp"], ids=["rq", "rabbitmq"])
def test_readyz_names_a_refused_broker_without_its_password(build_app, refused_port, scheme):
    user = "guest" if scheme == "amqp" else ""
    path = "/%2F" if scheme == "amqp" else "/0"
    app = build_app(queue_url=f"{scheme}://{user}:{PASSWORD}@127.0.0.1:{refused_port}{path}",
                    queue_name=f"ops.{uuid.uuid4().hex[:8]}")
    status, body = ready(app)
    assert status == 503 and body["status"] == "unavailable"
    checks = body["checks"]
    assert checks["broker"].startswith("down: ")
    assert {k: v for k, v in checks.items() if k != "broker"} == {
        "database": "ok", "migrations": "ok", "redis": "ok"}
    assert PASSWORD not in json.dumps(body)


def test_readyz_gives_up_on_parts_that_never_answer(build_app, silent_port):
    """Database, Redis and broker accept the connection and then say nothing: each check
    stops at its own timeout and the probe still answers, naming all three."""
    app = build_app(
        database_url=f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:{silent_port}/x",
        redis_url=f"redis://:{PASSWORD}@127.0.0.1:{silent_port}/0",
        queue_url=f"redis://:{PASSWORD}@127.0.0.1:{silent_port}/1", queue_name="ops.silent")
    status, body = ready(app)
    assert status == 503, body
    checks = body["checks"]
    for part in ("database", "migrations", "redis", "broker"):
        assert checks[part].startswith("down: "), checks
    assert "timeout" in checks["redis"].lower() and "timeout" in checks["broker"].lower()
    assert PASSWORD not in json.dumps(body)


def test_readyz_says_when_migrations_are_not_current(app, monkeypatch):
    monkeypatch.setattr(readiness, "REUSE_S", 0)  # each probe fresh, not the last one's result
    head = ScriptDirectory(str(PROJECT_ROOT / "migrations")).get_revision("head")
    with db.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = :old"),
                           {"old": head.down_revision})
    try:
        status, body = ready(app)
    finally:
        with db.engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = :head"),
                               {"head": head.revision})
    assert status == 503 and body["status"] == "unavailable"
    assert body["checks"]["migrations"] == (
        f"down: the database is at revision {head.down_revision}, this code expects "
        f"{head.revision} (run the release step)")
    assert body["checks"]["database"] == "ok"
    assert ready(app)[0] == 200


def test_a_flood_of_readyz_probes_the_parts_once_per_second(app, monkeypatch):
    """/readyz needs no sign-in and opens fresh connections: callers share one probe."""
    probes = readiness._probes(app)
    calls = []
    original = probes.check_database
    monkeypatch.setattr(probes, "check_database", lambda: calls.append(1) or original())
    client = app.test_client()
    assert all(client.get("/readyz").status_code == 200 for _ in range(5))
    assert len(calls) == 1


def test_probes_are_neither_rate_limited_nor_signed_in(app):
    client = app.test_client()
    for _ in range(3):
        for path in ("/healthz", "/readyz", "/metrics"):
            answer = client.get(path)
            assert answer.status_code == 200, path
            assert "Set-Cookie" not in answer.headers


def test_metrics_need_the_token_when_one_is_set(app):
    app.config["SETTINGS"] = replace(app.config["SETTINGS"], metrics_token="scrape-me")
    client = app.test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic scrape-me"}):
        refused = client.get("/metrics", headers=headers)
        assert refused.status_code == 401, headers
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert "jobsprint_" not in refused.get_data(as_text=True)
    allowed = client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert allowed.status_code == 200 and "jobsprint_" in allowed.get_data(as_text=True)
    assert client.get("/healthz").status_code == client.get("/readyz").status_code == 200


# --- /metrics (one process) ----------------------------------------------------------------

def _wait_run(api_client, run_id: str, states=("succeeded", "failed", "cancelled"),
              timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api_client.get(f"/executions/{run_id}").get_json()
        if run["status"] in states:
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} still {run['status']}")


def test_metrics_count_runs_by_status_with_their_durations(client, api_client):
    before = scrape(client.get)
    workflow = api_client.post("/workflows", chain("{{ input.n * 2 }}", "{{ input.v + 1 }}"))
    workflow_id = workflow.get_json()["id"]
    failing = api_client.post("/workflows", chain("{{ input.nope.nope() }}")).get_json()["id"]
    ids = [api_client.post(f"/workflows/{workflow_id}/run", {"input": {"n": n}})
           .get_json()["execution_id"] for n in range(3)]
    ids.append(api_client.post(f"/workflows/{failing}/run", {"input": {}})
               .get_json()["execution_id"])
    statuses = [_wait_run(api_client, run_id)["status"] for run_id in ids]
    assert statuses == ["succeeded"] * 3 + ["failed"]
    after = scrape(client.get)
    assert delta(before, after, "jobsprint_runs_total", status="succeeded") == 3
    assert delta(before, after, "jobsprint_runs_total", status="failed") == 1
    assert delta(before, after, "jobsprint_run_duration_seconds_count", status="succeeded") == 3
    assert delta(before, after, "jobsprint_run_duration_seconds_bucket",
                 status="succeeded", le="+Inf") == 3
    # 3 runs × 2 logic.set, and the failing run's one attempt
    assert delta(before, after, "jobsprint_node_duration_seconds_count",
                 node_type="logic.set") == 7
    assert delta(before, after, "jobsprint_node_duration_seconds_count",
                 node_type="trigger.manual") == 4
    assert value(after, "jobsprint_queue_depth") == 0


def test_a_cancelled_parked_run_is_counted(client, api_client):
    definition = chain("{{ 1 }}")
    definition["nodes"].insert(1, {"id": "pause", "type": "logic.wait",
                                   "params": {"seconds": 600}})
    definition["connections"] = [{"from": "start", "to": "pause"},
                                 {"from": "pause", "to": "set0"}]
    workflow_id = api_client.post("/workflows", definition).get_json()["id"]
    run_id = api_client.post(f"/workflows/{workflow_id}/run", {"input": {}}) \
        .get_json()["execution_id"]
    _wait_run(api_client, run_id, states=("waiting",))
    before = scrape(client.get)
    assert value(before, "jobsprint_runs_active", status="waiting") == 1
    assert api_client.post(f"/executions/{run_id}/cancel").status_code == 200
    after = scrape(client.get)
    assert delta(before, after, "jobsprint_runs_total", status="cancelled") == 1
    assert value(after, "jobsprint_runs_active", status="waiting") == 0


def test_metrics_show_the_queue_depth_and_its_oldest_run(build_app, mode):
    """No worker consumes: the runs stay queued, and the oldest one was made 2 minutes old."""
    app = build_app(mode)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {AuthActions(client).register_api()['token']}"}
    workflow_id = client.post("/api/v1/workflows", json=chain("{{ 1 }}"),
                              headers=headers).get_json()["id"]
    ids = [client.post(f"/api/v1/workflows/{workflow_id}/run", json={"input": {}},
                       headers=headers).get_json()["execution_id"] for _ in range(3)]
    with app.app_context():
        db.session.execute(update(Execution).where(Execution.id == uuid.UUID(ids[0]))
                           .values(created_at=utcnow() - timedelta(seconds=120)))
        db.session.commit()
    try:
        samples = scrape(client.get)
        assert value(samples, "jobsprint_queue_depth") == 3
        assert 120 <= value(samples, "jobsprint_queue_oldest_age_seconds") < 3600
        assert value(samples, "jobsprint_runs_active", status="running") == 0
    finally:
        if mode == "production":
            _clean_postgres()
            redis_lib.Redis.from_url(REDIS_URL).flushdb()


def test_metrics_count_webhook_deliveries_by_result(client, api_client):
    workflow_id = api_client.post("/workflows", hook_workflow()).get_json()["id"]
    assert api_client.post(f"/workflows/{workflow_id}/activate").status_code == 200
    hook = api_client.get(f"/workflows/{workflow_id}/webhook").get_json()
    path = "/hooks/" + hook["url"].rsplit("/hooks/", 1)[1]
    body = json.dumps({"n": 1}).encode()
    signed = {**signing.jobsprint(hook["secret"], body), "Content-Type": "application/json"}
    before = scrape(client.get)

    assert client.post(path, data=body, headers=signed).status_code == 202
    assert client.post(path, data=body, headers=signed).status_code == 202  # the same again
    wrong = {**signing.jobsprint("whsec_wrong", body), "Content-Type": "application/json"}
    assert client.post(path, data=body, headers=wrong).status_code == 401
    garbage = b"{not json"
    assert client.post(path, data=garbage, headers={
        **signing.jobsprint(hook["secret"], garbage),
        "Content-Type": "application/json"}).status_code == 400
    assert client.post(path, data=body, headers={"Content-Type": "text/plain"}).status_code \
        == 415
    assert client.post("/hooks/no-such-token", data=body, headers=signed).status_code == 404

    after = scrape(client.get)
    counts = {result: delta(before, after, "jobsprint_webhook_deliveries_total", result=result)
              for result in ("accepted", "replayed", "unauthorized", "invalid",
                             "unsupported_media_type", "not_found", "error")}
    assert counts == {"accepted": 1, "replayed": 1, "unauthorized": 1, "invalid": 1,
                      "unsupported_media_type": 1, "not_found": 1, "error": 0}


def test_metrics_count_ai_tokens_by_model_and_kind(client, api_client):
    before = scrape(client.get)
    run = api_client.run_node({"id": "ask", "type": "ai.chat", "params": {
        "provider": "local", "model": "tiny-1", "prompt": f"Hi {uuid.uuid4().hex}"}})
    assert run["status"] == "succeeded", run
    after = scrape(client.get)
    labels = {"provider": "local", "model": "tiny-1"}
    assert delta(before, after, "jobsprint_ai_tokens_total", kind="prompt", **labels) == 11
    assert delta(before, after, "jobsprint_ai_tokens_total", kind="completion", **labels) == 5
    assert delta(before, after, "jobsprint_node_duration_seconds_count",
                 node_type="ai.chat") == 1


# --- JSON logs (one process) -----------------------------------------------------------------

def _json_lines(captured: str) -> list[dict]:
    """Every line is one JSON object."""
    return [json.loads(line) for line in captured.splitlines() if line.strip()]


def test_log_lines_carry_the_request_id_sent_and_the_run_id(app, client, capsys):
    app.add_url_rule("/test-ops/boom", "test_ops_boom", _boom)  # before the first request
    api_client = ApiClient(client, AuthActions(client).register_api()["token"])
    capsys.readouterr()
    answer = client.get("/test-ops/boom", headers={"X-Request-ID": "req-ops-42"})
    assert answer.status_code == 500
    assert answer.headers["X-Request-ID"] == "req-ops-42"
    run = api_client.run_node({"id": "calc", "type": "logic.set",
                               "params": {"fields": {"v": "{{ 2 }}"}}})
    assert run["status"] == "succeeded"
    lines = _json_lines(capsys.readouterr().err)

    for line in lines:
        assert {"time", "level", "logger", "message", "request_id", "execution_id"} <= set(line)
    inside = [line for line in lines if line["message"] == "inside the request"]
    assert [line["request_id"] for line in inside] == ["req-ops-42"]
    failure = next(line for line in lines if line["message"].startswith("unhandled error"))
    assert failure["request_id"] == "req-ops-42" and failure["level"] == "ERROR"
    assert "RuntimeError: boom" in failure["exc_info"]
    assert "postgresql://u:***@db/x" in failure["exc_info"] and "s3cret" not in failure[
        "exc_info"]
    finished = [line for line in lines if line["execution_id"] == run["id"]]
    assert any(line["message"].startswith("run succeeded in") for line in finished)
    assert all(line["request_id"] is None for line in finished)  # a worker thread's lines


def _boom():
    import logging

    logging.getLogger("tests.ops").info("inside the request")
    raise RuntimeError("boom at postgresql://u:s3cret@db/x")


@pytest.mark.parametrize("sent", ["has space", "x" * 200, "quote\"d", "<b>tag</b>", ""])
def test_an_unusable_request_id_is_replaced(client, sent):
    answer = client.get("/healthz", headers={"X-Request-ID": sent})
    echoed = answer.headers["X-Request-ID"]
    assert echoed != sent and len(echoed) == 32 and echoed.isalnum()


# --- many processes: gunicorn's web workers and jobs.worker share PROMETHEUS_MULTIPROC_DIR ---

class Processes:
    def __init__(self, env: dict, tmp: Path) -> None:
        self.env, self.tmp = env, tmp
        self.running: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        popen = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=self.env,
                                 stdout=(self.tmp / f"{name}.out").open("w"),
                                 stderr=(self.tmp / f"{name}.err").open("w"),
                                 start_new_session=True)
        self.running.append((name, popen))
        return popen

    def err(self, name: str) -> str:
        return (self.tmp / f"{name}.err").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{self.err(name)[-2500:]}" for name, _ in self.running)

    def stop(self) -> None:
        for _name, popen in self.running:
            if popen.poll() is None:
                os.killpg(popen.pid, signal.SIGTERM)
        for _name, popen in self.running:
            try:
                popen.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _procfile(kind: str) -> str:
    for line in (PROJECT_ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == kind:
            return command.strip()
    raise KeyError(kind)


def _wait(predicate, timeout: float, what: str, logs=lambda: ""):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{logs()}")
        time.sleep(0.1)
    return found


@pytest.fixture
def processes(postgres_database, redis_server, tmp_path) -> Iterator[Processes]:
    port = _free_port()
    metrics_dir = tmp_path / "prometheus"
    env = {
        "PATH": f"{PROJECT_ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}",
        "HOME": os.environ.get("HOME", "/tmp"), "PORT": str(port),
        "DATABASE_URL": postgres_database, "REDIS_URL": REDIS_URL, "QUEUE_URL": RQ_URL,
        "JOBSPRINT_QUEUE_NAME": f"ops.{uuid.uuid4().hex[:8]}",
        "SECRET_KEY": TEST_SECRET,
        "JOBSPRINT_KEK": "test1:" + base64.b64encode(TEST_KEK.key).decode(),
        "JOBSPRINT_INSTANCE_PATH": str(tmp_path / "instance"),
        "JOBSPRINT_SECURE_COOKIES": "false", "JOBSPRINT_WORKER_THREADS": "2",
        "JOBSPRINT_REGISTER_RATE_LIMIT": "1000 per minute",
        "JOBSPRINT_API_RATE_LIMIT": "100000 per minute",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "LOG_FORMAT": "json", "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1",
        # The clock re-publishes a run whose publish was lost within seconds, not a minute.
        "JOBSPRINT_RUN_LEASE_S": "5", "JOBSPRINT_CLOCK_INTERVAL_S": "0.5",
        "WEB_CONCURRENCY": "2", "WEB_THREADS": "16", "WEB_CONNECTIONS": "64",
    }
    procs = Processes(env, tmp_path)
    procs.port, procs.metrics_dir = port, metrics_dir
    try:
        yield procs
    finally:
        procs.stop()
        print(procs.logs())  # shown when the test failed
        _clean_postgres()
        redis_server.flushdb()
        redis_lib.Redis.from_url(RQ_URL).flushdb()


@pytest.mark.services
def test_metrics_add_up_over_gunicorn_and_worker_processes(processes):
    base = f"http://127.0.0.1:{processes.port}"
    # A process of an earlier start left its counts behind; the web's start clears them.
    earlier = subprocess.run(
        ["python", "-c", "from app import metrics; metrics.run_finished('succeeded', 1.0)"],
        cwd=PROJECT_ROOT, env=processes.env, capture_output=True, text=True, timeout=60)
    assert earlier.returncode == 0, earlier.stderr
    left = {f.name for f in processes.metrics_dir.iterdir()}
    assert any(name.startswith("counter_") for name in left), left
    web = processes.start("web", ["bash", "-c", "exec " + _procfile("web")])
    workers = [processes.start(f"worker{n}", ["python", "-m", "jobs.worker"]) for n in (1, 2)]
    processes.start("clock", ["python", "-m", "jobs.scheduler"])

    def up():
        try:
            return requests.get(base + "/readyz", timeout=5).status_code == 200
        except requests.RequestException:
            assert web.poll() is None, processes.logs()
            return False

    _wait(up, 60, "the web process", processes.logs)
    assert requests.get(base + "/readyz", timeout=10).json() == {
        "status": "ready", "checks": ALL_UP}

    session = requests.Session()
    token = session.post(base + "/api/v1/auth/register", json={
        "email": f"ops-{uuid.uuid4().hex[:8]}@example.com",
        "password": "correct horse battery"}, timeout=30).json()["token"]
    session.headers["Authorization"] = f"Bearer {token}"
    manual = session.post(base + "/api/v1/workflows", json=chain("{{ input.n }}"),
                          timeout=30).json()["id"]
    hooked = session.post(base + "/api/v1/workflows", json=hook_workflow(),
                          timeout=30).json()["id"]
    assert session.post(f"{base}/api/v1/workflows/{hooked}/activate", timeout=30).ok
    hook = session.get(f"{base}/api/v1/workflows/{hooked}/webhook", timeout=30).json()
    hook_path = "/hooks/" + hook["url"].rsplit("/hooks/", 1)[1]

    manual_ids = [session.post(f"{base}/api/v1/workflows/{manual}/run",
                               json={"input": {"n": n}}, timeout=30).json()["execution_id"]
                  for n in range(10)]
    run_ids = list(manual_ids)
    for n in range(6):
        body = json.dumps({"n": n}).encode()
        answer = requests.post(base + hook_path, data=body, timeout=30, headers={
            **signing.jobsprint(hook["secret"], body), "Content-Type": "application/json"})
        assert answer.status_code == 202, answer.text
        run_ids += answer.json()["execution_ids"]
    refused = requests.post(base + hook_path, data=b"{}", timeout=30, headers={
        **signing.jobsprint("whsec_wrong", b"{}"), "Content-Type": "application/json",
        "X-Request-ID": "ops-refused-1"})
    assert refused.status_code == 401 and refused.headers["X-Request-ID"] == "ops-refused-1"

    statuses = {}

    def all_finished():
        listed = session.get(f"{base}/api/v1/executions?limit=100", timeout=30).json()
        statuses.update({i["id"]: i["status"] for i in listed["items"]})
        return statuses == dict.fromkeys(run_ids, "succeeded")

    _wait(all_finished, 60, "16 runs to succeed",
          lambda: f"{statuses}\n{processes.logs()}")

    # Each scrape is answered by one of the two web workers; every one adds up all processes.
    expected = {("jobsprint_runs_total", "status", "succeeded"): 16,
                ("jobsprint_run_duration_seconds_count", "status", "succeeded"): 16,
                ("jobsprint_node_duration_seconds_count", "node_type", "logic.set"): 16,
                ("jobsprint_webhook_deliveries_total", "result", "accepted"): 6,
                ("jobsprint_webhook_deliveries_total", "result", "unauthorized"): 1}
    for _ in range(8):
        samples = scrape(lambda path: requests.get(base + path, timeout=30))
        got = {key: value(samples, key[0], **{key[1]: key[2]}) for key in expected}
        assert got == expected, processes.logs()
        assert value(samples, "jobsprint_queue_depth") == 0
    worker_files = {f.name for f in processes.metrics_dir.iterdir()}
    assert not left & worker_files
    for worker in workers:  # the runs were counted in the workers' own files
        assert f"counter_{worker.pid}.db" in worker_files, worker_files

    # Every line each process wrote to stderr is one JSON object.
    web_lines = _json_lines(processes.err("web"))
    _json_lines(processes.err("clock"))
    assert any(line["logger"] == "gunicorn.error" for line in web_lines)
    refusal = [line for line in web_lines if line["request_id"] == "ops-refused-1"]
    assert refusal and "refused a delivery" in refusal[0]["message"]
    seen_runs = set()
    for n in (1, 2):
        for line in _json_lines(processes.err(f"worker{n}")):
            if line["execution_id"]:
                seen_runs.add(line["execution_id"])
    # The manual runs ran on the workers; the webhook's pure runs ran on arrival in the web
    # process (logged there at DEBUG), unless one went to the queue after all.
    assert set(manual_ids) <= seen_runs <= set(run_ids)
