"""Settings: the embedded default needs nothing; production needs its secrets, named one by one."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app import check_config
from app.config import ConfigError, load_settings, parse_keks, read_settings
from app.redaction import redact as redact_url

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
    ({"LOG_LEVEL": "loud"},
     "LOG_LEVEL: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'loud'"),
    ({"JOBSPRINT_API_RATE_LIMIT": "lots"},
     "JOBSPRINT_API_RATE_LIMIT: 'lots' is not a rate limit like '600 per minute'"),
    ({"JOBSPRINT_BASE_URL": "example.com"},
     "JOBSPRINT_BASE_URL: expected an http:// or https:// URL, got 'example.com'"),
    ({"N8N_API_URL": "ftp://u:pw@n8n"},
     "N8N_API_URL: expected an http:// or https:// URL, got 'ftp://u:***@n8n'"),
    ({"JOBSPRINT_HTTP_ALLOW": "10.0.0.0/99"},
     "JOBSPRINT_HTTP_ALLOW: '10.0.0.0/99' is not a valid IP or CIDR"),
    ({"JOBSPRINT_OAUTH_GITHUB_CLIENT_ID": "abc"},
     "JOBSPRINT_OAUTH_GITHUB_CLIENT_SECRET: required with JOBSPRINT_OAUTH_GITHUB_CLIENT_ID"),
    ({"JOBSPRINT_OAUTH_GENERIC_CLIENT_ID": "a", "JOBSPRINT_OAUTH_GENERIC_CLIENT_SECRET": "b"},
     "JOBSPRINT_OAUTH_GENERIC_AUTHORIZE_URL: required for the generic provider"),
    ({"JOBSPRINT_AI_PROVIDERS": "mine=ftp://x"},
     "JOBSPRINT_AI_PROVIDERS: 'mine=ftp://x' is not name=http(s)://…"),
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


def test_every_problem_is_found_at_once_in_the_order_of_the_settings(tmp_path):
    env = {"JOBSPRINT_INSTANCE_PATH": str(tmp_path), "DATABASE_URL": "postgresql://db/x",
           "LOG_LEVEL": "loud", "JOBSPRINT_BCRYPT_ROUNDS": "many", "REDIS_URL": "http://x",
           "JOBSPRINT_OAUTH_SLACK_CLIENT_SECRET": "s", "JOBSPRINT_OAUTH_GITHUB_CLIENT_ID": "i"}
    check = read_settings(env)
    assert check.problems == [
        "REDIS_URL: must be a redis:// or rediss:// URL",
        "SECRET_KEY: required when DATABASE_URL is set (production)",
        "JOBSPRINT_KEK: required when DATABASE_URL is set (production)",
        "JOBSPRINT_BCRYPT_ROUNDS: expected an integer, got 'many'",
        "LOG_LEVEL: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'loud'",
        "JOBSPRINT_OAUTH_GITHUB_CLIENT_SECRET: required with JOBSPRINT_OAUTH_GITHUB_CLIENT_ID",
        "JOBSPRINT_OAUTH_SLACK_CLIENT_ID: required with JOBSPRINT_OAUTH_SLACK_CLIENT_SECRET",
    ]
    # Start-up names the first one only, in one line.
    with pytest.raises(ConfigError, match=r"^REDIS_URL: must be a redis:// or rediss:// URL$"):
        load_settings(env)


def test_a_malformed_setting_keeps_its_default_and_is_marked(tmp_path):
    check = read_settings({"JOBSPRINT_INSTANCE_PATH": str(tmp_path),
                           "JOBSPRINT_BCRYPT_ROUNDS": "many", "JOBSPRINT_WORKER_THREADS": "8"})
    assert check.settings.bcrypt_rounds == 10 and check.settings.worker_threads == 8
    assert check.invalid == {"bcrypt_rounds"}
    assert check.sources["bcrypt_rounds"] == "JOBSPRINT_BCRYPT_ROUNDS"


def test_an_empty_variable_counts_as_unset(tmp_path):
    settings = load_settings({
        "DATABASE_URL": "postgresql://db/x", "SECRET_KEY": SECRET, "JOBSPRINT_KEK": KEY,
        "JOBSPRINT_SECURE_COOKIES": "", "JOBSPRINT_BCRYPT_ROUNDS": " ", "LOG_LEVEL": ""})
    assert settings.secure_cookies is True  # production's default, not "false"
    assert settings.bcrypt_rounds == 10 and settings.log_level == "INFO"


def test_problems_with_an_overridden_setting_do_not_count(tmp_path):
    env = {"DATABASE_URL": "postgresql://db/x", "SECRET_KEY": "short",
           "JOBSPRINT_BCRYPT_ROUNDS": "many"}
    check = read_settings(env, keks=parse_keks(KEY), secret_key=SECRET, bcrypt_rounds=4)
    assert check.problems == []
    assert check.settings.secret_key == SECRET and check.settings.bcrypt_rounds == 4


def test_an_instance_folder_that_cannot_hold_the_secrets_is_a_problem(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    check = read_settings({"JOBSPRINT_INSTANCE_PATH": str(blocker / "instance")})
    (problem,) = check.problems
    assert problem.startswith(
        f"JOBSPRINT_INSTANCE_PATH: cannot keep the generated secret_key in {blocker}/instance (")


def test_describe_masks_secrets_and_says_what_is_missing(tmp_path):
    check = read_settings({
        "DATABASE_URL": "postgresql://db/x", "N8N_API_KEY": "n8n-key-value",
        "JOBSPRINT_OAUTH_SLACK_CLIENT_ID": "cid", "JOBSPRINT_OAUTH_SLACK_CLIENT_SECRET": "csec",
        "JOBSPRINT_HTTP_ALLOW": "10.0.0.0/8, intranet",
        "JOBSPRINT_METRICS_TOKEN": "scrape-token-value"})
    described = dict(check.settings.describe())
    assert described["secret_key"] == "(not set)" and described["keks"] == "(not set)"
    assert described["n8n_api_key"] == "set (hidden)"
    assert described["oauth_providers"] == "slack"
    assert described["http_allow"] == "10.0.0.0/8, intranet"
    assert described["metrics_token"] == "set (hidden)"
    assert "n8n-key-value" not in str(described) and "csec" not in str(described)
    assert "scrape-token-value" not in str(described) + repr(check.settings)


def test_check_config_report_lists_every_setting_then_the_problems(tmp_path):
    lines, usable = check_config.report({
        "JOBSPRINT_INSTANCE_PATH": str(tmp_path), "SECRET_KEY": SECRET,
        "JOBSPRINT_WORKER_THREADS": "0"})
    assert not usable
    assert lines[0] == "Jobsprint settings: embedded default"
    rows = {line.split()[0]: line.split(None, 1)[1] for line in lines[2:-2]}
    assert rows["JOBSPRINT_WORKER_THREADS"] == "INVALID, see below"
    assert rows["SECRET_KEY"] == "set (hidden)" and rows["embedded"] == "True"
    assert len(rows) == len(read_settings({"JOBSPRINT_INSTANCE_PATH": str(tmp_path)})
                            .settings.describe())
    assert lines[-2:] == ["1 problem:", "  JOBSPRINT_WORKER_THREADS: must be at least 1, got 0"]
    assert SECRET not in "\n".join(lines)


def test_check_config_is_recognised_on_a_flask_command_line():
    assert check_config.requested(["flask", "--app", "wsgi", "jobsprint", "check-config"])
    assert not check_config.requested(["flask", "--app", "wsgi", "jobsprint", "run", "x"])
    assert not check_config.requested(["gunicorn", "wsgi:app"])


def test_ai_prices_are_model_equals_input_slash_output(tmp_path):
    env = {"JOBSPRINT_INSTANCE_PATH": str(tmp_path),
           "JOBSPRINT_AI_PRICES": "gpt-4o-mini=0.15/0.6, local=0/0"}
    assert load_settings(env).ai_prices == (("gpt-4o-mini", 0.15, 0.6), ("local", 0.0, 0.0))
    for bad in ("gpt=1", "gpt=a/b", "=1/2", "gpt=-1/2"):
        with pytest.raises(ConfigError, match="JOBSPRINT_AI_PRICES: .* is not model=input/out"):
            load_settings({**env, "JOBSPRINT_AI_PRICES": bad})


def test_a_malformed_kek_is_one_problem_not_also_a_missing_one(tmp_path):
    check = read_settings({"JOBSPRINT_INSTANCE_PATH": str(tmp_path), "SECRET_KEY": SECRET,
                           "DATABASE_URL": "postgresql://db/x", "JOBSPRINT_KEK": "abc"})
    assert check.problems == ["JOBSPRINT_KEK: key 1 is not valid base64"]


def test_passwords_in_url_queries_are_masked_too():
    assert redact_url("postgresql://h/db?password=s3cret&sslmode=require") == (
        "postgresql://h/db?password=***&sslmode=require")
    assert redact_url("redis://h:6379/0?password=abc") == "redis://h:6379/0?password=***"
    assert redact_url("https://u:tok@h/v1") == "https://u:***@h/v1"
