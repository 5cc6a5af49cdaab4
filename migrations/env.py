"""Alembic environment: migrations run on the connection the app hands over, or on the URL
from the app's settings (DATABASE_URL) when run from the alembic command line."""

from alembic import context

from app.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    from app.config import load_settings
    from app.db import make_engine

    engine = make_engine(config.get_main_option("sqlalchemy.url") or load_settings().database_url)
    with engine.connect() as conn:
        run_migrations(conn)
    engine.dispose()
