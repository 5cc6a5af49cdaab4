"""``flask --app wsgi jobsprint …``: operations from the command line.

Commands act with the operator's authority: a workflow or a run is named by id, a user by
email, and the command then calls the same services as the pages and the API, as the owner.
A refusal is one line on stderr (a validation's problems follow, one a line) and exit status
1, never a traceback. ``check-config`` needs no app: see ``app/check_config.py``.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy.exc import OperationalError

from app.errors import ServiceError
from app.models import RUN_STATES
from app.services import accounts, admin, executions, workflows


class _Command(click.Command):
    """Turns a service's refusal, or a database that does not answer, into a
    ``click.ClickException``: one line (then the problems), exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ServiceError as exc:
            lines = [exc.message, *(f"  {p.path}: {p.message}" for p in exc.details)]
            raise click.ClickException("\n".join(lines)) from None
        except OperationalError as exc:
            reason = str(exc.orig or exc).strip().splitlines()[0]
            raise click.ClickException(f"the database did not answer: {reason}") from None


class _Group(AppGroup):
    command_class = _Command

    def group(self, *args, **kwargs):
        kwargs.setdefault("cls", _Group)
        return super().group(*args, **kwargs)


jobsprint = _Group("jobsprint", help="Jobsprint operations.")


@jobsprint.command("create-user")
@click.argument("email")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from the first line of standard input.")
def create_user(email: str, password_stdin: bool) -> None:
    """Create an account and print its id (the password is asked for twice, hidden)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    click.echo(accounts.register(email, password).id)


@jobsprint.command("export")
@click.argument("workflow_id", required=False)
@click.option("--all", "every", is_flag=True,
              help="Every workflow of --owner, one file each (<id>.json) in the -o directory.")
@click.option("--owner", help="With --all: the owner's email.")
@click.option("--format", "fmt", type=click.Choice(["jobsprint", "n8n"]), default="jobsprint",
              show_default=True, help="n8n: the workflow JSON n8n imports.")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="A file (a directory with --all); default: standard output.")
def export(workflow_id: str | None, every: bool, owner: str | None, fmt: str,
           output: Path | None) -> None:
    """Write a workflow as JSON, as the editor's Export does (no ids, versions or state)."""
    if every == bool(workflow_id):
        raise click.UsageError("name a WORKFLOW_ID, or use --all --owner EMAIL -o DIR")
    if not every:
        text = _document(admin.workflow(workflow_id), fmt)
        if output is None:
            click.echo(text)
        else:
            output.write_text(text + "\n", encoding="utf-8")
        return
    if not owner or output is None:
        raise click.UsageError("--all needs --owner EMAIL and -o DIR")
    chosen = admin.workflows_of(admin.user_by_email(owner))
    output.mkdir(parents=True, exist_ok=True)
    suffix = ".n8n.json" if fmt == "n8n" else ".json"
    for workflow in chosen:
        (output / f"{workflow.id}{suffix}").write_text(_document(workflow, fmt) + "\n",
                                                       encoding="utf-8")
    click.echo(f"exported {len(chosen)} workflows to {output}", err=True)


def _document(workflow, fmt: str) -> str:
    document = workflows.export(workflow)
    if fmt == "n8n":
        from app.services import n8n_interop

        document = n8n_interop.to_n8n(document)
    return json.dumps(document, indent=2, ensure_ascii=False)


@jobsprint.command("import")
@click.argument("file", type=click.File("rb"))
@click.option("--owner", required=True, help="Email of the user who gets the workflow.")
def import_workflow(file, owner: str) -> None:
    """Create a workflow from a JSON file (Jobsprint's export or n8n's; - reads standard
    input) and print its id. What an n8n import could not carry over is listed on stderr."""
    user = admin.user_by_email(owner)
    workflow, report = workflows.import_json(user, file.read(workflows.IMPORT_MAX_BYTES + 1))
    for item in report:
        where = f"{item['node']}: " if item["node"] else ""
        click.echo(f"warning: {where}{item['message']}", err=True)
    click.echo(workflow.id)


@jobsprint.command("run")
@click.argument("workflow_id")
@click.option("--input", "run_input", default="{}", show_default=True,
              help="The run's input: JSON, or @FILE to read it from a file (@- stdin).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=300, show_default=True,
              help="Seconds to wait for the run to finish.")
