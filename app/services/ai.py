"""ai.chat through any OpenAI-compatible chat-completions API (seed flow 4).

One run's port (``AiForRun``) does, for each node: the rate limits (a Redis token bucket per
user and per provider; over the limit the node waits until its deadline, then fails "rate
limited"); the conversation's earlier messages (the cache ``conversation:{user}:{key}``, else
``ai_history``) counted in tokens and cut oldest-first to the window, the system prompt never
cut; an identical request at temperature 0 served from the cache ``ai-cache:{digest}`` (and
marked so); the request through the run's HTTP port (so the SSRF rules and the node's API-key
credential apply, and 429/5xx/timeouts are retried 3 times with backoff, jitter and
Retry-After); then the fallback model when the first one keeps failing; JSON-output mode, whose
answer must satisfy the node's JSON Schema (asked again once with the errors, then the node
fails with them); and the exchange stored as a user/assistant pair in ``ai_history`` with the
model, tokens, latency and whether it came from the cache.

Tokens are counted with a conservative estimate — no tokenizer is installed, and none may be
downloaded at run time: one token per 3 bytes of UTF-8, plus 4 per message, which over-counts
typical English (about 4 characters per token), so a cut conversation always fits the model's
window.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from flask import current_app
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from sqlalchemy import select

from app import metrics
from app.db import db
from app.engine import NodeError
from app.models import AIHistory, PromptTemplate
from app.services import cache

WINDOW_TOKENS = 4096
CACHE_TTL_S = 3600
CONVERSATION_KEEP = 50  # messages kept in the conversation cache
BUCKET = """
local tokens = tonumber(redis.call('HGET', KEYS[1], 't') or ARGV[1])
local last = tonumber(redis.call('HGET', KEYS[1], 'at') or ARGV[3])
local rate = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
tokens = math.min(tonumber(ARGV[1]), tokens + (now - last) * rate)
if tokens >= 1 then
  redis.call('HSET', KEYS[1], 't', tokens - 1, 'at', now)
  redis.call('EXPIRE', KEYS[1], 3600)
  return 0
