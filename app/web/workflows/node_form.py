"""A node's settings form, generated from its type's JSON Schema, and read back.

Each property of ``params_schema`` becomes one field, chosen by its UI hints (see
``NodeType``): ``enum`` → select, boolean → checkbox, number/integer → number, ``format``
cron / expression / json / textarea, ``x-kind: keyvalue`` → rows of key and value,
``x-secret`` → password, anything else structured → JSON. Reading back never loses input: a
number or JSON field that does not parse is returned as ``raw`` text, which the form shows as
typed with its error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from werkzeug.datastructures import MultiDict

from app.engine import NodeType

PREFIX = "param:"


@dataclass
class Field:
    name: str
    kind: str  # text | expression | cron | textarea | json | number | checkbox | select | ...
    label: str
    description: str = ""
    value: Any = None  # what the input shows (text), or the rows of a keyvalue
    options: list[str] = field(default_factory=list)
    required: bool = False
    errors: list[str] = field(default_factory=list)
    preview: list[str] = field(default_factory=list)  # cron: the next fire times

    @property
    def input_name(self) -> str:
        return PREFIX + self.name


def _kind(spec: dict) -> str:
    if "enum" in spec:
        return "select"
    kind = spec.get("x-kind")
    if kind == "keyvalue":
        return "keyvalue"
    fmt = spec.get("format")
    if fmt in ("cron", "expression", "json", "textarea"):
        return fmt
    if spec.get("x-secret"):
        return "secret"
    types = spec.get("type")
    types = types if isinstance(types, list) else [types]
    if types == ["boolean"]:
        return "checkbox"
    if types in (["number"], ["integer"]):
        return "number"
    if types == ["string"]:
        return "text"
    if any(t in ("object", "array") for t in types):
        return "json"
    return "text"


def _shown(kind: str, value: Any) -> Any:
    if value is None:
        return ""
    if kind == "keyvalue":
        return [(str(k), v if isinstance(v, str) else json.dumps(v))
                for k, v in (value.items() if isinstance(value, dict) else [])]
    if kind == "json":
        return json.dumps(value, indent=2, ensure_ascii=False)
    if kind == "checkbox":
        return bool(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def fields(node_type: NodeType, params: dict, raw: dict[str, str],
           problems: dict[str, list[str]]) -> list[Field]:
    """The form's fields with the node's values (or the unparsed text) and their errors.
    ``problems`` maps a param name to its messages."""
    schema = node_type.params_schema
    required = set(schema.get("required", ()))
    found = []
    for name, spec in schema.get("properties", {}).items():
        kind = _kind(spec)
        item = Field(name=name, kind=kind, label=spec.get("title") or name,
                     description=spec.get("description", ""),
                     options=[str(o) for o in spec.get("enum", [])],
                     required=name in required, errors=problems.get(name, []))
        item.value = raw[name] if name in raw else _shown(kind, params.get(name))
        if kind == "cron":
            item.preview = _cron_preview(str(item.value or ""), params.get("timezone") or "UTC")
        found.append(item)
    return found


def _cron_preview(cron: str, timezone: str) -> list[str]:
    from app.services import schedules

    if not cron.strip() or "{{" in cron:
        return []
    try:
        spec = schedules.cron_spec(cron, timezone)
        times = schedules.fire_times(spec, datetime.now(UTC), 3)
    except Exception:  # noqa: BLE001 - an invalid cron shows its validation error instead
        return []
    return [t.strftime("%a %Y-%m-%d %H:%M %Z") for t in times]


def parse(node_type: NodeType, form: MultiDict) -> tuple[dict, dict[str, str]]:
    """(params, raw): the values the form sent, typed by the schema; text that did not parse
    goes to ``raw`` instead. Empty optional fields are left out (the type's default holds)."""
    params: dict[str, Any] = {}
    raw: dict[str, str] = {}
    for name, spec in node_type.params_schema.get("properties", {}).items():
        kind = _kind(spec)
        key = PREFIX + name
        if kind == "checkbox":
            params[name] = form.get(key) == "on"
            continue
        if kind == "keyvalue":
            keys, values = form.getlist(key + ":key"), form.getlist(key + ":value")
            params[name] = {k.strip(): v for k, v in zip(keys, values, strict=False)
                            if k.strip()}
            continue
        text = form.get(key)
        if text is None or text.strip() == "":
            continue
        if kind == "number":
            try:
                number = float(text)
                types = spec.get("type")
                params[name] = int(number) if types == "integer" and number.is_integer() \
                    else number
            except ValueError:
                raw[name] = text
        elif kind == "json":
            try:
                params[name] = json.loads(text)
            except json.JSONDecodeError:
                if "{{" in text:  # an expression in place of JSON: let the engine judge it
                    params[name] = text
                else:
                    raw[name] = text
        elif kind == "select" and spec.get("enum") and not all(
                isinstance(o, str) for o in spec["enum"]):
            match = [o for o in spec["enum"] if str(o) == text]
            params[name] = match[0] if match else text
        else:
            params[name] = text
    return params, raw
