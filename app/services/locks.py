"""Per-workflow concurrency: at most ``settings.concurrency`` runs of a workflow at once.

A Redis sorted set ``wflock:{workflow_id}`` holds one member per running run (its execution
id), scored by when its hold expires (TTL 5 min, renewed while the run goes on). Expired
members are dropped on every acquire, so a slot whose holder vanished frees itself. A run
handed to another worker (its first worker died) finds its own member and takes its slot back
at once, rather than waiting out the TTL behind its own ghost. This is for efficiency only:
correctness comes from the run's fencing epoch in the database.
"""

from __future__ import annotations

import time

import redis

TTL_S = 300

_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local mine = redis.call('ZSCORE', KEYS[1], ARGV[4])
if mine or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  if mine then return 2 end
  return 1
end
return 0
"""

_RENEW = """
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
"""


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

    def acquire(self) -> bool:
        now = time.time()
        answer = self.store.eval(_ACQUIRE, 1, self.key, now, now + self.ttl_s, self.limit,
                                 self.token, int(self.ttl_s * 1000))
        self.held = bool(answer)  # 2: the slot was already this run's (an earlier delivery's)
        return self.held

    def renew(self) -> bool:
        if not self.held:
            return False
        self.held = bool(self.store.eval(
            _RENEW, 1, self.key, time.time() + self.ttl_s, self.token, int(self.ttl_s * 1000)))
        return self.held

    def release(self, check: str | None = None) -> bool:
        """Give the slot back. With ``check``, also say (same round trip) whether that key
        exists — the marker of runs waiting for a slot of this workflow."""
        held, self.held = self.held, False
        pipe = self.store.pipeline(transaction=False)
        if held:
            pipe.zrem(self.key, self.token)
        if check is not None:
            pipe.exists(check)
        answers = pipe.execute() if (held or check is not None) else []
        return bool(answers[-1]) if check is not None else False
