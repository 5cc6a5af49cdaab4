"""The WebSocket routes: ``/ws/executions/<id>`` (one run, its nodes) and ``/ws/dashboard``
(the user's latest runs), signed in by the browser's session cookie.

Each socket, in this order: checks the user (anonymous, or another user's run: closed with
1008 before anything is sent), registers its inbox with the process's hub (so nothing
published from now on is missed), reads the current state from the database and sends it,
then sends each event as it comes. Everything sent is an HTML fragment with ``hx-swap-oob``
that the htmx ws extension swaps in; a fragment carries the whole state of its element, so
sending one twice, or an older one just before a newer one, ends in the right picture. After a
hub reconnect (events may have been lost) the socket sends the whole state again; a browser
that reconnects gets it too, because every connect starts with it.

flask-sock holds one thread per socket (plus simple-websocket's reader thread): the thread
waits on its inbox, never polls, and holds no database connection while it waits.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import uuid
from collections import deque
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import redis
from flask import Blueprint, Flask, current_app, render_template, request
from flask_login import current_user
from simple_websocket import ConnectionClosed
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from app.db import db
from app.errors import NotFound
from app.extensions import sock
from app.live.hub import Event, Subscriber, hub_for
from app.models import FINAL_STATES, Execution, Workflow, WorkflowVersion
from app.services import executions, run_stats, sessions

log = logging.getLogger(__name__)

bp = Blueprint("live", __name__)

POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013
DASHBOARD_ROWS = 50
INBOX_LIMIT = 1024  # events a socket may fall behind before it is dropped
IDLE_WAKE_S = 30.0  # how often an idle socket looks at itself (closed? signed out?)
SESSION_CHECK_S = 60.0


def init_app(app: Flask) -> None:
    # Pings find dead peers (and keep proxies that close idle connections at bay); a client
    # has nothing to say on these sockets, so its messages are capped small and ignored.
    app.config.setdefault("SOCK_SERVER_OPTIONS", {"ping_interval": 25,
                                                  "max_message_size": 16 * 1024})
    app.register_blueprint(bp)


# --- the routes -----------------------------------------------------------------------------

@sock.route("/ws/executions/<execution_id>", bp=bp)
def execution_socket(ws, execution_id: str):
    user = _signed_in(ws)
    if user is None:
        return
    try:
        with _reading():
            execution = executions.get_owned(user.id, execution_id)
            view = ExecutionView(execution.id, user.id)
    except NotFound:
        ws.close(reason=POLICY_VIOLATION, message="no such run")
        return
    except SQLAlchemyError as exc:
        log.warning("live: cannot read run %s: %s", execution_id, type(exc).__name__)
        ws.close(reason=TRY_AGAIN_LATER, message="try again")
        return
    _serve(ws, user, view)


@sock.route("/ws/dashboard", bp=bp)
def dashboard_socket(ws):
    user = _signed_in(ws)
    if user is None:
        return
    try:
        with _reading():
            filters = run_stats.Filters.parse(request.args, user.id)
    except SQLAlchemyError as exc:
        log.warning("live: cannot read the dashboard's filters: %s", type(exc).__name__)
        ws.close(reason=TRY_AGAIN_LATER, message="try again")
        return
    _serve(ws, user, DashboardView(user.id, filters))


def _signed_in(ws):
    """The session cookie's user, or None after closing the socket with 1008. A handshake
    from another site's page (its ``Origin`` names another host) is refused the same way."""
    origin = request.headers.get("Origin")
    if origin and urlsplit(origin).netloc != request.host:
        ws.close(reason=POLICY_VIOLATION, message="cross-site socket")
        return None
    try:
        with _reading():
            user = (current_user._get_current_object() if current_user.is_authenticated
                    else None)
    except (redis.RedisError, SQLAlchemyError) as exc:
        log.warning("live: cannot sign a socket in: %s", type(exc).__name__)
        ws.close(reason=TRY_AGAIN_LATER, message="try again")
        return None
    if user is None:
        ws.close(reason=POLICY_VIOLATION, message="sign in first")
    return user


@contextlib.contextmanager
def _reading():
    """A short database read: the socket's thread gives its connection back right after."""
    try:
        yield
    finally:
        db.remove()


# --- serving one socket ---------------------------------------------------------------------

class _Signal(threading.Event):
    """Stands in for the socket's own event (set by its reader thread on a message or on
    close) so that the serving thread, asleep on its inbox, wakes up too."""

    def __init__(self, subscriber: Subscriber) -> None:
        super().__init__()
        self.subscriber = subscriber

    def set(self) -> None:
        super().set()
        self.subscriber.poke()


