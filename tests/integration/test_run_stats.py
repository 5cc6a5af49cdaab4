"""The dashboard's filters, counts and hourly chart, on each database, with back-dated runs."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from werkzeug.datastructures import MultiDict

from app.db import db
from app.models import Execution, User, Workflow, utcnow
from app.services import run_stats


@pytest.fixture
def owner(app):
    with app.app_context():
        user = User(id=uuid.uuid4(), email=f"{uuid.uuid4().hex[:8]}@example.com",
                    password_hash="x")
        db.session.add(user)
        flows = [Workflow(id=uuid.uuid4(), user_id=user.id, name=name, version=1,
                          definition={"nodes": [], "connections": []}) for name in "AB"]
        db.session.add_all(flows)
        db.session.commit()
        yield user, flows


def add_run(user, flow, status, age):
    at = utcnow() - age
    db.session.add(Execution(id=uuid.uuid4(), user_id=user.id, workflow_id=flow.id,
                             workflow_version=1, trigger_type="manual", status=status,
                             created_at=at, updated_at=at))


def test_counts_per_status_follow_the_workflow_and_window(app, owner):
    user, (a, b) = owner
    add_run(user, a, "succeeded", timedelta(minutes=5))
    add_run(user, a, "failed", timedelta(minutes=30))
    add_run(user, a, "failed", timedelta(hours=3))
    add_run(user, b, "succeeded", timedelta(days=2))
    db.session.commit()
    everything = run_stats.status_counts(user.id, run_stats.Filters())
    assert everything["succeeded"] == 2 and everything["failed"] == 2
    assert everything["queued"] == 0
    hour = run_stats.Filters.parse(MultiDict({"since": "1h"}), user.id)
    assert run_stats.status_counts(user.id, hour)["failed"] == 1
    only_b = run_stats.Filters.parse(MultiDict({"workflow": str(b.id)}), user.id)
    assert run_stats.status_counts(user.id, only_b) == {**dict.fromkeys(
        ("queued", "running", "waiting", "failed", "cancelled"), 0), "succeeded": 1}


def test_filters_ignore_what_is_not_the_users(app, owner):
    user, (a, _b) = owner
    stranger = uuid.uuid4()
    parsed = run_stats.Filters.parse(MultiDict({"workflow": str(a.id), "status": "nope",
                                                "since": "1y"}), stranger)
    assert parsed == run_stats.Filters()
    assert run_stats.Filters.parse(MultiDict({"workflow": "x"}), user.id) == run_stats.Filters()


def test_hourly_buckets_cover_the_last_24_hours(app, owner):
    user, (a, b) = owner
    now = utcnow()
    add_run(user, a, "succeeded", timedelta(minutes=1))
    add_run(user, a, "failed", timedelta(minutes=2))
    add_run(user, b, "succeeded", timedelta(hours=5))
    add_run(user, a, "succeeded", timedelta(hours=30))  # outside the chart
    db.session.commit()
    hours = run_stats.hourly(user.id, run_stats.Filters(), now)
    assert len(hours) == 24
    assert hours[-1]["hour"] == now.replace(minute=0, second=0, microsecond=0)
    current = hours[-1] if (now - timedelta(minutes=2)).hour == now.hour else None
    if current is not None:
        assert (current["runs"], current["failures"]) == (2, 1)
    assert sum(h["runs"] for h in hours) == 3
    assert sum(h["failures"] for h in hours) == 1
    assert hours[-6]["runs"] + hours[-7]["runs"] >= 1  # five hours ago
    only_b = run_stats.Filters(workflow_id=b.id)
    assert sum(h["runs"] for h in run_stats.hourly(user.id, only_b, now)) == 1
