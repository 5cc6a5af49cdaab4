"""Schedules: the cron triggers of active workflows, and the clock's job that fires them.

A ``trigger.schedule`` node of an active workflow has one ``schedules`` row holding its cron,
its time zone and ``next_run_at`` (the next fire time, in UTC). ``sync`` keeps the rows in step
with the workflow inside its save/(de)activate/delete transaction; ``fire_due`` is run by every
clock on every tick.

Times. A cron is read in the schedule's IANA time zone, on the wall clock, with the rules of
Vixie cron for daylight-saving changes:
- a schedule at fixed hours (``30 2 * * *``) fires once when the clocks go back (at the first
  02:30), and when the clocks go forward past its time, at the moment they jump (03:00);
- a schedule whose hour field is ``*`` (``*/5 * * * *``, ``@hourly``) fires at every real
  instant whose local time matches: through both copies of a repeated hour, and not at all in
  the hour that does not exist.

Firing. A due slot is claimed three times over, so that no number of clocks, nor a retry after
a crash, ever fires it twice: the row is taken with ``SELECT … FOR UPDATE SKIP LOCKED`` (on
PostgreSQL; the embedded default has one clock thread), the slot is written as a
``trigger_events`` row ``kind = 'schedule'`` whose ``dedupe_key`` (workflow, node, slot) is
unique in the database (``uq_trigger_events_schedule_slot``, a partial index: the webhook's
unique key includes a NULL ``webhook_id`` for schedules and so holds nothing), and the run, the
event and the row's new ``next_run_at`` commit together. After downtime only the latest due
slot fires; ``missed_slots`` in the run's input says how many earlier ones were skipped.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from app.db import db
from app.models import Schedule, TriggerEvent, Workflow, isoformat, utcnow

log = logging.getLogger(__name__)

NODE_TYPE = "trigger.schedule"
# Wider than any daylight-saving shift: how far around a time to look for a clock change.
_SHIFT_WINDOW = timedelta(hours=6)
# Cron candidates examined for one answer before the expression is judged unusable.
_MAX_CANDIDATES = 10_000
# missed_slots counts at most this many (a bound on one tick's work after long downtime).
MISSED_SLOTS_CAP = 10_000


class ScheduleError(ValueError):
    """A cron expression or time zone that cannot be read or never fires."""


@dataclass(frozen=True)
class CronSpec:
    expr: str
    zone: ZoneInfo
    # The hour field is ``*``: the schedule follows elapsed time through clock changes.
    every_hour: bool


def cron_spec(cron: str, timezone: str | None = "UTC") -> CronSpec:
    expr = (cron or "").strip()
    try:
        zone = ZoneInfo(timezone or "UTC")
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(f"unknown time zone {timezone!r}") from exc
    try:
        hours = croniter(expr, datetime(2000, 1, 1)).expanded[1]
    except (CroniterError, ValueError, KeyError) as exc:
        raise ScheduleError(f"invalid cron expression {expr!r}") from exc
    return CronSpec(expr, zone, every_hour=hours == ["*"] or len(hours) == 24)


def _naive(instant: datetime) -> datetime:
    return instant.astimezone(UTC).replace(tzinfo=None)


def _offset(zone: ZoneInfo, instant: datetime) -> timedelta:
    return instant.astimezone(zone).utcoffset()


def _jump(zone: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """The first instant in (before, after] on the later side of a clock change."""
    target = _offset(zone, after)
    low, high = int(before.timestamp()), int(after.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if _offset(zone, datetime.fromtimestamp(middle, UTC)) == target:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def _instants(spec: CronSpec, wall: datetime) -> list[datetime]:
    """The UTC instants at which the local wall-clock time ``wall`` fires, earliest first."""
    first = wall.replace(tzinfo=spec.zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=spec.zone, fold=1).astimezone(UTC)
    if first == second:
        return [first]
    early, late = min(first, second), max(first, second)
    if first.astimezone(spec.zone).replace(tzinfo=None) == wall:
        # The clocks went back: this wall time happens twice.
        return [early, late] if spec.every_hour else [early]
    # The clocks went forward: this wall time never happens.
    return [] if spec.every_hour else [_jump(spec.zone, early, late)]


def _candidates(spec: CronSpec, start: datetime, *, backwards: bool = False,
                limit: int = _MAX_CANDIDATES):
    """Local wall-clock fire times from ``start`` (naive), forwards or backwards."""
    try:
        times = croniter(spec.expr, start)
        step = times.get_prev if backwards else times.get_next
        for _ in range(limit):
            yield step(datetime)
    except (CroniterError, ValueError, OverflowError) as exc:
        raise ScheduleError(f"{spec.expr!r} has no fire time near {start:%Y-%m-%d}") from exc
    raise ScheduleError(f"{spec.expr!r} has no fire time near {start:%Y-%m-%d}")


def next_fire(spec: CronSpec, after: datetime) -> datetime:
    """The first fire time strictly after ``after`` (aware), as an aware UTC datetime."""
    after = after.astimezone(UTC)
    # Start on the wall clock of the smaller offset nearby, so that a repeated hour ahead is
    # not stepped over; instants are compared in UTC.
    lowest = min(_offset(spec.zone, after), _offset(spec.zone, after + _SHIFT_WINDOW))
    start = _naive(after) + lowest - timedelta(minutes=1)
    best = None
    for wall in _candidates(spec, start):
        instants = _instants(spec, wall)
        later = [t for t in instants if t > after]
        if later and (best is None or later[0] < best):
            best = later[0]
        # Wall order is UTC order for each candidate's earliest instant: none can come sooner.
        if instants and instants[0] > after:
            return best
    raise AssertionError("unreachable")  # pragma: no cover - _candidates raises


def prev_fire(spec: CronSpec, before: datetime) -> datetime:
    """The latest fire time at or before ``before`` (aware), as an aware UTC datetime."""
    before = before.astimezone(UTC)
    highest = max(_offset(spec.zone, before), _offset(spec.zone, before - _SHIFT_WINDOW))
    start = _naive(before) + highest + timedelta(minutes=1)
    best = None
    for wall in _candidates(spec, start, backwards=True):
        instants = _instants(spec, wall)
        earlier = [t for t in instants if t <= before]
        if earlier and (best is None or earlier[-1] > best):
            best = earlier[-1]
        if instants and instants[0] <= before:
            return best
    raise AssertionError("unreachable")  # pragma: no cover - _candidates raises


def fire_times(spec: CronSpec, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times after ``after``."""
    times = []
    for _ in range(count):
        after = next_fire(spec, after)
        times.append(after)
    return times


