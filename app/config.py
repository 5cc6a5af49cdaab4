"""Every setting Jobsprint reads, parsed once from the environment.

Nothing else in the code base reads ``os.environ``. Without ``DATABASE_URL`` Jobsprint runs in
its embedded default: a SQLite file under ``instance/``, an in-process queue, pub/sub, cache and
locks, and secrets generated once and kept in ``instance/`` (mode 0600). With ``DATABASE_URL``
it is a production deployment and the settings that protect data must be given explicitly.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it in one line."""


@dataclass(frozen=True)
class KeyEncryptionKey:
    id: str
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class OAuthProvider:
    """One OAuth2 provider a user can connect (enabled by its client id and secret)."""

    name: str
    label: str
    authorize_url: str
    token_url: str
    userinfo_url: str  # the connection test: GET with the new access token
    revoke_url: str | None
    scopes: str
    client_id: str
    client_secret: str = field(repr=False)
    pkce: bool = True
    account_keys: tuple[str, ...] = ("login", "email", "user", "name", "sub", "id")
    extra_authorize_params: tuple[tuple[str, str], ...] = ()


OAUTH_BUILTINS: dict[str, dict] = {
    "github": {"label": "GitHub", "authorize_url": "https://github.com/login/oauth/authorize",
               "token_url": "https://github.com/login/oauth/access_token",
               "userinfo_url": "https://api.github.com/user", "revoke_url": None,
               "scopes": "repo"},
    "google": {"label": "Google",
               "authorize_url": "https://accounts.google.com/o/oauth2/v2/auth",
               "token_url": "https://oauth2.googleapis.com/token",
               "userinfo_url": "https://openidconnect.googleapis.com/v1/userinfo",
               "revoke_url": "https://oauth2.googleapis.com/revoke",
               "scopes": "openid email https://www.googleapis.com/auth/spreadsheets",
               "extra_authorize_params": (("access_type", "offline"), ("prompt", "consent"))},
    "slack": {"label": "Slack", "authorize_url": "https://slack.com/oauth/v2/authorize",
              "token_url": "https://slack.com/api/oauth.v2.access",
              "userinfo_url": "https://slack.com/api/auth.test",
              "revoke_url": "https://slack.com/api/auth.revoke", "scopes": "chat:write"},
    "generic": {"label": "OAuth2 app", "authorize_url": "", "token_url": "",
                "userinfo_url": "", "revoke_url": None, "scopes": ""},
}


def parse_oauth_providers(env: Mapping[str, str]) -> tuple[OAuthProvider, ...]:
    """Each provider whose ``JOBSPRINT_OAUTH_<NAME>_CLIENT_ID`` and ``…_CLIENT_SECRET`` are
    set; ``…_AUTHORIZE_URL``, ``…_TOKEN_URL``, ``…_USERINFO_URL``, ``…_REVOKE_URL``,
    ``…_SCOPES`` and ``…_LABEL`` override the built-in values (and are required for
    ``generic``)."""
    found = []
    for name, builtin in OAUTH_BUILTINS.items():
        prefix = f"JOBSPRINT_OAUTH_{name.upper()}_"
        client_id, secret = env.get(prefix + "CLIENT_ID"), env.get(prefix + "CLIENT_SECRET")
        if not client_id or not secret:
            continue
        values = dict(builtin)
        for key in ("authorize_url", "token_url", "userinfo_url", "revoke_url", "scopes",
                    "label"):
            if env.get(prefix + key.upper()):
                values[key] = env[prefix + key.upper()]
        missing = [key for key in ("authorize_url", "token_url", "userinfo_url")
                   if not values[key]]
        if missing:
            raise ConfigError(f"{prefix}{missing[0].upper()}: required for the {name} "
                              "provider")
        found.append(OAuthProvider(name=name, client_id=client_id, client_secret=secret,
                                   **values))
    return tuple(found)


