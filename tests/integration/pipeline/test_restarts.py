"""The services restarted under running work: RabbitMQ with runs queued and in flight, and
Redis (the store, and RQ's queue) while a run holds its workflow's slot."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.integration.pipeline.conftest import QUEUE_URLS, Pipeline, wait_for


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


def amqp_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
        return True
    except OSError:
        return False


class TestRabbitMQRestart:
    @pytest.fixture
    def backend(self) -> str:
        return "rabbitmq"

    def test_runs_queued_in_flight_and_started_while_it_was_down_all_finish_once(
            self, pipeline: Pipeline):
        pipe = pipeline
        slow = pipe.workflow([pipe.hit("slow", "/hit/slow", sleep=2)], name="Slow")
        quick = pipe.workflow([pipe.hit("one", "/hit/one")], concurrency=20, name="Quick")
        pipe.worker(threads=1)
        in_flight = pipe.run(slow)
        wait_for(lambda: pipe.sink.running("/hit/slow"), 20, "the slow run to start", pipe.logs)
        queued = [pipe.run(quick, {"n": n}) for n in range(10)]  # behind the slow one
        try:
            rabbitmqctl("stop_app")
            wait_for(lambda: not amqp_up(), 30, "RabbitMQ to stop")
            began = time.monotonic()
            while_down = [pipe.run(quick, {"n": n}) for n in range(10, 13)]
            assert time.monotonic() - began < 10, "starting a run waited for the broker"
        finally:
            rabbitmqctl("start_app")
        wait_for(amqp_up, 60, "RabbitMQ to start")
        pipe.clock()
        pipe.worker(threads=2)
        for execution_id in [in_flight, *queued, *while_down]:
            assert pipe.finished(execution_id, timeout=60).status == "succeeded", pipe.logs()
            pipe.assert_once(execution_id)
        keys = pipe.sink.keys("/hit/one")
        assert sorted(keys) == sorted(f"{e}:one:1" for e in queued + while_down)
        assert set(keys.values()) == {1}
        assert pipe.sink.count("/hit/slow") == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A Redis server of this test's own, so that restarting it disturbs nothing else."""

    def __init__(self, tmp_path) -> None:
        self.port = free_port()
        self.dir = tmp_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.up, 10, f"redis on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)

    def up(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False


class TestRedisRestart:
    @pytest.fixture
    def private_redis(self, tmp_path) -> Iterator[PrivateRedis]:
        server = PrivateRedis(tmp_path)
        server.start()
        yield server
        server.stop()

    @pytest.fixture
    def store_url(self, private_redis) -> str:
        return private_redis.url

    @pytest.fixture
    def queue_urls(self, private_redis) -> dict[str, str]:
        return {**QUEUE_URLS, "rq": private_redis.url}  # RQ's queue goes down with it too

    def test_a_run_holding_its_slot_finishes_and_later_runs_still_run(
            self, pipeline: Pipeline, private_redis: PrivateRedis):
        pipe = pipeline
        workflow_id = pipe.workflow([pipe.hit("slow", "/hit/slow", sleep=2),
                                     pipe.hit("after", "/hit/after")])
        pipe.clock()
        pipe.worker()
        first = pipe.run(workflow_id)
        wait_for(lambda: pipe.sink.running("/hit/slow"), 20, "the slow node to start", pipe.logs)
        private_redis.stop()
        down = pipe.api("GET", "/api/v1/executions")
        assert down.status_code == 503, down.get_data(as_text=True)
        assert down.get_json()["error"]["message"] == (
            "The store (Redis) is unavailable. Try again in a moment.")
        assert down.headers["Retry-After"] == "5"
        private_redis.start()  # empty: the slot, RQ's queue, the cache and tokens are gone
        pipe.sign_in_again()
        second = pipe.run(workflow_id)
        for execution_id in (first, second):
            assert pipe.finished(execution_id, timeout=60).status == "succeeded", pipe.logs()
            pipe.assert_once(execution_id)
        assert sorted(pipe.sink.keys("/hit/after")) == sorted(
            [f"{first}:after:1", f"{second}:after:1"])
        assert set(pipe.sink.keys("/hit/slow").values()) == {1}
