"""Schedules end to end: rows that follow the workflow, slots fired by the clock exactly once.

Every test but the last two runs in both modes (``app``). The in-process clock and workers are
off (``inline_workers=False``) so that the tests decide when the clock ticks; runs are counted
as rows, or run by calling the queue handler directly.

The last test is LONG (about 3 minutes): two real clock processes against PostgreSQL over three
minutes of an every-minute schedule. It never skips.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, update

from app.config import PROJECT_ROOT
from app.db import db
from app.models import Execution, Schedule, TriggerEvent, Workflow, utcnow
from app.services import runs, schedules
from app.workers import Clock, PeriodicJob, clock_tick
from tests.conftest import REDIS_URL, TEST_KEK, TEST_SECRET


@pytest.fixture
def settings_overrides() -> dict:
    return {"inline_workers": False}


@pytest.fixture(autouse=True)
def app_context(app):
    """The tests call the clock's services directly, as the clock does: in an app context."""
    with app.app_context():
        yield


def scheduled(cron="* * * * *", timezone="UTC", name="Every minute", extra_triggers=0):
    nodes = [{"id": "tick", "type": "trigger.schedule",
              "params": {"cron": cron, "timezone": timezone}},
             {"id": "note", "type": "logic.set",
              "params": {"fields": {"slot": "{{ trigger.scheduled_for }}",
                                    "missed": "{{ trigger.missed_slots }}"}}}]
    connections = [{"from": "tick", "to": "note"}]
    for i in range(extra_triggers):
        nodes.append({"id": f"tick{i}", "type": "trigger.schedule",
                      "params": {"cron": cron, "timezone": timezone}})
        connections.append({"from": f"tick{i}", "to": "note"})
    return {"name": name, "nodes": nodes, "connections": connections}


@pytest.fixture
def api(client, auth):
    headers = {"Authorization": f"Bearer {auth.register_api()['token']}"}

    class Api:
        def post(self, path, json=None):
            return client.post(path, json=json, headers=headers)

        def put(self, path, json):
            return client.put(path, json=json, headers=headers)

        def get(self, path):
            return client.get(path, headers=headers)

        def delete(self, path):
            return client.delete(path, headers=headers)

        def workflow(self, body=None, *, active=True) -> str:
            response = self.post("/api/v1/workflows", body or scheduled())
            assert response.status_code == 201, response.get_json()
            workflow_id = response.get_json()["id"]
            if active:
                self.activate(workflow_id)
            return workflow_id

        def activate(self, workflow_id, active=True):
            verb = "activate" if active else "deactivate"
            response = self.post(f"/api/v1/workflows/{workflow_id}/{verb}")
            assert response.status_code == 200, response.get_json()

    return Api()


def rows(workflow_id) -> list[Schedule]:
    found = list(db.session.scalars(select(Schedule).where(
        Schedule.workflow_id == uuid.UUID(workflow_id)).order_by(Schedule.node_id)))
    db.session.commit()
    return found


def row(workflow_id) -> Schedule:
    (only,) = rows(workflow_id)
    return only


def backdate(workflow_id, by: timedelta) -> datetime:
    """Move the schedule's next slot into the past (as after clock downtime); the new value."""
    schedule = row(workflow_id)
    db.session.execute(update(Schedule).where(Schedule.id == schedule.id)
                       .values(next_run_at=schedule.next_run_at - by))
    db.session.commit()
    return schedule.next_run_at - by


def scheduled_runs(workflow_id=None) -> list[Execution]:
    stmt = select(Execution).where(Execution.trigger_type == "schedule")
    if workflow_id:
        stmt = stmt.where(Execution.workflow_id == uuid.UUID(workflow_id))
    found = list(db.session.scalars(stmt.order_by(Execution.created_at)))
    db.session.commit()
    return found


def minute_after(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0) + timedelta(minutes=1)


# --- rows follow the workflow -----------------------------------------------------------

