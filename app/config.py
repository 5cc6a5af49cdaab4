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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from app.redaction import redact

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


def parse_oauth_provider(env: Mapping[str, str], name: str) -> OAuthProvider | None:
    """The provider ``name`` when its ``JOBSPRINT_OAUTH_<NAME>_CLIENT_ID`` and ``…_CLIENT_SECRET``
    are set (one without the other is an error); ``…_AUTHORIZE_URL``, ``…_TOKEN_URL``,
    ``…_USERINFO_URL``, ``…_REVOKE_URL``, ``…_SCOPES`` and ``…_LABEL`` override the built-in
    values (and are required for ``generic``)."""
    prefix = f"JOBSPRINT_OAUTH_{name.upper()}_"
    client_id = env.get(prefix + "CLIENT_ID", "").strip()
    secret = env.get(prefix + "CLIENT_SECRET", "").strip()
    if not client_id and not secret:
        return None
    if not client_id or not secret:
        lacking = "CLIENT_SECRET" if client_id else "CLIENT_ID"
        raise ConfigError(f"{prefix}{lacking}: required with {prefix}"
                          f"{'CLIENT_ID' if client_id else 'CLIENT_SECRET'}")
    values = dict(OAUTH_BUILTINS[name])
    for key in ("authorize_url", "token_url", "userinfo_url", "revoke_url", "scopes", "label"):
        if env.get(prefix + key.upper()):
            values[key] = env[prefix + key.upper()]
    missing = [key for key in ("authorize_url", "token_url", "userinfo_url") if not values[key]]
    if missing:
        raise ConfigError(f"{prefix}{missing[0].upper()}: required for the {name} provider")
    return OAuthProvider(name=name, client_id=client_id, client_secret=secret, **values)


def parse_ai_providers(name: str, raw: str) -> tuple[tuple[str, str], ...]:
    """``name=base_url,name=base_url`` (OpenAI-compatible chat-completions APIs)."""
    found = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        provider, sep, url = item.partition("=")
        if not sep or not provider.strip() or not url.strip().startswith(("http://", "https://")):
            raise ConfigError(f"{name}: {item!r} is not name=http(s)://…")
        found.append((provider.strip(), url.strip().rstrip("/")))
    return tuple(found)


# List prices in US dollars per million tokens (input, output) when this was written, for the
# cost estimate kept with each AI exchange; JOBSPRINT_AI_PRICES replaces them. A model not
# listed (a local one) costs 0.
DEFAULT_AI_PRICES: tuple[tuple[str, float, float], ...] = (
    ("gpt-4o", 2.50, 10.00), ("gpt-4o-mini", 0.15, 0.60), ("gpt-4.1", 2.00, 8.00),
    ("gpt-4.1-mini", 0.40, 1.60), ("gpt-4.1-nano", 0.10, 0.40),
    ("llama-3.1-8b-instant", 0.05, 0.08), ("llama-3.3-70b-versatile", 0.59, 0.79))


def parse_ai_prices(name: str, raw: str) -> tuple[tuple[str, float, float], ...]:
    """``model=input/output,…`` in dollars per million tokens, e.g. ``gpt-4o-mini=0.15/0.6``."""
    found = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        model, _, prices = item.partition("=")
        given, _, taken = prices.partition("/")
        try:
            pair = float(given), float(taken)
        except ValueError:
            pair = None
        if not model.strip() or pair is None or min(pair) < 0:
            raise ConfigError(f"{name}: {item!r} is not model=input/output "
                              "(dollars per million tokens)")
        found.append((model.strip(), *pair))
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
    ai_prices: tuple[tuple[str, float, float], ...] = DEFAULT_AI_PRICES
    n8n_api_key: str | None = field(default=None, repr=False)
    metrics_token: str | None = field(default=None, repr=False)  # /metrics needs it when set
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
        """Every setting with its value, secrets masked (for check-config)."""
        rows = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "keks":
                shown = "ids " + ", ".join(k.id for k in value) if value else "(not set)"
            elif f.name in {"secret_key", "n8n_api_key", "metrics_token"}:
                shown = "set (hidden)" if value else "(not set)"
            elif f.name in {"database_url", "redis_url", "queue_url", "rate_limit_storage_url"}:
                shown = redact(value) if value else "(embedded)"
            elif f.name == "oauth_providers":  # their client secrets stay out of sight
                shown = ", ".join(p.name for p in value) or "(none)"
            elif f.name == "ai_prices":
                shown = ", ".join(f"{m}={i:g}/{o:g}" for m, i, o in value) or "(none)"
            elif f.name == "ai_providers":
                shown = ", ".join(f"{name}={redact(url)}" for name, url in value) or "(none)"
            elif f.name == "http_allow":
                shown = ", ".join(value) or "(none)"
            elif value is None:
                shown = "(not set)"
            else:
                shown = redact(value) if f.name in {"n8n_api_url", "base_url"} else str(value)
            rows.append((f.name, shown))
        return rows