end
redis.call('HSET', KEYS[1], 't', tokens, 'at', now)
redis.call('EXPIRE', KEYS[1], 3600)
return tostring((1 - tokens) / rate)
"""


def count_tokens(text: str) -> int:
    return math.ceil(len(text.encode()) / 3)


def message_tokens(message: dict) -> int:
    return 4 + count_tokens(message.get("content") or "")


def fit(system: dict | None, history: list[dict], user: dict, *, window: int,
        answer: int) -> list[dict]:
    """The messages to send: the system prompt (never cut), as many of the latest history
    messages as fit (oldest dropped first), the user message. An answer whose question was
    cut goes too, so the kept history starts with a question (some APIs require it, and an
    answer alone misleads the model)."""
    budget = window - answer - message_tokens(user) - (message_tokens(system) if system else 0)
    if budget < 0:
        raise NodeError(f"ai.chat: the prompt alone needs more than the {window}-token window "
                        f"with {answer} tokens kept for the answer")
    kept: list[dict] = []
    for message in reversed(history):
        cost = message_tokens(message)
        if cost > budget:
            break
        kept.insert(0, message)
        budget -= cost
    while kept and kept[0].get("role") == "assistant":
        kept.pop(0)
    return ([system] if system else []) + kept + [user]


def _budget_key(user_id: Any, now: datetime | None = None) -> str:
    return f"ai-budget:{user_id}:{(now or datetime.now(UTC)):%Y%m%d}"


def budget_left(user_id: Any) -> int | None:
    """Tokens the user may still spend today (UTC), or None without a daily budget."""
    daily = _settings().ai_daily_tokens
    if not daily:
        return None
    return max(0, daily - int(_store().get(_budget_key(user_id)) or 0))


def seconds_to_midnight() -> int:
    now = datetime.now(UTC)
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((tomorrow - now).total_seconds()))


def stream_key(execution_id: Any) -> str:
    """Set (for an hour) on a run started from the editor: its AI answers are streamed."""
    return f"stream-run:{execution_id}"


def _store():
    return current_app.extensions["jobsprint.store"]


def _settings():
    return current_app.config["SETTINGS"]


class AiForRun:
    """The AI port of one run (its owner, its HTTP port with the owner's credentials)."""

    def __init__(self, http, owner_id: uuid.UUID, execution_id: str | None = None) -> None:
        self.http = http
        self.owner_id = owner_id
        self.execution_id = execution_id
        self._node_id: str | None = None

    def _streamed(self) -> bool:
        """Whether the run was started from the editor, which shows answers as they come."""
        return bool(self.execution_id) and bool(_store().exists(stream_key(self.execution_id)))

    # --- templates ------------------------------------------------------------------------

    def template(self, template_id: str) -> dict:
        """{system, prompt} of the owner's template (``name`` or ``name@version``; the
        newest version by default), read through the cache ``template:{id}``."""
        name, _, version = str(template_id).partition("@")

        def load() -> dict | None:
            stmt = select(PromptTemplate).where(
                PromptTemplate.user_id == self.owner_id, PromptTemplate.name == name,
                PromptTemplate.deleted_at.is_(None))
            if version.isdigit():
                stmt = stmt.where(PromptTemplate.version == int(version))
            found = db.session.scalars(stmt.order_by(PromptTemplate.version.desc())
                                       .limit(1)).first()
            db.session.commit()
            return None if found is None else {"system": found.system, "prompt": found.prompt,
                                               "version": found.version}

        found = cache.get_or_load(f"template:{self.owner_id}:{template_id}", load, 300)
        if found is None:
            raise NodeError(f"ai.chat: there is no prompt template {template_id!r}")
        return found

    # --- the request ----------------------------------------------------------------------

    def chat(self, *, provider: str, model: str, fallback_provider: str | None,
             fallback_model: str | None, template_id: str | None, system: str | None,
             prompt: str, conversation_key: str | None, temperature: float, max_tokens: int,
             json_schema: dict | None, idempotency_key: str, credential_id: str | None,
             deadline: datetime | None) -> dict:
        bases = dict(_settings().ai_providers)
        if provider not in bases:
            raise NodeError(f"ai.chat: unknown provider {provider!r} (configured: "
                            f"{', '.join(bases)})")
        validator = None
        if json_schema:
            try:
                Draft202012Validator.check_schema(json_schema)
            except SchemaError as exc:
                raise NodeError(f"ai.chat: the answer schema is invalid: {exc.message}") \
                    from None
            validator = Draft202012Validator(json_schema)
        system_message = {"role": "system", "content": system} if system else None
        user_message = {"role": "user", "content": prompt}
        history = self._history(conversation_key) if conversation_key else []
        messages = fit(system_message, history, user_message, window=WINDOW_TOKENS,
                       answer=max_tokens)
        self._node_id = idempotency_key.split(":")[1] if idempotency_key.count(":") >= 2 \
            else None
        attempts = [(provider, model)]
        if fallback_model:
            attempts.append((fallback_provider or provider, fallback_model))
        failures = []
        for used_provider, used_model in attempts:
            if used_provider not in bases:
                failures.append(f"{used_provider}: not configured")
                continue
            try:
                answer = self._answer(bases[used_provider], used_provider, used_model,
                                      messages, temperature, max_tokens, json_schema,
                                      validator, credential_id, deadline)
            except NodeError as exc:
                failures.append(f"{used_provider}/{used_model}: {exc}")
                continue
            answer["fallback"] = (used_provider, used_model) != (provider, model)
            self._remember(conversation_key, user_message, answer, messages, self._node_id)
            return answer
        raise NodeError("ai.chat: every model failed — " + "; ".join(failures))

    def _answer(self, base: str, provider: str, model: str, messages: list[dict],
                temperature: float, max_tokens: int, json_schema: dict | None, validator,
                credential_id: str | None, deadline: datetime | None) -> dict:
        body: dict[str, Any] = {"model": model, "messages": messages,
                                "temperature": temperature, "max_tokens": max_tokens}
        if json_schema:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "answer", "schema": json_schema, "strict": False}}
        digest = hashlib.sha256(json.dumps([provider, body], sort_keys=True).encode()).hexdigest()
        if temperature == 0:
            cached = cache.get(f"ai-cache:{digest}")
            if cached is not None:  # served from the cache: nothing spent
                return {**cached, "cached": True, "cost_estimate": 0.0}
        if budget_left(self.owner_id) == 0:
            raise NodeError("ai.chat: the AI budget for today is spent (JOBSPRINT_AI_DAILY_TOKENS)")
        self._take_turn(provider, deadline)
        began = time.monotonic()
        reply = None
        if validator is None and hasattr(self.http, "stream_lines") and self._streamed():
            reply = self._complete_streaming(base, body, credential_id, deadline)
        if reply is None:
            reply = self._complete(base, body, credential_id, deadline)
        self._spend(reply["usage"], provider, model)
        cost = estimate_cost(model, reply["usage"])
        parsed = None
        if validator is not None:
            parsed, problems = _check_json(reply["text"], validator)
            if problems:  # ask once more, saying what was wrong
                retry = {**body, "messages": [*messages, {
                    "role": "assistant", "content": reply["text"]}, {
                    "role": "user", "content": "Your answer did not match the JSON Schema: "
                                               + "; ".join(problems)
                                               + ". Answer again with only the JSON."}]}
                self._take_turn(provider, deadline)
                reply = self._complete(base, retry, credential_id, deadline)
                self._spend(reply["usage"], provider, model)
                cost += estimate_cost(model, reply["usage"])
                parsed, problems = _check_json(reply["text"], validator)
                if problems:
                    raise NodeError("the answer does not match the schema: "
                                    + "; ".join(problems))
        answer = {"text": reply["text"], "model": model, "provider": provider,
                  "finish_reason": reply["finish_reason"], "usage": reply["usage"],
                  "latency_ms": round((time.monotonic() - began) * 1000), "cached": False,
                  "cost_estimate": float(cost)}
        if validator is not None:
            answer["json"] = parsed
        if temperature == 0:
            cache.put(f"ai-cache:{digest}", {k: v for k, v in answer.items() if k != "cached"},
                      CACHE_TTL_S)
        return answer

    def _complete(self, base: str, body: dict, credential_id: str | None,
                  deadline: datetime | None) -> dict:
        response = self.http.request(
            method="POST", url=f"{base}/chat/completions", query={}, headers={},
            body_type="json", json=body, form={}, raw=None, timeout_s=60,
            follow_redirects=False, max_response_bytes=5_000_000,
            idempotency_key=uuid.uuid4().hex, credential_id=credential_id, deadline=deadline)
        status, data = response["status"], response.get("body")
        if status >= 400:  # 429 and 5xx were retried by the port; other 4xx are not
            message = ""
            if isinstance(data, dict):
                error = data.get("error")
                message = error.get("message") if isinstance(error, dict) else str(error or "")
            raise NodeError(f"the API answered {status}{': ' + message[:300] if message else ''}")
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise NodeError("the API's answer has no choices[0].message.content") from None
        usage = data.get("usage") or {}
        return {"text": text, "finish_reason": choice.get("finish_reason"),
                "usage": {"prompt_tokens": int(usage.get("prompt_tokens") or 0),
                          "completion_tokens": int(usage.get("completion_tokens") or 0)}}

    def _complete_streaming(self, base: str, body: dict, credential_id: str | None,
                            deadline: datetime | None) -> dict | None:
        """The answer as server-sent events, each piece published to the owner's live pages
        (batched every 50 ms) as it comes; None when the API refuses to stream (the caller
        then asks without streaming, with retries)."""
        from app.live import events
        from app.services.http_port import StreamRefused

        store = _store()
        text, pending, usage, finish = [], [], {}, None
        sent_at = time.monotonic()

        def flush() -> None:
            nonlocal sent_at
            if pending:
                events.publish_many(store, self.owner_id, [{
                    "type": "stream", "execution_id": self.execution_id,
                    "node_id": self._node_id, "text": "".join(pending)}])
                pending.clear()
            sent_at = time.monotonic()

        try:
            for line in self.http.stream_lines(
                    url=f"{base}/chat/completions", json={**body, "stream": True,
                                                          "stream_options": {
                                                              "include_usage": True}},
                    headers={"Accept": "text/event-stream"}, idempotency_key=uuid.uuid4().hex,
                    timeout_s=60, deadline=deadline, credential_id=credential_id):
                if not line or not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    continue
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") or ""
                    finish = choice.get("finish_reason") or finish
                    if piece:
                        text.append(piece)
                        pending.append(piece)
                if time.monotonic() - sent_at >= 0.05:
                    flush()
        except StreamRefused:
            return None
        flush()
        return {"text": "".join(text), "finish_reason": finish,
                "usage": {"prompt_tokens": int(usage.get("prompt_tokens") or 0),
                          "completion_tokens": int(usage.get("completion_tokens") or 0)}}

    def _spend(self, usage: dict, provider: str, model: str) -> None:
        """Count the tokens in the metrics and against the user's daily budget (when there is
        one)."""
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        metrics.ai_tokens(provider, model, prompt, completion)
        spent = prompt + completion
        if spent and _settings().ai_daily_tokens:
            key = _budget_key(self.owner_id)
            pipe = _store().pipeline(transaction=False)
            pipe.incrby(key, spent)
            pipe.expire(key, 2 * 86400)
            pipe.execute()

    def _take_turn(self, provider: str, deadline: datetime | None) -> None:
        """One request's worth from the user's and the provider's buckets, waiting for it
        until the deadline."""
        settings = _settings()
        for key, per_minute in ((f"ai-rate:user:{self.owner_id}", settings.ai_user_per_minute),
                                (f"ai-rate:provider:{provider}",
                                 settings.ai_provider_per_minute)):
            while True:
                wait = _store().eval(BUCKET, 1, key, per_minute, per_minute / 60.0,
                                     time.time())
                if not wait or float(wait) <= 0:
                    break
                left = (deadline - datetime.now(deadline.tzinfo)).total_seconds() \
                    if deadline else 30.0
                if float(wait) > left:
                    raise NodeError("ai.chat: rate limited (the limit frees a request in "
                                    f"{float(wait):.1f} s, after this node's timeout)")
                time.sleep(float(wait))

    # --- conversations --------------------------------------------------------------------

    def _conversation_key(self, key: str) -> str:
        return f"conversation:{self.owner_id}:{key}"

    def _history(self, key: str) -> list[dict]:
        cached = cache.get(self._conversation_key(key))
        if cached is not None:
            return cached
        rows = db.session.scalars(
            select(AIHistory).where(AIHistory.user_id == self.owner_id,
                                    AIHistory.conversation_key == key,
                                    AIHistory.deleted_at.is_(None))
            .order_by(AIHistory.created_at.desc()).limit(CONVERSATION_KEEP // 2)).all()
        db.session.commit()
        messages = []
        for row in reversed(rows):
            messages += [{"role": "user", "content": row.user_message},
                         {"role": "assistant", "content": row.assistant_message}]
        cache.put(self._conversation_key(key), messages, CACHE_TTL_S)
        return messages

    def _remember(self, key: str | None, user_message: dict, answer: dict,
                  sent: list[dict], node_id: str | None) -> None:
        db.session.add(AIHistory(
            user_id=self.owner_id, execution_id=uuid.UUID(self.execution_id)
            if self.execution_id else None, node_id=node_id, conversation_key=key,
            provider=answer["provider"], model=answer["model"],
            user_message=user_message["content"], assistant_message=answer["text"],
            finish_reason=answer.get("finish_reason"),
            prompt_tokens=answer["usage"]["prompt_tokens"],
            completion_tokens=answer["usage"]["completion_tokens"],
            latency_ms=answer.get("latency_ms") or 0, cached=answer.get("cached", False),
            cost_estimate=Decimal(str(answer.get("cost_estimate", 0)))))
        db.session.commit()
        if key:
            history = [m for m in sent if m["role"] != "system"]
            history.append({"role": "assistant", "content": answer["text"]})
            cache.put(self._conversation_key(key), history[-CONVERSATION_KEEP:], CACHE_TTL_S)


def estimate_cost(model: str, usage: dict) -> Decimal:
    """Dollars at the configured list price (JOBSPRINT_AI_PRICES) of ``model``, also when a
    router names it ``vendor/model``; 0 for a model without a price (a local one)."""
    prices = {name: (given, taken) for name, given, taken in _settings().ai_prices}
    price = prices.get(model) or prices.get(model.rsplit("/", 1)[-1])
    if price is None:
        return Decimal(0)
    per_token = (Decimal(str(price[0])) * usage.get("prompt_tokens", 0)
                 + Decimal(str(price[1])) * usage.get("completion_tokens", 0))
    return (per_token / 1_000_000).quantize(Decimal("0.000001"))


def _check_json(text: str, validator) -> tuple[Any, list[str]]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        return None, [f"not JSON ({exc.msg})"]
    problems = [f"{'/'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
                for error in validator.iter_errors(value)]
    return value, problems[:10]