def _shutdown(ws) -> None:
    """Drop a socket from another thread: a send stuck on a full buffer fails at once."""
    with contextlib.suppress(OSError):
        ws.sock.shutdown(socket.SHUT_RDWR)


def _serve(ws, user, view) -> None:
    hub = hub_for(current_app._get_current_object())
    subscriber = Subscriber(user.id, limit=INBOX_LIMIT, on_drop=lambda: _shutdown(ws))
    ws.event = _Signal(subscriber)
    session_id = getattr(user, "session_id", None)
    check_session_at = time.monotonic() + SESSION_CHECK_S
    hub.register(subscriber)
    try:
        subscriber.discard_pending()  # the state read next covers what came before it
        if not _send(ws, view.snapshot()):
            return
        while ws.connected and not subscriber.dropped:
            events, resync = subscriber.wait(getattr(view, "wake_s", None) or IDLE_WAKE_S)
            ws.input_buffer.clear()  # nothing a client says here is read
            if not ws.connected or subscriber.dropped:
                break
            if resync:
                subscriber.discard_pending()
                if not _send(ws, view.snapshot()):
                    return
                continue
            parts = [part for event in events if (part := view.render(event))]
            if (later := getattr(view, "tick", None)) and (part := later()):
                parts.append(part)
            if parts:
                ws.send("".join(parts))
            if session_id and time.monotonic() >= check_session_at:
                check_session_at = time.monotonic() + SESSION_CHECK_S
                if not sessions.is_open(user.id, session_id):
                    ws.close(reason=POLICY_VIOLATION, message="signed out")
                    return
    except (ConnectionClosed, OSError):
        pass
    except (redis.RedisError, SQLAlchemyError) as exc:
        # The database (or store) went away mid-socket: the browser reconnects and resyncs.
        log.warning("live: closing a socket: %s", type(exc).__name__)
        with contextlib.suppress(ConnectionClosed, OSError):
            ws.close(reason=TRY_AGAIN_LATER, message="try again")
    finally:
        hub.unregister(subscriber)
        db.remove()


def _send(ws, fragment: str | None) -> bool:
    if fragment is None:  # the run is gone
        ws.close(reason=POLICY_VIOLATION, message="no such run")
        return False
    ws.send(fragment)
    return True


# --- what each socket shows -----------------------------------------------------------------

def _duration(started: datetime | None, finished: datetime | None) -> str:
    if started is None or finished is None:
        return ""
    seconds = max(0.0, (finished - started).total_seconds())
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def run_row(execution_id, *, status: str | None = None) -> dict | None:
    """What a dashboard row shows of one run (``status`` overrides the stored one)."""
    row = db.session.execute(
        select(Execution.id, Execution.status, Execution.created_at, Execution.started_at,
               Execution.finished_at, Execution.deleted_at, Execution.workflow_id,
               Workflow.name)
        .join(Workflow, Workflow.id == Execution.workflow_id)
        .where(Execution.id == execution_id)).one_or_none()
    if row is None or row.deleted_at is not None:
        return None
    return _row_dict(row, status)


def _row_dict(row, status: str | None = None) -> dict:
    status = status or row.status
    final = status in FINAL_STATES
    return {"id": str(row.id), "workflow_name": row.name, "status": status,
            "workflow_id": str(row.workflow_id), "created_at": row.created_at,
            "started_at": row.started_at or row.created_at,
            "duration": _duration(row.started_at, row.finished_at) if final else ""}


def latest_rows(user_id, limit: int = DASHBOARD_ROWS,
                filters: run_stats.Filters | None = None) -> list[dict]:
    stmt = (select(Execution.id, Execution.status, Execution.created_at, Execution.started_at,
                   Execution.finished_at, Execution.workflow_id, Workflow.name)
            .join(Workflow, Workflow.id == Execution.workflow_id)
            .where(Execution.user_id == user_id, Execution.deleted_at.is_(None))
            .order_by(Execution.created_at.desc(), Execution.id.desc()).limit(limit))
    if filters is not None:
        stmt = filters.where(stmt)
    return [_row_dict(row) for row in db.session.execute(stmt).all()]


def summary(user_id, filters: run_stats.Filters) -> dict:
    """The dashboard's counts per status and its 24-hour chart."""
    counts = run_stats.status_counts(user_id, filters)
    hours = run_stats.hourly(user_id, filters)
    return {"counts": counts, "hours": hours, "filters": filters,
            "peak": max([h["runs"] for h in hours] + [1])}