def test_activating_creates_the_schedule_with_its_next_slot(app, api):
    workflow_id = api.workflow(active=False)
    assert rows(workflow_id) == []
    before = utcnow()
    api.activate(workflow_id)
    schedule = row(workflow_id)
    assert schedule.active and schedule.node_id == "tick"
    assert (schedule.cron, schedule.timezone) == ("* * * * *", "UTC")
    assert schedule.next_run_at in (minute_after(before), minute_after(utcnow()))
    assert schedule.last_slot_at is None


def test_next_slot_is_computed_in_the_schedule_time_zone(app, api):
    workflow_id = api.workflow(scheduled("0 9 * * *", "Europe/Berlin"))
    schedule = row(workflow_id)
    at = schedule.next_run_at.astimezone(ZoneInfo("Europe/Berlin"))
    assert (at.hour, at.minute) == (9, 0)
    assert timedelta(0) < schedule.next_run_at - utcnow() <= timedelta(days=1)
    assert schedule.next_run_at.tzinfo is UTC


def test_editing_the_cron_recomputes_next_run_at(app, api):
    workflow_id = api.workflow()
    first = row(workflow_id).next_run_at
    response = api.put(f"/api/v1/workflows/{workflow_id}",
                       scheduled("30 7 * * *", "America/New_York"))
    assert response.status_code == 200, response.get_json()
    schedule = row(workflow_id)
    at = schedule.next_run_at.astimezone(ZoneInfo("America/New_York"))
    assert (schedule.cron, schedule.timezone) == ("30 7 * * *", "America/New_York")
    assert (at.hour, at.minute) == (7, 30) and schedule.next_run_at != first
    # An edit that leaves the schedule alone keeps its slot.
    body = scheduled("30 7 * * *", "America/New_York", name="Renamed")
    assert api.put(f"/api/v1/workflows/{workflow_id}", body).status_code == 200
    assert row(workflow_id).next_run_at == schedule.next_run_at
    # Removing the trigger removes its row.
    manual = {"name": "Manual", "nodes": [{"id": "go", "type": "trigger.manual", "params": {}}],
              "connections": []}
    assert api.put(f"/api/v1/workflows/{workflow_id}", manual).status_code == 200
    assert rows(workflow_id) == []


def test_a_long_cron_the_node_accepts_is_stored(app, api):
    cron = ",".join(str(m) for m in range(60)) + " * * * *"  # 177 characters
    workflow_id = api.workflow(scheduled(cron))
    assert row(workflow_id).cron == cron


def test_every_schedule_trigger_of_a_workflow_gets_a_row(app, api):
    workflow_id = api.workflow(scheduled(extra_triggers=2))
    assert [s.node_id for s in rows(workflow_id)] == ["tick", "tick0", "tick1"]


def test_deactivating_or_deleting_stops_firing(app, api):
    workflow_id = api.workflow()
    api.activate(workflow_id, active=False)
    assert row(workflow_id).active is False
    later = utcnow() + timedelta(minutes=5)
    assert schedules.fire_due(now=later) == []

    api.activate(workflow_id)
    assert row(workflow_id).active is True
    assert api.delete(f"/api/v1/workflows/{workflow_id}").status_code in (200, 204)
    assert all(not s.active for s in rows(workflow_id))
    assert schedules.fire_due(now=later) == []
    assert scheduled_runs() == []


def test_reactivating_does_not_fire_the_slots_missed_while_inactive(app, api):
    workflow_id = api.workflow()
    api.activate(workflow_id, active=False)
    backdate(workflow_id, timedelta(hours=2))  # two hours of slots passed while inactive
    api.activate(workflow_id)
    schedule = row(workflow_id)
    assert schedule.active and schedule.next_run_at > utcnow()
    assert schedules.fire_due() == []
    assert scheduled_runs() == []


# --- firing -----------------------------------------------------------------------------

