"""The Jinja sandbox user templates run in, and the budget every render runs under.

Jinja's ``ImmutableSandboxedEnvironment`` already refuses underscore attributes and the methods
that mutate lists and dicts. On top of it, this environment:

- fails with ``ExpressionError`` on anything unsafe, where Jinja would quietly render "";
- refuses attribute access on functions and classes, ``str.format`` (format strings reach
  attributes and can pad to any width) and the string methods that can blow up in size;
- keeps each render within a time budget: the clock is checked on every call, attribute
  access and loop step, so nested loops and recursion end in an error instead of a hung worker;
- keeps each value it builds within a size budget: operators (``+ * ** %`` and ``~``), filters,
  method calls, captured blocks and the output are checked, before the step where one step
  could allocate too much (``'a' * 10**9``, ``9**9**9``) and after it otherwise.

A budget is active only inside ``budget_scope``; guards called outside one (Jinja folds
constants at compile time) raise, which makes Jinja leave the work to render time.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import wraps
from types import BuiltinFunctionType
from typing import Any

from jinja2 import ChainableUndefined, nodes, pass_environment, pass_eval_context
from jinja2.filters import FILTERS, make_attrgetter
from jinja2.runtime import Macro, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace
from jinja2.visitor import NodeTransformer

from app.engine.errors import ExpressionError

MAX_RANGE = 100_000
MAX_INT_BITS = 256  # 77 digits: far past any JSON number, short of arithmetic DoS
LOOP_FILTER = "_jobsprint_loop"
CONCAT_FILTER = "_jobsprint_concat"

# Methods of str whose result is no larger than the string, or is checked before it is built.
_STR_METHODS = frozenset({
    "capitalize", "casefold", "center", "count", "endswith", "find", "index", "isalnum",
    "isalpha", "isascii", "isdecimal", "isdigit", "isidentifier", "islower", "isnumeric",
    "isprintable", "isspace", "istitle", "isupper", "join", "ljust", "lower", "lstrip",
    "partition", "removeprefix", "removesuffix", "replace", "rfind", "rindex", "rjust",
    "rpartition", "rsplit", "rstrip", "split", "splitlines", "startswith", "strip", "swapcase",
    "title", "upper", "zfill",
})
_PERCENT_SPEC = re.compile(
    r"%(?:\([^)]*\))?[-#0 +]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d+))?[hlL]?[a-zA-Z%]")


@dataclass(frozen=True, slots=True)
class RenderLimits:
    """The budget of one ``render`` call."""

    timeout_s: float = 1.0
    max_chars: int = 1_000_000


class Budget:
    __slots__ = ("limits", "deadline")

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.timeout_s

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise ExpressionError(
                f"the expression ran for more than {self.limits.timeout_s:g}s and was stopped")

    def check_size(self, size: int) -> None:
        if size > self.limits.max_chars:
            raise ExpressionError(
                f"the expression would build a value of {size:,} characters or items, over "
                f"the {self.limits.max_chars:,} limit")


_active: ContextVar[Budget | None] = ContextVar("jobsprint_render_budget", default=None)


@contextmanager
def budget_scope(limits: RenderLimits) -> Iterator[Budget]:
    budget = Budget(limits)
    token = _active.set(budget)
    try:
        yield budget
    finally:
        _active.reset(token)


def current_budget() -> Budget:
    budget = _active.get()
    if budget is None:
        raise RuntimeError("no render in progress")
    return budget


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | list | tuple | dict) else 0


# --- turning values into text --------------------------------------------------------------

def _json_default(value: Any) -> Any:
    if isinstance(value, Undefined):
        return None
    if isinstance(value, Mapping):
        return dict(value)
    raise ExpressionError(f"a {describe(value)} cannot be turned into JSON")


def compact_json(value: Any) -> str:
    """JSON text as the ``tojson`` filter writes it: compact, keys in their order, UTF-8."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False,
                          default=_json_default)
    except ValueError as exc:  # NaN or infinity
        raise ExpressionError(f"cannot turn the value into JSON: {exc}") from None


def to_text(value: Any) -> str:
    """How a value prints inside text: null and undefined as "", booleans as true/false,
    objects and lists as compact JSON (never as Python reprs)."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, Undefined):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict | list | tuple):
        return compact_json(value)
    raise ExpressionError(f"a {describe(value)} cannot be printed; only JSON values can")


def describe(value: Any) -> str:
    """A user-facing name for a Python value's kind."""
    if isinstance(value, Iterator):
        return "generator (add | list to get a list)"
    if isinstance(value, type):
        return "class"
    if callable(value):
        return "function"
    return type(value).__name__


# --- the undefined value --------------------------------------------------------------------

class LenientUndefined(ChainableUndefined):
    """A missing value: reading through it (``input.a.b.c``) stays undefined and it prints as
    "", like n8n; calling it, comparing it or doing arithmetic with it is an error."""

    __slots__ = ()


