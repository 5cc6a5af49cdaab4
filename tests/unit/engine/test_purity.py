"""The engine stays pure: importing it pulls in no web framework, database or queue."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[3]
FORBIDDEN = ("flask", "sqlalchemy", "redis", "rq", "pika", "psycopg", "requests", "httpx")


def test_importing_the_engine_imports_no_framework_database_or_queue():
    script = ("import sys, app.engine; "
              f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))")
    completed = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, check=True, timeout=60)
    assert completed.stdout.strip() == "[]"
