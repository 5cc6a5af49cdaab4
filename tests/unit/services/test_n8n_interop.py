"""n8n workflow JSON both ways: every supported node type, expressions, branches, and a
report naming what did not translate; the imports validate with the engine."""

from __future__ import annotations

from app import engine
from app.services import n8n_interop

N8N = {
    "name": "Orders from n8n",
    "nodes": [
        {"id": "1", "name": "Webhook", "type": "n8n-nodes-base.webhook", "typeVersion": 2,
         "position": [0, 0], "parameters": {"httpMethod": "POST", "path": "orders",
                                             "responseMode": "lastNode"}},
        {"id": "2", "name": "Edit Fields", "type": "n8n-nodes-base.set", "typeVersion": 3.4,
         "position": [220, 0], "parameters": {"mode": "manual", "includeOtherFields": True,
                                               "assignments": {"assignments": [
                                                   {"id": "a", "name": "total", "type": "number",
                                                    "value": "={{ $json.body.amount * 2 }}"},
                                                   {"id": "b", "name": "source",
                                                    "type": "string", "value": "web"}]}}},
        {"id": "3", "name": "Big?", "type": "n8n-nodes-base.if", "typeVersion": 2,
         "position": [440, 0], "parameters": {"conditions": {
             "combinator": "and", "conditions": [
                 {"leftValue": "={{ $json.total }}", "rightValue": 100,
                  "operator": {"type": "number", "operation": "gt"}}]}}},
        {"id": "4", "name": "Post it", "type": "n8n-nodes-base.httpRequest", "typeVersion": 4.2,
         "position": [660, -100], "parameters": {
             "method": "POST", "url": "https://example.com/in", "sendBody": True,
             "specifyBody": "json", "jsonBody": '={{ JSON.stringify($json) }}',
             "sendHeaders": True, "headerParameters": {"parameters": [
                 {"name": "X-Source", "value": "={{ $('Edit Fields').item.json.source }}"}]}}},
        {"id": "5", "name": "Pause", "type": "n8n-nodes-base.wait", "typeVersion": 1.1,
         "position": [660, 100], "parameters": {"resume": "timeInterval", "amount": 2,
                                                 "unit": "minutes"}},
        {"id": "6", "name": "Route", "type": "n8n-nodes-base.switch", "typeVersion": 3,
         "position": [880, 100], "parameters": {"rules": {"values": [
             {"outputKey": "eu", "conditions": {"conditions": [
                 {"leftValue": "={{ $json.region }}", "rightValue": "eu",
                  "operator": {"type": "string", "operation": "equals"}}]}}]}}},
        {"id": "7", "name": "Join", "type": "n8n-nodes-base.merge", "typeVersion": 3,
         "position": [1100, 0], "parameters": {"mode": "append"}},
        {"id": "8", "name": "Sheets", "type": "n8n-nodes-base.googleSheets", "typeVersion": 4,
         "position": [1320, 0], "parameters": {"operation": "append"}},
        {"id": "9", "name": "Done", "type": "n8n-nodes-base.noOp", "typeVersion": 1,
         "position": [1540, 0], "parameters": {}},
    ],
    "connections": {
        "Webhook": {"main": [[{"node": "Edit Fields", "type": "main", "index": 0}]]},
        "Edit Fields": {"main": [[{"node": "Big?", "type": "main", "index": 0}]]},
        "Big?": {"main": [[{"node": "Post it", "type": "main", "index": 0}],
                          [{"node": "Pause", "type": "main", "index": 0}]]},
        "Pause": {"main": [[{"node": "Route", "type": "main", "index": 0}]]},
        "Route": {"main": [[{"node": "Join", "type": "main", "index": 0}],
                           [{"node": "Done", "type": "main", "index": 0}]]},
        "Post it": {"main": [[{"node": "Join", "type": "main", "index": 1}]]},
        "Join": {"main": [[{"node": "Sheets", "type": "main", "index": 0}]]},
        "Sheets": {"main": [[{"node": "Done", "type": "main", "index": 0}]]},
    },
}


def by_id(definition):
    return {node["id"]: node for node in definition["nodes"]}