# --- guards ---------------------------------------------------------------------------------

def _check_bits(bits: float) -> None:
    if bits > MAX_INT_BITS:
        raise ExpressionError(f"numbers are limited to {MAX_INT_BITS} bits")


def _check_percent_format(template: str, budget: Budget) -> None:
    padding = 0
    for spec in _PERCENT_SPEC.finditer(template):
        for part in (spec["width"], spec["precision"]):
            if part == "*":
                raise ExpressionError("'*' widths are not allowed in % formatting")
            if part:
                padding += int(part)
    budget.check_size(len(template) + padding)


def _check_binop(operator: str, left: Any, right: Any, budget: Budget) -> None:
    ints = isinstance(left, int) and isinstance(right, int)
    sequences = (str, list, tuple)
    if operator == "*":
        if ints:
            _check_bits(left.bit_length() + right.bit_length())
        elif isinstance(left, sequences) and isinstance(right, int):
            budget.check_size(len(left) * max(right, 0))
        elif isinstance(right, sequences) and isinstance(left, int):
            budget.check_size(len(right) * max(left, 0))
    elif operator == "+":
        if ints:
            _check_bits(max(left.bit_length(), right.bit_length()) + 1)
        elif isinstance(left, sequences) and isinstance(right, sequences):
            budget.check_size(len(left) + len(right))
    elif operator == "**":
        if ints and right > 0 and abs(left) > 1:
            _check_bits(right * math.log2(abs(left)))
    elif operator == "%" and isinstance(left, str):
        _check_percent_format(left, budget)


def join_text(parts: Any, separator: str = "") -> str:
    """Join values as text, stopping as soon as the result would be over the budget."""
    budget = current_budget()
    texts, total = [], 0
    for index, part in enumerate(parts):
        text = to_text(part)
        total += len(text) + (len(separator) if index else 0)
        budget.check_size(total)
        texts.append(text)
    return separator.join(texts)


def _check_replace(text: str, old: str, new: str, count: int = -1) -> None:
    hits = len(text) + 1 if old == "" else text.count(old)
    if count is not None and count >= 0:
        hits = min(hits, count)
    current_budget().check_size(len(text) + hits * (len(new) - len(old)))


class BudgetedRange(Sequence):
    """``range()`` for templates: at most MAX_RANGE numbers, and iterating checks the clock."""

    __slots__ = ("_range",)

    def __init__(self, numbers: range) -> None:
        self._range = numbers

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, index):
        item = self._range[index]
        return BudgetedRange(item) if isinstance(item, range) else item

    def __iter__(self) -> Iterator[int]:
        budget = current_budget()
        for count, number in enumerate(self._range):
            if not count & 255:
                budget.check_time()
            yield number

    def __repr__(self) -> str:
        return repr(self._range)


def budgeted_range(*args: int) -> BudgetedRange:
    numbers = range(*args)
    try:
        too_many = len(numbers) > MAX_RANGE
    except OverflowError:
        too_many = True
    if too_many:
        raise ExpressionError(f"range() is limited to {MAX_RANGE:,} numbers")
    return BudgetedRange(numbers)


def _loop_items(iterable: Any) -> Iterator[Any]:
    """What every ``{% for %}`` iterates over: the loop checks the clock as it goes."""
    budget = current_budget()

    def items() -> Iterator[Any]:
        for count, item in enumerate(iterable):
            if not count & 63:
                budget.check_time()
            yield item

    return items()


def _concat(values: list) -> str:
    """The ``~`` operator; its operands print as they would in ``{{ }}``."""
    return join_text(values)


def _join_captured(parts: Any) -> str:
    """Joins the output captured by macros, ``{% set %}`` blocks and ``{% filter %}`` blocks."""
    parts = list(parts)
    current_budget().check_size(sum(map(len, parts)))
    return "".join(parts)


def _guarded_filter(function):
    """A filter that checks the clock before it runs and the size of what it returns."""
    @wraps(function)
    def guarded(*args, **kwargs):
        budget = current_budget()
        budget.check_time()
        result = function(*args, **kwargs)
        budget.check_size(_size(result))
        return result

    return guarded


def _checked_width(function, position: int, name: str):
    """A filter whose argument at ``position`` (a width or count) is capped by the budget."""
    @wraps(function)
    def checked(*args, **kwargs):
        value = kwargs.get(name, args[position] if len(args) > position else None)
        if isinstance(value, int):
            current_budget().check_size(value)
        return function(*args, **kwargs)

    return checked


def _filter_indent(text: Any, width: int | str = 4, first: bool = False,
                   blank: bool = False) -> str:
    text = to_text(text)
    step = width if isinstance(width, int) else len(str(width))
    current_budget().check_size(len(text) + (text.count("\n") + 1) * max(step, 0))
    return FILTERS["indent"](text, width, first, blank)


