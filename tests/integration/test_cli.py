"""``flask jobsprint …``: the operator's command line, against the real database in both run
modes (the ``app`` fixture), plus the real ``flask`` command in subprocesses for what only a
process can show: broken settings, and a run executed by a separate queue worker."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from app import create_app
from app.config import PROJECT_ROOT
from app.db import db
from app.models import Execution, User, Workflow
from app.services import n8n_interop
from tests.conftest import REDIS_URL, TEST_KEK, TEST_SECRET, _clean_postgres, make_settings

PASSWORD = "correct horse battery"
DOUBLE = {"name": "Double", "nodes": [
    {"id": "start", "type": "trigger.manual"},
    {"id": "calc", "type": "logic.set", "params": {"fields": {"twice": "{{ input.n * 2 }}"}}}],
    "connections": [{"from": "start", "to": "calc"}]}


def invoke(runner, *args: str, input: str | None = None, **env: str):
    return runner.invoke(args=["jobsprint", *args], input=input, env=env or None)


def assert_refused(result, exit_code: int = 1) -> None:
    """Refused with a message and this exit status, not with a traceback."""
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


def started_run(result) -> str:
    """The id in ``run <id> of '<name>' started`` (stderr also carries the app's log lines)."""
    return re.search(r"^run (\S+) of '.*' started$", result.stderr, re.MULTILINE).group(1)


@pytest.fixture
def owner(runner) -> str:
    email = f"op-{uuid.uuid4().hex[:8]}@example.com"
    result = invoke(runner, "create-user", email, "--password-stdin", input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    return email


@pytest.fixture
def import_file(runner, owner, tmp_path):
    def do(document: dict, email: str = owner) -> str:
        path = tmp_path / f"{uuid.uuid4().hex}.json"
        path.write_text(json.dumps(document))
        result = invoke(runner, "import", str(path), "--owner", email)
        assert result.exit_code == 0, result.output
        return result.stdout.strip()

    return do


# --- create-user --------------------------------------------------------------------------

def test_create_user_asks_twice_hidden_and_prints_the_id(runner):
    result = invoke(runner, "create-user", "  Ann@Example.COM ",
                    input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Password: \nRepeat for confirmation: \n")
    user = db.session.get(User, uuid.UUID(result.stdout.splitlines()[-1]))
    assert user.email == "ann@example.com"
    assert PASSWORD not in result.output  # the prompt does not echo it
    db.session.commit()


def test_create_user_refuses_a_duplicate_and_a_short_password(runner, owner):
    again = invoke(runner, "create-user", owner.upper(), "--password-stdin",
                   input=PASSWORD + "\n")
    assert_refused(again)
    assert "Error: an account with this email already exists" in again.stderr
    short = invoke(runner, "create-user", "new@example.com", "--password-stdin",
                   input="short\n")
    assert_refused(short)
    assert "password: must be at least 8 characters" in short.stderr


def test_create_user_prompt_wants_the_same_password_twice(runner):
    result = invoke(runner, "create-user", "bob@example.com",
                    input=f"{PASSWORD}\nsomething else\n{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert "do not match" in result.output


# --- import / export ----------------------------------------------------------------------

def test_import_then_export_gives_the_same_document(runner, import_file):
    workflow_id = import_file(DOUBLE)
    exported = invoke(runner, "export", workflow_id)
    assert exported.exit_code == 0, exported.output
    document = json.loads(exported.stdout)
    assert document == {**DOUBLE, "settings": {"concurrency": 1, "timeout_s": 300}}


def test_n8n_export_imports_back_as_a_new_workflow(runner, import_file, owner, tmp_path):
    workflow_id = import_file(DOUBLE)
    target = tmp_path / "double.n8n.json"
    exported = invoke(runner, "export", workflow_id, "--format", "n8n", "-o", str(target))
    assert exported.exit_code == 0, exported.output
    n8n = json.loads(target.read_text())
    assert n8n_interop.looks_like_n8n(n8n)
    again = invoke(runner, "import", str(target), "--owner", owner)
    assert again.exit_code == 0, again.output
    copy = db.session.get(Workflow, uuid.UUID(again.stdout.strip()))
    assert copy.id != uuid.UUID(workflow_id) and copy.name == "Double"
    assert [n["type"] for n in copy.definition["nodes"]] == ["trigger.manual", "logic.set"]
    db.session.commit()


def test_import_reads_standard_input_and_warns_what_n8n_could_not_carry(runner, owner):
    n8n = {"name": "From n8n", "nodes": [
        {"name": "Start", "type": "n8n-nodes-base.manualTrigger", "parameters": {},
         "position": [0, 0]},
        {"name": "Code", "type": "n8n-nodes-base.code", "parameters": {"jsCode": "return 1"},
         "position": [200, 0]}],
        "connections": {"Start": {"main": [[{"node": "Code", "type": "main", "index": 0}]]}}}
    result = invoke(runner, "import", "-", "--owner", owner, input=json.dumps(n8n))
    assert result.exit_code == 0, result.output
    uuid.UUID(result.stdout.strip())
    assert "warning: Code: " in result.stderr


def test_import_refuses_an_invalid_definition_naming_each_problem(runner, owner, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"name": "Bad", "nodes": [
        {"id": "start", "type": "trigger.manual"}, {"id": "x", "type": "no.such.type"}],
        "connections": [{"from": "start", "to": "missing"}]}))
    result = invoke(runner, "import", str(path), "--owner", owner)
    assert_refused(result)
    lines = result.stderr.splitlines()
    first = lines.index("Error: the workflow definition is invalid")
    assert [line.split(":")[0] for line in lines[first + 1:first + 3]] == [
        "  nodes[1].type", "  connections[0].to"], lines
    assert db.session.scalar(select(Workflow).where(Workflow.name == "Bad")) is None
    db.session.commit()


def test_import_refuses_broken_json_and_an_unknown_owner(runner, owner, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"name": ')
    broken = invoke(runner, "import", str(path), "--owner", owner)
    assert_refused(broken)
    assert "file: Expecting value at line 1 column 10" in broken.stderr
    path.write_text(json.dumps(DOUBLE))
    nobody = invoke(runner, "import", str(path), "--owner", "nobody@example.com")
    assert_refused(nobody)
    assert "no active account has the email nobody@example.com" in nobody.stderr


def test_export_all_writes_one_file_per_workflow(runner, import_file, owner, tmp_path):
    first, second = import_file(DOUBLE), import_file({**DOUBLE, "name": "Other"})
    out = tmp_path / "backup"
    result = invoke(runner, "export", "--all", "--owner", owner, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{first}.json", f"{second}.json"])
    assert json.loads((out / f"{second}.json").read_text())["name"] == "Other"


def test_export_refuses_unknown_ids_and_half_given_options(runner, owner):
    unknown = invoke(runner, "export", str(uuid.uuid4()))
    assert_refused(unknown)
    assert "no workflow has the id" in unknown.stderr
    assert_refused(invoke(runner, "export"), exit_code=2)
    assert_refused(invoke(runner, "export", "--all", "--owner", owner), exit_code=2)


# --- run ----------------------------------------------------------------------------------

def test_run_prints_the_result_and_exits_0(runner, import_file, tmp_path):
    workflow_id = import_file(DOUBLE)
    result = invoke(runner, "run", workflow_id, "--input", '{"n": 21}', "--timeout", "30")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"n": 21, "twice": 42}
    run_id = started_run(result)
    assert db.session.get(Execution, uuid.UUID(run_id)).status == "succeeded"
    db.session.commit()
    (tmp_path / "input.json").write_text('{"n": 5}')
    from_file = invoke(runner, "run", workflow_id, "--input", f"@{tmp_path / 'input.json'}")
    assert json.loads(from_file.stdout) == {"n": 5, "twice": 10}


def test_a_failed_run_exits_1_with_its_error(runner, import_file):
    workflow_id = import_file({"name": "Refused", "nodes": [
        {"id": "start", "type": "trigger.manual"},
        {"id": "call", "type": "http.request",
         "params": {"method": "GET", "url": "http://127.0.0.1:9/private"}}],
        "connections": [{"from": "start", "to": "call"}]})
    result = invoke(runner, "run", workflow_id, "--timeout", "30")
    assert_refused(result)
    assert result.stdout == ""
    run_id = started_run(result)
    assert re.search(rf"^Error: run {run_id} failed at node call: .+$", result.stderr,
                     re.MULTILINE), result.stderr


def test_a_run_still_going_at_the_timeout_exits_2_naming_it(runner, import_file):
    workflow_id = import_file({"name": "Slow", "nodes": [
        {"id": "start", "type": "trigger.manual"},
        {"id": "pause", "type": "logic.wait", "params": {"seconds": 3600}}],
        "connections": [{"from": "start", "to": "pause"}]})
    result = invoke(runner, "run", workflow_id, "--timeout", "0.5")
    assert_refused(result, exit_code=2)
    run_id = started_run(result)
    assert f"Error: run {run_id} did not finish within 0.5 s; it goes on" in result.stderr
    assert db.session.get(Execution, uuid.UUID(run_id)) is not None
    db.session.commit()


def test_run_refuses_bad_input_unknown_workflows_and_webhook_only_ones(runner, import_file):
    workflow_id = import_file(DOUBLE)
    bad = invoke(runner, "run", workflow_id, "--input", "{nope")
    assert_refused(bad, exit_code=2)
    assert "Invalid value for --input: not JSON: Expecting property name" in bad.stderr
    missing = invoke(runner, "run", workflow_id, "--input", "@/nonexistent/input.json")
    assert_refused(missing, exit_code=2)
    assert "/nonexistent/input.json: No such file or directory" in missing.stderr
    assert "is not a workflow id" in invoke(runner, "run", "nope").stderr
    hook_only = import_file({"name": "Hook", "nodes": [
        {"id": "hook", "type": "trigger.webhook"}], "connections": []})
    refused = invoke(runner, "run", hook_only)
    assert_refused(refused)
    assert "this workflow has no trigger.manual trigger" in refused.stderr
    assert db.session.scalar(select(Execution)) is None
    db.session.commit()


# --- executions list ----------------------------------------------------------------------

def test_executions_list_shows_a_table_or_json_lines_filtered(runner, import_file, owner):
    double = import_file(DOUBLE)
    slow = import_file({"name": "A workflow with a long name indeed", "nodes": [
        {"id": "start", "type": "trigger.manual"},
        {"id": "pause", "type": "logic.wait", "params": {"seconds": 3600}}],
        "connections": [{"from": "start", "to": "pause"}]})
    done = started_run(invoke(runner, "run", double, "--input", '{"n": 1}'))
    parked = started_run(invoke(runner, "run", slow, "--timeout", "0.2"))

    table = invoke(runner, "executions", "list")
    assert table.exit_code == 0, table.output
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["ID", "WORKFLOW", "STATUS", "CREATED", "(UTC)", "DURATION"]
    assert [row.split()[0] for row in rows] == [parked, done]  # newest first
    assert "  A workflow with a long…  " in rows[0]
    assert rows[1].split()[2] == "succeeded" and rows[1].endswith(" s")

    lines = invoke(runner, "executions", "list", "--json", "--workflow", double).stdout
    (only,) = [json.loads(line) for line in lines.splitlines()]
    assert only["id"] == done and only["result"] == {"n": 1, "twice": 2}
    succeeded = invoke(runner, "executions", "list", "--status", "succeeded", "--owner", owner)
    assert [row.split()[0] for row in succeeded.stdout.splitlines()[1:]] == [done]
    assert invoke(runner, "executions", "list", "--limit", "1").stdout.count("\n") == 2


def test_executions_list_refuses_bad_filters(runner):
    assert_refused(invoke(runner, "executions", "list", "--status", "done"), exit_code=2)
    unknown = invoke(runner, "executions", "list", "--workflow", str(uuid.uuid4()))
    assert_refused(unknown)
    assert "no workflow has the id" in unknown.stderr


# --- retention, check-config --------------------------------------------------------------

def test_retention_run_now_runs_the_named_jobs(runner):
    from app.services import retention

    everything = invoke(runner, "retention", "run-now")
    assert everything.exit_code == 0, everything.output
    assert sorted(line.split(":")[0] for line in everything.stdout.splitlines()) == sorted(
        retention.JOB_NAMES)
    one = invoke(runner, "retention", "run-now", "executions")
    assert one.exit_code == 0, one.output
    assert one.stdout.splitlines() == ["executions: 0"]
    unknown = invoke(runner, "retention", "run-now", "executions", "everything")
    assert_refused(unknown, exit_code=2)
    assert "no job 'everything'; the jobs: executions, " in unknown.stderr


def test_check_config_prints_every_setting_masked_and_each_problem(runner, tmp_path):
    good = invoke(runner, "check-config", JOBSPRINT_INSTANCE_PATH=str(tmp_path))
    assert good.exit_code == 0, good.output
    assert good.stdout.splitlines()[-1] == "No problems found."
    assert "  JOBSPRINT_BCRYPT_ROUNDS " in good.stdout
    secret = "a-secret-key-that-is-long-enough-to-be-accepted"
    bad = invoke(runner, "check-config", JOBSPRINT_INSTANCE_PATH=str(tmp_path),
                 DATABASE_URL="postgresql://u:dbpassword@127.0.0.1/x", SECRET_KEY=secret,
                 JOBSPRINT_BCRYPT_ROUNDS="many")
    assert bad.exit_code == 1
    assert secret not in bad.output and "dbpassword" not in bad.output
    assert "postgresql+psycopg://u:***@127.0.0.1/x" in bad.stdout
    assert bad.stdout.splitlines()[-3:] == [
        "2 problems:", "  JOBSPRINT_KEK: required when DATABASE_URL is set (production)",
        "  JOBSPRINT_BCRYPT_ROUNDS: expected an integer, got 'many'"]


def test_a_database_that_does_not_answer_is_one_line(tmp_path, request):
    settings = make_settings("production", tmp_path, request, inline_workers=False,
                             database_url="postgresql+psycopg://postgres@127.0.0.1:9/none")
    app = create_app(settings)
    try:
        result = invoke(app.test_cli_runner(), "executions", "list")
    finally:
        db.remove()
        db.engine.dispose()
    assert_refused(result)
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert error.startswith("Error: the database did not answer: connection")


# --- the flask command itself -------------------------------------------------------------

def flask_command(tmp_path: Path, *args: str, input: str | None = None,
                  **env: str) -> subprocess.CompletedProcess:
    """``flask --app wsgi jobsprint ARGS`` in a process of its own, with only ``env`` set (the
    embedded default, in ``tmp_path``, unless ``env`` says otherwise)."""
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
            "JOBSPRINT_INSTANCE_PATH": str(tmp_path / "instance"), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "jobsprint", *args],
                          input=input, cwd=PROJECT_ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=120)


BROKEN = {"DATABASE_URL": "postgresql://127.0.0.1/none", "SECRET_KEY": TEST_SECRET,
          "JOBSPRINT_BCRYPT_ROUNDS": "many", "LOG_LEVEL": "loud"}


def test_flask_check_config_lists_every_problem_when_the_app_cannot_start(tmp_path):
    result = flask_command(tmp_path, "check-config", **BROKEN)
    assert result.returncode == 1, result.stderr
    assert result.stderr == ""
    assert "Jobsprint settings: production (DATABASE_URL is set)" in result.stdout
    assert "  JOBSPRINT_BCRYPT_ROUNDS " in result.stdout
    assert result.stdout.splitlines()[-4:] == [
        "3 problems:", "  JOBSPRINT_KEK: required when DATABASE_URL is set (production)",
        "  JOBSPRINT_BCRYPT_ROUNDS: expected an integer, got 'many'",
        "  LOG_LEVEL: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'loud'"]
    assert TEST_SECRET not in result.stdout


def test_other_commands_stop_at_the_first_problem_in_one_line(tmp_path):
    result = flask_command(tmp_path, "executions", "list", **BROKEN)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "jobsprint: cannot start: JOBSPRINT_KEK: required when DATABASE_URL is set "
        "(production)")


