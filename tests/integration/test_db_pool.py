"""The PostgreSQL pool pings a connection only after it sat idle, and replaces a dead one."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, event, text

from app import db as db_module
from app.db import make_engine
from tests.conftest import PG_ADMIN_URL

pytestmark = pytest.mark.services


@pytest.fixture
def engine(monkeypatch):
    monkeypatch.setattr(db_module, "IDLE_PING_S", 0.3)
    engine = make_engine(PG_ADMIN_URL)
    yield engine
    engine.dispose()


def backend_pid(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()


def test_a_connection_killed_while_idle_is_replaced_before_use(engine):
    pid = backend_pid(engine)
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar_one()
    admin.dispose()
    time.sleep(0.4)  # idle long enough to be pinged
    assert backend_pid(engine) != pid  # no error: the dead one failed its ping and was dropped


def test_a_connection_back_a_moment_ago_is_not_pinged(engine):
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_rest: statements.append(statement))
    pings = []
    real_ping = engine.dialect.do_ping
    engine.dialect.do_ping = lambda conn: pings.append(1) or real_ping(conn)
    for _ in range(20):
        backend_pid(engine)
    assert len(statements) == 20 and len(pings) == 1  # only the new connection's first use
    time.sleep(0.4)
    backend_pid(engine)
    assert len(pings) == 2  # idle a while: pinged again
