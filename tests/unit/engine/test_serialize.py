"""Canonical definition JSON: stable order, byte-for-byte round trips."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.engine import dumps_definition, loads_definition
from tests.unit.engine.support import json_values


def test_known_objects_get_a_fixed_key_order_and_others_follow_sorted():
    definition = {
        "zeta": 1, "settings": {"timeout_s": 5, "concurrency": 2}, "alpha": 2,
        "connections": [{"to": "b", "from": "a"}, {"to": "c", "output": "true", "from": "b",
                                                   "label": "x"}],
        "nodes": [{"position": [1, 2], "params": {"z": 1, "a": 2}, "type": "logic.noop",
                   "retry": {"factor": 2, "max": 1}, "id": "a", "notes": "n"}],
        "name": "Orders"}
    text = dumps_definition(definition)
    assert list(json.loads(text)) == ["name", "nodes", "connections", "settings", "alpha",
                                      "zeta"]
    parsed = json.loads(text)
    assert list(parsed["nodes"][0]) == ["id", "type", "params", "retry", "position", "notes"]
    assert list(parsed["nodes"][0]["params"]) == ["z", "a"]  # params keep their own order
    assert list(parsed["nodes"][0]["retry"]) == ["max", "factor"]
    assert parsed["connections"] == [{"from": "a", "output": "main", "to": "b"},
                                     {"from": "b", "output": "true", "to": "c", "label": "x"}]
    assert list(parsed["settings"]) == ["concurrency", "timeout_s"]


def test_round_trip_is_byte_for_byte():
    definition = {"name": "Zoë", "nodes": [{"id": "a", "type": "trigger.manual"}],
                  "connections": [], "settings": {"concurrency": 1}}
    text = dumps_definition(definition)
    assert dumps_definition(loads_definition(text)) == text
    assert "Zoë" in text


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["name", "nodes", "connections", "settings", "x", "a"]),
                       json_values | st.lists(st.dictionaries(
                           st.sampled_from(["id", "type", "params", "from", "to", "output",
                                            "retry", "z"]), json_values, max_size=5),
                           max_size=3)))
def test_any_definition_round_trips(definition):
    text = dumps_definition(definition)
    assert dumps_definition(loads_definition(text)) == text


@pytest.mark.parametrize("text", ["[]", '"x"', "1", '{"a": NaN}', "{", ""])
def test_loads_refuses_anything_but_a_json_object(text):
    with pytest.raises(ValueError):
        loads_definition(text)