def parse_ai_providers(raw: str) -> tuple[tuple[str, str], ...]:
    """``name=base_url,name=base_url`` (OpenAI-compatible chat-completions APIs)."""
    found = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, url = item.partition("=")
        if not sep or not name.strip() or not url.strip().startswith(("http://", "https://")):
            raise ConfigError(f"JOBSPRINT_AI_PROVIDERS: {item!r} is not name=http(s)://…")
        found.append((name.strip(), url.strip().rstrip("/")))
    return tuple(found)


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str | None
    queue_url: str | None
    secret_key: str = field(repr=False)
    keks: tuple[KeyEncryptionKey, ...] = field(repr=False)
    instance_path: Path
    embedded: bool
    base_url: str = "http://127.0.0.1:5000"
    bcrypt_rounds: int = 10
    session_ttl_s: int = 24 * 3600
    token_ttl_s: int = 24 * 3600
    api_rate_limit: str = "600 per minute"
    login_rate_limit: str = "10 per minute"
    register_rate_limit: str = "30 per hour"
    rate_limit_storage_url: str = "memory://"
    max_request_bytes: int = 4 * 1024 * 1024
    log_level: str = "INFO"
    secure_cookies: bool = False
    worker_threads: int = 4
    # The embedded default runs its queue workers and clock as threads of the web process.
    inline_workers: bool = True
    clock_interval_s: float = 1.0
    # How long a claimed run stays with its worker without a renewal (renewed every third of
    # it); the reaper hands a run on once it has passed.
    run_lease_s: float = 60.0
    # RQ queue / RabbitMQ queue name; deployments (and test suites) sharing a broker differ here.
    queue_name: str = "jobsprint.runs"
    # JOBSPRINT_HTTP_ALLOW: hosts or CIDRs that http.request may reach although they resolve to
    # loopback, private, link-local or metadata addresses.
    http_allow: tuple[str, ...] = ()
    # Webhooks: JOBSPRINT_ALLOW_UNSIGNED_WEBHOOKS lets a trigger.webhook use ``auth: none``;
    # JOBSPRINT_WEBHOOK_MAX_BYTES caps a delivery's body; JOBSPRINT_WEBHOOK_ROTATION_GRACE_S is
    # how long a rotated-out secret still verifies.
    allow_unsigned_webhooks: bool = False
    webhook_body_limit: int = 1_048_576
    webhook_rotation_grace_s: int = 86400
    n8n_api_url: str | None = None
    oauth_providers: tuple[OAuthProvider, ...] = ()
    ai_providers: tuple[tuple[str, str], ...] = (
        ("openai", "https://api.openai.com/v1"), ("openrouter", "https://openrouter.ai/api/v1"),
        ("groq", "https://api.groq.com/openai/v1"), ("together", "https://api.together.xyz/v1"),
        ("ollama", "http://127.0.0.1:11434/v1"))
    ai_user_per_minute: int = 60
    ai_provider_per_minute: int = 600
    ai_daily_tokens: int = 0  # per user; 0: no budget
    n8n_api_key: str | None = field(default=None, repr=False)
    # Retention (the clock's daily, weekly and monthly jobs): ages in days after which rows are
    # soft-deleted, how long soft-deleted rows are kept before the hard delete, how often each
    # job runs, and how many rows one transaction touches.
    retention_executions_days: int = 90
    retention_ai_history_days: int = 30
    retention_audit_days: int = 365
    retention_purge_after_days: int = 30
    retention_every_s: int = 86400
    vacuum_every_s: int = 7 * 86400
    purge_every_s: int = 30 * 86400
    retention_batch: int = 1000
    # LOG_FORMAT: json (one object per line, with request and execution ids) or text.
    log_format: str = "json"
    testing: bool = False

    @property
    def current_kek(self) -> KeyEncryptionKey:
        return self.keks[0]

    def describe(self) -> list[tuple[str, str]]:
        """Every setting with its value, secrets masked (for check-config and start-up logs)."""
        masked = {"secret_key", "keks", "n8n_api_key"}
        rows = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in masked:
                shown = "set (hidden)"
                if f.name == "keks":
                    shown = "ids " + ", ".join(k.id for k in value)
            elif f.name in {"database_url", "redis_url", "queue_url", "rate_limit_storage_url"}:
                shown = redact_url(value) if value else "(embedded)"
            else:
                shown = str(value)
            rows.append((f.name, shown))
        return rows


