"""Escapes and resource attacks: each must end in an ExpressionError, quickly.

Every attack runs under ``finishes_within``: a wall-clock guard in a thread join, so a hang
fails the test instead of the suite, and no test asserts a timing of its own.
"""

from __future__ import annotations

import pytest

from app.engine import ExpressionError, RenderLimits, render
from tests.unit.engine.support import finishes_within

VARIABLES = {"input": {"text": "hello", "items": [1, 2, 3]}, "nodes": {}, "trigger": None,
             "execution": {"id": "e", "workflow_id": "w"}}
QUICK = RenderLimits(timeout_s=0.3, max_chars=1_000_000)


def attempt(template: str, limits: RenderLimits = QUICK) -> ExpressionError:
    def work():
        with pytest.raises(ExpressionError) as caught:
            render(template, VARIABLES, limits=limits)
        return caught.value

    return finishes_within(10, work)


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ input.__class__ }}",
    "{{ input['__class__'] }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ range.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__dict__ }}",
    "{{ input.text.upper.__self__ }}",
    "{{ (input.items|first).__class__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ request.application.__globals__ }}",
    "{{ config.__class__.__init__.__globals__ }}",
    "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{{ c }}{% endfor %}",
    "{{ dict.__base__ }}",
])
def test_python_internals_are_out_of_reach(template):
    message = str(attempt(template))
    assert any(refusal in message for refusal in ("is not allowed", "is not available",
                                                  "cannot read"))


@pytest.mark.parametrize("template", [
    "{{ range.start }}",
    "{{ input.text.upper.x }}",
    "{{ dict.fromkeys }}",
    "{{ namespace.x }}",
])
def test_functions_and_classes_have_no_readable_attributes(template):
    assert "cannot read" in str(attempt(template))


def test_self_is_not_a_value():
    assert "not a JSON value" in str(attempt("{{ self }}"))
    assert "cannot be printed" in str(attempt("text {{ self }}"))


@pytest.mark.parametrize("template", [
    "{{ '{0.__class__}'.format(input) }}",
    "{{ '{0.__class__.__mro__}'.format(1) }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ '{x}'.format_map(input) }}",
    "{{ 'a\tb'.expandtabs(999999999) }}",
    "{{ 'a'.encode() }}",
])
def test_string_formatting_tricks(template):
    assert "not available on text" in str(attempt(template))


@pytest.mark.parametrize(("template", "message"), [
    ("{{ range(10**9) }}", "range() is limited to 100,000 numbers"),
    ("{{ range(10**30) | list }}", "range() is limited"),
    ("{{ 'a' * 10**9 }}", "over the 1,000,000 limit"),
    ("{{ [0] * 10**9 }}", "over the 1,000,000 limit"),
    ("{{ 10**9 * 'a' }}", "over the 1,000,000 limit"),
    ("{{ 9**9**9 }}", "numbers are limited to 256 bits"),  # (9**9)**9 in Jinja: 257 bits
    ("{{ 9**(9**9) }}", "numbers are limited to 256 bits"),
    ("{{ (2**200) * (2**200) }}", "numbers are limited to 256 bits"),
    ("{{ 'a' | center(10**9) }}", "over the 1,000,000 limit"),
    ("{{ 'a'.ljust(10**9) }}", "over the 1,000,000 limit"),
    ("{{ (1).to_bytes(10**9, 'big') }}", "over the 1,000,000 limit"),
    ("{{ 'ab' | batch(10**9, 'x') | list }}", "over the 1,000,000 limit"),
    ("{{ '%999999999s' % 1 }}", "over the 1,000,000 limit"),
    ("{{ '%*s' % (10**9, 1) }}", "'*' widths are not allowed"),
    ("{{ '%s' | format(1) ~ '%999999999d' | format(1) }}", "over the 1,000,000 limit"),
    ("{{ ('a' * 999999).replace('', 'bb') }}", "over the 1,000,000 limit"),
    ("{{ ('a' * 999999) | replace('a', 'bb') }}", "over the 1,000,000 limit"),
    ("{{ ('x' * 999999).join(['a', 'b', 'c']) }}", "over the 1,000,000 limit"),
    ("{{ ['x' * 999999, 'yy'] | join }}", "over the 1,000,000 limit"),
    ("{{ ('a\n' * 400000) | indent(100) }}", "over the 1,000,000 limit"),
    ("{{ ('a' * 600000) ~ ('b' * 600000) }}", "over the 1,000,000 limit"),
    ("{{ ('a' * 600000) + ('b' * 600000) }}", "over the 1,000,000 limit"),
])
def test_huge_values_are_refused_before_they_are_built(template, message):
    assert message in str(attempt(template))


# Loops that build big values: a generous time budget, so that on a busy machine the size
# budget (what these tests are about) still trips first.
ROOMY = RenderLimits(timeout_s=8.0)


def test_doubling_a_string_in_a_loop_stops_at_the_size_budget():
    template = ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}"
                "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}")
    assert "over the 1,000,000 limit" in str(attempt(template, ROOMY))


def test_output_is_streamed_against_the_size_budget():
    template = "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}"
    assert "over the 1,000,000 limit" in str(attempt(template, ROOMY))


def test_captured_blocks_are_held_to_the_size_budget():
    template = ("{% set big %}{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}"
                "{% endset %}{{ big | length }}")
    assert "over the 1,000,000 limit" in str(attempt(template, ROOMY))
    macro = ("{% macro m() %}{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}"
             "{% endmacro %}{{ m() | length }}")
    assert "over the 1,000,000 limit" in str(attempt(macro, ROOMY))


@pytest.mark.parametrize("template", [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for a in input.text * 200000 %}{% for b in input.text * 200000 %}{% endfor %}"
    "{% endfor %}",
    "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
    "{{ range(100000) | map('string') | map('string') | map('string') | list | length }}"
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
])
def test_nested_loops_and_recursion_stop_at_the_time_budget(template):
    assert "ran for more than 0.3s" in str(attempt(template))


def test_unbounded_recursion_stops():
    assert "recursed too deeply" in str(attempt(
        "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"))


def test_the_default_budget_is_one_second():
    template = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    assert "ran for more than 1s" in str(attempt(template, RenderLimits()))
