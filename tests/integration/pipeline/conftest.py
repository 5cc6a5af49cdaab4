"""The whole run pipeline across real processes, for the fault tests.

This test process plays the web app (its API, through the Flask test client, creates runs
and publishes them to the real broker). Workers (`python -m jobs.worker`) and the clock
(`python -m jobs.scheduler`) are subprocesses the test starts, kills, stops and resumes.
Workflows call the local ``sink`` for every side effect, so the tests count them.

Leases are short (2 s) so that a dead worker's run is handed on within seconds. Everything
talks to the real PostgreSQL (database jobsprint_test), Redis (db 15 for the store, db 13 for
RQ) and RabbitMQ (a fresh queue name per test). Nothing skips: a missing service fails.
"""

from __future__ import annotations

import base64
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pika
import pytest
import redis
from sqlalchemy import select

from app import create_app
from app.config import PROJECT_ROOT
from app.db import db
from app.models import FINAL_STATES, Execution, ExecutionNode
from tests.conftest import (
    REDIS_URL,
    TEST_KEK,
    TEST_SECRET,
    AuthActions,
    _clean_postgres,
    make_settings,
)
from tests.integration.pipeline.sink import Sink, start_sink

RQ_URL = os.environ.get("TEST_PIPELINE_RQ_URL", "redis://127.0.0.1:6379/13")
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
QUEUE_URLS = {"rq": RQ_URL, "rabbitmq": AMQP_URL}
LEASE_S = 2.0
PASSWORD = "correct horse battery"


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
             logs: Callable[[], str] = lambda: "") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{logs()}")
        time.sleep(0.05)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, sig: int) -> None:
        os.killpg(self.popen.pid, sig)

    def kill(self) -> None:
        """SIGKILL the process and everything it started (an RQ work-horse included)."""
        if self.popen.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGKILL)
            self.popen.wait(10)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Pipeline:
    backend: str
    app: object
    env: dict[str, str]
    sink: Sink
    tmp: Path
    token: str
    email: str
    procs: list[Proc] = field(default_factory=list)

    # --- processes ------------------------------------------------------------------------

    def start(self, module: str, name: str, *args: str, **env: str) -> Proc:
        log_path = self.tmp / f"{name}-{len(self.procs)}.log"
        popen = subprocess.Popen(
            [sys.executable, "-m", module, *args], cwd=PROJECT_ROOT, env={**self.env, **env},
            stdout=log_path.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def worker(self, threads: int = 2) -> Proc:
        return self.start("jobs.worker", "worker", JOBSPRINT_WORKER_THREADS=str(threads))

    def clock(self) -> Proc:
        return self.start("jobs.scheduler", "clock")

    def web(self, threads: int = 16) -> tuple[Proc, str]:
        """A web process (gunicorn with one worker process, as the Procfile starts it) on a
        free port of 127.0.0.1, once it answers: the process and its base URL."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        proc = self.start("gunicorn", "web", "wsgi:app", "-c", "gunicorn.conf.py",
                          "--bind", f"127.0.0.1:{port}", "--workers", "1",
                          "--threads", str(threads))

        def answers() -> bool:
            assert proc.alive(), f"the web process exited\n{proc.log()[-3000:]}"
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            try:
                connection.request("GET", "/healthz")
                return connection.getresponse().status == 200
            except OSError:
                return False
            finally:
                connection.close()

        wait_for(answers, 30, "the web process to answer", self.logs)
        return proc, f"http://127.0.0.1:{port}"

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} pid {p.pid} ({p.log_path.name}) ---\n{p.log()[-3000:]}"
                         for p in self.procs)

    # --- the API --------------------------------------------------------------------------

    def sign_in_again(self) -> None:
        """A new API token (a Redis restart without persistence forgets issued tokens)."""
        response = self.app.test_client().post("/api/v1/auth/token", json={
            "email": self.email, "password": PASSWORD})
        assert response.status_code == 200, response.get_json()
        self.token = response.get_json()["token"]

    def api(self, method: str, path: str, json=None, **headers):
        client = self.app.test_client()
        response = client.open(path, method=method, json=json,
                               headers={"Authorization": f"Bearer {self.token}", **headers})
        return response

    def workflow(self, nodes: list[dict], concurrency: int = 1, name: str = "Faults") -> str:
        """A chain start → nodes[0] → nodes[1] → …; returns the workflow id."""
        all_nodes = [{"id": "start", "type": "trigger.manual", "params": {}}, *nodes]
        connections = [{"from": a["id"], "to": b["id"]}
                       for a, b in zip(all_nodes, all_nodes[1:], strict=False)]
        response = self.api("POST", "/api/v1/workflows", {
            "name": name, "nodes": all_nodes, "connections": connections,
            "settings": {"concurrency": concurrency}})
        assert response.status_code == 201, response.get_json()
        return response.get_json()["id"]

    def hit(self, node_id: str, path: str, sleep: float = 0, **params) -> dict:
        """An http.request node calling the sink."""
        url = f"{self.sink.url}{path}" + (f"?sleep={sleep}" if sleep else "")
        return {"id": node_id, "type": "http.request",
                "params": {"method": "POST", "url": url, "json": {"run": "{{ execution.id }}"},
                           **params}}

    def run(self, workflow_id: str, input: dict | None = None) -> str:
        response = self.api("POST", f"/api/v1/workflows/{workflow_id}/run",
                            {"input": input or {}})
        assert response.status_code == 202, response.get_json()
        return response.get_json()["execution_id"]

    # --- the database ---------------------------------------------------------------------

    def execution(self, execution_id: str) -> Execution:
        with self.app.app_context():
            row = db.session.get(Execution, uuid.UUID(execution_id))
            db.session.expunge_all()
            db.session.commit()
            return row

    def node_rows(self, execution_id: str) -> list[ExecutionNode]:
        with self.app.app_context():
            rows = list(db.session.scalars(
                select(ExecutionNode).where(ExecutionNode.execution_id == uuid.UUID(execution_id))
                .order_by(ExecutionNode.node_key, ExecutionNode.attempt)))
            db.session.expunge_all()
            db.session.commit()
            return rows

    def finished(self, execution_id: str, timeout: float = 45) -> Execution:
        return wait_for(lambda: (row := self.execution(execution_id)).status in FINAL_STATES
                        and row, timeout, f"run {execution_id} to finish", self.logs)

    def assert_once(self, execution_id: str) -> Execution:
        """The run ended in one final state and no node of it succeeded twice."""
        run = self.execution(execution_id)
        assert run.status in FINAL_STATES, run.status
        assert run.finished_at is not None and run.lease_expires_at is None
        succeeded = [r.node_key for r in self.node_rows(execution_id) if r.status == "succeeded"]
        assert len(succeeded) == len(set(succeeded)), f"a node succeeded twice: {succeeded}"
        return run


@pytest.fixture(params=["rq", "rabbitmq"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def store_url() -> str:
    """The Redis the app uses as its store; a module overrides it to restart its own."""
    return REDIS_URL


@pytest.fixture
def queue_urls() -> dict[str, str]:
    return QUEUE_URLS


@pytest.fixture
def pipeline(backend, store_url, queue_urls, tmp_path, request) -> Iterator[Pipeline]:
    queue_name = f"pipe.{uuid.uuid4().hex[:12]}"
    redis_url = store_url
    settings = make_settings(
        "production", tmp_path, request, queue_url=queue_urls[backend], queue_name=queue_name,
        inline_workers=False, run_lease_s=LEASE_S, http_allow=("127.0.0.1",),
        redis_url=redis_url)
    app = create_app(settings)
    sink = start_sink()
    env = {
        "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
        "DATABASE_URL": settings.database_url, "REDIS_URL": redis_url,
        "QUEUE_URL": queue_urls[backend], "JOBSPRINT_QUEUE_NAME": queue_name,
        "SECRET_KEY": TEST_SECRET,
        "JOBSPRINT_KEK": "test1:" + base64.b64encode(TEST_KEK.key).decode(),
        "JOBSPRINT_RUN_LEASE_S": str(LEASE_S), "JOBSPRINT_CLOCK_INTERVAL_S": "0.25",
        "JOBSPRINT_HTTP_ALLOW": "127.0.0.1", "JOBSPRINT_INSTANCE_PATH": str(tmp_path / "inst"),
        "PYTHONUNBUFFERED": "1",
    }
    auth = AuthActions(app.test_client())
    email = auth.new_email()
    token = auth.register_api(email, PASSWORD)["token"]
    pipe = Pipeline(backend, app, env, sink, tmp_path, token, email)
    try:
        yield pipe
    finally:
        for proc in pipe.procs:
            proc.kill()
        print(pipe.logs())  # shown by pytest when the test failed
        sink.close()
        app.extensions["jobsprint.queue"].close()
        db.remove()
        _clean_postgres()
        redis.Redis.from_url(redis_url).flushdb()
        db.engine.dispose()
        if backend == "rq":
            redis.Redis.from_url(queue_urls["rq"]).flushdb()
        else:
            connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            channel = connection.channel()
            channel.queue_delete(queue_name)
            channel.queue_delete(f"{queue_name}.dead")
            channel.exchange_delete(f"{queue_name}.dead")
            connection.close()