def redact_url(url: str) -> str:
    """Hide the password of a service URL: ``postgresql://u:***@host/db``."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def parse_boolean(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name}: expected true or false, got {raw!r}")


def parse_int(name: str, raw: str, *, minimum: int = 0) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {value}")
    return value


def parse_float(name: str, raw: str, *, minimum: float = 0.1) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {raw!r}") from None
    if not value >= minimum:
        raise ConfigError(f"{name}: must be at least {minimum:g}, got {raw}")
    return value


def parse_keks(raw: str) -> tuple[KeyEncryptionKey, ...]:
    """``JOBSPRINT_KEK``: comma-separated ``[id:]base64`` 32-byte keys; the first encrypts."""
    keks = []
    for position, item in enumerate(filter(None, (p.strip() for p in raw.split(","))), 1):
        kek_id, sep, encoded = item.rpartition(":")
        if not sep:
            encoded = item
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"JOBSPRINT_KEK: key {position} is not valid base64") from None
        if len(key) != 32:
            raise ConfigError(
                f"JOBSPRINT_KEK: key {position} must decode to 32 bytes, not {len(key)}"
            )
        kek_id = kek_id or hashlib.sha256(key).hexdigest()[:8]
        keks.append(KeyEncryptionKey(kek_id, key))
    if not keks:
        raise ConfigError("JOBSPRINT_KEK: no key given")
    ids = [k.id for k in keks]
    if len(set(ids)) != len(ids):
        raise ConfigError("JOBSPRINT_KEK: key ids must be unique")
    return tuple(keks)


def _instance_secret(instance_path: Path, name: str, make: callable) -> str:
    """Read a secret the embedded default generated on first start, or make it now."""
    path = instance_path / name
    if path.exists():
        return path.read_text().strip()
    instance_path.mkdir(parents=True, exist_ok=True)
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value


def _days(env: Mapping[str, str], name: str, default: int) -> int:
    return parse_int(name, env.get(name, str(default)), minimum=1)


def _log_format(raw: str) -> str:
    value = raw.strip().lower()
    if value not in {"json", "text"}:
        raise ConfigError(f"LOG_FORMAT: expected json or text, got {raw!r}")
    return value


def load_settings(env: Mapping[str, str] | None = None, **overrides) -> Settings:
    """Build the settings from ``env`` (default ``os.environ``), then apply ``overrides``."""
    env = os.environ if env is None else env
    instance_path = Path(env.get("JOBSPRINT_INSTANCE_PATH") or PROJECT_ROOT / "instance")
    database_url = env.get("DATABASE_URL", "").strip()
    embedded = not database_url
    if embedded:
        database_url = f"sqlite:///{instance_path / 'jobsprint.db'}"
    elif database_url.startswith("postgres://"):
        # Heroku-style URLs; SQLAlchemy needs the driver named.
        database_url = "postgresql+psycopg://" + database_url.removeprefix("postgres://")
    elif database_url.startswith("postgresql://"):
        database_url = "postgresql+psycopg://" + database_url.removeprefix("postgresql://")
    if not database_url.startswith(("sqlite:///", "postgresql+psycopg://")):
        raise ConfigError("DATABASE_URL: must be a postgresql:// or sqlite:/// URL")

    secret_key = env.get("SECRET_KEY", "").strip()
    kek_raw = env.get("JOBSPRINT_KEK", "").strip()
    if embedded:
        secret_key = secret_key or _instance_secret(
            instance_path, "secret_key", lambda: secrets.token_urlsafe(48)
        )
        kek_raw = kek_raw or _instance_secret(
            instance_path, "kek", lambda: base64.b64encode(secrets.token_bytes(32)).decode()
        )
    if not secret_key and "secret_key" not in overrides:
        raise ConfigError("SECRET_KEY: required when DATABASE_URL is set (production)")
    if secret_key and len(secret_key) < 32:
        raise ConfigError("SECRET_KEY: must be at least 32 characters")
    if not kek_raw and "keks" not in overrides:
        raise ConfigError("JOBSPRINT_KEK: required when DATABASE_URL is set (production)")

    redis_url = env.get("REDIS_URL", "").strip() or None
    if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("REDIS_URL: must be a redis:// or rediss:// URL")
    queue_url = env.get("QUEUE_URL", "").strip() or None
    if queue_url and not queue_url.startswith(("redis://", "rediss://", "amqp://", "amqps://")):
        raise ConfigError("QUEUE_URL: must be a redis:// (RQ) or amqp:// (RabbitMQ) URL")

    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        queue_url=queue_url,
        secret_key=secret_key,
        keks=parse_keks(kek_raw) if kek_raw else (),
        instance_path=instance_path,
        embedded=embedded,
        base_url=env.get("JOBSPRINT_BASE_URL", "http://127.0.0.1:5000").rstrip("/"),
        bcrypt_rounds=parse_int("JOBSPRINT_BCRYPT_ROUNDS", env.get("JOBSPRINT_BCRYPT_ROUNDS", "10"),
                                minimum=4),
        api_rate_limit=env.get("JOBSPRINT_API_RATE_LIMIT", "600 per minute"),
        login_rate_limit=env.get("JOBSPRINT_LOGIN_RATE_LIMIT", "10 per minute"),
        register_rate_limit=env.get("JOBSPRINT_REGISTER_RATE_LIMIT", "30 per hour"),
        rate_limit_storage_url=redis_url or "memory://",
        log_level=env.get("LOG_LEVEL", "INFO").upper(),
        secure_cookies=parse_boolean("JOBSPRINT_SECURE_COOKIES",
                                     env.get("JOBSPRINT_SECURE_COOKIES", str(not embedded))),
        worker_threads=parse_int("JOBSPRINT_WORKER_THREADS",
                                 env.get("JOBSPRINT_WORKER_THREADS", "4"), minimum=1),
        inline_workers=queue_url is None,
        clock_interval_s=parse_float("JOBSPRINT_CLOCK_INTERVAL_S",
                                     env.get("JOBSPRINT_CLOCK_INTERVAL_S", "1")),
        run_lease_s=parse_float("JOBSPRINT_RUN_LEASE_S", env.get("JOBSPRINT_RUN_LEASE_S", "60")),
        queue_name=env.get("JOBSPRINT_QUEUE_NAME", "jobsprint.runs").strip() or "jobsprint.runs",
        http_allow=tuple(filter(None, (h.strip() for h in
                                       env.get("JOBSPRINT_HTTP_ALLOW", "").split(",")))),
        allow_unsigned_webhooks=parse_boolean(
            "JOBSPRINT_ALLOW_UNSIGNED_WEBHOOKS",
            env.get("JOBSPRINT_ALLOW_UNSIGNED_WEBHOOKS", "false")),
        webhook_body_limit=parse_int("JOBSPRINT_WEBHOOK_MAX_BYTES",
                                     env.get("JOBSPRINT_WEBHOOK_MAX_BYTES", "1048576"),
                                     minimum=1),
        webhook_rotation_grace_s=parse_int(
            "JOBSPRINT_WEBHOOK_ROTATION_GRACE_S",
            env.get("JOBSPRINT_WEBHOOK_ROTATION_GRACE_S", "86400")),
        n8n_api_url=(env.get("N8N_API_URL") or "").rstrip("/") or None,
        oauth_providers=parse_oauth_providers(env),
        **({"ai_providers": parse_ai_providers(env["JOBSPRINT_AI_PROVIDERS"])}
           if env.get("JOBSPRINT_AI_PROVIDERS") else {}),
        ai_daily_tokens=parse_int("JOBSPRINT_AI_DAILY_TOKENS",
                                  env.get("JOBSPRINT_AI_DAILY_TOKENS", "0"), minimum=0),
        ai_user_per_minute=parse_int("JOBSPRINT_AI_USER_PER_MINUTE",
                                     env.get("JOBSPRINT_AI_USER_PER_MINUTE", "60"), minimum=1),
        ai_provider_per_minute=parse_int(
            "JOBSPRINT_AI_PROVIDER_PER_MINUTE", env.get("JOBSPRINT_AI_PROVIDER_PER_MINUTE", "600"),
            minimum=1),
        n8n_api_key=env.get("N8N_API_KEY") or None,
        retention_executions_days=_days(env, "JOBSPRINT_RETENTION_EXECUTIONS_DAYS", 90),
        retention_ai_history_days=_days(env, "JOBSPRINT_RETENTION_AI_HISTORY_DAYS", 30),
        retention_audit_days=_days(env, "JOBSPRINT_RETENTION_AUDIT_DAYS", 365),
        retention_purge_after_days=_days(env, "JOBSPRINT_RETENTION_PURGE_AFTER_DAYS", 30),
        retention_every_s=parse_int("JOBSPRINT_RETENTION_EVERY_S",
                                    env.get("JOBSPRINT_RETENTION_EVERY_S", "86400"), minimum=1),
        vacuum_every_s=parse_int("JOBSPRINT_VACUUM_EVERY_S",
                                 env.get("JOBSPRINT_VACUUM_EVERY_S", str(7 * 86400)), minimum=1),
        purge_every_s=parse_int("JOBSPRINT_PURGE_EVERY_S",
                                env.get("JOBSPRINT_PURGE_EVERY_S", str(30 * 86400)), minimum=1),
        retention_batch=parse_int("JOBSPRINT_RETENTION_BATCH",
                                  env.get("JOBSPRINT_RETENTION_BATCH", "1000"), minimum=1),
        log_format=_log_format(env.get("LOG_FORMAT", "text" if embedded else "json")),
    )
    settings = replace(settings, **overrides) if overrides else settings
    if not settings.keks:
        raise ConfigError("JOBSPRINT_KEK: required when DATABASE_URL is set (production)")
    return settings