def test_an_n8n_workflow_imports_node_by_node():
    definition, report = n8n_interop.from_n8n(N8N)
    nodes = by_id(definition)
    assert {k: v["type"] for k, v in nodes.items()} == {
        "Webhook": "trigger.webhook", "Edit_Fields": "logic.set", "Big": "logic.if",
        "Post_it": "http.request", "Pause": "logic.wait", "Route": "logic.switch",
        "Join": "logic.merge", "Sheets": "logic.noop", "Done": "logic.noop"}
    assert nodes["Webhook"]["params"] == {"respond": "when_finished"}
    assert nodes["Edit_Fields"]["params"] == {
        "fields": {"total": "{{ input.body.amount * 2 }}", "source": "web"}, "keep": "all"}
    assert nodes["Edit_Fields"]["name"] == "Edit Fields"
    assert nodes["Big"]["params"] == {"condition": "{{ (input.total) > (100) }}"}
    assert nodes["Pause"]["params"] == {"seconds": 120.0}
    assert nodes["Route"]["params"] == {"cases": [
        {"name": "eu", "condition": "{{ (input.region) == ('eu') }}"}]}
    assert nodes["Post_it"]["params"]["headers"] == {
        "X-Source": "{{ nodes.Edit_Fields.source }}"}
    edges = {(e["from"], e.get("output", "main"), e["to"]) for e in definition["connections"]}
    assert ("Big", "true", "Post_it") in edges and ("Big", "false", "Pause") in edges
    assert ("Route", "eu", "Join") in edges and ("Route", "default", "Done") in edges
    messages = {(item["node"], item["message"].split(";")[0].split(":")[0])
                for item in report.items}
    assert ("Sheets", "node type 'n8n-nodes-base.googleSheets' is not supported") in messages
    assert any(item["node"] == "Post it" and "JSON.stringify" in item["message"]
               for item in report.items)  # n8n's JS is reported, not silently kept
    assert len(report.items) == 2  # and nothing else was lost
    assert engine.validate(definition).errors == []


def test_a_jobsprint_workflow_exports_and_comes_back_the_same():
    original = {"name": "Round trip", "nodes": [
        {"id": "hook", "type": "trigger.webhook", "params": {"respond": "when_finished"},
         "position": [0, 0]},
        {"id": "calc", "type": "logic.set", "position": [220, 0],
         "params": {"fields": {"total": "{{ input.body.amount * 2 }}"}, "keep": "set_only"}},
        {"id": "check", "type": "logic.if", "position": [440, 0],
         "params": {"condition": "{{ input.total > 100 }}"}},
        {"id": "call", "type": "http.request", "position": [660, 0],
         "params": {"method": "POST", "url": "https://example.com/{{ nodes.calc.total }}",
                    "body_type": "json", "json": {"a": 1}}},
        {"id": "pause", "type": "logic.wait", "params": {"seconds": 5}, "position": [660, 100]},
        {"id": "every", "type": "trigger.schedule", "params": {"cron": "0 9 * * 1-5"},
         "position": [0, 200]}],
        "connections": [{"from": "hook", "to": "calc"}, {"from": "calc", "to": "check"},
                        {"from": "check", "output": "true", "to": "call"},
                        {"from": "check", "output": "false", "to": "pause"},
                        {"from": "every", "to": "calc"}]}
    exported = n8n_interop.to_n8n(original)
    assert {n["type"] for n in exported["nodes"]} >= {
        "n8n-nodes-base.webhook", "n8n-nodes-base.set", "n8n-nodes-base.if",
        "n8n-nodes-base.httpRequest", "n8n-nodes-base.wait", "n8n-nodes-base.scheduleTrigger"}
    assert exported["connections"]["check"]["main"][1] == [
        {"node": "pause", "type": "main", "index": 0}]
    call = next(n for n in exported["nodes"] if n["name"] == "call")
    assert call["parameters"]["url"] == "=https://example.com/{{ $('calc').item.json.total }}"
    back, report = n8n_interop.from_n8n(exported)
    assert report.items == []
    nodes = by_id(back)
    assert nodes["calc"]["params"] == original["nodes"][1]["params"]
    assert nodes["call"]["params"]["url"] == original["nodes"][3]["params"]["url"]
    assert nodes["call"]["params"]["json"] == {"a": 1}
    assert nodes["every"]["params"] == {"cron": "0 9 * * 1-5"}
    assert nodes["pause"]["params"] == {"seconds": 5.0}
    assert {(e["from"], e.get("output"), e["to"]) for e in back["connections"]} == {
        (e["from"], e.get("output"), e["to"]) for e in original["connections"]}
    assert engine.validate(back).errors == []


def test_what_n8n_lacks_is_exported_as_a_noted_noop():
    exported = n8n_interop.to_n8n({"name": "AI", "nodes": [
        {"id": "start", "type": "trigger.manual"}, {"id": "ask", "type": "ai.chat",
                                                     "params": {}}],
        "connections": [{"from": "start", "to": "ask"}]})
    ask = next(n for n in exported["nodes"] if n["name"] == "ask")
    assert ask["type"] == "n8n-nodes-base.noOp"
    assert "ai.chat" in ask["notes"]


def test_jobsprint_json_is_not_mistaken_for_n8n():
    assert not n8n_interop.looks_like_n8n({"name": "x", "nodes": [
        {"id": "a", "type": "trigger.manual"}], "connections": []})
    assert n8n_interop.looks_like_n8n(N8N)
