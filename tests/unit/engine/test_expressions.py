"""Templates in params: native values, text, lenient undefined, filters, errors, caching."""

from __future__ import annotations

import copy

import pytest

from app.engine import ExpressionError, render
from app.engine.expressions import compile_source, expression_problems, is_template

VARIABLES = {
    "input": {"total": 5, "email": "A@B.com", "items": [1, 2, 3], "name": "Zoë",
              "nested": {"deep": {"value": "x"}}, "flag": False},
    "nodes": {"calc": {"total": 10}},
    "trigger": {"body": {"amount": 12.5}},
    "execution": {"id": "exec-1", "workflow_id": "wf-1"},
}


def r(template, **extra):
    return render(template, {**VARIABLES, **extra})


@pytest.mark.parametrize(("template", "expected"), [
    ("{{ input.total + 1 }}", 6),
    ("{{ input.total * 2.5 }}", 12.5),
    ("  {{ input.total > 3 }}  ", True),
    ("{{ input.missing }}", None),
    ("{{ input.nested }}", {"deep": {"value": "x"}}),
    ("{{ [input.total, input.missing] }}", [5, None]),
    ("{{ {'a': input.total} }}", {"a": 5}),
    ("{{ nodes.calc.total }}", 10),
    ("{{ trigger.body.amount }}", 12.5),
    ("{{ execution.id }}", "exec-1"),
    ("{{- input.total -}}", 5),
    ("{{ 'x' ~ input.total }}", "x5"),
])
def test_a_single_expression_keeps_its_json_type(template, expected):
    assert r(template) == expected


@pytest.mark.parametrize(("template", "expected"), [
    ("total: {{ input.total }}", "total: 5"),
    ("{{ input.total }} and {{ input.name }}", "5 and Zoë"),
    ("[{{ input.missing }}] [{{ none }}] {{ input.flag }} {{ true }}", "[] [] false true"),
    ("obj {{ input.nested }}", 'obj {"deep":{"value":"x"}}'),
    ("{% for i in input['items'] %}{{ i }},{% endfor %}", "1,2,3,"),
    ("line\n", "line\n"),
    ("{# a comment #}text", "text"),
    ("{{ none ~ 'a' ~ true }}", "atrue"),
])
def test_other_templates_render_to_text(template, expected):
    assert r(template) == expected


def test_strings_without_templates_are_left_alone():
    assert r("plain {text} }}") == "plain {text} }}"
    assert not is_template("a { b }") and is_template("{% if x %}{% endif %}")


def test_render_walks_dicts_and_lists_and_does_not_mutate():
    params = {"a": ["{{ input.total }}", {"b": "{{ input.email | lower }}"}], "c": 1}
    before = copy.deepcopy(params)
    variables = copy.deepcopy(VARIABLES)
    assert render(params, variables) == {"a": [5, {"b": "a@b.com"}], "c": 1}
    assert params == before and variables == VARIABLES


def test_templates_cannot_mutate_their_inputs():
    variables = copy.deepcopy(VARIABLES)
    for attack in ["{{ input.nested.update({'x': 1}) }}", "{{ input['items'].append(4) }}",
                   "{{ input.pop('total') }}", "{{ input['items'].clear() }}"]:
        with pytest.raises(ExpressionError, match="is not allowed"):
            render(attack, variables)
    assert variables == VARIABLES


def test_a_json_key_wins_over_a_dict_method_of_the_same_name():
    assert r("{{ input.items }}") == [1, 2, 3]
    assert r("{{ input.nested.keys() | list }}") == ["deep"]


@pytest.mark.parametrize(("template", "expected"), [
    ("{{ input.email | lower }}", "a@b.com"),
    ("{{ input.email | upper }}", "A@B.COM"),
    ("{{ input.missing | default('none') }}", "none"),
    ("{{ input['items'] | length }}", 3),
    ("{{ 2.567 | round(2) }}", 2.57),
    ("{{ '42' | int }}", 42),
    ("{{ '4.5' | float }}", 4.5),
    ("{{ input['items'] | join(',') }}", "1,2,3"),
    ("{{ 'a-b' | replace('-', '+') }}", "a+b"),
    ("{{ '%s=%d' | format('x', 3) }}", "x=3"),
    ("{{ input['items'] | map('string') | list }}", ["1", "2", "3"]),
])
def test_filters(template, expected):
    assert r(template) == expected


def test_tojson_is_compact_keeps_key_order_and_unicode():
    value = {"z": 1, "a": ["é", None, True], "m": 1.5}
    assert render("{{ v | tojson }}", {"v": value}) == '{"z":1,"a":["é",null,true],"m":1.5}'
    assert render("{{ input.missing | tojson }}", {"input": {}}) == "null"


def test_undefined_is_lenient_for_reading_and_strict_for_using():
    assert r("{{ input.missing.deeper.still }}") is None
    assert r("a{{ input.missing.deeper }}b") == "ab"
    assert r("{{ input.missing is defined }}") is False
    for template in ["{{ input.missing() }}", "{{ input.missing + 1 }}",
                     "{{ input.missing > 1 }}"]:
        with pytest.raises(ExpressionError, match="has no attribute 'missing'"):
            r(template)
    with pytest.raises(ExpressionError, match="'nobody' is undefined"):
        r("{{ nobody.name() }}")


def test_runtime_errors_become_expression_errors_with_the_param_path():
    with pytest.raises(ExpressionError) as caught:
        render({"fields": {"ratio": "{{ input.total / 0 }}"}}, VARIABLES)
    assert caught.value.path == ("fields", "ratio")
    assert str(caught.value) == "fields.ratio: ZeroDivisionError: division by zero"


def test_values_that_are_not_json_are_refused():
    with pytest.raises(ExpressionError, match="gives a function"):
        r("{{ range }}")
    with pytest.raises(ExpressionError, match=r"generator \(add \| list"):
        r("{{ input['items'] | map('string') }}")
    with pytest.raises(ExpressionError, match="cannot be printed"):
        r("x {{ range }}")
    with pytest.raises(ExpressionError, match="which JSON cannot hold"):
        r("{{ 'nan' | float }}")
    with pytest.raises(ExpressionError, match="not a JSON value"):
        r("{{ [range] }}")


def test_conditions_and_loops():
    assert r("{% if input.total > 3 %}big{% else %}small{% endif %}") == "big"
    assert r("{% for k, v in input.nested.items() %}{{ k }}{% endfor %}") == "deep"
    assert r("{% for x in [1, 2] %}{{ loop.index }}{% endfor %}") == "12"
    assert r("{{ range(3) | list }}") == [0, 1, 2]
    assert r("{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}"
             "{% endfor %}{{ ns.n }}") == "6"


def test_syntax_errors():
    for template, message in [("{{ input. }}", "invalid expression"),
                              ("{{ a b }}", "invalid expression: unexpected 'b'"),
                              ("{% for %}", "invalid expression"),
                              ("{{ x | nosuch }}", "No filter named 'nosuch'")]:
        with pytest.raises(ExpressionError, match=message):
            r(template)


def test_expression_problems_lists_every_bad_template_with_its_path():
    params = {"a": "{{ ok }}", "b": ["{{ bad. }}", {"c": "{% if %}"}], "d": 1}
    assert [path for path, _ in expression_problems(params)] == [("b", 0), ("b", 1, "c")]


def test_compiled_templates_are_cached():
    source = "{{ input.total * 3 }} cached"
    assert compile_source(source) is compile_source(source)
    long_source = "{{ input.total }}" + " " * 20_000
    assert compile_source(long_source) is not compile_source(long_source)
    assert r(long_source) == 5
