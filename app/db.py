"""The database: one engine per app, one scoped session per thread.

Services own transactions: they call ``db.session`` and commit; web requests and jobs only
open and close the session (``db.remove()`` at the end of each request or job).
"""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, scoped_session, sessionmaker


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
    return create_engine(url, echo=echo, pool_size=10, max_overflow=20, pool_pre_ping=True,
                         hide_parameters=True)


db = Database()