def test_a_due_slot_starts_one_run_with_the_slot_as_trigger_output(app, api):
    workflow_id = api.workflow()
    slot = row(workflow_id).next_run_at
    now = slot + timedelta(seconds=2)
    (execution_id,) = schedules.fire_due(now=now)
    assert schedules.fire_due(now=now) == []
    run = db.session.get(Execution, execution_id)
    assert run.trigger_type == "schedule" and run.trigger_node_id == "tick"
    assert run.status == "queued" and run.trigger_event_id is not None
    assert run.input == {"scheduled_for": slot.isoformat().replace("+00:00", "Z"),
                         "fired_at": now.isoformat().replace("+00:00", "Z"),
                         "missed_slots": 0}
    schedule = row(workflow_id)
    assert schedule.last_slot_at == slot
    assert schedule.next_run_at == slot + timedelta(minutes=1)


def test_a_missed_slot_after_downtime_fires_once_and_says_how_many_were_missed(app, api):
    workflow_id = api.workflow()
    upcoming = row(workflow_id).next_run_at
    backdate(workflow_id, timedelta(minutes=10))  # the clock was down for ten minutes
    now = upcoming - timedelta(seconds=1)  # ten slots due: upcoming-10min … upcoming-1min

    fired = schedules.fire_due(now=now)
    assert len(fired) == 1
    assert schedules.fire_due(now=now) == []
    assert schedules.fire_due(now=now + timedelta(milliseconds=500)) == []
    (run,) = scheduled_runs(workflow_id)
    latest = upcoming - timedelta(minutes=1)
    assert run.input["missed_slots"] == 9
    assert run.input["scheduled_for"] == latest.isoformat().replace("+00:00", "Z")
    schedule = row(workflow_id)
    assert schedule.last_slot_at == latest and schedule.next_run_at == upcoming

    # The run itself sees the slot and the count as its trigger output.
    with app.app_context():
        runs.run_execution(str(run.id))
    body = api.get(f"/api/v1/executions/{run.id}").get_json()
    assert body["status"] == "succeeded", body
    assert body["trigger"]["type"] == "schedule"
    start = next(n for n in body["nodes"] if n["node_id"] == "tick")
    assert start["output"]["missed_slots"] == 9
    assert body["result"]["slot"] == run.input["scheduled_for"]
    assert body["result"]["missed"] == 9


def test_the_database_refuses_to_fire_one_slot_twice(app, api):
    """A clock that read the row before another's commit (or a retry after a crash) finds the
    slot taken by the unique index and starts nothing."""
    workflow_id = api.workflow()
    slot = row(workflow_id).next_run_at
    now = slot + timedelta(seconds=1)
    assert len(schedules.fire_due(now=now)) == 1
    db.session.execute(update(Schedule).where(Schedule.workflow_id == uuid.UUID(workflow_id))
                       .values(next_run_at=slot, last_slot_at=None))
    db.session.commit()
    assert schedules.fire_due(now=now) == []
    assert len(scheduled_runs(workflow_id)) == 1
    events = db.session.scalar(select(func.count()).select_from(TriggerEvent)
                               .where(TriggerEvent.kind == "schedule"))
    assert events == 1
    assert row(workflow_id).next_run_at == slot + timedelta(minutes=1)


def test_a_schedule_of_a_workflow_no_longer_active_is_skipped_and_switched_off(app, api):
    workflow_id = api.workflow()
    slot = row(workflow_id).next_run_at
    # Deactivated without the sync (it cannot happen through the services; be safe anyway).
    db.session.execute(update(Workflow).where(Workflow.id == uuid.UUID(workflow_id))
                       .values(active=False))
    db.session.commit()
    assert schedules.fire_due(now=slot + timedelta(seconds=1)) == []
    assert row(workflow_id).active is False


def test_an_unreadable_stored_schedule_is_switched_off_and_the_others_fire(app, api, caplog):
    broken = api.workflow(scheduled(name="Broken"))
    healthy = api.workflow(scheduled(name="Healthy"))
    slot = row(healthy).next_run_at
    db.session.execute(update(Schedule).where(Schedule.workflow_id == uuid.UUID(broken))
                       .values(cron="not a cron"))
    db.session.commit()
    fired = schedules.fire_due(now=slot + timedelta(seconds=1))
    assert len(fired) == 1
    assert db.session.get(Execution, fired[0]).workflow_id == uuid.UUID(healthy)
    assert row(broken).active is False
    assert "cannot be read" in caplog.text


