"""The per-process hub: one pub/sub subscription, fanned out to this process's sockets.

Every web process holds ONE subscription (the pattern ``events:*``) on a background thread,
however many sockets it serves. A message for a user with no socket here is dropped after a
dictionary lookup, before its JSON is parsed. A message for a user with sockets is parsed once
and offered to each of that user's inboxes (``Subscriber``): bounded queues that never block
the hub. An inbox that overflows is marked dropped and its socket shut down, so one slow
client costs only itself; the browser's ws extension reconnects and gets the state afresh.

The hub starts lazily, with the first socket (so it never runs in a gunicorn master before
the fork). When the store goes away it retries with backoff (0.1 s doubling to 5 s, with
jitter) and never raises into the web process; once subscribed again it asks every inbox to
resync, because events published while it was away are lost: each socket then re-sends the
current state from the database. The embedded default's in-process store (fakeredis) has the
same pub/sub, delivered across threads, so both run modes take this one code path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import redis

log = logging.getLogger(__name__)

PATTERN = "events:*"
PREFIX = "events:"


class Event:
    """One published event, shared by every inbox it is offered to. ``memo`` lets the first
    socket that needs something derived from it (a database row, a rendered fragment) compute
    it once for all the others."""

    __slots__ = ("data", "received_at", "_memo", "_lock")

    def __init__(self, data: dict, received_at: float) -> None:
        self.data = data
        self.received_at = received_at
        self._memo: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def memo(self, key: Any, compute: Callable[[], Any]) -> Any:
        with self._lock:  # single flight: 1,000 sockets of one user, one database read
            if key not in self._memo:
                self._memo[key] = compute()
            return self._memo[key]


class Subscriber:
    """One socket's (or waiter's) inbox: events for its user, a resync request, or the news it
    must end."""

    def __init__(self, user_id: Any, *, limit: int = 256,
                 on_drop: Callable[[], None] | None = None,
                 wants: Callable[[dict], bool] | None = None) -> None:
        self.user_id = str(user_id)
        self.limit = limit
        self.on_drop = on_drop
        self.wants = wants  # None: every event of the user
        self._items: deque[Event] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._resync = False
        self.dropped = False
        self.closed = False

    def offer(self, event: Event) -> None:
        """Called by the hub thread; never blocks on the socket."""
        if self.wants is not None and not self.wants(event.data):
            return
        with self._cond:
            if self.dropped or self.closed:
                return
            if len(self._items) >= self.limit:
                self.dropped = True
                self._items.clear()
                self._cond.notify()
            else:
                self._items.append(event)
                self._cond.notify()
                return
        log.info("live: dropping a socket of user %s that is %d events behind",
                 self.user_id, self.limit)
        if self.on_drop is not None:
            with contextlib.suppress(Exception):
                self.on_drop()  # unblocks a send stuck on the client's full buffer

    def resync(self) -> None:
        with self._cond:
            self._resync = True
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify()

    def poke(self) -> None:
        """Wake the socket's thread to look at its socket (closed? a message?)."""
        with self._cond:
            self._cond.notify()

    def discard_pending(self) -> None:
        """Forget what arrived so far (the state about to be read covers it)."""
        with self._cond:
            self._items.clear()
            self._resync = False

    def wait(self, timeout: float | None) -> tuple[list[Event], bool]:
        """Block until something arrives (or ``timeout``): the events, and whether the state
        must be sent again. Returns at once when the inbox is closed or dropped."""
        with self._cond:
            if not (self._items or self._resync or self.closed or self.dropped):
                self._cond.wait(timeout)
            items = list(self._items)
            self._items.clear()
            resync, self._resync = self._resync, False
            return items, resync


