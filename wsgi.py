"""The WSGI entry point: ``gunicorn wsgi:app``."""

import gc
import sys

from app import create_app
from app.config import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    from app import check_config

    # The flask command needs the app to find its commands; this one must work without it.
    if check_config.requested(sys.argv):
        sys.exit(check_config.main())
    sys.exit(f"jobsprint: cannot start: {exc}")

# Everything loaded so far (modules, mappers, templates) lives as long as the process: move it
# out of the collector's sight, so a full collection no longer scans it. Measured on the
# editor's 100-node page: the worst of 300 renders 110 ms -> 22 ms (p50 unchanged, ~12 ms).
gc.collect()
gc.freeze()