# --- the clock --------------------------------------------------------------------------

def test_the_clock_tick_runs_the_reaper_and_the_schedules(app, api):
    workflow_id = api.workflow()
    backdate(workflow_id, timedelta(minutes=2))
    done = clock_tick(app)
    assert done == {"reaper": 0, "schedules": 1}
    assert len(scheduled_runs(workflow_id)) == 1


def test_the_clock_fires_due_slots_in_batches(app, api):
    from app.workers import _fire_schedules

    workflow_id = api.workflow(scheduled(extra_triggers=4))
    for schedule in rows(workflow_id):
        db.session.get(Schedule, schedule.id).next_run_at -= timedelta(minutes=1)
    db.session.commit()
    assert _fire_schedules(batch=2) == 5
    assert len(scheduled_runs(workflow_id)) == 5


def test_a_failing_clock_job_does_not_stop_the_others(app, api, caplog):
    workflow_id = api.workflow()
    backdate(workflow_id, timedelta(minutes=1))

    def broken() -> int:
        raise RuntimeError("boom")

    clock = Clock(app, (PeriodicJob("broken", broken), PeriodicJob("schedules",
                                                                    lambda: len(
                                                                        schedules.fire_due()))))
    assert clock.tick() == {"schedules": 1}
    assert "clock job broken failed" in caplog.text


def test_a_periodic_job_runs_at_most_once_per_period(app):
    calls = []
    clock = Clock(app, (PeriodicJob("often", lambda: calls.append("often") or 0),
                        PeriodicJob("rarely", lambda: calls.append("rarely") or 0, 3600)))
    clock.tick()
    clock.tick()
    assert calls == ["often", "rarely", "often"]


# --- several clocks (PostgreSQL) --------------------------------------------------------

