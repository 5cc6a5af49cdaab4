"""``{{ … }}`` templates in node params, rendered in the sandbox.

A string that is exactly one ``{{ expression }}`` (whitespace around it allowed) renders to the
expression's own JSON value: ``"{{ input.total * 2 }}"`` gives the number 25, not "25". Any
other string containing ``{{``, ``{%`` or ``{#`` is a template and renders to text, values
printing as ``to_text`` says (null as "", objects as JSON). Other strings are left alone.

Variables: ``input``, ``nodes`` (earlier outputs by node id), ``trigger``, ``execution``, and
``item``/``index`` inside a split's sub-branch or a filter's condition.

Undefined values are lenient, as in n8n: ``input.missing.deeper`` is undefined, prints as ""
and evaluates to null; calling it, comparing it or computing with it is an ``ExpressionError``.
On a JSON object a key wins over a method of the same name (``input.items`` is the key).

Compiled templates are cached by their source: rendering is the engine's hot path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextvars import Context
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError, nodes
from jinja2.parser import Parser
from jinja2.runtime import Context as JinjaContext
from jinja2.runtime import Undefined

from app.engine.errors import ExpressionError
from app.engine.sandbox import (
    SANDBOX,
    BudgetTransformer,
    RenderLimits,
    budget_scope,
    current_budget,
    describe,
)

__all__ = ["ExpressionError", "RenderLimits", "expression_problems", "is_template", "render"]

MAX_PARAMS_DEPTH = 64
MAX_CACHED_SOURCE_CHARS = 10_000
DEFAULT_LIMITS = RenderLimits()
_SINGLE_EXPRESSION = re.compile(r"\s*\{\{(?P<body>.*?)\}\}\s*", re.DOTALL)
_JSON_SCALARS = (str, int, float, bool, type(None))
_JSON_TYPES = (*_JSON_SCALARS, dict, list, tuple)
# Nodes that can build a value that is not already JSON (a list holding a function, say);
# an expression without them returns variables' values, which are JSON already.
_BUILDERS = (nodes.List, nodes.Dict, nodes.Tuple, nodes.Call, nodes.Filter)


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value or "{#" in value)


def render(value: Any, variables: dict, *, limits: RenderLimits | None = None) -> Any:
    """``value`` with every template string in it (through dicts and lists) rendered.

    Containers are rebuilt, never modified. Raises ``ExpressionError`` whose ``path`` locates
    the failing string inside ``value``.
    """
    with budget_scope(limits or DEFAULT_LIMITS):
        return _render(value, variables)


def _render(value: Any, variables: dict) -> Any:
    if isinstance(value, str):
        return compile_source(value)(variables) if is_template(value) else value
    if isinstance(value, dict):
        rendered = {}
        for key, item in value.items():
            try:
                rendered[key] = _render(item, variables)
            except ExpressionError as exc:
                raise exc.at(key) from None
        return rendered
    if isinstance(value, list):
        out = []
        for index, item in enumerate(value):
            try:
                out.append(_render(item, variables))
            except ExpressionError as exc:
                raise exc.at(index) from None
        return out
    return value


def expression_problems(value: Any) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """(path, message) for every template in ``value`` that does not compile, and for
    nesting deeper than MAX_PARAMS_DEPTH. Iterative: params may be nested deeply."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), value)]
    while stack:
        path, item = stack.pop()
        if len(path) > MAX_PARAMS_DEPTH:
            yield path, f"nested more than {MAX_PARAMS_DEPTH} levels deep"
        elif isinstance(item, dict):
            stack.extend(((*path, key), child) for key, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend(((*path, index), child)
                         for index, child in reversed(list(enumerate(item))))
        elif is_template(item):
            try:
                compile_source(item)
            except ExpressionError as exc:
                yield path, exc.message


# --- compiling ------------------------------------------------------------------------------

class _Expression:
    """A single ``{{ expression }}``: evaluates to a JSON value."""

    __slots__ = ("template", "builds_values")

    def __init__(self, template, builds_values: bool) -> None:
        self.template = template
        self.builds_values = builds_values

    def __call__(self, variables: dict) -> Any:
        context = _new_context(self.template, variables)
        try:
            for _ in self.template.root_render_func(context):
                pass
            return _json_value(context.vars["result"], deep=self.builds_values)
        except Exception as exc:
            raise _user_error(exc) from None


class _Template:
    """Text with ``{{ }}``/``{% %}`` in it: renders to a string, streamed against the budget."""

    __slots__ = ("template",)

    def __init__(self, template) -> None:
        self.template = template

    def __call__(self, variables: dict) -> str:
        budget = current_budget()
        chunks, size = [], 0
        try:
            for chunk in self.template.root_render_func(_new_context(self.template, variables)):
                size += len(chunk)
                budget.check_size(size)
                chunks.append(chunk)
        except Exception as exc:
            raise _user_error(exc) from None
        return "".join(chunks)


def _new_context(template, variables: dict) -> JinjaContext:
    """What ``Template.new_context`` makes, without its per-call merging of the globals."""
    return JinjaContext(SANDBOX, {**SANDBOX.globals, **variables}, None, template.blocks)


def compile_source(source: str) -> _Expression | _Template:
    """The compiled form of a template string, cached unless it is very long (the cache must
    not hold megabytes). Raises ``ExpressionError`` for bad syntax."""
    if len(source) > MAX_CACHED_SOURCE_CHARS:
        return _compile_outside_budget(source)
    return _compile_cached(source)


def _compile_outside_budget(source: str) -> _Expression | _Template:
    # Jinja folds constants while compiling, and the guards refuse to run without a render
    # budget: in a fresh context there is none, so nothing user-supplied is evaluated here.
    return Context().run(_compile, source)


_compile_cached = lru_cache(maxsize=4096)(_compile_outside_budget)


def _compile(source: str) -> _Expression | _Template:
    try:
        single = _SINGLE_EXPRESSION.fullmatch(source)
        body = single["body"] if single else None
        if body is not None and not any(mark in body for mark in ("{{", "}}", "{%", "{#")):
            return _compile_expression(_strip_whitespace_control(body))
        tree = SANDBOX.parse(source)
        return _Template(_build(tree))
    except ExpressionError:
        raise
    except TemplateError as exc:
        raise ExpressionError(f"invalid expression: {exc.message}") from None
    except Exception as exc:  # the parser fails in its own ways on pathological input
        raise ExpressionError(f"invalid expression: {type(exc).__name__}") from None


def _strip_whitespace_control(body: str) -> str:
    """``{{- x -}}`` is ``{{ x }}`` when the expression is the whole string."""
    if body.startswith(("-", "+")):
        body = body[1:]
    if body.endswith(("-", "+")):
        body = body[:-1]
    return body


def _compile_expression(body: str) -> _Expression:
    parser = Parser(SANDBOX, body, state="variable")
    expression = parser.parse_expression()
    if not parser.stream.eos:
        raise ExpressionError(f"invalid expression: unexpected '{parser.stream.current.value}'")
    builds = (isinstance(expression, _BUILDERS)
              or next(expression.find_all(_BUILDERS), None) is not None)
    tree = nodes.Template([nodes.Assign(nodes.Name("result", "store"), expression)])
    return _Expression(_build(tree), builds)


def _build(tree: nodes.Template):
    tree = BudgetTransformer().visit(tree)
    tree.set_environment(SANDBOX)
    return SANDBOX.from_string(tree)


# --- results --------------------------------------------------------------------------------

def _user_error(exc: Exception) -> ExpressionError:
    """Whatever a template raised, as an ``ExpressionError`` with a message for the user."""
    if isinstance(exc, ExpressionError):
        return exc
    if isinstance(exc, TemplateError):
        return ExpressionError(exc.message or type(exc).__name__)
    if isinstance(exc, RecursionError):
        return ExpressionError("the expression recursed too deeply")
    if isinstance(exc, MemoryError):
        return ExpressionError("the expression ran out of memory")
    return ExpressionError(f"{type(exc).__name__}: {exc}")


def _json_value(value: Any, *, deep: bool) -> Any:
    if isinstance(value, Undefined):
        return None
    if not deep:
        if isinstance(value, _JSON_TYPES):
            return _finite(value)
        raise ExpressionError(f"the expression gives a {describe(value)}, not a JSON value")
    return _jsonified(value)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ExpressionError(f"the expression gives {value}, which JSON cannot hold")
    return value


def _jsonified(value: Any) -> Any:
    """``value`` as JSON: undefined parts become null; anything else non-JSON is an error.
    Returns the same object when nothing had to change."""
    if isinstance(value, _JSON_SCALARS):
        return _finite(value)
    if isinstance(value, Undefined):
        return None
    if isinstance(value, dict):
        items = {key: _jsonified(item) for key, item in value.items()}
        if not all(isinstance(key, _JSON_SCALARS) for key in items):
            raise ExpressionError("object keys must be text or numbers")
        changed = any(items[key] is not item for key, item in value.items())
        return items if changed else value
    if isinstance(value, list | tuple):
        items = [_jsonified(item) for item in value]
        changed = any(new is not old for new, old in zip(items, value, strict=True))
        return items if changed else value
    raise ExpressionError(f"the expression gives a {describe(value)}, not a JSON value")
