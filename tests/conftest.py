"""Fixtures shared by every suite, in the flaskr style: ``app``, ``client``, ``runner``, ``auth``.

``app`` runs each test twice, once per run mode:
- ``embedded``: SQLite in a fresh file, in-process store (what `scripts/run` starts);
- ``production``: the real PostgreSQL and Redis on 127.0.0.1 (isolated database and Redis db).
A test that needs a service never skips: if PostgreSQL or Redis is down it errors.
"""

from __future__ import annotations

import base64
import os
import shutil
import uuid
from pathlib import Path

import pytest
import redis as redis_lib
from sqlalchemy import create_engine, text

from app import create_app
from app.config import KeyEncryptionKey, load_settings
from app.db import db
from app.migrate import upgrade
from app.workers import stop_in_process

PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PG_TEST_DB = os.environ.get("TEST_PG_DATABASE", "jobsprint_test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TEST_KEK = KeyEncryptionKey("test1", base64.b64decode(
    "dGVzdC1rZXktZW5jcnlwdGlvbi1rZXktMzItYnl0ZXM="))
TEST_SECRET = "test-secret-key-that-is-long-enough-for-jobsprint"


def pg_url() -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + PG_TEST_DB


@pytest.fixture(scope="session")
def postgres_database() -> str:
    """A fresh, migrated PostgreSQL database for the session."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{PG_TEST_DB}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{PG_TEST_DB}"'))
    admin.dispose()
    db.configure(pg_url())
    upgrade()
    return pg_url()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    """A migrated SQLite file, copied for each test (migrating once is the slow part)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "jobsprint.db"
    db.configure(f"sqlite:///{path}")
    upgrade()
    db.engine.dispose()
    return path


@pytest.fixture(scope="session")
def redis_server() -> redis_lib.Redis:
    client = redis_lib.Redis.from_url(REDIS_URL, decode_responses=True)
    client.ping()  # fails the test, never skips it, when Redis is down
    return client


def make_settings(mode: str, tmp_path: Path, request, **overrides):
    instance = tmp_path / "instance"
    instance.mkdir(exist_ok=True)
    base = dict(secret_key=TEST_SECRET, keks=(TEST_KEK,), instance_path=instance,
                testing=True, bcrypt_rounds=10)
    if mode == "embedded":
        template = request.getfixturevalue("sqlite_template")
        shutil.copy(template, instance / "jobsprint.db")
        env = {"JOBSPRINT_INSTANCE_PATH": str(instance)}
    else:
        url = request.getfixturevalue("postgres_database")
        request.getfixturevalue("redis_server")
        env = {"DATABASE_URL": url, "REDIS_URL": REDIS_URL,
               "SECRET_KEY": TEST_SECRET,
               "JOBSPRINT_KEK": "test1:" + base64.b64encode(TEST_KEK.key).decode()}
    base.update(overrides)
    return load_settings(env, **base)


def _clean_postgres() -> None:
    with db.engine.begin() as conn:
        tables = conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'alembic_version'")).scalars().all()
        if tables:
            conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE"))


@pytest.fixture(params=["embedded", "production"])
def mode(request) -> str:
    return request.param


@pytest.fixture
def settings_overrides() -> dict:
    """Override in a test module to change settings for its ``app``."""
    return {}


@pytest.fixture
def app(mode, tmp_path, request, settings_overrides):
    settings = make_settings(mode, tmp_path, request, **settings_overrides)
    application = create_app(settings)
    yield application
    stop_in_process(application)
    db.remove()
    if mode == "production":
        _clean_postgres()
        request.getfixturevalue("redis_server").flushdb()
    db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


class AuthActions:
    """Register / sign in through the real endpoints, as a user would."""

    def __init__(self, client) -> None:
        self.client = client

    def new_email(self) -> str:
        return f"user-{uuid.uuid4().hex[:10]}@example.com"

    def register_api(self, email: str | None = None, password: str = "correct horse battery"):
        email = email or self.new_email()
        response = self.client.post("/api/v1/auth/register",
                                    json={"email": email, "password": password})
        assert response.status_code == 201, response.get_json()
        return response.get_json()

    def csrf_token(self, path: str = "/login") -> str:
        import re

        html = self.client.get(path).get_data(as_text=True)
        return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html).group(1)

    def register(self, email: str | None = None, password: str = "correct horse battery"):
        email = email or self.new_email()
        return self.client.post("/register", data={
            "csrf_token": self.csrf_token("/register"), "email": email,
            "password": password, "confirm": password})

    def login(self, email: str, password: str = "correct horse battery"):
        return self.client.post("/login", data={
            "csrf_token": self.csrf_token("/login"), "email": email, "password": password})

    def logout(self):
        return self.client.post("/logout", data={"csrf_token": self.csrf_token("/settings")})


@pytest.fixture
def auth(client) -> AuthActions:
    return AuthActions(client)


def pytest_sessionfinish(session) -> None:
    """Name any non-daemon thread a test left running: the interpreter waits for it at exit,
    so the run would print its result and then never end."""
    import threading

    left = [t.name for t in threading.enumerate()
            if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"non-daemon threads still running (the process will wait for "
                                f"them): {', '.join(left)}", red=True)
