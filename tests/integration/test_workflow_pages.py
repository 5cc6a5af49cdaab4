"""The workflow list page, as a browser without JavaScript (and htmx) drives it: create,
search, pages, last run and 24 h counts, (de)activate, duplicate, delete, import, export;
escaping, CSRF and ownership."""

from __future__ import annotations

import io
import json
import re

import pytest
from sqlalchemy import select

from app.db import db
from app.models import Workflow
from app.services import executions, workflows

HTMX = {"HX-Request": "true"}


@pytest.fixture(autouse=True)
def app_context(app):
    """Services called directly (to set the scene) need the app, as in a request."""
    with app.app_context():
        yield


def page(client, path="/workflows", **kw) -> str:
    answer = client.get(path, **kw)
    assert answer.status_code == 200, answer.status_code
    return answer.get_data(as_text=True)


def names(html: str) -> list[str]:
    return re.findall(r'<a class="wf-name" href="/workflows/[^"]+/edit">(.*?)</a>', html)


def make(user, name, nodes=None):
    return workflows.create(user, {"name": name, "nodes": nodes or [
        {"id": "start", "type": "trigger.manual", "params": {}}], "connections": []})


def test_create_from_the_list_and_see_it(client, user, token):
    answer = client.post("/workflows/new", data={"csrf_token": token, "name": "Orders"})
    assert answer.status_code == 302
    assert re.fullmatch(r"/workflows/[0-9a-f-]{36}/edit", answer.headers["Location"])
    assert "Created “Orders”." in page(client, answer.headers["Location"])  # the editor
    html = page(client)
    assert names(html) == ["Orders"]
    assert ">manual<" in html and "never run" in html


def test_each_row_shows_its_last_run_and_runs_in_the_last_24_h(client, user):
    busy, idle = make(user, "Busy"), make(user, "Idle")
    for _ in range(3):
        executions.start_manual(user, busy.id, {})
    html = page(client)
    busy_row = html[html.index(f'id="workflow-{busy.id}"'):]
    busy_row = busy_row[:busy_row.index("</tr>")]
    assert re.search(r'class="status status-(queued|running|succeeded)"', busy_row)
    assert '<td class="num">3</td>' in busy_row
    idle_row = html[html.index(f'id="workflow-{idle.id}"'):]
    assert "never run" in idle_row[:idle_row.index("</tr>")]


def test_search_by_name_and_keyset_pages(client, user):
    for n in range(30):
        make(user, f"Flow {n:02d}")
    make(user, "Invoices")
    first = page(client)
    assert len(names(first)) == 25 and names(first)[0] == "Invoices"
    cursor = re.search(r'href="(/workflows\?cursor=[^"]+)" rel="next"', first).group(1)
    second = page(client, cursor.replace("&amp;", "&"))
    assert len(names(second)) == 6 and 'rel="next"' not in second
    assert not set(names(first)) & set(names(second))
    assert names(page(client, "/workflows?q=voic")) == ["Invoices"]
    rows = page(client, "/workflows?q=voic", headers={**HTMX, "HX-Target": "workflow-rows"})
    assert "<html" not in rows and names(rows) == ["Invoices"]
    assert "No workflow named like" in page(client, "/workflows?q=nothing%25here")


def test_a_bad_cursor_starts_again_from_the_top(client, user):
    make(user, "Only")
    answer = client.get("/workflows?cursor=not-a-cursor", follow_redirects=True)
    assert answer.status_code == 200 and names(answer.get_data(as_text=True)) == ["Only"]


def test_toggle_active_in_place(client, user, token):
    flow = make(user, "Toggle")
    answer = client.post(f"/workflows/{flow.id}/active", headers=HTMX,
                         data={"csrf_token": token, "active": "on"})
    assert answer.status_code == 200
    row = answer.get_data(as_text=True)
    assert row.lstrip().startswith("<tr") and " checked" in row
    assert db.session.get(Workflow, flow.id).active is True
    db.session.commit()
    off = client.post(f"/workflows/{flow.id}/active", headers=HTMX,
                      data={"csrf_token": token})
    assert " checked" not in off.get_data(as_text=True)
    assert db.session.get(Workflow, flow.id).active is False
    db.session.commit()


def test_duplicate_then_delete(client, user, token):
    flow = make(user, "Original")
    assert client.post(f"/workflows/{flow.id}/duplicate",
                       data={"csrf_token": token}).status_code == 302
    assert sorted(names(page(client))) == ["Original", "Original (copy)"]
    copy = db.session.scalar(select(Workflow).where(Workflow.name == "Original (copy)"))
    db.session.commit()
    assert copy.active is False and copy.definition["nodes"] == flow.definition["nodes"]
    deleted = client.post(f"/workflows/{flow.id}/delete", headers=HTMX,
                          data={"csrf_token": token})
    assert deleted.status_code == 200 and deleted.get_data(as_text=True) == ""
    assert names(page(client)) == ["Original (copy)"]


