"""Retention on each database (``app``: SQLite and PostgreSQL): rows back-dated across each
boundary, batches, idempotence, what users still see, the purge, the vacuum, the command, and
the clock's once-a-period claims shared by every clock.

The in-process clock is off (``inline_workers=False``): its retention thread must not race the
jobs these tests run. Every job is given the same ``now`` the rows are back-dated from.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import uuid
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, event, func, select, text

from app.config import PROJECT_ROOT
from app.db import db
from app.models import (
    AIHistory,
    AuditLog,
    Base,
    Execution,
    ExecutionNode,
    IdempotencyKey,
    TriggerEvent,
    User,
    Workflow,
    utcnow,
)
from app.services import maintenance, retention, run_stats
from app.workers import RETENTION_JOBS, Clock, PeriodicJob
from tests.conftest import REDIS_URL, TEST_KEK, TEST_SECRET
from tests.integration.conftest import ApiClient

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


@pytest.fixture
def settings_overrides() -> dict:
    return {"inline_workers": False}


@pytest.fixture
def now():
    return utcnow()


@pytest.fixture
def owner(app):
    with app.app_context():
        user = User(id=uuid.uuid4(), email=f"{uuid.uuid4().hex[:8]}@example.com",
                    password_hash="x")
        workflow = Workflow(id=uuid.uuid4(), user_id=user.id, name="Old runs", version=1,
                            definition={"nodes": [], "connections": []})
        db.session.add_all([user, workflow])
        db.session.commit()
        yield user, workflow


def configure(app, **changes) -> None:
    app.config["SETTINGS"] = replace(app.config["SETTINGS"], **changes)


def add_run(owner, created_at, status="succeeded", nodes=2, **fields) -> uuid.UUID:
    user, workflow = owner
    run = Execution(id=uuid.uuid4(), user_id=user.id, workflow_id=workflow.id,
                    workflow_version=1, trigger_type="manual", status=status,
                    created_at=created_at, updated_at=created_at, **fields)
    db.session.add(run)
    db.session.flush()
    for index in range(nodes):
        db.session.add(ExecutionNode(execution_id=run.id, node_key=f"n{index}",
                                     node_id=f"n{index}", status="succeeded",
                                     deleted_at=fields.get("deleted_at")))
    db.session.commit()
    return run.id


def add_ai(owner, created_at, **fields) -> uuid.UUID:
    row = AIHistory(id=uuid.uuid4(), user_id=owner[0].id, provider="test", model="m",
                    user_message="hi", assistant_message="hello", created_at=created_at,
                    **fields)
    db.session.add(row)
    db.session.commit()
    return row.id


def add_audit(owner, created_at, **fields) -> uuid.UUID:
    row = AuditLog(id=uuid.uuid4(), user_id=owner[0].id, action="test.action",
                   created_at=created_at, **fields)
    db.session.add(row)
    db.session.commit()
    return row.id


def deleted_at(model, row_id):
    return db.session.scalar(select(model.deleted_at).where(model.id == row_id))


def count(model, *where) -> int:
    return db.session.scalar(select(func.count()).select_from(model).where(*where))


# --- the soft deletes, across each boundary ----------------------------------------------

def test_finished_runs_older_than_90_days_go_with_their_nodes(app, owner, now, caplog):
    caplog.set_level("INFO", logger="app.services.retention")
    kept = add_run(owner, now - 90 * DAY + HOUR)
    gone = [add_run(owner, now - 90 * DAY - HOUR, status)
            for status in ("succeeded", "failed", "cancelled")]
    assert retention.soft_delete_executions(now) == 3
    assert deleted_at(Execution, kept) is None
    assert count(ExecutionNode, ExecutionNode.execution_id == kept,
                 ExecutionNode.deleted_at.is_(None)) == 2
    for run_id in gone:
        assert deleted_at(Execution, run_id) == now
        assert count(ExecutionNode, ExecutionNode.execution_id == run_id,
                     ExecutionNode.deleted_at == now) == 2
    assert "soft-deleted 3 finished runs and 6 node rows" in caplog.text


def test_a_run_that_finished_recently_stays_however_old_it_is(app, owner, now):
    """Created 91 days ago, parked or retried, finished yesterday: kept its full period."""
    late = add_run(owner, now - 91 * DAY, finished_at=now - DAY)
    done = add_run(owner, now - 91 * DAY, finished_at=now - 90 * DAY - HOUR)
    assert retention.soft_delete_executions(now) == 1
    assert deleted_at(Execution, late) is None and deleted_at(Execution, done) == now


def test_runs_still_in_progress_stay_however_old(app, owner, now):
    unfinished = [add_run(owner, now - 400 * DAY, status)
                  for status in ("queued", "running", "waiting")]
    assert retention.soft_delete_executions(now) == 0
    assert all(deleted_at(Execution, run_id) is None for run_id in unfinished)
    assert count(ExecutionNode, ExecutionNode.deleted_at.is_not(None)) == 0


def add_event(owner, received_at, **fields) -> uuid.UUID:
    user, workflow = owner
    event_id = uuid.uuid4()
    db.session.add(TriggerEvent(id=event_id, user_id=user.id, kind="schedule",
                                dedupe_key=f"{workflow.id}:start:{uuid.uuid4()}",
                                payload={"slot": "x"}, received_at=received_at, **fields))
    db.session.commit()
    return event_id


def test_trigger_events_older_than_90_days_go_once_no_kept_run_refers_to_them(app, owner, now):
    alone = add_event(owner, now - 90 * DAY - HOUR)
    young = add_event(owner, now - 90 * DAY + HOUR)
    of_old_run = add_event(owner, now - 91 * DAY)
    old_run = add_run(owner, now - 91 * DAY, trigger_event_id=of_old_run)
    of_waiting_run = add_event(owner, now - 91 * DAY)
    waiting = add_run(owner, now - 91 * DAY, status="waiting", trigger_event_id=of_waiting_run)
    db.session.commit()

    assert retention.soft_delete_trigger_events(now) == 1  # its run is still kept: not yet
    assert deleted_at(TriggerEvent, alone) == now
    assert retention.soft_delete_executions(now) == 1
    assert retention.soft_delete_trigger_events(now) == 1  # now its run is gone too
    assert deleted_at(TriggerEvent, of_old_run) == now
    assert deleted_at(Execution, old_run) == now
    for kept in (young, of_waiting_run):
        assert deleted_at(TriggerEvent, kept) is None
    assert deleted_at(Execution, waiting) is None
    assert retention.soft_delete_trigger_events(now) == 0

    # A month later the purge removes the events after their runs.
    later = now + 31 * DAY
    assert retention.purge(later) == 3 + 2  # the old run and its 2 nodes, then the 2 events
    assert count(TriggerEvent, TriggerEvent.id.in_([alone, of_old_run])) == 0
    assert count(TriggerEvent, TriggerEvent.id.in_([young, of_waiting_run])) == 2


def test_expired_idempotency_keys_are_deleted(app, owner, now):
    user, _workflow = owner
    for key, expires in (("expired", now - HOUR), ("live", now + HOUR)):
        db.session.add(IdempotencyKey(key=key, user_id=user.id, request_hash="h",
                                      expires_at=expires))
    db.session.commit()
    assert retention.delete_expired_idempotency_keys(now) == 1
    assert db.session.scalars(select(IdempotencyKey.key)).all() == ["live"]
    assert retention.delete_expired_idempotency_keys(now) == 0


def test_ai_history_older_than_30_days_goes(app, owner, now):
    kept = add_ai(owner, now - 30 * DAY + HOUR)
    gone = add_ai(owner, now - 30 * DAY - HOUR)
    assert retention.soft_delete_ai_history(now) == 1
    assert deleted_at(AIHistory, kept) is None
    assert deleted_at(AIHistory, gone) == now


def test_audit_logs_older_than_a_year_go(app, owner, now):
    kept = add_audit(owner, now - 365 * DAY + HOUR)
    gone = add_audit(owner, now - 365 * DAY - HOUR)
    assert retention.soft_delete_audit_logs(now) == 1
    assert deleted_at(AuditLog, kept) is None
    assert deleted_at(AuditLog, gone) == now


def test_each_age_is_a_setting(app, owner, now):
    configure(app, retention_executions_days=7, retention_ai_history_days=2,
              retention_audit_days=30)
    run, ai, audit = (add_run(owner, now - 8 * DAY), add_ai(owner, now - 3 * DAY),
                      add_audit(owner, now - 31 * DAY))
    fresh_run = add_run(owner, now - 6 * DAY)
    assert retention.run_now(["executions", "ai_history", "audit_logs"], now=now) == {
        "executions": 1, "ai_history": 1, "audit_logs": 1}
    assert (deleted_at(Execution, run), deleted_at(AIHistory, ai),
            deleted_at(AuditLog, audit)) == (now, now, now)
    assert deleted_at(Execution, fresh_run) is None


def test_a_second_run_touches_nothing(app, owner, now):
    add_run(owner, now - 100 * DAY)
    add_ai(owner, now - 40 * DAY)
    add_audit(owner, now - 400 * DAY)
    add_run(owner, now - 100 * DAY, deleted_at=now - 40 * DAY)
    jobs = ["executions", "ai_history", "audit_logs", "purge"]
    assert retention.run_now(jobs, now=now) == {
        "executions": 1, "ai_history": 1, "audit_logs": 1, "purge": 3}  # a run, its 2 nodes
    assert retention.run_now(jobs, now=now) == dict.fromkeys(jobs, 0)
    assert retention.run_now(jobs, now=now + HOUR) == dict.fromkeys(jobs, 0)


# --- batches ------------------------------------------------------------------------------

@pytest.fixture
def commits():
    """How many transactions this test's thread committed (the embedded app's own worker and
    clock threads commit now and then too)."""
    seen = []
    mine = threading.get_ident()

    def on_commit(_connection) -> None:
        if threading.get_ident() == mine:
            seen.append(1)

    event.listen(db.engine, "commit", on_commit)
    yield seen
    event.remove(db.engine, "commit", on_commit)


def test_every_job_works_in_batches_of_the_set_size(app, owner, now, commits):
    configure(app, retention_batch=2)
    runs = [add_run(owner, now - 100 * DAY, nodes=1) for _ in range(5)]
    commits.clear()
    assert retention.soft_delete_executions(now) == 5
    assert len(commits) == 3  # 2 + 2 + 1 runs, one transaction each
    assert count(Execution, Execution.id.in_(runs), Execution.deleted_at == now) == 5

    for _ in range(5):
        add_audit(owner, now - 400 * DAY)
    commits.clear()
    assert retention.soft_delete_audit_logs(now) == 5
    assert len(commits) == 3

    commits.clear()
    later = now + 31 * DAY
    # the node rows (3 batches), the runs (3), trigger events (1, empty), the audit logs (3),
    # AI history (1, empty)
    assert retention.purge(later) == 15
    assert len(commits) == 11
    assert count(Execution) == count(AuditLog) == 0


def test_an_exact_multiple_of_the_batch_ends_with_one_empty_look(app, owner, now, commits):
    configure(app, retention_batch=2)
    for _ in range(4):
        add_ai(owner, now - 40 * DAY)
    commits.clear()
    assert retention.soft_delete_ai_history(now) == 4
    assert len(commits) == 3


# --- the purge ----------------------------------------------------------------------------

def test_the_purge_deletes_rows_soft_deleted_over_30_days_ago_for_real(app, owner, now):
    user, _workflow = owner
    old = add_run(owner, now - 200 * DAY, deleted_at=now - 31 * DAY)
    db.session.add(ExecutionNode(execution_id=old, node_key="late", node_id="late",
                                 status="succeeded"))  # not marked: goes with its run
    recent = add_run(owner, now - 200 * DAY, deleted_at=now - 29 * DAY)
    retry = add_run(owner, now - DAY, retry_of_id=old)
    ai_of_run = add_ai(owner, now - DAY, execution_id=old)
    db.session.add(IdempotencyKey(key=f"k-{uuid.uuid4()}", user_id=user.id, request_hash="h",
                                  execution_id=old, expires_at=now + DAY))
    db.session.commit()
    ai_old, ai_recent = (add_ai(owner, now - 90 * DAY, deleted_at=now - 31 * DAY),
                         add_ai(owner, now - 90 * DAY, deleted_at=now - 29 * DAY))
    audit_old, audit_recent = (add_audit(owner, now - 900 * DAY, deleted_at=now - 31 * DAY),
                               add_audit(owner, now - 900 * DAY, deleted_at=now - 29 * DAY))

    # the run, its 2 marked nodes, an AI exchange, an audit entry (the unmarked node cascades)
    assert retention.purge(now) == 5
    assert count(Execution, Execution.id == old) == 0
    assert count(ExecutionNode, ExecutionNode.execution_id == old) == 0
    assert count(AIHistory, AIHistory.id == ai_old) == 0
    assert count(AuditLog, AuditLog.id == audit_old) == 0
    assert deleted_at(Execution, recent) == now - 29 * DAY
    assert count(ExecutionNode, ExecutionNode.execution_id == recent) == 2
    assert deleted_at(AIHistory, ai_recent) == deleted_at(AuditLog, audit_recent) == (
        now - 29 * DAY)
    # What referred to the purged run stays, pointing at nothing.
    assert db.session.scalar(select(Execution.retry_of_id).where(Execution.id == retry)) is None
    assert db.session.scalar(select(AIHistory.execution_id)
                             .where(AIHistory.id == ai_of_run)) is None
    assert count(IdempotencyKey, IdempotencyKey.execution_id.is_(None)) == 1
    # Really gone: another connection finds nothing either.
    other = create_engine(app.config["SETTINGS"].database_url)
    with other.connect() as conn:
        table = Execution.__table__
        found = conn.execute(select(func.count()).select_from(table)
                             .where(table.c.id == old)).scalar()
    other.dispose()
    assert found == 0


def test_the_purge_delay_is_a_setting(app, owner, now):
    configure(app, retention_purge_after_days=1)
    run = add_run(owner, now - 200 * DAY, nodes=0, deleted_at=now - 2 * DAY)
    assert retention.purge(now) == 1
    assert count(Execution, Execution.id == run) == 0


# --- what users see -----------------------------------------------------------------------

def test_soft_deleted_runs_leave_the_api_and_the_dashboard(app, client, user, now):
    token = client.post("/api/v1/auth/token", json={
        "email": user.email, "password": "correct horse battery"}).get_json()["token"]
    api = ApiClient(client, token)
    with app.app_context():
        workflow = Workflow(id=uuid.uuid4(), user_id=user.id, name="Nightly", version=1,
                            definition={"nodes": [], "connections": []})
        db.session.add(workflow)
        db.session.commit()
        old = add_run((user, workflow), now - 91 * DAY, "failed")
        fresh = add_run((user, workflow), now - HOUR)

    def listed() -> set[str]:
        return {item["id"] for item in api.get("/executions").get_json()["items"]}

    assert listed() == {str(old), str(fresh)}
    assert api.get(f"/executions/{old}").status_code == 200
    assert f"execution-{old}" in client.get("/executions").get_data(as_text=True)

    with app.app_context():
        assert retention.run_now(["executions"], now=now) == {"executions": 1}
        counts = run_stats.status_counts(user.id, run_stats.Filters())

    assert listed() == {str(fresh)}
    missing = api.get(f"/executions/{old}")
    assert missing.status_code == 404
    assert str(old) not in missing.get_data(as_text=True)
    page = client.get("/executions").get_data(as_text=True)
    assert f"execution-{old}" not in page and f"execution-{fresh}" in page
    assert client.get(f"/executions/{old}").status_code == 404
    assert counts["failed"] == 0 and counts["succeeded"] == 1


# --- the vacuum ---------------------------------------------------------------------------

@pytest.mark.services
@pytest.mark.parametrize("mode", ["production"])
def test_the_vacuum_analyzes_every_table_on_postgresql(app, owner, now):
    def vacuums() -> int:
        with db.engine.connect() as conn:  # a new transaction: fresh statistics
            return conn.execute(text(
                "SELECT vacuum_count + analyze_count FROM pg_stat_user_tables "
                "WHERE relname = 'executions'")).scalar()

    add_run(owner, now - 100 * DAY)
    before = vacuums()
    assert retention.run_now(["vacuum"], now=now) == {"vacuum": len(Base.metadata.tables)}
    assert vacuums() == before + 2


@pytest.mark.parametrize("mode", ["embedded"])
def test_the_vacuum_skips_sqlite(app, caplog):
    caplog.set_level("INFO", logger="app.services.retention")
    with app.app_context():
        assert retention.vacuum() == 0
    assert "vacuum: skipped on SQLite" in caplog.text


# --- run_now and the command --------------------------------------------------------------

def test_run_now_runs_all_jobs_in_order_and_refuses_unknown_names(app, now):
    with app.app_context():
        assert list(retention.run_now(now=now)) == list(retention.JOB_NAMES)
        assert list(retention.run_now(["vacuum", "executions"], now=now)) == [
            "executions", "vacuum"]
        with pytest.raises(ValueError) as refused:
            retention.run_now(["executions", "everything"], now=now)
    assert "'everything'" in str(refused.value)
    assert all(name in str(refused.value) for name in retention.JOB_NAMES)


def _command_env(app) -> dict:
    settings = app.config["SETTINGS"]
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
           "JOBSPRINT_INSTANCE_PATH": str(settings.instance_path)}
    if not settings.embedded:
        env.update({"DATABASE_URL": settings.database_url, "REDIS_URL": REDIS_URL,
                    "SECRET_KEY": TEST_SECRET,
                    "JOBSPRINT_KEK": "test1:" + base64.b64encode(TEST_KEK.key).decode()})
    return env


def test_the_retention_command_runs_the_named_jobs_and_prints_counts(app, owner, now):
    old = add_run(owner, now - 100 * DAY)
    done = subprocess.run([sys.executable, "-m", "jobs.retention", "executions", "audit_logs"],
                          cwd=PROJECT_ROOT, env=_command_env(app), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["executions: 1", "audit_logs: 0"]
    assert deleted_at(Execution, old) is not None


def test_the_retention_command_refuses_an_unknown_job(app):
    done = subprocess.run([sys.executable, "-m", "jobs.retention", "executions", "logs"],
                          cwd=PROJECT_ROOT, env=_command_env(app), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert "unknown retention job logs" in done.stderr
    assert ", ".join(retention.JOB_NAMES) in done.stderr


# --- the clock: once a period across every clock --------------------------------------------

class Recorder:
    """Stand-ins for the retention jobs, with their names and periods, that note each run."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def jobs(self) -> tuple[PeriodicJob, ...]:
        return tuple(replace(job, run=self._run(job.name)) for job in RETENTION_JOBS)

    def _run(self, name: str):
        def run() -> int:
            with self.lock:
                self.calls.append(name)
            return 0
        return run