def count_slots(spec: CronSpec, first: datetime, last: datetime,
                cap: int = MISSED_SLOTS_CAP) -> int:
    """How many fire times lie in [first, last), counting at most ``cap``; one pass."""
    first, last = first.astimezone(UTC), last.astimezone(UTC)
    lowest = min(_offset(spec.zone, first), _offset(spec.zone, first + _SHIFT_WINDOW))
    start = _naive(first) + lowest - timedelta(minutes=1)
    seen: set[datetime] = set()  # a gap can map two wall times to the same instant
    for wall in _candidates(spec, start, limit=cap + _MAX_CANDIDATES):
        instants = _instants(spec, wall)
        seen.update(t for t in instants if first <= t < last)
        if len(seen) >= cap or (instants and instants[0] >= last):
            return min(len(seen), cap)
    raise AssertionError("unreachable")  # pragma: no cover - _candidates raises


# --- keeping rows in step with workflows ---------------------------------------------------

def schedule_nodes(definition: dict | None) -> dict[str, tuple[str, str]]:
    """``{node id: (cron, time zone)}`` of a definition's schedule triggers."""
    nodes = (definition or {}).get("nodes") or []
    found = {}
    for node in nodes:
        if isinstance(node, dict) and node.get("type") == NODE_TYPE:
            params = node.get("params") or {}
            found[node["id"]] = (str(params.get("cron", "")).strip(),
                                 params.get("timezone") or "UTC")
    return found


def sync(workflow: Workflow) -> None:
    """Give each schedule trigger of ``workflow`` a row if it is active (``next_run_at`` the
    next fire time after now), deactivate them if it is not, drop rows of removed nodes.
    Runs in the caller's transaction (from ``triggers.sync``); does not commit."""
    nodes = schedule_nodes(workflow.definition)
    live = workflow.active and workflow.deleted_at is None
    rows = {row.node_id: row for row in db.session.scalars(
        select(Schedule).where(Schedule.workflow_id == workflow.id))}
    for node_id, row in rows.items():
        if node_id not in nodes:
            db.session.delete(row)
        elif not live:
            row.active = False
    if not live:
        return
    now = utcnow()
    for node_id, (cron, timezone) in nodes.items():
        row = rows.get(node_id)
        if row is not None and row.active and (row.cron, row.timezone) == (cron, timezone):
            continue  # unchanged: keep its next slot (even an overdue one)
        active = True
        try:
            next_run_at = next_fire(cron_spec(cron, timezone), now)
        except ScheduleError as exc:  # validation refuses these; never fail the save on one
            log.warning("workflow %s node %s: schedule not started: %s", workflow.id, node_id,
                        exc)
            active, next_run_at = False, now
        if row is None:
            db.session.add(Schedule(workflow_id=workflow.id, node_id=node_id, cron=cron,
                                    timezone=timezone, active=active,
                                    next_run_at=next_run_at))
        else:
            # Reactivated or edited: from now on; slots passed while inactive never fire.
            row.cron, row.timezone, row.active = cron, timezone, active
            row.next_run_at = next_run_at