def test_flask_run_in_the_embedded_default_runs_in_the_commands_own_process(tmp_path):
    """No web server is up: the command's process has the embedded queue's workers."""
    created = flask_command(tmp_path, "create-user", "solo@example.com", "--password-stdin",
                            input=PASSWORD + "\n")
    assert created.returncode == 0, created.stderr
    (tmp_path / "double.json").write_text(json.dumps(DOUBLE))
    imported = flask_command(tmp_path, "import", str(tmp_path / "double.json"),
                             "--owner", "solo@example.com")
    assert imported.returncode == 0, imported.stderr
    result = flask_command(tmp_path, "run", imported.stdout.strip(), "--input", '{"n": 3}',
                           "--timeout", "60")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"n": 3, "twice": 6}


@pytest.fixture
def queued_app(tmp_path, request):
    """Production with a real queue (RQ): the app publishes runs; only a worker runs them."""
    queue_name = f"cli.{uuid.uuid4().hex[:12]}"
    settings = make_settings("production", tmp_path, request, queue_url=REDIS_URL,
                             queue_name=queue_name, inline_workers=False)
    app = create_app(settings)
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
           "DATABASE_URL": settings.database_url, "REDIS_URL": REDIS_URL,
           "QUEUE_URL": REDIS_URL, "JOBSPRINT_QUEUE_NAME": queue_name,
           "SECRET_KEY": TEST_SECRET,
           "JOBSPRINT_KEK": "test1:" + base64.b64encode(TEST_KEK.key).decode(),
           "JOBSPRINT_INSTANCE_PATH": str(tmp_path / "worker"), "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([sys.executable, "-m", "jobs.worker"], cwd=PROJECT_ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    yield app
    worker.terminate()
    worker.wait(30)
    print((tmp_path / "worker.log").read_text())  # shown when the test failed
    app.extensions["jobsprint.queue"].close()
    db.remove()
    _clean_postgres()
    redis.Redis.from_url(REDIS_URL).flushdb()
    db.engine.dispose()


def test_run_in_production_waits_for_a_queue_worker(queued_app, tmp_path):
    runner = queued_app.test_cli_runner()
    created = invoke(runner, "create-user", "q@example.com", "--password-stdin",
                     input=PASSWORD + "\n")
    assert created.exit_code == 0, created.output
    path = tmp_path / "double.json"
    path.write_text(json.dumps(DOUBLE))
    workflow_id = invoke(runner, "import", str(path), "--owner", "q@example.com").stdout.strip()
    result = invoke(runner, "run", workflow_id, "--input", '{"n": 4}', "--timeout", "60")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"n": 4, "twice": 8}
