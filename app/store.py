"""The key-value store behind sessions, tokens, cache, locks, idempotency and pub/sub.

With ``REDIS_URL`` it is that Redis. In the embedded default it is an in-process Redis
(fakeredis, with Lua for locks) shared by every thread of the process, so the same code path
runs in both modes and the integration tests prove it against the real server.
"""

from __future__ import annotations

import threading

import redis

_embedded_server = None
_embedded_lock = threading.Lock()


def connect(redis_url: str | None) -> redis.Redis:
    if redis_url:
        return redis.Redis.from_url(
            redis_url,
            decode_responses=True,
            socket_timeout=5,
            socket_connect_timeout=5,
            health_check_interval=30,
            retry_on_timeout=True,
        )
    import fakeredis

    global _embedded_server
    with _embedded_lock:
        if _embedded_server is None:
            _embedded_server = fakeredis.FakeServer()
    return fakeredis.FakeRedis(server=_embedded_server, decode_responses=True)