# --- firing ---------------------------------------------------------------------------------

def slot_key(workflow_id: uuid.UUID, node_id: str, slot: datetime) -> str:
    """The idempotency key of one slot: at most 32 + 1 + 64 + 1 + 17 = 115 characters."""
    return f"{workflow_id.hex}:{node_id}:{slot.astimezone(UTC):%Y-%m-%dT%H:%MZ}"


def _record_slot(workflow: Workflow, node_id: str, slot: datetime, payload: dict,
                 now: datetime) -> uuid.UUID | None:
    """Write the slot's trigger event; None when it was fired already (the unique index)."""
    dialect_insert = sqlite.insert if db.is_sqlite else postgresql.insert
    stmt = (dialect_insert(TriggerEvent)
            .values(id=uuid.uuid4(), user_id=workflow.user_id, webhook_id=None,
                    kind="schedule", dedupe_key=slot_key(workflow.id, node_id, slot),
                    payload=payload, received_at=now)
            .on_conflict_do_nothing()
            .returning(TriggerEvent.id))
    return db.session.execute(stmt).scalar()


def _has_node(workflow: Workflow, node_id: str) -> bool:
    return node_id in schedule_nodes(workflow.definition)


def _fire(schedule: Schedule, workflow: Workflow | None, now: datetime):
    """Fire the latest due slot of one claimed row and move it on; the new run, or None."""
    from app.services import executions  # executions → workflows → triggers → this module

    if (workflow is None or not workflow.active or workflow.deleted_at is not None
            or not _has_node(workflow, schedule.node_id)):
        log.info("schedule %s: its workflow is no longer active; deactivating it", schedule.id)
        schedule.active = False
        return None
    due_from = schedule.next_run_at
    try:
        spec = cron_spec(schedule.cron, schedule.timezone)
        slot = prev_fire(spec, now)
        following = next_fire(spec, now)
        missed = count_slots(spec, due_from, slot) if slot >= due_from else 0
    except Exception as exc:  # noqa: BLE001 - a bad row is switched off, never stops the clock
        log.error("schedule %s (workflow %s, node %s) cannot be read and is deactivated: %s",
                  schedule.id, schedule.workflow_id, schedule.node_id, exc)
        schedule.active = False
        return None
    schedule.next_run_at = following
    if slot < due_from or (schedule.last_slot_at is not None and slot <= schedule.last_slot_at):
        return None  # no slot in [next_run_at, now], or fired already
    schedule.last_slot_at = slot
    payload = {"scheduled_for": isoformat(slot), "fired_at": isoformat(now),
               "missed_slots": missed}
    if missed:
        log.info("schedule %s: firing the slot of %s; %d earlier slots were missed",
                 schedule.id, payload["scheduled_for"], missed)
    event_id = _record_slot(workflow, schedule.node_id, slot, payload, now)
    if event_id is None:
        log.info("schedule %s: the slot of %s has fired already", schedule.id,
                 payload["scheduled_for"])
        return None
    return executions.new_execution(workflow, trigger_type="schedule",
                                    trigger_node_id=schedule.node_id, input=payload,
                                    trigger_event_id=event_id)


def fire_due(now: datetime | None = None, limit: int = 100) -> list[uuid.UUID]:
    """Start a run for every due schedule (at most ``limit``), commit, publish them in one
    batch; returns the new execution ids. Safe to run from any number of clocks at once."""
    from app.services import executions

    now = now or utcnow()
    due_rows = (select(Schedule)
                .where(Schedule.active.is_(True), Schedule.next_run_at <= now)
                .order_by(Schedule.next_run_at).limit(limit)
                .execution_options(populate_existing=True))
    if not db.is_sqlite:
        due_rows = due_rows.with_for_update(skip_locked=True)
    due = list(db.session.scalars(due_rows))
    if not due:
        db.session.commit()
        return []
    owners = {w.id: w for w in db.session.scalars(
        select(Workflow).where(Workflow.id.in_({s.workflow_id for s in due})))}
    fired = [run for schedule in due
             if (run := _fire(schedule, owners.get(schedule.workflow_id), now)) is not None]
    db.session.commit()
    started = [run.id for run in fired]
    if started:
        executions.announce(fired)
        executions.publish(started)
    return started
