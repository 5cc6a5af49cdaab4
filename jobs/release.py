"""``release``: apply the database migrations, then exit (Procfile release phase)."""

import sys

from app.config import ConfigError, load_settings
from app.db import db
from app.migrate import upgrade


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"jobsprint: cannot release: {exc}", file=sys.stderr)
        return 1
    db.configure(settings.database_url)
    upgrade()
    print("jobsprint: migrations applied")
    return 0


if __name__ == "__main__":
    sys.exit(main())