@pytest.mark.services
@pytest.mark.parametrize("mode", ["production"])
def test_two_clocks_at_once_fire_each_of_50_due_slots_exactly_once(app, api):
    workflow_ids = [api.workflow(scheduled(name=f"W{i}", extra_triggers=4)) for i in range(10)]
    upcoming = minute_after(utcnow())
    for schedule in db.session.scalars(select(Schedule)):
        schedule.next_run_at = upcoming - timedelta(minutes=10)
    db.session.commit()
    assert db.session.scalar(select(func.count()).select_from(Schedule)
                             .where(Schedule.active.is_(True))) == 50
    now = upcoming - timedelta(seconds=1)  # ten slots due, whatever the time now
    start = threading.Barrier(2)
    fired: list[list[uuid.UUID]] = [[], []]
    errors = []

    def clock(index: int) -> None:
        with app.app_context():
            try:
                start.wait(10)
                while batch := schedules.fire_due(now=now, limit=7):
                    fired[index].extend(batch)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            finally:
                db.remove()

    threads = [threading.Thread(target=clock, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    all_fired = fired[0] + fired[1]
    assert len(all_fired) == len(set(all_fired)) == 50
    assert fired[0] and fired[1], "both clocks should have taken a share"
    started = scheduled_runs()
    assert len(started) == 50
    assert {(r.workflow_id, r.trigger_node_id) for r in started} == {
        (uuid.UUID(w), n) for w in workflow_ids for n in ("tick", "tick0", "tick1", "tick2",
                                                            "tick3")}
    assert {r.input["missed_slots"] for r in started} == {9}
    assert schedules.fire_due(now=now) == []


# --- THE acceptance test: two real clock processes (LONG: about 3 minutes) -----------------

def _wait_until(moment: float) -> None:
    while (left := moment - time.time()) > 0:
        time.sleep(min(left, 1.0))


@pytest.mark.services
@pytest.mark.timeout(600)  # three real minutes of an every-minute schedule, and the setup
@pytest.mark.parametrize("mode", ["production"])
def test_two_clock_processes_over_three_minutes_fire_each_slot_exactly_once(app, api, tmp_path):
    """LONG (2.5 to 3.5 minutes). Two `python -m jobs.scheduler` processes tick every 0.5 s
    against PostgreSQL while an every-minute schedule crosses three minute boundaries: exactly
    three runs start, one per slot, and a `python -m jobs.worker` runs each of them."""
    settings = app.config["SETTINGS"]
    queue_name = f"sched.{uuid.uuid4().hex[:12]}"
    env = {
        "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
        "DATABASE_URL": settings.database_url, "REDIS_URL": REDIS_URL,
        "QUEUE_URL": REDIS_URL, "JOBSPRINT_QUEUE_NAME": queue_name,
        "SECRET_KEY": TEST_SECRET,
        "JOBSPRINT_KEK": "test1:" + base64.b64encode(TEST_KEK.key).decode(),
        "JOBSPRINT_CLOCK_INTERVAL_S": "0.5", "JOBSPRINT_WORKER_THREADS": "2",
        "JOBSPRINT_INSTANCE_PATH": str(tmp_path / "instance"), "PYTHONUNBUFFERED": "1",
    }
    workflow_id = api.workflow(active=False)
    # The schedule's first slot is the next minute boundary B (or the one after, when B is too
    # close for the processes to be up by then); stopping at B + 2 min 20 s leaves exactly the
    # boundaries B, B+1 and B+2 min crossed, with 20 s after the last for the clocks to fire it
    # and 40 s before the next.
    boundary = (int(time.time()) // 60 + 1) * 60
    if boundary - time.time() < 10:
        _wait_until(boundary + 1)
        boundary += 60
    api.activate(workflow_id)
    first_slot = datetime.fromtimestamp(boundary, UTC)
    assert row(workflow_id).next_run_at == first_slot

    procs: list[tuple[subprocess.Popen, object]] = []

    def start(module: str, name: str) -> subprocess.Popen:
        log = (tmp_path / f"{name}.log").open("w")
        popen = subprocess.Popen([sys.executable, "-m", module], cwd=PROJECT_ROOT, env=env,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append((popen, log))
        return popen

    def logs() -> str:
        return "\n".join(f"--- {p.args[-1]} pid {p.pid} ---\n"
                         + (tmp_path / f"{n}.log").read_text(errors="replace")[-3000:]
                         for (p, _), n in zip(procs, ("clock-a", "clock-b", "worker"),
                                              strict=False))

    try:
        clocks = [start("jobs.scheduler", "clock-a"), start("jobs.scheduler", "clock-b")]
        worker = start("jobs.worker", "worker")
        _wait_until(boundary + 140)
        assert all(p.poll() is None for p in clocks + [worker]), logs()
        for clock in clocks:
            clock.send_signal(signal.SIGTERM)
        for clock in clocks:
            clock.wait(15)

        started = scheduled_runs(workflow_id)
        slots = [first_slot + timedelta(minutes=i) for i in range(3)]
        assert sorted(r.input["scheduled_for"] for r in started) == [
            s.isoformat().replace("+00:00", "Z") for s in slots], logs()
        assert len(started) == 3
        assert all(r.input["missed_slots"] == 0 for r in started)
        for run, slot in zip(sorted(started, key=lambda r: r.input["scheduled_for"]), slots,
                             strict=True):
            fired_at = datetime.fromisoformat(run.input["fired_at"])
            assert timedelta(0) <= fired_at - slot < timedelta(seconds=10), run.input
        events = db.session.scalar(select(func.count()).select_from(TriggerEvent)
                                   .where(TriggerEvent.kind == "schedule"))
        db.session.commit()
        assert events == 3
        assert row(workflow_id).last_slot_at == slots[-1]

        # Bonus: the worker ran each of them, once.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            statuses = [r.status for r in scheduled_runs(workflow_id)]
            if statuses == ["succeeded"] * 3:
                break
            time.sleep(0.5)
        assert statuses == ["succeeded"] * 3, logs()
        assert "Traceback" not in logs(), logs()
    finally:
        for popen, log in procs:
            if popen.poll() is None:
                os.killpg(popen.pid, signal.SIGTERM)
                try:
                    popen.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(popen.pid, signal.SIGKILL)
                    popen.wait(10)
            log.close()
