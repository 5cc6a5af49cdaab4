"""The editor's actions as htmx sends them (and as plain forms): add, move, connect, edit a
node's settings from its schema form, see problems at the field, save versions, undo, restore,
delete; escaping, CSRF and ownership."""

from __future__ import annotations

import re
import time
import uuid

import pytest

from app.db import db
from app.models import Execution, Workflow
from app.services import workflows

HTMX = {"HX-Request": "true"}


@pytest.fixture(autouse=True)
def app_context(app):
    with app.app_context():
        yield


@pytest.fixture
def flow(user):
    return workflows.create(user, {"name": "Orders", "nodes": [
        {"id": "start", "type": "trigger.manual", "params": {}}], "connections": []})


class Editor:
    def __init__(self, client, token, workflow_id):
        self.client, self.token = client, token
        self.base = f"/workflows/{workflow_id}/edit"

    def do(self, path, status=200, **form):
        answer = self.client.post(f"{self.base}/{path}", headers=HTMX,
                                  data={"csrf_token": self.token, **form})
        assert answer.status_code == status, answer.get_data(as_text=True)[:2000]
        html = answer.get_data(as_text=True)
        assert html.lstrip().startswith('<div id="editor"')
        return html

    def page(self):
        answer = self.client.get(self.base)
        assert answer.status_code == 200
        return answer.get_data(as_text=True)


@pytest.fixture
def editor(client, token, flow):
    return Editor(client, token, flow.id)


def node_ids(html):
    return re.findall(r'<g class="node[^"]*"\s+data-node="([^"]+)"', html)


def stored(flow) -> Workflow:
    found = db.session.get(Workflow, flow.id)
    db.session.refresh(found)
    db.session.commit()
    return found


def test_the_page_shows_the_canvas_and_the_palette_by_group(editor):
    html = editor.page()
    assert node_ids(html) == ["start"]
    for group in ("Triggers", "Logic", "HTTP", "AI", "Apps"):
        assert f"<h2>{group}</h2>" in html
    assert 'value="logic.set"' in html and 'value="http.request"' in html


def test_build_a_four_node_workflow_and_save_it(editor, flow):
    editor.do("nodes", type="logic.set")  # added after the selected (or last) node, linked
    html = editor.do("nodes", type="logic.if")
    assert node_ids(html) == ["start", "set", "if"]
    html = editor.do("nodes", type="logic.set")
    assert node_ids(html) == ["start", "set", "if", "set_2"]
    # if's "true" output was linked to set_2 when it was added; check the edges drawn
    assert 'aria-label="Connection from set to if"' in html
    assert 'aria-label="Connection from if (true) to set_2"' in html
    html = editor.do("nodes/set/settings", name="Compute",
                     **{"param:fields:key": ["total", ""], "param:fields:value": [
                         "{{ input.amount * 2 }}", ""], "param:keep": "all"})
    assert "Compute" in html
    assert "unsaved changes" in html
    html = editor.do("save")
    assert "Saved version 2." in html and "unsaved changes" not in html
    saved = stored(flow)
    assert saved.version == 2
    assert [n["id"] for n in saved.definition["nodes"]] == ["start", "set", "if", "set_2"]
    assert saved.definition["nodes"][1]["params"]["fields"] == {"total": "{{ input.amount * 2 }}"}
    assert saved.definition["nodes"][1]["name"] == "Compute"
    assert {"from": "if", "output": "true", "to": "set_2"} in saved.definition["connections"]
    assert all(n.get("position") for n in saved.definition["nodes"])


def test_an_invalid_expression_is_shown_at_its_field_and_kept_as_typed(editor, flow):
    editor.do("nodes", type="logic.if")
    html = editor.do("nodes/if/settings", **{"param:condition": "{{ input.total > }}"})
    field = html[html.index('data-param="condition"'):]
    field = field[:field.index("</div>\n</div>")]
    assert 'value="{{ input.total &gt; }}"' in field
    assert 'class="error" role="alert"' in field
    assert "invalid" in html  # the node is outlined
    html = editor.do("save", status=400)
    assert "the workflow definition is invalid" in html
    assert stored(flow).version == 1


def test_a_number_or_json_that_does_not_parse_is_kept_and_blocks_saving(editor):
    editor.do("nodes", type="http.request")
    html = editor.do("nodes/request/settings", **{
        "param:url": "https://example.com", "param:timeout_s": "3o", "param:json": "{oops"})
    assert 'value="3o"' in html and "{oops</textarea>" in html
    assert html.count("is not valid; fix or clear it") >= 2
    assert "some fields are not valid yet" in editor.do("save", status=400)
    html = editor.do("nodes/request/settings", **{
        "param:url": "https://example.com", "param:timeout_s": "3", "param:json": "{}"})
    assert "is not valid; fix or clear it" not in html


def test_connect_move_select_and_delete(editor):
    editor.do("nodes", type="logic.noop")
    editor.do("select", node="start")
    editor.do("nodes", type="logic.noop")  # start already feeds noop: not linked again
    html = editor.do("connections", **{"from": "noop", "to": "noop_2"})
    assert 'aria-label="Connection from noop to noop_2"' in html
    html = editor.do("connections", status=400, **{"from": "noop", "output": "nope",
                                                  "to": "noop_2"})
    assert "output: &#39;noop&#39; has no output &#39;nope&#39;" in html
    html = editor.do("nodes/noop/move", x="400", y="300")
    assert 'data-node="noop" transform="translate(400,300)"' in html
    html = editor.do("select", edge="0")
    assert "Delete connection" in html
    html = editor.do("connections/0/delete")
    assert "Connection from start to noop" not in html
    html = editor.do("nodes/noop/delete")
    assert node_ids(html) == ["start", "noop_2"]
    assert "Connection from noop" not in html


