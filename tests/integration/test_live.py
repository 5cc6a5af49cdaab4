"""Live run events over WebSockets, against a real server thread (both run modes).

A browser's session cookie (from the login form) signs the socket in; fragments arrive in the
order the run made them; another user's socket is closed with 1008 and hears nothing; a late
socket starts with the current state; and a Redis restart under a live socket is survived.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis as redis_lib
import simple_websocket
from werkzeug.serving import make_server

from app import create_app
from app.db import db
from app.live.hub import hub_for
from app.workers import stop_in_process
from tests.conftest import AuthActions, make_settings

PASSWORD = "correct horse battery"
STATUS = re.compile(r'id="(run-status-[^"]+|node-[^"]+|execution-[^"]+)"[^>]*?'
                    r'class="[^"]*?status-(\w+)')


def three_nodes(name="Live chain"):
    return {"name": name,
            "nodes": [{"id": "start", "type": "trigger.manual", "params": {}},
                      {"id": "double", "type": "logic.set",
                       "params": {"fields": {"v": "{{ input.n * 2 }}"}}},
                      {"id": "plus", "type": "logic.set",
                       "params": {"fields": {"v": "{{ input.v + 1 }}"}}}],
            "connections": [{"from": "start", "to": "double"}, {"from": "double", "to": "plus"}]}


def serve(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def live(app):
    """The app served on a real socket; yields its base address (http://127.0.0.1:port)."""
    server, thread = serve(app)
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)
    hub_for(app).stop()


class Browser:
    """A signed-in user: a session cookie from the login form, and an API token."""

    def __init__(self, app) -> None:
        self.client = app.test_client()
        auth = AuthActions(self.client)
        self.email = auth.new_email()
        assert auth.register(self.email, PASSWORD).status_code in (302, 303)
        self.client.post("/logout", data={"csrf_token": auth.csrf_token("/settings")})
        assert auth.login(self.email, PASSWORD).status_code in (302, 303)
        self.cookie = self.client.get_cookie("session").value
        token = self.client.post("/api/v1/auth/token",
                                 json={"email": self.email, "password": PASSWORD})
        self.headers = {"Authorization": f"Bearer {token.get_json()['token']}"}

    def api(self, method, path, json=None):
        return self.client.open(path, method=method, json=json, headers=self.headers)

    def socket(self, host: str, path: str) -> simple_websocket.Client:
        return connect(f"ws://{host}{path}", headers={"Cookie": f"session={self.cookie}"})


def connect(url: str, **options) -> simple_websocket.Client:
    """A WebSocket client whose reader thread is a daemon: a test that fails before closing
    its socket must not keep the test process alive at exit (simple_websocket's thread is not
    a daemon, and the server keeps a socket it was not told to close open for good)."""
    return simple_websocket.Client.connect(url, thread_class=_daemon_thread, **options)


def _daemon_thread(target) -> threading.Thread:
    return threading.Thread(target=target, daemon=True)


def receive_all(ws, until, timeout=15.0) -> list[str]:
    """Messages until ``until(messages)`` holds; fails after ``timeout``."""
    messages: list[str] = []
    deadline = time.monotonic() + timeout
    while not until(messages):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; got {messages}"
        message = ws.receive(timeout=left)
        if message is not None:
            messages.append(message)
    return messages


def states(messages: list[str]) -> list[tuple[str, str]]:
    """(element id, status) in the order received, each change once."""
    seen: dict[str, str] = {}
    changes = []
    for message in messages:
        for element, status in STATUS.findall(message):
            if seen.get(element) != status:
                seen[element] = status
                changes.append((element, status))
    return changes


def closed_with(ws, timeout=5.0) -> tuple[int | None, list]:
    """Wait for the server to close ``ws``: its close code, and anything it sent first."""
    got = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            message = ws.receive(timeout=0.2)
            if message is not None:
                got.append(message)
            if not ws.connected:
                break
    except simple_websocket.ConnectionClosed:
        pass
    return ws.close_reason, got


class HeldQueue:
    """Holds published runs until released, so a test can connect before a worker starts."""

    def __init__(self, app) -> None:
        self.queue = app.extensions["jobsprint.queue"]
        self.real = self.queue.publish
        self.held: list[str] = []
        self.queue.publish = lambda execution_ids, **_options: self.held.extend(execution_ids)

    def release(self) -> None:
        self.queue.publish = self.real
        self.real(self.held)


