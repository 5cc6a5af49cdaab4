"""The per-process hub: one pub/sub connection, fanned out to this process's sockets.

Every web process holds ONE pub/sub connection on a background thread, however many sockets
it serves, subscribed to the channel (``events:<user id>``) of each user with a socket or a
waiter here: events of users nobody watches in this process never reach it (a webhook flood
whose runs nobody watches costs the web process nothing here). A user's channel is subscribed
when their first inbox registers (``register`` returns once Redis confirmed it, so nothing
published after that is missed) and stays subscribed ``LINGER_S`` after their last inbox left,
so a page reload or a stream of webhook waiters does not subscribe again each time. The hub
thread learns of a new user at once through a PUBLISH to its own control channel.

A message is parsed once and offered to each of that user's inboxes (``Subscriber``): bounded
queues that never block the hub. An inbox that overflows is marked dropped and its socket shut
down, so one slow client costs only itself; the browser's ws extension reconnects and gets the
state afresh.

The hub starts lazily, with the first socket (so it never runs in a gunicorn master before
the fork). When the store goes away it retries with backoff (0.1 s doubling to 5 s, with
jitter) and never raises into the web process; once every wanted channel is subscribed again
it asks every inbox to resync, because events published while it was away are lost: each
socket then re-sends the current state from the database. The embedded default's in-process
store (fakeredis) has the same pub/sub, delivered across threads, so both run modes take this
one code path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import redis

log = logging.getLogger(__name__)

PREFIX = "events:"  # + user id: what app.live.events publishes to
CONTROL_PREFIX = "events-hub:"  # + a hub's own id: wakes that hub's thread
LINGER_S = 30.0  # a user's channel stays subscribed this long after its last inbox closed


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
                 wants: Callable[[dict], bool] | None = None,
                 execution_id: Any = None) -> None:
        self.user_id = str(user_id)
        self.limit = limit
        self.on_drop = on_drop
        # Only the events of this run (the hub looks them up by run: many waiters of one user
        # cost one lookup per event, not one call each), and of those, what ``wants`` accepts.
        self.execution_id = None if execution_id is None else str(execution_id)
        self.wants = wants  # None: every event (of the run, or of the user)
        self._items: deque[Event] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._resync = False
        self.dropped = False
        self.closed = False
        self.unconfirmed = False  # registered before its channel was confirmed (see Hub)

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
    """The process's subscription to the channels of the users it serves; see the module
    docstring."""

    def __init__(self, store: redis.Redis, *, backoff_min_s: float = 0.1,
                 backoff_max_s: float = 5.0, ping_s: float = 15.0,
                 linger_s: float = LINGER_S) -> None:
        self.store = store
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.ping_s = ping_s
        self.linger_s = linger_s
        self._users: dict[str, set[Subscriber]] = {}  # every inbox, by user
        self._watching: dict[str, set[Subscriber]] = {}  # inboxes of all a user's events
        self._by_run: dict[str, set[Subscriber]] = {}  # inboxes of one run's events
        # per user whose channel is wanted: set once its subscription is confirmed on the
        # current connection (cleared when the connection goes)
        self._confirmed: dict[str, threading.Event] = {}
        self._idle_since: dict[str, float] = {}  # users without inboxes, still subscribed
        self._dirty = False  # the wanted channels changed since the hub thread last looked
        self._requested: set[str] = set()  # users subscribed on the current connection
        self._control = f"{CONTROL_PREFIX}{uuid.uuid4().hex}"
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.ready = threading.Event()  # connected and listening right now
        self.connects = 0  # successful subscriptions so far (1 + reconnects)
        self.delivered = 0

    # --- sockets --------------------------------------------------------------------------

    def register(self, subscriber: Subscriber, *, wait_s: float = 2.0) -> bool:
        """Route the user's events to ``subscriber`` from now on. Returns whether the user's
        channel is subscribed (waiting up to ``wait_s`` for a new one); if not, the socket
        still serves the database's state and is told to resync once the hub is back."""
        user = subscriber.user_id
        with self._lock:
            self._users.setdefault(user, set()).add(subscriber)
            audience, key = self._audience(subscriber)
            audience.setdefault(key, set()).add(subscriber)
            self._idle_since.pop(user, None)
            confirmed = self._confirmed.get(user)
            new_channel = confirmed is None
            if new_channel:
                confirmed = self._confirmed[user] = threading.Event()
                self._dirty = True
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="live-hub",
                                                daemon=True)
                self._thread.start()
        if confirmed.is_set():
            return True
        if new_channel:  # else its subscription is on its way (or waits for a reconnect)
            self._wake()
        if confirmed.wait(wait_s):
            return True
        with self._lock:
            if confirmed.is_set():
                return True
            # It goes on without the channel (its socket sends the database's state now);
            # when the channel is confirmed, it is told to resync: nothing published in
            # between is missed.
            subscriber.unconfirmed = True
        return False

    def unregister(self, subscriber: Subscriber) -> None:
        subscriber.close()
        with self._lock:
            audience, key = self._audience(subscriber)
            if (group := audience.get(key)) is not None:
                group.discard(subscriber)
                if not group:
                    del audience[key]
            subscribers = self._users.get(subscriber.user_id)
            if subscribers is not None:
                subscribers.discard(subscriber)
                if not subscribers:
                    del self._users[subscriber.user_id]
                    self._idle_since[subscriber.user_id] = time.monotonic()

    def _audience(self, subscriber: Subscriber) -> tuple[dict[str, set[Subscriber]], str]:
        if subscriber.execution_id is not None:
            return self._by_run, subscriber.execution_id
        return self._watching, subscriber.user_id

    def sockets(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._users.values())

    def channels(self) -> int:
        """Users whose channel this process wants (with inboxes, or lingering)."""
        with self._lock:
            return len(self._confirmed)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.ready.clear()

    def _wake(self) -> None:
        """Have the hub thread look at the wanted channels now (it may be waiting for a
        message): one PUBLISH to its own control channel."""
        with contextlib.suppress(redis.RedisError):
            self.store.publish(self._control, "")

    # --- the subscription thread ----------------------------------------------------------

    def _run(self) -> None:
        delay = self.backoff_min_s
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self.store.pubsub()
                self._subscribe_all(pubsub)
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
                with self._lock:
                    for confirmed in self._confirmed.values():
                        confirmed.clear()
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()
            if self._stop.wait(delay * random.uniform(0.8, 1.2)):
                break
            delay = min(self.backoff_max_s, delay * 2)

    def _wanted(self, now: float) -> set[str]:
        """The users whose channel must be subscribed; forgets those that lingered long
        enough."""
        with self._lock:
            self._dirty = False
            for user, since in list(self._idle_since.items()):
                if now - since >= self.linger_s:
                    del self._idle_since[user]
                    self._confirmed.pop(user, None)
            return set(self._confirmed)

    def _subscribe_all(self, pubsub) -> None:
        """A new connection: the control channel and every wanted user's, each confirmed
        before the hub counts as subscribed (a resync must not run ahead of them)."""
        self._requested = self._wanted(time.monotonic())
        channels = [self._control, *(PREFIX + user for user in self._requested)]
        pubsub.subscribe(*channels)
        waiting = set(channels)
        deadline = time.monotonic() + 10
        while waiting and time.monotonic() < deadline and not self._stop.is_set():
            message = pubsub.get_message(timeout=1.0)
            if message and message.get("type") == "subscribe":
                waiting.discard(message["channel"])
                self._confirm(message["channel"])
        if waiting:
            raise redis.ConnectionError("no subscription confirmation")

    def _confirm(self, channel: str) -> None:
        if not channel.startswith(PREFIX):
            return
        user = channel[len(PREFIX):]
        with self._lock:
            confirmed = self._confirmed.get(user)
            if confirmed is not None:
                confirmed.set()
            late = [s for s in self._users.get(user, ()) if s.unconfirmed]
            for subscriber in late:
                subscriber.unconfirmed = False
        for subscriber in late:
            subscriber.resync()

    def _sync(self, pubsub, now: float) -> None:
        """Subscribe the channels newly wanted, unsubscribe those no longer wanted."""
        wanted = self._wanted(now)
        if new := wanted - self._requested:
            pubsub.subscribe(*(PREFIX + user for user in new))
        if gone := self._requested - wanted:
            pubsub.unsubscribe(*(PREFIX + user for user in gone))
        self._requested = wanted

    def _listen(self, pubsub) -> None:
        last_heard = last_ping = last_sync = time.monotonic()
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=1.0)
            now = time.monotonic()
            if self._dirty or now - last_sync >= 1.0:
                self._sync(pubsub, now)
                last_sync = now
            if message is None:
                if now - last_ping >= self.ping_s:
                    pubsub.ping()  # a half-open connection shows up as silence after this
                    last_ping = now
                if now - last_heard > 3 * self.ping_s:
                    raise redis.ConnectionError("no answer to the pub/sub ping")
                continue
            last_heard = now
            kind = message.get("type")
            if kind == "message" and message["channel"] != self._control:
                self._dispatch(message["channel"], message["data"], now)
            elif kind == "subscribe":
                self._confirm(message["channel"])

    def _dispatch(self, channel: str, data: str, now: float) -> None:
        user_id = channel[len(PREFIX):] if channel.startswith(PREFIX) else None
        with self._lock:
            if user_id not in self._users:
                return
        try:
            payload = json.loads(data)
        except (TypeError, ValueError):
            log.warning("live: ignoring a malformed event on %s", channel)
            return
        # One event, or several of this user's in order (app.live.events).
        for item in payload if isinstance(payload, list) else [payload]:
            if isinstance(item, dict):
                self._offer(user_id, item, now)

    def _offer(self, user_id: str, payload: dict, now: float) -> None:
        with self._lock:
            run = self._by_run.get(payload.get("execution_id"), ())
            subscribers = [*self._watching.get(user_id, ()),
                           *(s for s in run if s.user_id == user_id)]
        if not subscribers:
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
