"""Database migrations (Alembic), run by ``release`` or by the embedded default at start."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from app.config import PROJECT_ROOT, Settings
from app.db import db


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    return config


def upgrade() -> None:
    """Apply every pending migration to the configured database."""
    with db.engine.begin() as connection:
        config = _alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def is_current() -> bool:
    """Whether the database is at the newest migration (for readiness checks)."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    with db.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision() == head


def upgrade_if_embedded(settings: Settings) -> None:
    if settings.embedded:
        settings.instance_path.mkdir(parents=True, exist_ok=True)
        upgrade()