def test_undo_goes_back_one_change_at_a_time(editor):
    editor.do("nodes", type="logic.noop")
    editor.do("nodes/noop/move", x="500", y="60")
    html = editor.do("undo")
    assert 'transform="translate(500,60)"' not in html and "noop" in node_ids(html)
    assert node_ids(editor.do("undo")) == ["start"]
    assert node_ids(editor.do("undo")) == ["start"]  # nothing more to undo


def test_history_lists_versions_and_restores_one(editor, flow, user):
    editor.do("nodes", type="logic.noop")
    editor.do("save")
    html = editor.client.get(editor.base + "?history=1").get_data(as_text=True)
    assert "Version 2" in html and "Version 1" in html and user.email in html
    html = editor.do("restore", version="1", history="1")
    assert "Version 1 is in the editor" in html and node_ids(html) == ["start"]
    editor.do("save")
    assert stored(flow).version == 3
    assert [n["id"] for n in stored(flow).definition["nodes"]] == ["start"]


def test_imported_definitions_without_positions_are_laid_out(user, client, token):
    imported = workflows.create(user, {"name": "Imported", "nodes": [
        {"id": "a", "type": "trigger.manual"}, {"id": "b", "type": "logic.noop"},
        {"id": "c", "type": "logic.noop"}, {"id": "d", "type": "logic.noop"}],
        "connections": [{"from": "a", "to": "b"}, {"from": "a", "to": "c"},
                        {"from": "b", "to": "d"}, {"from": "c", "to": "d"}]})
    html = Editor(client, token, imported.id).page()
    places = dict(re.findall(r'data-node="(\w)" transform="translate\(([\d,]+)\)"', html))
    assert places == {"a": "30,30", "b": "250,30", "c": "250,130", "d": "470,30"}
    assert "position" not in stored(imported).definition["nodes"][0]  # only the draft


def test_names_params_and_errors_are_text(editor):
    editor.do("nodes", type="logic.set")
    html = editor.do("nodes/set/settings", name="<img src=x onerror=alert(1)>",
                     **{"param:fields:key": ["<b>"], "param:fields:value": ["<script>x</script>"]})
    assert "<img src=x" not in html and "<script>x" not in html and "<b>" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_changes_need_the_csrf_token_and_the_owner(editor, client, auth, flow):
    answer = client.post(editor.base + "/nodes", headers=HTMX, data={"type": "logic.noop"})
    assert answer.status_code == 400
    auth.logout()
    auth.register()
    other = Editor(client, auth.csrf_token("/settings"), flow.id)
    assert client.get(other.base).status_code == 404
    answer = client.post(other.base + "/nodes", headers=HTMX,
                         data={"csrf_token": other.token, "type": "logic.noop"})
    assert answer.status_code == 404


def test_without_javascript_each_action_redirects_to_the_editor(editor, client, token):
    answer = client.post(editor.base + "/nodes", data={"csrf_token": token,
                                                       "type": "logic.noop"})
    assert answer.status_code == 302 and answer.headers["Location"] == editor.base
    assert node_ids(editor.page()) == ["start", "noop"]


def test_run_from_the_editor_saves_first_and_shows_the_run(editor, flow, user):
    editor.do("nodes", type="logic.set")
    editor.do("nodes/set/settings", **{"param:fields:key": ["big"],
                                       "param:fields:value": ["{{ 'x' * 5000 }}"]})
    html = editor.do("run", input='{"amount": 3}')
    assert stored(flow).version == 2  # saved before running
    run_id = re.search(r'data-run="([0-9a-f-]{36})"', html).group(1)
    assert 'ws-connect="/ws/executions/' + run_id in html
    assert '{&#34;amount&#34;: 3}</textarea>' in html or '{"amount": 3}</textarea>' in html
    for _ in range(100):  # the in-process workers run it
        run = db.session.get(Execution, uuid.UUID(run_id))
        db.session.refresh(run)
        db.session.commit()
        if run.status == "succeeded":
            break
        time.sleep(0.05)
    assert run.status == "succeeded"
    detail = editor.client.get(f"/executions/{run_id}/nodes/set")
    text = detail.get_data(as_text=True)
    assert detail.status_code == 200 and "Show all" in text and text.count("x") < 4500
    full = editor.client.get(f"/executions/{run_id}/nodes/set?full=1").get_data(as_text=True)
    assert "Show all" not in full and full.count("x") >= 5000
    assert editor.client.get(f"/executions/{run_id}/nodes/nope").status_code == 404


def test_bad_run_input_is_refused_and_kept(editor, flow):
    html = editor.do("run", status=400, input='{"amount": ')
    assert "the run input is not valid JSON" in html
    assert "Expecting value at line 1 column 12" in html
    assert '{"amount": </textarea>' in html or "{&#34;amount&#34;: </textarea>" in html