def test_a_run_streams_queued_running_nodes_succeeded_in_order(app, live):
    alice = Browser(app)
    workflow_id = alice.api("POST", "/api/v1/workflows", three_nodes()).get_json()["id"]
    dashboard = alice.socket(live, "/ws/dashboard")
    assert 'id="executions-body"' in dashboard.receive(timeout=5)
    held = HeldQueue(app)
    started = alice.api("POST", f"/api/v1/workflows/{workflow_id}/run", {"input": {"n": 20}})
    run_id = started.get_json()["execution_id"]

    run_socket = alice.socket(live, f"/ws/executions/{run_id}")
    first = run_socket.receive(timeout=5)
    assert states([first]) == [(f"run-status-{run_id}", "queued")] + [
        (f"node-{run_id}-{key}", "queued") for key in ("start", "double", "plus")]
    held.release()
    messages = receive_all(run_socket, lambda got: (f"run-status-{run_id}", "succeeded")
                           in states([first, *got]))
    assert states([first, *messages])[4:] == [
        (f"run-status-{run_id}", "running"),
        (f"node-{run_id}-start", "succeeded"),
        (f"node-{run_id}-double", "succeeded"),
        (f"node-{run_id}-plus", "succeeded"),
        (f"run-status-{run_id}", "succeeded")]

    # The dashboard saw the row appear on top, then change in place.
    rows = receive_all(dashboard, lambda got: (f"execution-{run_id}", "succeeded")
                       in states(got))
    assert [s for e, s in states(rows) if e == f"execution-{run_id}"] == [
        "queued", "running", "succeeded"]
    assert 'hx-swap-oob="afterbegin:#executions-body"' in rows[0]
    assert "Live chain" in rows[0]
    for ws in (dashboard, run_socket):
        ws.close()


def refused(open_socket) -> tuple[int | None, list]:
    """Connect and wait for the close. Nothing may ever be received. A loaded machine
    sometimes loses the close frame of a socket closed right after its handshake (the client
    then reports 1005, "no status"); the code is then checked on a second connection."""
    code, got = closed_with(open_socket())
    assert got == []
    if code == 1005:
        code, got = closed_with(open_socket())
        assert got == []
    return code, got


def test_another_users_socket_is_closed_with_1008_and_hears_nothing(app, live):
    alice, mallory = Browser(app), Browser(app)
    workflow_id = alice.api("POST", "/api/v1/workflows", three_nodes()).get_json()["id"]
    run_id = alice.api("POST", f"/api/v1/workflows/{workflow_id}/run",
                       {"input": {"n": 1}}).get_json()["execution_id"]
    assert refused(lambda: mallory.socket(live, f"/ws/executions/{run_id}")) == (1008, [])
    assert refused(lambda: connect(
        f"ws://{live}/ws/dashboard")) == (1008, [])
    assert refused(lambda: alice.socket(live, "/ws/executions/not-a-uuid")) == (1008, [])
    assert refused(lambda: connect(
        f"ws://{live}/ws/dashboard", headers={"Cookie": f"session={alice.cookie}",
                                              "Origin": "http://evil.example"})) == (1008, [])
    # The pages agree: another user's run is a 404, anonymous is sent to sign in.
    assert mallory.client.get(f"/executions/{run_id}").status_code == 404
    assert app.test_client().get("/executions").status_code == 302
    # Mallory's own dashboard hears nothing of Alice's runs.
    mine = mallory.socket(live, "/ws/dashboard")
    assert f"execution-{run_id}" not in mine.receive(timeout=5)
    alice.api("POST", f"/api/v1/workflows/{workflow_id}/run", {"input": {"n": 2}})
    assert mine.receive(timeout=1.5) is None
    mine.close()


def test_signing_out_closes_the_open_sockets(app, live, monkeypatch):
    from app.live import ws as live_ws

    monkeypatch.setattr(live_ws, "IDLE_WAKE_S", 0.2)
    monkeypatch.setattr(live_ws, "SESSION_CHECK_S", 0.2)
    alice = Browser(app)
    dashboard = alice.socket(live, "/ws/dashboard")
    assert 'id="executions-body"' in dashboard.receive(timeout=5)
    alice.client.post("/logout", data={
        "csrf_token": AuthActions(alice.client).csrf_token("/settings")})
    assert closed_with(dashboard) == (1008, [])


