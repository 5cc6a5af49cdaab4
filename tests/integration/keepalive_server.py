"""A gunicorn app and worker class for test_keepalive: each answer names the thread that
served it (``/slow`` after 5 s); the worker lingers ``LINGER_S`` (longer than production's few
ms, so what the tests see does not depend on how fast the machine is)."""

import threading
import time

from app.web.keepalive import LingeringThreadWorker


class SlowLingeringWorker(LingeringThreadWorker):
    LINGER_S = 2.0


def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        time.sleep(5.0)
    body = str(threading.get_ident()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
