"""``python -m jobs.retention [job ...]``: run retention jobs once, now, whatever their periods
(the clock runs each once a period on its own), and print what each touched.

The jobs, in the order they run: executions, ai_history, audit_logs (soft-delete the rows older
than their JOBSPRINT_RETENTION_*_DAYS), purge (delete for real the rows soft-deleted more than
JOBSPRINT_RETENTION_PURGE_AFTER_DAYS ago), vacuum (VACUUM (ANALYZE) on PostgreSQL). No names:
all of them. Safe to run at any time, beside the clock: each job is batched and idempotent.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from dataclasses import replace

    from app import create_app
    from app.config import ConfigError, load_settings
    from app.services.retention import JOB_NAMES, run_now

    names = sys.argv[1:] if argv is None else argv
    if unknown := [name for name in names if name not in JOB_NAMES]:
        print(f"jobsprint: unknown retention job {', '.join(unknown)} "
              f"(the jobs are: {', '.join(JOB_NAMES)})", file=sys.stderr)
        return 2
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"jobsprint: cannot run retention: {exc}", file=sys.stderr)
        return 1
    app = create_app(replace(settings, inline_workers=False))
    with app.app_context():
        counts = run_now(names or None)
    for name, count in counts.items():
        print(f"{name}: {count}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
