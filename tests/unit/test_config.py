"""Settings: the embedded default needs nothing; production needs its secrets, named one by one."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import ConfigError, load_settings, parse_keks, redact_url

ROOT = Path(__file__).resolve().parents[2]
KEY = base64.b64encode(b"k" * 32).decode()
SECRET = "s" * 40


def test_embedded_default_generates_and_keeps_its_secrets(tmp_path):
    env = {"JOBSPRINT_INSTANCE_PATH": str(tmp_path)}
    first = load_settings(env)
    assert first.embedded and first.database_url == f"sqlite:///{tmp_path}/jobsprint.db"
    assert first.redis_url is None and first.queue_url is None
    again = load_settings(env)
    assert again.secret_key == first.secret_key and again.keks == first.keks
    assert oct((tmp_path / "kek").stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("env,message", [
    ({"DATABASE_URL": "postgresql://db/x", "JOBSPRINT_KEK": KEY},
     "SECRET_KEY: required when DATABASE_URL is set (production)"),
    ({"DATABASE_URL": "postgresql://db/x", "SECRET_KEY": SECRET},
     "JOBSPRINT_KEK: required when DATABASE_URL is set (production)"),
    ({"DATABASE_URL": "postgresql://db/x", "SECRET_KEY": "short", "JOBSPRINT_KEK": KEY},
     "SECRET_KEY: must be at least 32 characters"),
    ({"DATABASE_URL": "mysql://db/x", "SECRET_KEY": SECRET, "JOBSPRINT_KEK": KEY},
     "DATABASE_URL: must be a postgresql:// or sqlite:/// URL"),
    ({"DATABASE_URL": "postgresql://db/x", "SECRET_KEY": SECRET, "JOBSPRINT_KEK": "bm9wZQ=="},
     "JOBSPRINT_KEK: key 1 must decode to 32 bytes, not 4"),
    ({"DATABASE_URL": "postgresql://db/x", "SECRET_KEY": SECRET, "JOBSPRINT_KEK": "%%%"},
     "JOBSPRINT_KEK: key 1 is not valid base64"),
    ({"REDIS_URL": "http://x"}, "REDIS_URL: must be a redis:// or rediss:// URL"),
    ({"QUEUE_URL": "kafka://x"}, "QUEUE_URL: must be a redis:// (RQ) or amqp:// (RabbitMQ) URL"),
    ({"JOBSPRINT_BCRYPT_ROUNDS": "many"},
     "JOBSPRINT_BCRYPT_ROUNDS: expected an integer, got 'many'"),
    ({"JOBSPRINT_SECURE_COOKIES": "maybe"},
     "JOBSPRINT_SECURE_COOKIES: expected true or false, got 'maybe'"),
])
def test_bad_settings_name_themselves_in_one_line(tmp_path, env, message):
    with pytest.raises(ConfigError) as caught:
        load_settings({"JOBSPRINT_INSTANCE_PATH": str(tmp_path), **env})
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


def test_production_settings_parse(tmp_path):
    settings = load_settings({
        "DATABASE_URL": "postgres://u:pw@db:5432/app", "SECRET_KEY": SECRET,
        "JOBSPRINT_KEK": f"new:{KEY},old:{base64.b64encode(b'o' * 32).decode()}",
        "REDIS_URL": "redis://cache:6379/0"})
    assert not settings.embedded
    assert settings.database_url == "postgresql+psycopg://u:pw@db:5432/app"
    assert [k.id for k in settings.keks] == ["new", "old"]
    assert settings.current_kek.id == "new"
    assert settings.rate_limit_storage_url == "redis://cache:6379/0"
    assert settings.secure_cookies is True
    described = dict(settings.describe())
    assert described["database_url"] == "postgresql+psycopg://u:***@db:5432/app"
    assert SECRET not in repr(settings) and KEY not in str(described)


def test_kek_ids_default_to_a_fingerprint_and_must_be_unique():
    (kek,) = parse_keks(KEY)
    assert len(kek.id) == 8
    with pytest.raises(ConfigError, match="ids must be unique"):
        parse_keks(f"a:{KEY},a:{KEY}")


def test_redact_url():
    assert redact_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


def test_wsgi_refuses_to_start_with_a_one_line_error(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in {"SECRET_KEY", "JOBSPRINT_KEK", "DATABASE_URL"}}
    env.update(DATABASE_URL="postgresql://127.0.0.1/none", JOBSPRINT_KEK=KEY,
               JOBSPRINT_INSTANCE_PATH=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", "import wsgi"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "jobsprint: cannot start: SECRET_KEY: required when DATABASE_URL is set (production)")