class _Recent:
    """Values computed at most once per ``ttl_s`` per key in this process, single flight: a
    thousand dashboards of one user with the same filters read the summary once."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._entries: dict = {}  # key -> [computed_at, value, lock]

    def get(self, key, compute, not_before: float = 0.0):
        """The value for ``key`` computed at or after ``not_before`` (and within ``ttl_s``),
        computing it if there is none."""
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                for old in [k for k, e in self._entries.items() if now - e[0] > 60]:
                    del self._entries[old]
                entry = self._entries[key] = [0.0, None, threading.Lock()]
        with entry[2]:
            if (entry[1] is None or entry[0] < not_before
                    or time.monotonic() - entry[0] > self.ttl_s):
                entry[1] = compute()
                entry[0] = time.monotonic()
            return entry[1]


SUMMARY_EVERY_S = 1.0
_summaries = _Recent(SUMMARY_EVERY_S)


class DashboardView:
    """The ``#executions-body`` table (the latest runs that match the filters, newest first)
    and ``#dashboard-summary`` (counts per status, runs per hour), re-read at most once a
    second while runs change."""

    def __init__(self, user_id, filters: run_stats.Filters | None = None) -> None:
        self.user_id = user_id
        self.filters = filters or run_stats.Filters()
        self.shown: deque[str] = deque()  # ids in the table, newest first
        self.summary_due = False
        self.due_since = 0.0  # when the first change not yet in the summary came
        self.summary_at = 0.0
        self.wake_s: float | None = None

    def snapshot(self) -> str:
        with _reading():
            rows = latest_rows(self.user_id, filters=self.filters)
            state = summary(self.user_id, self.filters)
        self.shown = deque(row["id"] for row in rows)
        self.summary_due, self.summary_at = False, time.monotonic()
        return (render_template("partials/live/_rows.html", rows=rows, oob=True)
                + render_template("partials/live/_summary.html", oob=True, **state))

    def tick(self) -> str | None:
        """The summary again, once runs changed and a second has passed since the last."""
        if not self.summary_due:
            self.wake_s = None
            return None
        if time.monotonic() - self.summary_at < SUMMARY_EVERY_S:
            self.wake_s = SUMMARY_EVERY_S  # come back for it
            return None
        self.summary_due, self.summary_at, self.wake_s = False, time.monotonic(), None
        return _summaries.get((str(self.user_id), self.filters), self._render_summary,
                              not_before=self.due_since)

    def _render_summary(self) -> str:
        with _reading():
            return render_template("partials/live/_summary.html", oob=True,
                                   **summary(self.user_id, self.filters))

    def render(self, event: Event) -> str | None:
        data = event.data
        if data.get("type") != "run" or not data.get("execution_id"):
            return None
        execution_id = str(data["execution_id"])
        status = data.get("status")
        if not self.summary_due:
            self.summary_due, self.due_since = True, event.received_at

        def load():
            with _reading():
                return run_row(_uuid(execution_id), status=status)

        row = event.memo("row", load)
        if row is None:
            return None
        if not self.filters.matches(row):
            if execution_id in self.shown:  # it left the filter (e.g. no longer running)
                self.shown.remove(execution_id)
                return render_template("partials/live/_run_row_delete.html",
                                       execution_id=execution_id)
            return None
        if execution_id in self.shown:
            return event.memo("row-replace", lambda: render_template(
                "partials/live/_run_row.html", row=row, oob="true"))
        self.shown.appendleft(execution_id)
        parts = [event.memo("row-insert", lambda: render_template(
            "partials/live/_run_row_insert.html", row=row))]
        while len(self.shown) > DASHBOARD_ROWS:
            parts.append(render_template("partials/live/_run_row_delete.html",
                                         execution_id=self.shown.pop()))
        return "".join(parts)


class ExecutionView:
    """One run: its status element and one element per node."""

    def __init__(self, execution_id: uuid.UUID, user_id) -> None:
        self.execution_id = execution_id
        self.user_id = user_id
        self.key = str(execution_id)
        self.known: set[str] = set()
        self._planned: list[str] | None = None

    def snapshot(self) -> str | None:
        with _reading():
            try:
                execution = executions.get_owned(self.user_id, self.execution_id)
            except NotFound:
                return None
            if self._planned is None:
                self._planned = planned_nodes(execution)
            state = execution_state(execution, self._planned)
        self.known = {node["key"] for node in state["nodes"]}
        return render_template("partials/live/_execution.html", oob=True, **state)

    def render(self, event: Event) -> str | None:
        data = event.data
        if str(data.get("execution_id")) != self.key:
            return None
        if data.get("type") == "run":
            status = str(data.get("status"))
            if status in FINAL_STATES:
                return self.snapshot() or ""  # with its timestamps, error and every node
            return event.memo("run", lambda: render_template(
                "partials/live/_run_status.html", execution_id=self.key, status=status,
                oob=True))
        if data.get("type") == "stream" and data.get("node_id"):  # an AI answer, as it comes
            return event.memo("stream", lambda: render_template(
                "partials/live/_stream.html", execution_id=self.key,
                node_id=str(data["node_id"]), text=str(data.get("text") or "")))
        if data.get("type") != "node" or not data.get("node_id"):
            return None
        node = {"key": str(data["node_id"]), "status": str(data.get("status")),
                "attempt": data.get("attempt") or 1, "error": data.get("error")}
        if node["key"] in self.known:
            part = event.memo("node", lambda: render_template(
                "partials/live/_node.html", execution_id=self.key, node=node, oob="true"))
        else:
            self.known.add(node["key"])  # a split's item: a new element at the end
            part = render_template("partials/live/_node_insert.html", execution_id=self.key,
                                   node=node)
        return part + (event.memo("timeline", self._timeline) or "")

    def _timeline(self) -> str | None:
        with _reading():
            try:
                execution = executions.get_owned(self.user_id, self.execution_id)
            except NotFound:
                return None
            return render_template("partials/live/_timeline.html", oob=True,
                                   execution_id=self.key,
                                   timeline=timeline(execution,
                                                     executions.node_rows(execution.id)))


def planned_nodes(execution: Execution) -> list[str]:
    """The node ids of the run's workflow version, in definition order."""
    definition = db.session.scalar(
        select(WorkflowVersion.definition).where(
            WorkflowVersion.workflow_id == execution.workflow_id,
            WorkflowVersion.version == execution.workflow_version)) or {}
    return [str(node.get("id")) for node in definition.get("nodes", []) if node.get("id")]


