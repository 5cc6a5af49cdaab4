"""``flask --app wsgi jobsprint …``: operations from the command line."""

from __future__ import annotations

import click
from flask.cli import AppGroup

jobsprint = AppGroup("jobsprint", help="Jobsprint operations.")


@jobsprint.command("rotate-keys")
def rotate_keys() -> None:
    """Re-wrap every data key with the first key of JOBSPRINT_KEK (list the old key after it
    until this has run)."""
    from app.services import credentials

    done = credentials.rotate_keys()
    for kind, count in done.items():
        click.echo(f"{kind}: {count} re-wrapped")


def init_app(app) -> None:
    app.cli.add_command(jobsprint)
