"""Node params against their type's JSON Schema (Draft 2020-12).

When a definition is validated, a template string stands in for a value of any type: what it
gives is known only when the node runs. So validation tolerates templates where the schema
constrains a value, and the runner checks the rendered params strictly, for the nodes that
had a template in such a place (``templates_constrained``). ``"x-template": false`` in a
schema marks a value that is used as written, never rendered (a switch's case names); trigger
params are never rendered at all, so they are checked strictly (``design_time_validator``).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator, validators

from app.engine.expressions import is_template
from app.engine.nodes.base import NodeType

MAX_MESSAGE_CHARS = 300
_TEMPLATE_TOLERANT_KEYWORDS = ("type", "enum", "const", "minLength", "maxLength", "pattern")
# Keywords that describe a value without constraining it.
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "format", "x-kind",
                          "x-secret", "x-template", "$comment", "deprecated", "readOnly",
                          "writeOnly"})

Path = tuple[str | int, ...]


def _tolerating_templates(check):
    def tolerant(validator, value, instance, schema):
        if is_template(instance) and schema.get("x-template", True):
            return ()
        return check(validator, value, instance, schema)

    return tolerant


DesignTimeValidator = validators.extend(
    Draft202012Validator,
    {keyword: _tolerating_templates(Draft202012Validator.VALIDATORS[keyword])
     for keyword in _TEMPLATE_TOLERANT_KEYWORDS})


@cache
def design_time_validator(node_type: NodeType):
    if node_type.is_trigger:
        return strict_validator(node_type)
    return DesignTimeValidator(node_type.params_schema)


@cache
def strict_validator(node_type: NodeType) -> Draft202012Validator:
    return Draft202012Validator(node_type.params_schema)


def schema_problems(validator, params: Any) -> list[tuple[Path, str]]:
    """(path inside params, message) for each way ``params`` fails the schema. A missing or
    unknown property is reported at its own path, where the editor shows it."""
    problems = []
    for error in validator.iter_errors(params):
        path = tuple(error.absolute_path)
        if error.validator == "required":
            name = next((name for name in error.validator_value
                         if name not in error.instance and error.message.startswith(repr(name))),
                        None)
            problems.append(((*path, name), "is required") if name else (path, error.message))
        elif error.validator == "additionalProperties" and error.validator_value is False:
            known = error.schema.get("properties", {})
            problems.extend(((*path, name), "is not a known parameter")
                            for name in error.instance if name not in known)
        else:
            problems.append((path, _short(error.message)))
    return sorted(problems, key=lambda problem: [str(part) for part in problem[0]])


def _short(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "…"


def templates_constrained(schema: Any, value: Any) -> bool:
    """Whether some template in ``value`` sits where ``schema`` constrains the value, so that
    the rendered value must be checked again."""
    return any(_constrains(sub) for sub in _schemas_of_templates(schema, value))


def _schemas_of_templates(schema: Any, value: Any) -> Iterator[Any]:
    stack = [(schema, value)]
    while stack:
        schema, value = stack.pop()
        if is_template(value):
            yield schema
            continue
        if not isinstance(schema, dict):
            schema = {}  # true; a false schema has failed validation already
        if isinstance(value, dict):
            properties = schema.get("properties", {})
            other = schema.get("additionalProperties", {})
            stack.extend((properties.get(key, other), item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((schema.get("items", {}), item) for item in value)


def _constrains(schema: Any) -> bool:
    if isinstance(schema, bool):
        return not schema
    return any(keyword not in _ANNOTATIONS for keyword in schema)