def test_a_late_socket_starts_with_the_current_state(app, live):
    alice = Browser(app)
    workflow_id = alice.api("POST", "/api/v1/workflows",
                            three_nodes("<script>alert(1)</script>")).get_json()["id"]
    run_id = alice.api("POST", f"/api/v1/workflows/{workflow_id}/run",
                       {"input": {"n": 1}}).get_json()["execution_id"]
    deadline = time.monotonic() + 15
    while alice.api("GET", f"/api/v1/executions/{run_id}").get_json()["status"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    late = alice.socket(live, f"/ws/executions/{run_id}")
    first = late.receive(timeout=5)
    assert states([first]) == [(f"run-status-{run_id}", "succeeded")] + [
        (f"node-{run_id}-{key}", "succeeded") for key in ("start", "double", "plus")]
    dashboard = alice.socket(live, "/ws/dashboard")
    rows = dashboard.receive(timeout=5)
    assert (f"execution-{run_id}", "succeeded") in states([rows])
    assert "<script>" not in rows and "&lt;script&gt;alert(1)&lt;/script&gt;" in rows
    page = alice.client.get(f"/executions/{run_id}").get_data(as_text=True)
    assert "<script>alert" not in page and 'ws-connect="/ws/executions/' in page
    for ws in (late, dashboard):
        ws.close()


# --- Redis restarted under a live socket (production mode, a private redis-server) ---------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--dir", str(self.directory), "--save", "",
             "--appendonly", "yes", "--appendfsync", "always"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        client = redis_lib.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis_lib.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(5)


@pytest.fixture
def redis_restart_app(tmp_path, request):
    private = PrivateRedis(tmp_path)
    private.start()
    url = f"redis://127.0.0.1:{private.port}/0"
    settings = make_settings("production", tmp_path, request, redis_url=url,
                             rate_limit_storage_url=url)
    application = create_app(settings)
    yield application, private
    hub_for(application).stop()
    stop_in_process(application)
    db.remove()
    from tests.conftest import _clean_postgres

    _clean_postgres()
    db.engine.dispose()
    if private.process and private.process.poll() is None:
        private.kill()


def test_the_hub_survives_a_redis_restart(redis_restart_app):
    app, private = redis_restart_app
    server, thread = serve(app)
    host = f"127.0.0.1:{server.server_port}"
    try:
        alice = Browser(app)
        workflow_id = alice.api("POST", "/api/v1/workflows", three_nodes()).get_json()["id"]
        dashboard = alice.socket(host, "/ws/dashboard")
        assert 'id="executions-body"' in dashboard.receive(timeout=5)
        hub = hub_for(app)
        assert hub.connects == 1

        private.kill()
        time.sleep(0.5)
        private.start()  # same port and data directory (append-only file): sessions survive
        deadline = time.monotonic() + 20
        while hub.connects < 2:
            assert time.monotonic() < deadline, "the hub did not subscribe again"
            time.sleep(0.1)
        # The socket was told to resync: it sends the whole table again.
        resent = dashboard.receive(timeout=5)
        assert 'id="executions-body" hx-swap-oob="true"' in resent

        run_id = alice.api("POST", f"/api/v1/workflows/{workflow_id}/run",
                           {"input": {"n": 3}}).get_json()["execution_id"]
        rows = receive_all(dashboard, lambda got: (f"execution-{run_id}", "succeeded")
                           in states(got))
        assert [s for e, s in states(rows) if e == f"execution-{run_id}"][-1] == "succeeded"
        dashboard.close()
        with urllib.request.urlopen(f"http://{host}/login", timeout=5) as answer:
            assert answer.status == 200  # the server is still up
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_a_slow_socket_is_dropped_and_never_holds_up_the_others():
    """The hub over the embedded store: an inbox that falls behind is dropped (its socket
    shut), while the other sockets of the same user get every event, in order."""
    import fakeredis

    from app.live.events import publish_many
    from app.live.hub import Hub, Subscriber

    store = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    hub = Hub(store)
    dropped = threading.Event()
    slow = Subscriber("u1", limit=5, on_drop=dropped.set)
    fast = Subscriber("u1", limit=5)
    other = Subscriber("u2", limit=5)
    try:
        for subscriber in (slow, fast, other):
            assert hub.register(subscriber)
        got = []
        for i in range(20):
            publish_many(store, "u1", [{"type": "run", "n": i}])
            deadline = time.monotonic() + 5
            while len(got) <= i:
                assert time.monotonic() < deadline
                events, _ = fast.wait(1.0)
                got.extend(e.data["n"] for e in events)
        assert got == list(range(20))
        assert dropped.is_set() and slow.dropped
        assert other.wait(0.2) == ([], False)
    finally:
        hub.stop()


def test_the_hub_hears_only_the_users_it_serves_and_lets_a_channel_go_after_a_while():
    """Per-user channels: a user with no inbox here is not subscribed (their events never
    reach this process); a newcomer is subscribed at once and hears the next event; a user
    whose last inbox left stays subscribed for the linger time, then is let go."""
    import fakeredis

    from app.live.events import channel, publish_many
    from app.live.hub import Hub, Subscriber

    store = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    hub = Hub(store, linger_s=1.0)

    def subscribed(user: str) -> int:
        return dict(store.pubsub_numsub(channel(user)))[channel(user)]

    try:
        first = Subscriber("u1")
        assert hub.register(first)
        assert (subscribed("u1"), subscribed("u2")) == (1, 0)
        publish_many(store, "u2", [{"type": "run", "n": i} for i in range(50)])
        newcomer = Subscriber("u2")
        assert hub.register(newcomer)  # confirmed: what is published from now on arrives
        publish_many(store, "u2", [{"type": "run", "n": 50}])
        events, _ = newcomer.wait(5)
        assert [e.data["n"] for e in events] == [50]
        assert hub.delivered == 1  # the 50 before were never sent to this process

        hub.unregister(newcomer)
        assert subscribed("u2") == 1 and hub.channels() == 2  # lingering
        again = Subscriber("u2")
        assert hub.register(again, wait_s=0)  # still subscribed: no wait at all
        hub.unregister(again)
        deadline = time.monotonic() + 5
        while subscribed("u2"):
            assert time.monotonic() < deadline, "the channel was never let go"
            time.sleep(0.1)
        assert hub.channels() == 1 and subscribed("u1") == 1
        assert hub.register(Subscriber("u2"))  # and comes back when wanted
        assert subscribed("u2") == 1
    finally:
        hub.stop()


def test_a_waiter_answers_from_a_final_event_that_carries_the_outcome():
    """A small result rides on the run's final event: the waiter answers without reading the
    run; a result too big to carry is read once the final event comes."""
    import fakeredis

    from app.live.events import OUTCOME_INLINE_MAX, publish_many, run_event
    from app.live.hub import Hub
    from app.live.waiting import RunWaiter

    store = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    hub = Hub(store)
    small, big = str(uuid.uuid4()), str(uuid.uuid4())
    huge = "x" * (OUTCOME_INLINE_MAX + 1)
    reads = []

    def read(result):
        def reader():
            reads.append(result)
            return ("succeeded", result, None)
        return reader

    try:
        with RunWaiter(hub, "u1", small) as waiter:
            publish_many(store, "u1", [
                {"type": "run", "execution_id": small, "status": "running"},
                run_event(small, "w", "succeeded", outcome=({"n": 1}, None))])
            assert waiter.wait(5, read({"n": 1}), before_run=True) == (
                "succeeded", {"n": 1}, None)
        assert reads == []
        with RunWaiter(hub, "u1", big) as waiter:
            event = run_event(big, "w", "succeeded", outcome=(huge, None))
            assert "outcome" not in event
            publish_many(store, "u1", [event])
            assert waiter.wait(5, read(huge), before_run=True) == ("succeeded", huge, None)
        assert reads == [huge]
    finally:
        hub.stop()


def test_waiters_hear_only_their_own_run_and_a_dashboard_hears_everything():
    """Inboxes of one run (a webhook's when_finished waiters) are looked up by run: each gets
    its run's final event only, and a dashboard of the same user still gets every event."""
    import fakeredis

    from app.live.events import publish_many, run_event
    from app.live.hub import Hub, Subscriber
    from app.live.waiting import RunWaiter

    store = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    hub = Hub(store)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        dashboard = Subscriber("u1")
        assert hub.register(dashboard)
        with RunWaiter(hub, "u1", first) as one, RunWaiter(hub, "u1", second) as two:
            publish_many(store, "u1", [
                run_event(first, "w", "running"), run_event(second, "w", "running"),
                run_event(second, "w", "succeeded", outcome=({"n": 2}, None)),
                run_event(first, "w", "failed", outcome=(None, {"message": "no"}))])
            assert one.wait(5, lambda: None, before_run=True) == (
                "failed", None, {"message": "no"})
            assert two.wait(5, lambda: None, before_run=True) == ("succeeded", {"n": 2}, None)
            assert [len(w.inbox._items) for w in (one, two)] == [0, 0]
        events = []
        deadline = time.monotonic() + 5
        while len(events) < 4 and time.monotonic() < deadline:
            events += dashboard.wait(1)[0]
        assert [(e.data["execution_id"], e.data["status"]) for e in events] == [
            (first, "running"), (second, "running"), (second, "succeeded"), (first, "failed")]
        # 4 to the dashboard, 2 to each waiter (its own run's; 4 each if offered all the user's)
        assert hub.delivered == 8
    finally:
        hub.stop()


def test_a_batch_sends_each_user_one_message_with_its_events_in_order():
    """A worker's batch publishes four events per run: each user gets them as one message (a
    JSON array, in order), which the hub unpacks; a lone event stays a JSON object."""
    import fakeredis

    from app.live.events import publish_each, publish_many, run_event
    from app.live.hub import Hub, Subscriber

    store = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    listener = store.pubsub(ignore_subscribe_messages=True)
    listener.subscribe("events:u1", "events:u2")
    hub = Hub(store)
    runs = [str(uuid.uuid4()) for _ in range(3)]
    try:
        dashboard = Subscriber("u1")
        assert hub.register(dashboard)
        publish_each(store, [(user, run_event(run, "w", status)) for status in (
            "running", "succeeded") for user, run in (("u1", runs[0]), ("u2", runs[1]),
                                                      ("u1", runs[2]))])
        publish_many(store, "u1", [run_event(runs[0], "w", "cancelled")])
        messages = []
        deadline = time.monotonic() + 5
        while len(messages) < 3 and time.monotonic() < deadline:
            if message := listener.get_message(timeout=0.5):
                messages.append((message["channel"], json.loads(message["data"])))
        assert [(channel, [(e["execution_id"], e["status"]) for e in data]
                 if isinstance(data, list) else data["status"]) for channel, data in messages] == [
            ("events:u1", [(runs[0], "running"), (runs[2], "running"),
                           (runs[0], "succeeded"), (runs[2], "succeeded")]),
            ("events:u2", [(runs[1], "running"), (runs[1], "succeeded")]),
            ("events:u1", "cancelled")]
        events = []
        while len(events) < 5 and time.monotonic() < deadline:
            events += dashboard.wait(1)[0]
        assert [(e.data["execution_id"], e.data["status"]) for e in events] == [
            (runs[0], "running"), (runs[2], "running"), (runs[0], "succeeded"),
            (runs[2], "succeeded"), (runs[0], "cancelled")]
    finally:
        listener.close()
        hub.stop()


def test_an_inbox_registered_before_its_channel_was_confirmed_is_told_to_resync():
    """A socket that stopped waiting for its user's channel sends the database's state at
    once; when the channel is confirmed it is told to resync, so nothing published in
    between is missed (one that waited long enough is not told anything)."""
    import fakeredis

    from app.live.hub import Hub, Subscriber

    store = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    hub = Hub(store)
    held = threading.Event()
    real_sync = hub._sync

    def slow_sync(pubsub, now):  # the hub thread cannot subscribe new channels until released
        held.wait(10)
        real_sync(pubsub, now)

    try:
        patient = Subscriber("u2")
        assert hub.register(patient) is True  # the hub is up
        hub._sync = slow_sync
        hasty = Subscriber("u1")
        assert hub.register(hasty, wait_s=0.2) is False
        assert hasty.wait(0.2) == ([], False)  # not yet
        held.set()
        events, resync = hasty.wait(5)
        assert (events, resync) == ([], True)
        assert patient.wait(0.3) == ([], False)  # it waited for its channel: nothing to redo
    finally:
        held.set()
        hub.stop()