def parse_boolean(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
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


def parse_http_url(name: str, raw: str) -> str:
    """An http(s) address, without its trailing slash."""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name}: expected an http:// or https:// URL, got "
                          f"{redact(raw)!r}")
    return raw.rstrip("/")


def parse_rate_limit(name: str, raw: str) -> str:
    """A limit as Flask-Limiter reads it: ``600 per minute``, or several: ``10/minute;100/hour``.
    Checked here so that a typo stops start-up instead of failing every request."""
    from limits import parse_many

    try:
        parse_many(raw)
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} is not a rate limit like '600 per minute'") from None
    return raw


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parse_log_level(name: str, raw: str) -> str:
    value = raw.upper()
    if value not in LOG_LEVELS:
        raise ConfigError(f"{name}: expected one of {', '.join(LOG_LEVELS)}, got {raw!r}")
    return value


def parse_log_format(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in {"json", "text"}:
        raise ConfigError(f"{name}: expected json or text, got {raw!r}")
    return value


def parse_allow_list(name: str, raw: str) -> tuple[str, ...]:
    """Hosts and CIDRs, comma-separated, checked by the parser the http nodes use."""
    from app.services.ssrf import AllowList

    entries = tuple(filter(None, (h.strip() for h in raw.split(","))))
    AllowList.parse(entries)
    return entries


def _service_url(schemes: tuple[str, ...], expected: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        if not raw.startswith(schemes):
            raise ConfigError(f"{name}: must be {expected}")
        return raw

    return parse


def _text(_name: str, raw: str) -> str:
    return raw


def _instance_secret(instance_path: Path, name: str, make: Callable[[], str]) -> str:
    """Read a secret the embedded default generated on first start, or make it now."""
    path = instance_path / name
    try:
        if path.exists():
            return path.read_text().strip()
        instance_path.mkdir(parents=True, exist_ok=True)
        value = make()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(value)
    except OSError as exc:
        raise ConfigError(f"JOBSPRINT_INSTANCE_PATH: cannot keep the generated {name} in "
                          f"{instance_path} ({exc.strerror})") from None
    return value


class _Reader:
    """Reads settings from the environment and collects every problem instead of stopping at
    the first: a malformed value is noted and its setting keeps its default, so one pass both
    lists all that is wrong and has a value to show for each setting. An empty variable counts
    as unset."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        self.problems: list[tuple[str, str]] = []  # (setting, message naming the variable)

    def get(self, setting: str, var: str) -> str:
        """The raw value of ``var``, which ``setting`` is made from."""
        self.sources[setting] = var
        return self.env.get(var, "").strip()

    def read(self, setting: str, var: str, parse: Callable[[str, str], Any] = _text) -> None:
        if raw := self.get(setting, var):
            try:
                self.values[setting] = parse(var, raw)
            except ConfigError as exc:
                self.problem(setting, str(exc))

    def problem(self, setting: str, message: str) -> None:
        self.problems.append((setting, message))


@dataclass(frozen=True)
class SettingsCheck:
    """What reading the environment found: the settings (each malformed one at its default),
    the variable each setting comes from, and every problem, in the order of the settings."""

    settings: Settings
    sources: dict[str, str]
    problems: list[str]
    invalid: frozenset[str]  # the settings a problem names


def read_settings(env: Mapping[str, str] | None = None, **overrides) -> SettingsCheck:
    """Read every setting from ``env`` (default ``os.environ``), then apply ``overrides``;
    problems with an overridden setting do not count."""
    env = os.environ if env is None else env
    r = _Reader(env)
    instance_path = Path(r.get("instance_path", "JOBSPRINT_INSTANCE_PATH")
                         or PROJECT_ROOT / "instance")
    database_url = r.get("database_url", "DATABASE_URL")
    embedded = not database_url
    if embedded:
        database_url = f"sqlite:///{instance_path / 'jobsprint.db'}"
    elif database_url.startswith("postgres://"):
        # Heroku-style URLs; SQLAlchemy needs the driver named.
        database_url = "postgresql+psycopg://" + database_url.removeprefix("postgres://")
    elif database_url.startswith("postgresql://"):
        database_url = "postgresql+psycopg://" + database_url.removeprefix("postgresql://")
    if not database_url.startswith(("sqlite:///", "postgresql+psycopg://")):
        r.problem("database_url", "DATABASE_URL: must be a postgresql:// or sqlite:/// URL")

    secret_key, kek_raw = r.get("secret_key", "SECRET_KEY"), r.get("keks", "JOBSPRINT_KEK")
    if embedded:
        try:
            secret_key = secret_key or _instance_secret(
                instance_path, "secret_key", lambda: secrets.token_urlsafe(48))
            kek_raw = kek_raw or _instance_secret(
                instance_path, "kek", lambda: base64.b64encode(secrets.token_bytes(32)).decode())
        except ConfigError as exc:
            r.problem("secret_key", str(exc))
    if secret_key and len(secret_key) < 32:
        r.problem("secret_key", "SECRET_KEY: must be at least 32 characters")
    keks: tuple[KeyEncryptionKey, ...] = ()
    if kek_raw:
        try:
            keks = parse_keks(kek_raw)
        except ConfigError as exc:
            r.problem("keks", str(exc))

    r.read("redis_url", "REDIS_URL", _service_url(("redis://", "rediss://", "unix://"),
                                                  "a redis:// or rediss:// URL"))
    r.read("queue_url", "QUEUE_URL", _service_url(("redis://", "rediss://", "amqp://", "amqps://"),
                                                  "a redis:// (RQ) or amqp:// (RabbitMQ) URL"))
    r.values.setdefault("redis_url", None)
    r.values.setdefault("queue_url", None)
    # Defaults that depend on the mode; a variable that is set overrides them.
    r.values.update(secure_cookies=not embedded, log_format="text" if embedded else "json")
    r.read("base_url", "JOBSPRINT_BASE_URL", parse_http_url)
    r.read("bcrypt_rounds", "JOBSPRINT_BCRYPT_ROUNDS", partial(parse_int, minimum=4))
    r.read("api_rate_limit", "JOBSPRINT_API_RATE_LIMIT", parse_rate_limit)
    r.read("login_rate_limit", "JOBSPRINT_LOGIN_RATE_LIMIT", parse_rate_limit)
    r.read("register_rate_limit", "JOBSPRINT_REGISTER_RATE_LIMIT", parse_rate_limit)
    r.read("log_level", "LOG_LEVEL", parse_log_level)
    r.read("secure_cookies", "JOBSPRINT_SECURE_COOKIES", parse_boolean)
    r.read("worker_threads", "JOBSPRINT_WORKER_THREADS", partial(parse_int, minimum=1))
    r.read("clock_interval_s", "JOBSPRINT_CLOCK_INTERVAL_S", parse_float)
    r.read("run_lease_s", "JOBSPRINT_RUN_LEASE_S", parse_float)
    r.read("queue_name", "JOBSPRINT_QUEUE_NAME")
    r.read("http_allow", "JOBSPRINT_HTTP_ALLOW", parse_allow_list)
    r.read("allow_unsigned_webhooks", "JOBSPRINT_ALLOW_UNSIGNED_WEBHOOKS", parse_boolean)
    r.read("webhook_body_limit", "JOBSPRINT_WEBHOOK_MAX_BYTES", partial(parse_int, minimum=1))
    r.read("webhook_rotation_grace_s", "JOBSPRINT_WEBHOOK_ROTATION_GRACE_S", parse_int)
    r.read("n8n_api_url", "N8N_API_URL", parse_http_url)
    r.read("n8n_api_key", "N8N_API_KEY")
    r.read("metrics_token", "JOBSPRINT_METRICS_TOKEN")
    providers = []
    for name in OAUTH_BUILTINS:
        try:
            if provider := parse_oauth_provider(env, name):
                providers.append(provider)
        except ConfigError as exc:
            r.problem("oauth_providers", str(exc))
    r.values["oauth_providers"] = tuple(providers)
    r.sources["oauth_providers"] = "JOBSPRINT_OAUTH_<APP>_*"
    r.read("ai_providers", "JOBSPRINT_AI_PROVIDERS", parse_ai_providers)
    r.read("ai_daily_tokens", "JOBSPRINT_AI_DAILY_TOKENS", parse_int)
    r.read("ai_prices", "JOBSPRINT_AI_PRICES", parse_ai_prices)
    r.read("ai_user_per_minute", "JOBSPRINT_AI_USER_PER_MINUTE", partial(parse_int, minimum=1))
    r.read("ai_provider_per_minute", "JOBSPRINT_AI_PROVIDER_PER_MINUTE",
           partial(parse_int, minimum=1))
    days = partial(parse_int, minimum=1)
    r.read("retention_executions_days", "JOBSPRINT_RETENTION_EXECUTIONS_DAYS", days)
    r.read("retention_ai_history_days", "JOBSPRINT_RETENTION_AI_HISTORY_DAYS", days)
    r.read("retention_audit_days", "JOBSPRINT_RETENTION_AUDIT_DAYS", days)
    r.read("retention_purge_after_days", "JOBSPRINT_RETENTION_PURGE_AFTER_DAYS", days)
    r.read("retention_every_s", "JOBSPRINT_RETENTION_EVERY_S", partial(parse_int, minimum=1))
    r.read("vacuum_every_s", "JOBSPRINT_VACUUM_EVERY_S", partial(parse_int, minimum=1))
    r.read("purge_every_s", "JOBSPRINT_PURGE_EVERY_S", partial(parse_int, minimum=1))
    r.read("retention_batch", "JOBSPRINT_RETENTION_BATCH", partial(parse_int, minimum=1))
    r.read("log_format", "LOG_FORMAT", parse_log_format)

    settings = Settings(
        database_url=database_url, secret_key=secret_key, keks=keks,
        instance_path=instance_path, embedded=embedded,
        rate_limit_storage_url=r.values["redis_url"] or "memory://",
        inline_workers=r.values["queue_url"] is None, **r.values)
    settings = replace(settings, **overrides) if overrides else settings
    if not embedded and not settings.secret_key:
        r.problem("secret_key", "SECRET_KEY: required when DATABASE_URL is set (production)")
    if not embedded and not settings.keks and not kek_raw:  # (a malformed one said so above)
        r.problem("keks", "JOBSPRINT_KEK: required when DATABASE_URL is set (production)")
    order = {f.name: position for position, f in enumerate(fields(Settings))}
    problems = sorted((p for p in r.problems if p[0] not in overrides),
                      key=lambda p: order[p[0]])
    return SettingsCheck(settings, r.sources, [message for _, message in problems],
                         frozenset(setting for setting, _ in problems))


def load_settings(env: Mapping[str, str] | None = None, **overrides) -> Settings:
    """The settings from ``env`` (default ``os.environ``) with ``overrides`` applied, or a
    ``ConfigError`` naming the first problem in one line (start-up stops with it; check-config
    lists them all)."""
    check = read_settings(env, **overrides)
    if check.problems:
        raise ConfigError(check.problems[0])
    return check.settings
