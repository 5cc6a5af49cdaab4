"""A person watches a run live: its nodes turn succeeded on /executions/<id> without a reload,
and a new run appears at the top of the /executions dashboard as it happens."""

from __future__ import annotations

import re

import requests
from playwright.sync_api import expect

from tests.e2e.conftest import screenshot

PASSWORD = "a long enough password"
WORKFLOW = {
    "name": "Watch me <b>live</b>",
    "nodes": [{"id": "start", "type": "trigger.manual", "params": {}},
              {"id": "pause", "type": "logic.wait", "params": {"seconds": 2}},
              {"id": "double", "type": "logic.set",
               "params": {"fields": {"v": "{{ input.n * 2 }}"}}}],
    "connections": [{"from": "start", "to": "pause"}, {"from": "pause", "to": "double"}]}


def test_a_run_turns_succeeded_live(page):
    base = page.base_url
    page.goto(base + "/register")
    page.get_by_label("Email").fill("watcher@example.com")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Repeat password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page).to_have_url(base + "/workflows")

    token = requests.post(base + "/api/v1/auth/token", timeout=10, json={
        "email": "watcher@example.com", "password": PASSWORD}).json()["token"]
    api = {"Authorization": f"Bearer {token}"}
    workflow_id = requests.post(base + "/api/v1/workflows", json=WORKFLOW, headers=api,
                                timeout=10).json()["id"]

    def start() -> str:
        return requests.post(f"{base}/api/v1/workflows/{workflow_id}/run", headers=api,
                             json={"input": {"n": 21}}, timeout=10).json()["execution_id"]

    run_id = start()
    page.goto(f"{base}/executions/{run_id}")
    expect(page.get_by_role("heading", name="Run of Watch me <b>live</b>")).to_be_visible()
    status = page.locator(f"#run-status-{run_id}")
    assert status.inner_text() in ("queued", "running")  # the page came before the end
    last = page.locator(f"#node-{run_id}-double")
    expect(last).to_have_class(re.compile(r"\bstatus-(queued|running)\b"))
    expect(page.locator(f"#node-{run_id}-pause")).to_have_class(
        re.compile(r"\bstatus-running\b"), timeout=5000)
    # the timeline has a bar for each node that started, the running one growing
    expect(page.get_by_role("img", name=re.compile(r"Timeline of 2 nodes"))).to_be_visible()
    screenshot(page, "10-run-live-waiting")
    expect(last).to_have_class(re.compile(r"\bstatus-succeeded\b"), timeout=15000)
    expect(last.locator(".status")).to_have_text("succeeded")
    expect(status).to_have_text("succeeded")
    for key in ("start", "pause"):
        expect(page.locator(f"#node-{run_id}-{key}")).to_have_class(
            re.compile(r"\bstatus-succeeded\b"))
    expect(page.get_by_role("img", name=re.compile(r"Timeline of 3 nodes over 2\.\d s"))
           ).to_be_visible()
    screenshot(page, "11-run-live-succeeded")

    page.get_by_role("link", name="Runs", exact=True).click()
    expect(page).to_have_url(base + "/executions")
    expect(page.locator(f"#execution-{run_id}")).to_contain_text("succeeded")
    page.wait_for_timeout(300)  # let the socket open
    second = start()
    row = page.locator("#executions-body tr").first
    expect(row).to_have_attribute("id", f"execution-{second}", timeout=5000)
    expect(row).to_contain_text("Watch me <b>live</b>")
    expect(page.locator(f"#execution-{second} .status")).to_have_text("succeeded",
                                                                      timeout=15000)
    # the counts and the chart follow within a second or so
    expect(page.locator("#count-succeeded")).to_have_text("2", timeout=5000)
    expect(page.locator("#count-running")).to_have_text("0")
    expect(page.get_by_role("img", name=re.compile("2 runs, 0 failed"))).to_be_visible()
    screenshot(page, "12-runs-dashboard-live")

    # filtered to failed runs: nothing yet, and a new succeeded run does not appear
    page.get_by_label("Status", exact=True).select_option("failed")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"/executions\?.*status=failed"))
    expect(page.locator("#executions-body tr.no-runs")).to_be_visible()
    page.wait_for_timeout(300)
    third = start()
    expect(page.locator("#count-succeeded")).to_have_text("3", timeout=15000)
    expect(page.locator(f"#execution-{third}")).to_have_count(0)