TIMELINE_LEFT, TIMELINE_WIDTH, TIMELINE_ROW = 150, 430, 22


def timeline(execution: Execution, rows: list) -> dict:
    """One bar per node that started, from its start to its finish (or now), on one scale
    from the run's start: what the timeline's SVG draws."""
    started = [r for r in rows if r.started_at is not None]
    if not started:
        return {"bars": [], "height": 0, "span": ""}
    origin = min([execution.started_at or started[0].started_at]
                 + [r.started_at for r in started])
    now = datetime.now(origin.tzinfo)
    ends = [(r, r.finished_at or (execution.finished_at if execution.status in FINAL_STATES
                                  else None) or now) for r in started]
    span = max(0.001, max((end - origin).total_seconds() for _r, end in ends))
    bars = []
    for index, (row, end) in enumerate(sorted(ends, key=lambda pair: pair[0].started_at)):
        start_s = (row.started_at - origin).total_seconds()
        length_s = max(0.0, (end - row.started_at).total_seconds())
        bars.append({
            "key": row.node_key, "status": row.status, "y": index * TIMELINE_ROW,
            "x": TIMELINE_LEFT + TIMELINE_WIDTH * start_s / span,
            "w": max(2.0, TIMELINE_WIDTH * length_s / span),
            "label": _duration(row.started_at, end) or "0 ms"})
    return {"bars": bars, "height": len(bars) * TIMELINE_ROW + 4,
            "span": _duration(origin, origin + timedelta(seconds=span))}


def execution_state(execution: Execution, planned: list[str]) -> dict:
    """Everything the run's page shows: the run, and each node's latest attempt (nodes that
    have not run yet are ``queued``; in a finished run, ``skipped``)."""
    latest = executions.node_rows(execution.id)
    rows = {row.node_key: row for row in latest}
    final = execution.status in FINAL_STATES
    nodes = []
    for key in planned:
        row = rows.pop(key, None)
        nodes.append(_node_dict(key, row, "skipped" if final else "queued"))
    nodes.extend(_node_dict(key, row, "queued") for key, row in rows.items())
    error = execution.error.get("message") if isinstance(execution.error, dict) else None
    name = db.session.scalar(select(Workflow.name).where(Workflow.id == execution.workflow_id))
    return {"execution": execution, "execution_id": str(execution.id), "nodes": nodes,
            "timeline": timeline(execution, latest),
            "workflow_name": name, "status": execution.status, "error": error,
            "duration": _duration(execution.started_at, execution.finished_at)}


def _node_dict(key: str, row, default: str) -> dict:
    if row is None:
        return {"key": key, "status": default, "attempt": 1, "error": None}
    error = row.error.get("message") if isinstance(row.error, dict) else row.error
    return {"key": key, "status": row.status, "attempt": row.attempt, "error": error}


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