def _filter_format(template: str, *args: Any, **kwargs: Any) -> str:
    _check_percent_format(str(template), current_budget())
    return FILTERS["format"](template, *args, **kwargs)


@pass_eval_context
def _filter_replace(eval_ctx, text: Any, old: str, new: str, count: int | None = None) -> str:
    _check_replace(to_text(text), str(old), str(new), -1 if count is None else count)
    return FILTERS["replace"](eval_ctx, text, old, new, count)


@pass_environment
def _filter_join(environment, value: Any, separator: str = "",
                 attribute: str | int | None = None) -> str:
    if attribute is not None:
        value = map(make_attrgetter(environment, attribute), value)
    return join_text(value, str(separator))


def _filters() -> dict:
    replaced = {
        "tojson": compact_json,
        "indent": _filter_indent,
        "format": _filter_format,
        "replace": _filter_replace,
        "join": _filter_join,
        "center": _checked_width(FILTERS["center"], 1, "width"),
        "batch": _checked_width(FILTERS["batch"], 1, "linecount"),
        "slice": _checked_width(FILTERS["slice"], 1, "slices"),
    }
    filters = {name: _guarded_filter(replaced.get(name, function))
               for name, function in FILTERS.items()}
    filters[LOOP_FILTER] = _loop_items
    filters[CONCAT_FILTER] = _concat
    return filters


# --- the environment ------------------------------------------------------------------------

class BudgetTransformer(NodeTransformer):
    """Routes every for-loop and every ``~`` through the budget-checking filters."""

    def visit_For(self, node: nodes.For) -> nodes.For:
        node = self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, LOOP_FILTER, [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Filter:
        node = self.generic_visit(node)
        operands = nodes.List(node.nodes, lineno=node.lineno)
        return nodes.Filter(operands, CONCAT_FILTER, [], [], None, None, lineno=node.lineno)


class Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self) -> None:
        super().__init__(  # noqa: S701 - renders JSON values and plain text, never HTML
            undefined=LenientUndefined, finalize=to_text, autoescape=False,
            keep_trailing_newline=True, cache_size=0)
        self.globals = {"range": budgeted_range, "dict": dict, "namespace": Namespace}
        self.filters = _filters()
        self.concat = _join_captured  # type: ignore[assignment]

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        raise ExpressionError(f"'{attribute}' is not allowed in expressions")

    def _refuse_function_attribute(self, obj: Any, attribute: Any) -> None:
        if inspect.isroutine(obj) or isinstance(obj, type | Macro):
            raise ExpressionError(
                f"cannot read '{attribute}' of a {describe(obj)}; functions have no "
                f"attributes you can use")

    def getattr(self, obj: Any, attribute: str) -> Any:
        current_budget().check_time()
        if isinstance(obj, dict):
            # A JSON object's own key wins over a dict method of the same name (input.items).
            try:
                return obj[attribute]
            except KeyError:
                pass
        return self._attribute(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        current_budget().check_time()
        self._refuse_function_attribute(obj, argument)
        try:
            return obj[argument]
        except (TypeError, LookupError):
            if isinstance(argument, str):
                return self._attribute(obj, argument)
        return self.undefined(obj=obj, name=argument)

    def _attribute(self, obj: Any, attribute: str) -> Any:
        if attribute.startswith("_"):
            # Refused even where it would only be undefined, so probing always fails loudly.
            self.unsafe_undefined(obj, attribute)
        self._refuse_function_attribute(obj, attribute)
        if isinstance(obj, str) and attribute not in _STR_METHODS and hasattr(str, attribute):
            raise ExpressionError(f"'{attribute}' is not available on text in expressions")
        try:
            value = getattr(obj, attribute)
        except AttributeError:
            try:
                return obj[attribute]
            except (TypeError, LookupError):
                return self.undefined(obj=obj, name=attribute)
        if not self.is_safe_attribute(obj, attribute, value):
            return self.unsafe_undefined(obj, attribute)
        return value

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's signature
        budget = current_budget()
        budget.check_time()
        if not __self.is_safe_callable(__obj):
            raise ExpressionError(f"this {describe(__obj)} may not be called from expressions")
        if isinstance(__obj, BuiltinFunctionType):
            for argument in (*args, *kwargs.values()):
                if isinstance(argument, int):
                    budget.check_size(abs(argument))
            owner = getattr(__obj, "__self__", None)
            if isinstance(owner, str) and __obj.__name__ == "join" and len(args) == 1:
                return join_text(args[0], owner)
            if isinstance(owner, str) and __obj.__name__ == "replace":
                _check_replace(owner, *args, **kwargs)
        result = __context.call(__obj, *args, **kwargs)
        budget.check_size(_size(result))
        return result

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        budget = current_budget()
        budget.check_time()
        _check_binop(operator, left, right, budget)
        result = self.binop_table[operator](left, right)
        budget.check_size(_size(result))
        return result


SANDBOX = Sandbox()
