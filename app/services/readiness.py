"""Is this process ready for traffic: database, Redis and broker reachable, migrations current.

Each part is checked on a connection of its own with a short timeout (``TIMEOUT_S``), all at
once on threads of their own, so the probe answers within about ``TIMEOUT_S`` whatever is down:
a dead Redis cannot hold it for the 5 s socket timeout of the app's own client, nor a
black-holed database for the minutes of a TCP connect. The database probe opens a new
connection each time (no pool), and so does Redis's: what a probe proves is that each accepts
connections now.

The embedded default's Redis and queue live in this process: they report "ok (embedded)".
A failure is "down: <reason>": the first line of the error, with every password of the
configured URLs masked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import cache
from urllib.parse import unquote, urlsplit

import redis
from alembic.script import ScriptDirectory
from flask import Flask
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.pool import NullPool

from app.config import PROJECT_ROOT, Settings
from app.db import db
from app.redaction import redact

TIMEOUT_S = 2.0
OK = "ok"
EMBEDDED = "ok (embedded)"
PARTS = ("database", "migrations", "redis", "broker")


@cache
def _head() -> str | None:
    """The newest migration of this code (fixed for the life of the process)."""
    return ScriptDirectory(str(PROJECT_ROOT / "migrations")).get_current_head()


class Probes:
    """What a readiness check needs, gathered once per app."""

    def __init__(self, app: Flask) -> None:
        settings: Settings = app.config["SETTINGS"]
        self.settings = settings
        self.queue = app.extensions["jobsprint.queue"]
        self.lock = threading.Lock()
        self.last: tuple[float, dict[str, str]] | None = None  # (monotonic time, result)
        self.database: Engine | None = None
        if not db.is_sqlite:
            self.database = create_engine(
                settings.database_url, poolclass=NullPool,
                connect_args={"connect_timeout": max(int(TIMEOUT_S), 2),
                              "options": f"-c statement_timeout={int(TIMEOUT_S * 1000)}"})
        passwords = [urlsplit(url).password for url in (settings.database_url,
                                                        settings.redis_url, settings.queue_url)
                     if url]
        self.secrets = {form for password in passwords if password
                        for form in (password, unquote(password))}

    def check_database(self) -> dict[str, str]:
        """The database answers; and whether its schema is this code's newest migration."""
        engine = self.database or db.engine
        with engine.connect() as connection:
            revisions = (connection.execute(text("SELECT version_num FROM alembic_version"))
                         .scalars().all() if inspect(connection).has_table("alembic_version")
                         else [])
        revision = ", ".join(sorted(revisions)) or None
        if revision == _head():
            migrations = OK
        elif revision is None:
            migrations = "down: the database has no migrations applied (run the release step)"
        else:
            migrations = (f"down: the database is at revision {revision}, this code expects "
                          f"{_head()} (run the release step)")
        return {"database": OK, "migrations": migrations}

    def check_redis(self) -> dict[str, str]:
        if not self.settings.redis_url:
            return {"redis": EMBEDDED}
        client = redis.Redis.from_url(self.settings.redis_url, socket_timeout=TIMEOUT_S,
                                      socket_connect_timeout=TIMEOUT_S)
        try:
            client.ping()
        finally:
            client.close()
        return {"redis": OK}

    def check_broker(self) -> dict[str, str]:
        if self.settings.queue_url is None:
            return {"broker": EMBEDDED}
        self.queue.ping(TIMEOUT_S)
        return {"broker": OK}

    def reason(self, exc: BaseException) -> str:
        error = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
        lines = str(error).strip().splitlines()
        first = lines[0].strip() if lines else ""
        message = redact(f"{type(error).__name__}: {first}" if first else type(error).__name__)
        for secret in self.secrets:
            message = message.replace(secret, "***")
        return "down: " + message[:200]


def _probes(app: Flask) -> Probes:
    probes = app.extensions.get("jobsprint.readiness")
    if probes is None:
        probes = app.extensions.setdefault("jobsprint.readiness", Probes(app))
    return probes


REUSE_S = 1.0  # one probe at a time per process; callers within this window share its result


def check(app: Flask) -> dict[str, str]:
    """Each part → "ok", "ok (embedded)" or "down: <reason>". Probes open fresh connections,
    and /readyz needs no sign-in: one probe runs at a time per process and its result serves
    every caller for ``REUSE_S``, so a flood of probes cannot exhaust the database's
    connections."""
    probes = _probes(app)
    with probes.lock:
        if probes.last is not None and time.monotonic() - probes.last[0] < REUSE_S:
            return probes.last[1]
        found = _check(probes)
        probes.last = (time.monotonic(), found)
        return found


def _check(probes: Probes) -> dict[str, str]:
    found: dict[str, str] = {}
    checks: dict[tuple[str, ...], Callable[[], dict[str, str]]] = {
        ("database", "migrations"): probes.check_database,
        ("redis",): probes.check_redis,
        ("broker",): probes.check_broker,
    }

    def run(parts: tuple[str, ...], probe: Callable[[], dict[str, str]]) -> None:
        try:
            found.update(probe())
        except Exception as exc:  # noqa: BLE001 - any failure means "down", said in words
            reason = probes.reason(exc)
            found.update({part: reason for part in parts})
            if parts[0] == "database":
                found["migrations"] = "down: the database cannot be reached"

    threads = [threading.Thread(target=run, args=(parts, probe), daemon=True,
                                name=f"readiness-{parts[0]}")
               for parts, probe in checks.items()]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + TIMEOUT_S + 1.0
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0))
    late = f"down: no answer within {TIMEOUT_S:g} s"
    return {part: found.get(part, late) for part in PARTS}