def test_export_then_import_round_trips(client, user, token):
    nodes = [{"id": "start", "type": "trigger.manual", "params": {}},
             {"id": "calc", "type": "logic.set", "params": {"fields": {"x": "{{ 1 + 1 }}"}}}]
    flow = workflows.create(user, {"name": "Round trip", "nodes": nodes,
                                   "connections": [{"from": "start", "to": "calc"}]})
    exported = client.get(f"/workflows/{flow.id}/export")
    assert exported.status_code == 200
    assert exported.headers["Content-Disposition"] == 'attachment; filename="Round-trip.json"'
    document = exported.get_json()
    assert document["name"] == "Round trip" and document["nodes"] == nodes
    assert "id" not in document and "version" not in document
    document["name"] = "Imported"
    answer = client.post("/workflows/import", content_type="multipart/form-data", data={
        "csrf_token": token, "file": (io.BytesIO(json.dumps(document).encode()), "w.json")})
    assert answer.status_code == 302
    html = page(client)
    assert "Imported “Imported” (2 nodes)." in html
    imported = db.session.scalar(select(Workflow).where(Workflow.name == "Imported"))
    db.session.commit()
    assert imported.definition["connections"] == flow.definition["connections"]


@pytest.mark.parametrize(("content", "expected"), [
    (b'{"name": "x",\n "nodes": [}', "<code>file</code>: Expecting value at line 2 column 12"),
    (b"\xff\xfe", "<code>file</code>: is not UTF-8 text"),
    (json.dumps({"name": "Bad", "nodes": [{"id": "a", "type": "no.such"}]}).encode(),
     "<code>nodes[0].type</code>"),
])
def test_a_bad_import_says_what_and_where_and_keeps_the_list(client, user, token, content,
                                                             expected):
    make(user, "Kept")
    answer = client.post("/workflows/import", content_type="multipart/form-data", data={
        "csrf_token": token, "file": (io.BytesIO(content), "bad.json")})
    assert answer.status_code == 400
    html = answer.get_data(as_text=True)
    assert expected in html and names(html) == ["Kept"]


def test_names_are_text_never_markup(client, user):
    make(user, "<img src=x onerror=alert(1)>")
    html = page(client)
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_every_change_needs_the_csrf_token(client, user):
    flow = make(user, "Guarded")
    for path in ("/workflows/new", f"/workflows/{flow.id}/duplicate",
                 f"/workflows/{flow.id}/active", f"/workflows/{flow.id}/delete",
                 "/workflows/import"):
        assert client.post(path, data={"name": "x"}).status_code == 400, path
    assert names(page(client)) == ["Guarded"]


def test_another_users_workflow_is_not_found(client, auth, user):
    theirs = make(user, "Theirs")
    auth.logout()
    auth.register()
    token = auth.csrf_token("/settings")
    for path in (f"/workflows/{theirs.id}/duplicate", f"/workflows/{theirs.id}/active",
                 f"/workflows/{theirs.id}/delete"):
        assert client.post(path, data={"csrf_token": token}).status_code == 404, path
    assert client.get(f"/workflows/{theirs.id}/export").status_code == 404
    assert names(page(client)) == []
    assert db.session.get(Workflow, theirs.id).deleted_at is None
    db.session.commit()


def test_an_n8n_file_imports_with_its_report_and_exports_back(client, user, token):
    from tests.unit.services.test_n8n_interop import N8N

    answer = client.post("/workflows/import", content_type="multipart/form-data", data={
        "csrf_token": token, "file": (io.BytesIO(json.dumps(N8N).encode()), "n8n.json")},
        follow_redirects=True)
    html = answer.get_data(as_text=True)
    assert "Imported “Orders from n8n” (9 nodes)." in html
    assert "Sheets: node type &#39;n8n-nodes-base.googleSheets&#39; is not supported" in html
    imported = db.session.scalar(select(Workflow).where(Workflow.name == "Orders from n8n"))
    db.session.commit()
    exported = client.get(f"/workflows/{imported.id}/export?format=n8n")
    assert exported.headers["Content-Disposition"].endswith('.n8n.json"')
    document = exported.get_json()
    assert {n["name"] for n in document["nodes"]} >= {"Edit Fields", "Big?", "Route"}
    assert document["connections"]["Big?"]["main"][1][0]["node"] == "Pause"
