"""1,000 live dashboards at once, on the web process exactly as the Procfile starts it.

gunicorn runs the Procfile's ``web`` line (gthread; its thread and connection defaults) in
production mode against PostgreSQL and Redis, with a temporary instance path. 1,000 signed-in
sockets open on ``/ws/dashboard`` (one selector thread drives them all), one event is published
on the user's channel the way a worker publishes it, and every socket must receive it. Then all
close, and the server must still answer. What a socket costs (threads, RSS) is printed.
"""

from __future__ import annotations

import time

import pytest
import redis as redis_lib
import requests

from bench.live_bench import (
    Swarm,
    WebProcess,
    free_port,
    production_env,
    sign_in,
    start_run,
    user_id_of,
)
from tests.conftest import REDIS_URL

SOCKETS = 1000


@pytest.fixture
def web(postgres_database, redis_server, tmp_path):
    port = free_port()
    process = WebProcess(production_env(postgres_database, REDIS_URL, tmp_path, port), port)
    yield process
    process.stop()
    from tests.conftest import _clean_postgres

    _clean_postgres()
    redis_server.flushdb()


def test_a_thousand_dashboards_each_receive_the_event(web):
    _browser, cookie, headers = sign_in(web.base)
    workflow_id, run_id = start_run(web.base, headers)
    user_id = user_id_of(headers, web.base)
    before = web.usage()

    swarm = Swarm("127.0.0.1", web.port, "/ws/dashboard", cookie)
    started = time.monotonic()
    try:
        swarm.open(SOCKETS)
        opened_s = time.monotonic() - started
        assert len(swarm.conns) == SOCKETS and not swarm.closed
        assert all('id="executions-body"' in got[0][1] for got in swarm.received.values())
        during = web.usage()

        from app.live import events

        def got_it(sock) -> bool:
            return any(f'id="execution-{run_id}"' in message and "status-waiting" in message
                       for _, message in swarm.received[sock][1:])

        published = time.perf_counter()
        events.publish_many(redis_lib.Redis.from_url(REDIS_URL), user_id, [{
            "type": "run", "execution_id": run_id, "workflow_id": workflow_id,
            "status": "waiting"}])
        assert swarm.wait_for(got_it, 20), (
            f"{sum(map(got_it, swarm.conns))} of {SOCKETS} sockets got the event")
        last = max(got[-1][0] for got in swarm.received.values())
    finally:
        swarm.close_all()

    # Every socket gone, the process is still there and still serves pages and sockets.
    time.sleep(1)
    assert web.proc.poll() is None
    assert requests.get(web.base + "/login", timeout=10).status_code == 200
    again = Swarm("127.0.0.1", web.port, "/ws/dashboard", cookie)
    again.open(1)
    again.close_all()
    after = web.usage()
    per_socket_kib = (during["VmRSS"] - before["VmRSS"]) / SOCKETS
    print(f"\nLIVE capacity sockets={SOCKETS} open_s={opened_s:.1f} "
          f"fanout_ms={(last - published) * 1000:.0f} "
          f"threads={before['Threads']}->{during['Threads']}->{after['Threads']} "
          f"rss_mib={before['VmRSS'] / 1024:.0f}->{during['VmRSS'] / 1024:.0f}->"
          f"{after['VmRSS'] / 1024:.0f} rss_kib_per_socket={per_socket_kib:.0f} "
          f"workers={len(web.workers())}")
    assert during["Threads"] - before["Threads"] <= 2 * SOCKETS + 50
