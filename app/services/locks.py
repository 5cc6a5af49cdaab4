"""Per-workflow concurrency: at most ``settings.concurrency`` runs of a workflow at once.

A Redis sorted set ``wflock:{workflow_id}`` holds one member per running run (its execution
id), scored by when its hold expires (TTL 5 min, renewed while the run goes on). Expired
members are dropped on every acquire, so a slot whose holder vanished frees itself. A run
handed to another worker (its first worker died) finds its own member and takes its slot back
at once, rather than waiting out the TTL behind its own ghost; its former holder, if it
finishes late, then leaves that hold alone (a hold is freed only if its expiry is still the
one its taker set). Holds may differ in TTL (a run on arrival holds its slot for seconds at
most): the key lives as long as its longest hold, never shorter. This is for efficiency
only: correctness comes from the run's fencing epoch in the database.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from redis.client import Pipeline
from redis.commands.core import Script
from redis.exceptions import NoScriptError

TTL_S = 300

_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local mine = redis.call('ZSCORE', KEYS[1], ARGV[4])
if mine or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[5]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[5])
  end
  if mine then return 2 end
  return 1
end
return 0
"""

# Only a hold that is still the renewer's (its expiry as the renewer last set it, ARGV[4]).
_RENEW = """
local expires = redis.call('ZSCORE', KEYS[1], ARGV[2])
if expires and tonumber(expires) == tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
  end
  return 1
end
return 0
"""


# Give back a hold only if it is still the one this holder took (its expiry, as set by its
# acquire or its last renewal): a run handed on takes its own member back with a new expiry
# (``mine`` above), and its former holder, finishing late, must not free it then.
# One call per workflow: ARGV holds (holder, expiry) pairs.
_RELEASE = """
local freed = 0
for i = 1, #ARGV, 2 do
  local expires = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if expires and tonumber(expires) == tonumber(ARGV[i + 1]) then
    freed = freed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return freed
"""

# Run by their SHA (EVALSHA), loaded when the server says it lacks one. (Through redis-py's
# Script objects a pipeline first asks SCRIPT EXISTS: a second round trip on every acquire,
# an eighth of a web process's CPU under W1 at c=10.)
_ACQUIRE_SCRIPT = Script(None, _ACQUIRE.encode())
_RENEW_SCRIPT = Script(None, _RENEW.encode())


class WorkflowSlot:
    """One run's claim on one of a workflow's concurrency slots."""

    def __init__(self, store: redis.Redis, workflow_id: str, limit: int, holder: str,
                 ttl_s: int = TTL_S) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.store = store
        self.key = f"wflock:{workflow_id}"
        self.limit = limit
        self.ttl_s = ttl_s
        self.token = holder
        self.held = False
        self.expires: float | None = None  # the hold's expiry (its score) while held

    def acquire(self) -> bool:
        return acquire_all(self.store, [self])[0]

    def renew(self) -> bool:
        if not self.held:
            return False
        expires = time.time() + self.ttl_s
        self.held = bool(_RENEW_SCRIPT(keys=[self.key], client=self.store, args=[
            expires, self.token, int(self.ttl_s * 1000), self.expires]))
        self.expires = expires if self.held else None
        return self.held

    def release(self, check: str | None = None) -> bool:
        """Give the slot back. With ``check``, also say (same round trip) whether that key
        exists — the marker of runs waiting for a slot of this workflow."""
        return any(release_all(self.store, [self], [check] if check is not None else []))


def acquire_all(store: redis.Redis, slots: list[WorkflowSlot]) -> list[bool]:
    """Try to take each slot, in order, in one round trip; says which were taken."""
    if not slots:
        return []
    now = time.time()
    calls = [(slot.key, now, now + slot.ttl_s, slot.limit, slot.token, int(slot.ttl_s * 1000))
             for slot in slots]
    for slot, call, answer in zip(slots, calls, _evalsha_each(store, _ACQUIRE_SCRIPT, calls),
                                  strict=True):
        slot.held = bool(answer)  # 2: the slot was already this run's (an earlier delivery's)
        slot.expires = call[2] if slot.held else None
    return [slot.held for slot in slots]


def _evalsha_each(store: redis.Redis, script: Script, calls: list[tuple]) -> list:
    """``script`` once per call (a key, then its arguments), in one round trip; if the server
    lacks the script (a restart, SCRIPT FLUSH), it is loaded and the pipeline sent again
    (the script has not run: a pipeline stops at nothing, but each EVALSHA failed alike)."""
    if len(calls) == 1:  # no pipeline: a quarter less CPU for the one round trip
        key, *args = calls[0]
        return [script(keys=[key], args=args, client=store)]  # EVALSHA, loaded if missing
    for attempt in (1, 2):
        pipe = store.pipeline(transaction=False)
        for key, *args in calls:
            pipe.evalsha(script.sha, 1, key, *args)
        answers = pipe.execute(raise_on_error=False)
        if not any(isinstance(a, NoScriptError) for a in answers):
            break
        if attempt == 2:
            raise next(a for a in answers if isinstance(a, NoScriptError))
        store.script_load(script.script)
    for answer in answers:
        if isinstance(answer, Exception):
            raise answer
    return answers


def release_all(store: redis.Redis, slots: list[WorkflowSlot], checks: list[str],
                also: Callable[[Pipeline], None] | None = None) -> list[bool]:
    """Give back the held ``slots`` (each only if its hold is still the one it took) and say
    whether each key of ``checks`` exists, in one round trip; ``also`` may add commands of its
    own to that pipeline."""
    pipe = store.pipeline(transaction=False)
    holds: dict[str, list] = {}
    for slot in {id(slot): slot for slot in slots}.values():
        if slot.held:
            slot.held = False
            holds.setdefault(slot.key, []).extend((slot.token, slot.expires))
    for key, pairs in holds.items():
        pipe.eval(_RELEASE, 1, key, *pairs)
    if also is not None:
        also(pipe)
    first_check = len(pipe)
    for key in checks:
        pipe.exists(key)
    if not len(pipe):
        return []
    return [bool(answer) for answer in pipe.execute()[first_check:]]
