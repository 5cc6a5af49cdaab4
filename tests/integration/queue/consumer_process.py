"""A consumer in a process of its own, for the tests that SIGKILL one in the middle of a run.

    python -m tests.integration.queue.consumer_process <queue url> <options as JSON> <log path>

The handler appends each id it receives to the log (flushed at once), then works for a minute.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from app.queue import open_queue


def main(url: str, options: str, log_path: str) -> None:
    queue = open_queue(url, **json.loads(options))

    def handler(execution_id: str) -> None:
        with open(log_path, "a") as log:
            log.write(execution_id + "\n")
        time.sleep(60)

    queue.consume(handler, stop=threading.Event(), concurrency=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