DAILY = {"retention.executions", "retention.trigger_events", "retention.ai_history",
         "retention.audit_logs", "retention.idempotency_keys"}
ALL = DAILY | {"retention.purge", "retention.vacuum"}


def test_two_clocks_run_each_job_once_a_period(app, now):
    recorder = Recorder()
    first, second = Clock(app, recorder.jobs()), Clock(app, recorder.jobs())
    assert set(first.tick(now)) == ALL
    assert second.tick(now) == {}
    assert first.tick(now + HOUR) == second.tick(now + HOUR) == {}
    restarted = Clock(app, recorder.jobs())  # a new process: nothing in memory
    assert restarted.tick(now + 23 * HOUR) == {}

    assert set(second.tick(now + DAY)) == DAILY
    assert first.tick(now + DAY) == {}
    assert set(first.tick(now + 7 * DAY)) == DAILY | {"retention.vacuum"}
    assert set(restarted.tick(now + 30 * DAY)) == ALL
    assert second.tick(now + 30 * DAY + HOUR) == {}
    assert sorted(recorder.calls) == sorted([*ALL, *DAILY, *DAILY, "retention.vacuum", *ALL])


def test_the_periods_are_settings(app, now):
    configure(app, retention_every_s=3600, vacuum_every_s=7200, purge_every_s=10800)
    clock = Clock(app, Recorder().jobs())
    assert set(clock.tick(now)) == ALL
    assert set(clock.tick(now + HOUR)) == DAILY
    assert set(clock.tick(now + 2 * HOUR)) == DAILY | {"retention.vacuum"}
    assert set(clock.tick(now + 3 * HOUR)) == DAILY | {"retention.purge"}


