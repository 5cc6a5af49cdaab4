"""The database: one engine per app, one scoped session per thread.

Services own transactions: they call ``db.session`` and commit; web requests and jobs only
open and close the session (``db.remove()`` at the end of each request or job).
"""

from __future__ import annotations

import time

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, scoped_session, sessionmaker

IDLE_PING_S = 1.0  # a pooled connection idle this long is pinged before it is handed out


class Database:
    def __init__(self) -> None:
        self.engine: Engine | None = None
        self._factory: sessionmaker[Session] | None = None
        self.session: scoped_session[Session] = scoped_session(self._make_session)

    def configure(self, url: str, *, echo: bool = False) -> Engine:
        if self.engine is not None:
            self.session.remove()
            self.engine.dispose()
        self.engine = make_engine(url, echo=echo)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)
        return self.engine

    def _make_session(self) -> Session:
        if self._factory is None:
            raise RuntimeError("database not configured: call create_app() first")
        return self._factory()

    def remove(self, *_args) -> None:
        self.session.remove()

    @property
    def is_sqlite(self) -> bool:
        return self.engine is not None and self.engine.dialect.name == "sqlite"


def make_engine(url: str, *, echo: bool = False) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30},
            hide_parameters=True,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    # hide_parameters: an error's log line shows the statement, never its values (node
    # outputs, password hashes, tokens).
    engine = create_engine(url, echo=echo, pool_size=10, max_overflow=20, hide_parameters=True)
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Pessimistic disconnect handling, but only for a connection that sat in the pool for
    ``IDLE_PING_S`` or more (SQLAlchemy's ``pool_pre_ping`` pings on every checkout: under
    load that was a round trip to PostgreSQL per checkout, two per run in a worker). A
    connection that fails its ping is replaced before anyone uses it; one that was returned a
    moment ago and died since (a database restart under load) fails its statement, and
    SQLAlchemy then discards every pooled connection, so the retry gets fresh ones."""

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_conn, record) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn, record, _proxy) -> None:
        returned_at = record.info.get("returned_at")
        if returned_at is not None and time.monotonic() - returned_at < IDLE_PING_S:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # noqa: BLE001 - any failure means: do not use this one
            raise DisconnectionError("the pooled connection failed its ping") from exc


db = Database()
