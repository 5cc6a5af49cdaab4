"""A person manages workflows from the list in a real browser: create, search as they type,
switch one on in place, duplicate, import a file, export one, delete with a confirmation; a
name with markup in it shows as text."""

from __future__ import annotations

import json

from playwright.sync_api import expect

from tests.e2e.conftest import screenshot


def register(page) -> None:
    page.goto(page.base_url + "/register")
    page.get_by_label("Email").fill("lister@example.com")
    page.get_by_label("Password", exact=True).fill("a long enough password")
    page.get_by_label("Repeat password").fill("a long enough password")
    page.get_by_role("button", name="Create account").click()
    expect(page).to_have_url(page.base_url + "/workflows")


def create(page, name: str) -> None:
    page.get_by_label("New workflow name").fill(name)
    page.get_by_role("button", name="Create workflow").click()
    expect(page.get_by_role("status")).to_contain_text(f"Created “{name}”.")  # in its editor
    page.get_by_role("link", name="← Workflows").click()


def test_manage_workflows_from_the_list(page, tmp_path):
    register(page)
    for name in ("Orders", "Invoices", "<img src=x onerror=alert(1)>"):
        create(page, name)
    rows = page.locator("#workflow-rows tr.workflow-row")
    expect(rows).to_have_count(3)
    # markup in a name is text (an alert would also fail the test via the dialog handler)
    expect(page.get_by_text("<img src=x onerror=alert(1)>", exact=True)).to_be_visible()

    toggle = page.get_by_label("Active: Orders")
    expect(toggle).not_to_be_checked()
    toggle.check()  # htmx posts the change and swaps the row in place
    expect(page.locator("tr.workflow-row", has_text="Orders").get_by_text("on", exact=True)
           ).to_be_visible()
    page.reload()
    expect(page.get_by_label("Active: Orders")).to_be_checked()

    page.get_by_label("Search workflows by name").fill("voic")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Invoices")
    expect(page).to_have_url(page.base_url + "/workflows?q=voic")
    page.get_by_label("Search workflows by name").fill("")
    expect(rows).to_have_count(3)

    page.get_by_role("button", name="Duplicate Invoices").click()
    expect(page.get_by_role("status")).to_contain_text("Created “Invoices (copy)”.")

    definition = {"name": "From a file", "nodes": [
        {"id": "start", "type": "trigger.manual", "params": {}},
        {"id": "calc", "type": "logic.set", "params": {"fields": {"x": "{{ 1 + 1 }}"}}}],
        "connections": [{"from": "start", "to": "calc"}]}
    upload = tmp_path / "workflow.json"
    upload.write_text(json.dumps(definition))
    page.get_by_label("Import a JSON file").set_input_files(str(upload))
    page.get_by_role("button", name="Import", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("Imported “From a file” (2 nodes).")

    broken = tmp_path / "broken.json"
    broken.write_text('{"name": "Broken", "nodes": [')
    page.get_by_label("Import a JSON file").set_input_files(str(broken))
    page.get_by_role("button", name="Import", exact=True).click()
    expect(page.get_by_role("alert")).to_contain_text("file: Expecting value at line 1")
    expect(rows).to_have_count(5)

    with page.expect_download() as download:
        page.get_by_role("link", name="Export From a file as JSON").click()
    saved = tmp_path / "exported.json"
    download.value.save_as(saved)
    assert json.loads(saved.read_text()) == {**definition, "settings": {
        "concurrency": 1, "timeout_s": 300}}

    dialogs: list[str] = []

    def answer(dialog):
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", answer)
    page.get_by_role("button", name="Delete Orders").click()
    expect(rows).to_have_count(4)
    assert dialogs == ["Delete the workflow “Orders”? Its runs stay in the run list."]
    screenshot(page, "20-workflow-list")
    page.reload()
    expect(page.locator("tr.workflow-row", has_text="Orders")).to_have_count(0)

    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.get_by_role("button", name="Create workflow")).to_be_visible()
    screenshot(page, "21-workflow-list-phone")