def test_two_clocks_ticking_at_once_run_each_job_once(app, now):
    recorder = Recorder()
    clocks = [Clock(app, recorder.jobs()) for _ in range(2)]
    start = threading.Barrier(2)
    done: list[dict] = [{}, {}]

    def tick(index: int) -> None:
        start.wait(10)
        done[index] = clocks[index].tick(now)

    threads = [threading.Thread(target=tick, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert set(done[0]) | set(done[1]) == ALL
    assert set(done[0]) & set(done[1]) == set()
    assert sorted(recorder.calls) == sorted(ALL)


def test_a_failed_run_is_tried_again_at_the_next_check(app, now, caplog):
    attempts = []

    def flaky() -> int:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("database went away")
        return 7

    clock = Clock(app, (PeriodicJob("retention.flaky", flaky,
                                    period_setting="retention_every_s"),))
    assert clock.tick(now) == {}
    assert "clock job retention.flaky failed" in caplog.text
    assert clock.tick(now + timedelta(minutes=1)) == {"retention.flaky": 7}
    assert clock.tick(now + timedelta(minutes=2)) == {}


def test_a_run_cut_short_is_taken_over_after_the_lease(app, now):
    with app.app_context():  # a clock claimed the purge, then its process was killed
        assert maintenance.claim("retention.purge", 30 * 86400, now)
    clock = Clock(app, Recorder().jobs())
    assert "retention.purge" not in clock.tick(now + maintenance.LEASE - timedelta(minutes=1))
    assert "retention.purge" in clock.tick(now + maintenance.LEASE)


def test_the_real_jobs_run_from_the_clock(app, owner, now):
    old = add_run(owner, now - 100 * DAY)
    done = Clock(app, RETENTION_JOBS).tick()
    assert done["retention.executions"] == 1
    assert set(done) == ALL
    assert deleted_at(Execution, old) is not None
