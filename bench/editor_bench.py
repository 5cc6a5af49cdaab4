"""The editor page of a 100-node workflow: server render time, and the browser's first paint.

    .venv/bin/python bench/editor_bench.py [--nodes 100] [--renders 50] [--loads 10]

Production mode in this process against PostgreSQL ``jobsprint_bench`` (dropped, created and
migrated) and Redis db 12, no queue. A user and a workflow of ``--nodes`` nodes (a manual
trigger, then logic.set / logic.if nodes in a chain with branches, no positions: the editor
lays it out), then:

- ``render_ms``: ``GET /workflows/<id>/edit`` through the WSGI app (Flask's test client, so
  no network), ``--renders`` times after a warm-up: p50 / p99 / max; with a node selected too
  (its settings form is part of the page).
- ``first_paint_ms`` / ``first_contentful_paint_ms`` / ``dom_content_loaded_ms``: Debian's
  headless Chromium (Playwright) loading the page ``--loads`` times from a werkzeug server in
  this process, from the browser's own Performance API: p50 / max.
- The raw parts in the same run: Redis PING round trips/s and PostgreSQL single-row commits/s.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import base64
import gc
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time

import w2_bench as w2
from w2_bench import figure, percentile

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def definition(count: int) -> dict:
    nodes = [{"id": "start", "type": "trigger.manual", "params": {}}]
    connections = []
    previous = "start"
    for n in range(1, count):
        if n % 10 == 0:
            node = {"id": f"check{n}", "type": "logic.if",
                    "params": {"condition": f"{{{{ input.n{n - 1} > {n} }}}}"}}
        else:
            node = {"id": f"set{n}", "type": "logic.set", "name": f"Step {n}",
                    "params": {"fields": {f"n{n}": f"{{{{ (input.n{n - 1} or 0) + 1 }}}}"}}}
        nodes.append(node)
        edge = {"from": previous, "to": node["id"]}
        if previous.startswith("check"):
            edge["output"] = "true"
        connections.append(edge)
        previous = node["id"]
    return {"name": f"{count} nodes", "nodes": nodes, "connections": connections}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--renders", type=int, default=50)
    parser.add_argument("--loads", type=int, default=10)
    args = parser.parse_args()

    w2.recreate_database()
    w2.flush_redis()
    redis_rt, pg_commits = w2.redis_round_trips(), w2.pg_commits()
    figure("part=redis", "round_trips_per_s", redis_rt, connection="one", command="PING")
    figure("part=postgresql", "commits_per_s", pg_commits, statement="single-row INSERT")
    instance = tempfile.mkdtemp(prefix="editor-bench-")
    env = {k: v for k, v in os.environ.items()
           if k not in w2.CLEARED_ENV and not k.startswith("JOBSPRINT_")}
    env.update(DATABASE_URL=w2.DATABASE_URL, REDIS_URL=w2.REDIS_URL,
               SECRET_KEY=secrets.token_urlsafe(48), JOBSPRINT_INSTANCE_PATH=instance,
               JOBSPRINT_KEK=base64.b64encode(secrets.token_bytes(32)).decode(),
               JOBSPRINT_API_RATE_LIMIT="1000000 per minute", JOBSPRINT_SECURE_COOKIES="false")
    subprocess.run([w2.PYTHON, "-m", "jobs.release"], cwd=w2.ROOT, env=env, check=True,
                   capture_output=True)
    os.environ.update(env)
    from app import create_app
    from app.db import db
    from app.models import User
    from app.services import workflows

    app = create_app()
    client = app.test_client()
    email, password = "editor-bench@example.com", w2.PASSWORD
    token = client.get("/register").get_data(as_text=True).split(
        'name="csrf_token" type="hidden" value="')[1].split('"')[0]
    client.post("/register", data={"csrf_token": token, "email": email,
                                   "password": password, "confirm": password})
    with app.app_context():
        user = db.session.query(User).filter_by(email=email).one()
        flow = workflows.create(user, definition(args.nodes))
        path = f"/workflows/{flow.id}/edit"
    label = f"editor nodes={args.nodes}"
    gc.collect()
    gc.freeze()  # as wsgi.py does after loading the app

    def renders(what: str) -> None:
        for _ in range(5):
            assert client.get(path).status_code == 200
        times = []
        for _ in range(args.renders):
            began = time.perf_counter()
            answer = client.get(path)
            times.append((time.perf_counter() - began) * 1000)
            assert answer.status_code == 200
        size = len(answer.get_data())
        figure(label, "render_ms_p50", percentile(times, 0.5), page=what, bytes=size,
               vs_redis_round_trip_ms=f"{1000 / redis_rt:.3f}",
               vs_pg_commit_ms=f"{1000 / pg_commits:.3f}")
        figure(label, "render_ms_p99", percentile(times, 0.99), page=what)
        figure(label, "render_ms_max", max(times), page=what)

    renders("nothing selected")
    token = client.get(path).get_data(as_text=True).split('data-csrf="')[1].split('"')[0]
    client.post(path + "/select", data={"csrf_token": token, "node": "set55"},
                headers={"HX-Request": "true"})
    renders("a logic.set node selected")

    from playwright.sync_api import sync_playwright
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    paints: dict[str, list[float]] = {"first_paint": [], "first_contentful_paint": [],
                                      "dom_content_loaded": [], "load": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                             args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(base + "/login")
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(base + "/workflows")
        page.goto(base + path)  # warm-up: the static files are cached from here on
        for _ in range(args.loads):
            page.goto(base + path, wait_until="load")
            timing = page.evaluate("""() => {
                const nav = performance.getEntriesByType('navigation')[0];
                const paint = Object.fromEntries(
                    performance.getEntriesByType('paint').map(e => [e.name, e.startTime]));
                return {fp: paint['first-paint'], fcp: paint['first-contentful-paint'],
                        dcl: nav.domContentLoadedEventEnd, load: nav.loadEventEnd};
            }""")
            paints["first_paint"].append(timing["fp"])
            paints["first_contentful_paint"].append(timing["fcp"])
            paints["dom_content_loaded"].append(timing["dcl"])
            paints["load"].append(timing["load"])
        browser.close()
    server.shutdown()
    for name, found in paints.items():
        values = [v for v in found if v is not None]
        if not values:  # e.g. headless Chromium reports no 'first-paint' entry
            print(f"{label} {name}_ms=unreported loads={len(found)}")
            continue
        figure(label, f"{name}_ms_p50", percentile(values, 0.5), loads=len(values),
               browser="chromium headless", viewport="1280x800")
        figure(label, f"{name}_ms_max", max(values))
    from app.workers import stop_in_process

    stop_in_process(app)
    w2.drop_database()
    w2.flush_redis()
    return 0


if __name__ == "__main__":
    sys.exit(main())