class Hub:
    """One pub/sub subscription for the process; see the module docstring."""

    def __init__(self, store: redis.Redis, *, backoff_min_s: float = 0.1,
                 backoff_max_s: float = 5.0, ping_s: float = 15.0) -> None:
        self.store = store
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.ping_s = ping_s
        self._users: dict[str, set[Subscriber]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.ready = threading.Event()  # subscribed right now
        self.connects = 0  # successful subscriptions so far (1 + reconnects)
        self.delivered = 0

    # --- sockets --------------------------------------------------------------------------

    def register(self, subscriber: Subscriber, *, wait_s: float = 2.0) -> bool:
        """Route the user's events to ``subscriber`` from now on. Returns whether the hub is
        subscribed (waiting up to ``wait_s`` when it is just starting); if not, the socket
        still serves the database's state and is told to resync once the hub is back."""
        with self._lock:
            self._users.setdefault(subscriber.user_id, set()).add(subscriber)
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="live-hub",
                                                daemon=True)
                self._thread.start()
        return self.ready.wait(wait_s)

    def unregister(self, subscriber: Subscriber) -> None:
        subscriber.close()
        with self._lock:
            subscribers = self._users.get(subscriber.user_id)
            if subscribers is not None:
                subscribers.discard(subscriber)
                if not subscribers:
                    del self._users[subscriber.user_id]

    def sockets(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._users.values())

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.ready.clear()

    # --- the subscription thread ----------------------------------------------------------

    def _run(self) -> None:
        delay = self.backoff_min_s
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self.store.pubsub()
                pubsub.psubscribe(PATTERN)
                self._await_subscribed(pubsub)
                self.connects += 1
                self.ready.set()
                if self.connects > 1:
                    log.info("live: subscribed again; %d sockets re-send their state",
                             self.sockets())
                    self._resync_all()
                delay = self.backoff_min_s
                self._listen(pubsub)
            except redis.RedisError as exc:
                if self.ready.is_set() or self.connects == 0:
                    log.warning("live: event subscription lost (%s); retrying", exc)
            except Exception:  # noqa: BLE001 - the hub must outlive any one bad message
                log.exception("live: hub failed; restarting it")
            finally:
                self.ready.clear()
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()
            if self._stop.wait(delay * random.uniform(0.8, 1.2)):
                break
            delay = min(self.backoff_max_s, delay * 2)

    def _await_subscribed(self, pubsub) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not self._stop.is_set():
            message = pubsub.get_message(timeout=1.0)
            if message and message.get("type") == "psubscribe":
                return
        raise redis.ConnectionError("no subscription confirmation")

    def _listen(self, pubsub) -> None:
        last_heard = last_ping = time.monotonic()
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=1.0)
            now = time.monotonic()
            if message is None:
                if now - last_ping >= self.ping_s:
                    pubsub.ping()  # a half-open connection shows up as silence after this
                    last_ping = now
                if now - last_heard > 3 * self.ping_s:
                    raise redis.ConnectionError("no answer to the pub/sub ping")
                continue
            last_heard = now
            if message.get("type") == "pmessage":
                self._dispatch(message["channel"], message["data"], now)

    def _dispatch(self, channel: str, data: str, now: float) -> None:
        user_id = channel[len(PREFIX):] if channel.startswith(PREFIX) else None
        with self._lock:
            subscribers = list(self._users.get(user_id, ()))
        if not subscribers:
            return
        try:
            payload = json.loads(data)
        except (TypeError, ValueError):
            log.warning("live: ignoring a malformed event on %s", channel)
            return
        if not isinstance(payload, dict):
            return
        event = Event(payload, now)
        for subscriber in subscribers:
            subscriber.offer(event)
        self.delivered += len(subscribers)

    def _resync_all(self) -> None:
        with self._lock:
            everyone = [s for subscribers in self._users.values() for s in subscribers]
        for subscriber in everyone:
            subscriber.resync()


def hub_for(app) -> Hub:
    """The app's hub (created on first use, started by its first socket)."""
    hub = app.extensions.get("jobsprint.hub")
    if hub is None:
        with _hub_lock:
            hub = app.extensions.get("jobsprint.hub")
            if hub is None:
                hub = app.extensions["jobsprint.hub"] = Hub(app.extensions["jobsprint.store"])
    return hub


_hub_lock = threading.Lock()