def run(workflow_id: str, run_input: str, timeout: float) -> None:
    """Start a run of the workflow's manual trigger, wait, print its result as JSON.

    Exit status: 0 succeeded, 1 failed or cancelled (the error on stderr), 2 still going
    after --timeout (the run goes on). The run executes where runs execute: the queue's
    workers in production, this process's own workers in the embedded default.
    """
    from app.live.hub import hub_for
    from app.live.waiting import RunWaiter
    from app.services import webhooks

    workflow = admin.workflow(workflow_id)
    user = admin.owner(workflow)
    execution, _new = executions.start_manual(user, workflow.id, _json_input(run_input))
    run_id = execution.id
    click.echo(f"run {run_id} of {workflow.name!r} started", err=True)
    with RunWaiter(hub_for(current_app._get_current_object()), user.id, run_id) as waiter:
        outcome = waiter.wait(timeout, lambda: webhooks.run_outcome(run_id), before_run=False)
    ctx = click.get_current_context()
    if outcome is None:
        click.echo(f"Error: run {run_id} did not finish within {timeout:g} s; it goes on",
                   err=True)
        ctx.exit(2)
    status, result, error = outcome
    if status != "succeeded":
        error = error or {}
        where = f" at node {error['node_id']}" if error.get("node_id") else ""
        click.echo(f"Error: run {run_id} {status}{where}: {error.get('message', status)}",
                   err=True)
        ctx.exit(1)
    click.echo(json.dumps(result, indent=2, ensure_ascii=False))


def _json_input(raw: str):
    where = ""
    if raw.startswith("@"):
        where = f"{raw[1:]}: "
        try:
            with click.open_file(raw[1:], encoding="utf-8") as handle:
                raw = handle.read()
        except OSError as exc:
            raise click.BadParameter(f"{where}{exc.strerror}", param_hint="--input") from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{where}not JSON: {exc.msg} at line {exc.lineno} column "
                                 f"{exc.colno}", param_hint="--input") from None


@jobsprint.group("executions")
def executions_group() -> None:
    """Runs of every workflow."""


@executions_group.command("list")
@click.option("--workflow", "workflow_id", help="Only this workflow's runs.")
@click.option("--owner", help="Only the runs of this user (email).")
@click.option("--status", type=click.Choice(RUN_STATES), help="Only runs in this state.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object a line, as the API shows a run.")
def list_executions(workflow_id: str | None, owner: str | None, status: str | None,
                    limit: int, as_json: bool) -> None:
    """The newest runs first: id, workflow, status, created (UTC), duration."""
    user = admin.user_by_email(owner) if owner else None
    rows = admin.recent_executions(workflow_id=workflow_id, user=user, status=status,
                                   limit=limit)
    if as_json:
        for execution, _name in rows:
            click.echo(json.dumps(executions.as_api(execution, with_nodes=False)))
        return
    click.echo(f"{'ID':<36}  {'WORKFLOW':<24}  {'STATUS':<9}  {'CREATED (UTC)':<19}  DURATION")
    for execution, name in rows:
        click.echo(f"{execution.id}  {_clip(name, 24):<24}  {execution.status:<9}  "
                   f"{execution.created_at:%Y-%m-%d %H:%M:%S}  "
                   f"{_duration(execution.started_at, execution.finished_at)}")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1].rstrip() + "…"


def _duration(started: datetime | None, finished: datetime | None) -> str:
    if started is None or finished is None:
        return "-"
    seconds = (finished - started).total_seconds()
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds} s"


@jobsprint.group("retention")
def retention_group() -> None:
    """Retention: old runs, AI history and audit logs (the clock runs it on its own)."""


@retention_group.command("run-now")
@click.argument("names", nargs=-1)
def retention_run_now(names: tuple[str, ...]) -> None:
    """Run the retention jobs NAMES (default: all) now and print what each did."""
    from app.services import retention

    if unknown := [name for name in names if name not in retention.JOB_NAMES]:
        raise click.BadParameter(f"no job {unknown[0]!r}; the jobs: "
                                 + ", ".join(retention.JOB_NAMES), param_hint="NAMES")
    for name, count in retention.run_now(names or None).items():
        click.echo(f"{name}: {count}")


@jobsprint.command("rotate-keys")
def rotate_keys() -> None:
    """Re-wrap every data key with the first key of JOBSPRINT_KEK (list the old key after it
    until this has run)."""
    from app.services import credentials

    done = credentials.rotate_keys()
    for kind, count in done.items():
        click.echo(f"{kind}: {count} re-wrapped")


@jobsprint.command("check-config", with_appcontext=False)
def check_config_command() -> None:
    """Print every setting read from the environment (secrets masked), then every problem;
    exit status 1 if there is one. Works even when the settings stop start-up."""
    from app import check_config

    lines, usable = check_config.report()
    click.echo("\n".join(lines))
    click.get_current_context().exit(0 if usable else 1)


def init_app(app) -> None:
    app.cli.add_command(jobsprint)
