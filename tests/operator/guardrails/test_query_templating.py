"""templating.render: substitution, validation, and escaping that Prometheus itself confirms.

The unit tests pin the rendered text; the integration tests send hostile renderings to the real
Prometheus and check, through its own parser, that each hostile value stayed one label value.
"""

from __future__ import annotations

import pytest
from rollout_operator import api
from rollout_operator.guardrails import templating
from rollout_operator.guardrails.templating import TemplateError, render

from tests.support.prometheus import Exporter, PrometheusServer

VARIABLES = {"rollout": "pricing-v2", "namespace": "prod", "variant": "candidate", "interval": "1m"}


def _rollout(name: str = "pricing-v2", namespace: str = "prod", interval: str = "90s") -> api.PolicyRollout:
    policy = {"image": "policy-server:1", "artifact": "s3://bucket/p.pt", "version": "v2"}
    return api.PolicyRollout.model_validate(
        {
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "policy": policy,
                "fallback": {**policy, "version": "v1"},
                "steps": [{"setWeight": 10}],
                "analysis": {"interval": interval},
                "allowPromotionWithoutAnalysis": True,  # no guardrails: only the variables matter here
            },
        }
    )


# ---------------------------------------------------------------------------- substitution


def test_substitutes_every_variable() -> None:
    query = (
        'sum(rate(policy_errors_total{rollout="{{ rollout }}",namespace="{{namespace}}",'
        'variant="{{  variant  }}"}[{{ interval }}]))'
    )
    assert render(query, VARIABLES) == (
        'sum(rate(policy_errors_total{rollout="pricing-v2",namespace="prod",variant="candidate"}[1m]))'
    )


def test_query_without_placeholders_is_unchanged() -> None:
    query = 'sum by (variant) (rate(x{a=~"b|c"}[5m])) > 0.01 # a comment with "quotes" and {braces}'
    assert render(query, {}) == query


def test_params_and_values_outside_strings() -> None:
    variables = {**VARIABLES, "params.threshold": "0.05", "params.metric": "policy_latency_seconds"}
    query = '{{ params.metric }}{rollout="{{ rollout }}"} offset {{ interval }} > {{ params.threshold }}'
    assert render(query, variables) == 'policy_latency_seconds{rollout="pricing-v2"} offset 1m > 0.05'


def test_placeholder_text_inside_a_value_is_not_expanded_again() -> None:
    assert render('x{a="{{ params.p }}"}', {"params.p": "{{ rollout }}", **VARIABLES}) == 'x{a="{{ rollout }}"}'


def test_triple_brace_label_matcher() -> None:
    assert render('x{{{ params.l }}="v"}', {"params.l": "variant"}) == 'x{variant="v"}'


# ------------------------------------------------------------------------------- escaping


@pytest.mark.parametrize(
    ("value", "double_quoted", "single_quoted"),
    [
        ('say "hi"', r"say \"hi\"", 'say "hi"'),
        ("it's", "it's", r"it\'s"),
        ("back\\slash\\", r"back\\slash\\", r"back\\slash\\"),
        ("two\nlines\r\t", r"two\nlines\r\t", r"two\nlines\r\t"),
        ("bell\x07del\x7f", r"bell\x07del\x7f", r"bell\x07del\x7f"),
        ('"} or vector(1) or up{a="', r"\"} or vector(1) or up{a=\"", '"} or vector(1) or up{a="'),
        ("}}", "}}", "}}"),
        ("é☃", "é☃", "é☃"),
    ],
)
def test_string_literal_escaping(value: str, double_quoted: str, single_quoted: str) -> None:
    variables = {"params.p": value}
    assert render('x{a="{{ params.p }}"}', variables) == f'x{{a="{double_quoted}"}}'
    assert render("x{a='{{ params.p }}'}", variables) == f"x{{a='{single_quoted}'}}"


def test_regex_matchers_match_literally() -> None:
    variables = {"params.p": "a.b|c*"}
    assert render('x{a=~"{{ params.p }}"}', variables) == r'x{a=~"a\\.b\\|c\\*"}'
    assert render("x{a !~ '{{ params.p }}'}", variables) == r"x{a !~ 'a\\.b\\|c\\*'}"
    assert render('x{a=~\n          "{{ params.p }}"}', variables) == 'x{a=~\n          "a\\\\.b\\\\|c\\\\*"}'
    assert render('x{a="{{ params.p }}"}', variables) == 'x{a="a.b|c*"}'


def test_raw_strings() -> None:
    assert render("x{a=`{{ params.p }}`}", {"params.p": 'a"b\\c'}) == 'x{a=`a"b\\c`}'
    with pytest.raises(TemplateError, match="backtick"):
        render("x{a=`{{ params.p }}`}", {"params.p": "a` or vector(1) or x{b=`"})


def test_escaped_quote_in_the_template_does_not_end_the_string() -> None:
    # The placeholder sits after \" inside the same string literal, so it is escaped as such.
    assert render(r'x{a="q\"{{ params.p }}"}', {"params.p": '"'}) == r'x{a="q\"\""}'


@pytest.mark.parametrize(
    "value",
    ['"} or vector(1) or x{a="', "1) or vector(1", "5m] or vector(1", "a b", "-", "", "or", "bool", "1m\n"],
)
def test_values_outside_strings_must_be_simple(value: str) -> None:
    with pytest.raises(TemplateError, match=r"\{\{ params.p \}\} is outside a string literal.*put the placeholder"):
        render("x > {{ params.p }}", {"params.p": value})


def test_comments_do_not_let_a_newline_through() -> None:
    with pytest.raises(TemplateError, match="outside a string literal"):
        render("x # owner {{ params.p }}\n> 1", {"params.p": "\nvector(1) or"})
    assert render("x # owner {{ params.p }}\n> 1", {"params.p": "team_a"}) == "x # owner team_a\n> 1"


# ----------------------------------------------------------------------------- validation


def test_unknown_placeholder_is_named() -> None:
    with pytest.raises(TemplateError, match=r"unknown placeholder \{\{ params.missing \}\}.*known: .*rollout"):
        render('x{a="{{ params.missing }}"}', VARIABLES)


@pytest.mark.parametrize("query", ['x{a="{{ rollout | upper }}"}', 'x{a="{{ }}"}', "x > {{ 1 }}"])
def test_malformed_placeholder(query: str) -> None:
    with pytest.raises(TemplateError, match="malformed placeholder"):
        render(query, VARIABLES)


def test_unterminated_string() -> None:
    with pytest.raises(TemplateError, match="unterminated"):
        render('x{a="{{ rollout }}}', VARIABLES)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("rollout", 'r"} or vector(1)', "not a valid Kubernetes object name"),
        ("rollout", "Upper", "not a valid Kubernetes object name"),
        ("namespace", "a.b", "not a valid Kubernetes name"),
        ("variant", "x" * 64, "not a valid Kubernetes name"),
        ("interval", "1m] or vector(1", "not a PromQL duration"),
        ("interval", "1.5m", "not a PromQL duration"),
    ],
)
def test_known_variables_are_validated(name: str, value: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render("x", {**VARIABLES, name: value})


@pytest.mark.parametrize(
    ("duration", "promql"),
    [
        ("30s", "30s"),
        ("1m", "1m"),
        ("90s", "1m30s"),
        ("1.5m", "1m30s"),
        ("250ms", "250ms"),
        ("1h30m", "1h30m"),
        ("0.5s", "500ms"),
        ("2h0m5s", "2h5s"),
    ],
)
def test_promql_duration(duration: str, promql: str) -> None:
    assert templating.promql_duration(duration) == promql


def test_guardrail_variables_from_a_rollout() -> None:
    variables = templating.guardrail_variables(_rollout(), variant="stable", params={"threshold": "0.1"})
    assert variables == {
        "rollout": "pricing-v2",
        "namespace": "prod",
        "variant": "stable",
        "interval": "1m30s",
        "params.threshold": "0.1",
    }
    assert templating.guardrail_variables(_rollout())["variant"] == "candidate"
    with pytest.raises(TemplateError, match="parameter name 'bad-name'"):
        templating.guardrail_variables(_rollout(), params={"bad-name": "x"})


# ---------------------------------------- hostile values, checked by Prometheus's own parser

HOSTILE = [
    '"} or vector(1) or x{a="',
    '\\"} or vector(1) #',
    "trailing backslash\\",
    'two\nlines"} or vector(1) or x{y="',
    "single ' quote ` backtick",
    "}} {{ rollout }} {{",
    ".*",
    "a|b",
    "é☃ unicode",
]
CONTROL = "tab\tbell\x07cr\r"


@pytest.mark.integration
@pytest.mark.parametrize("value", [*HOSTILE, CONTROL], ids=[f"hostile{i}" for i in range(len(HOSTILE) + 1)])
@pytest.mark.parametrize("quote", ['"', "'"])
def test_hostile_value_stays_one_label_value(prometheus: PrometheusServer, value: str, quote: str) -> None:
    """absent() echoes its equality matchers as labels: Prometheus tells us what it parsed."""
    rendered = render(f"absent(nope{{l={quote}{{{{ params.v }}}}{quote}}})", {"params.v": value})
    body = prometheus.query(rendered)
    assert body["status"] == "success", body
    assert [(r["metric"], r["value"][1]) for r in body["data"]["result"]] == [({"l": value}, "1")]


@pytest.mark.integration
def test_naive_substitution_would_have_been_injectable(prometheus: PrometheusServer) -> None:
    """Guards the test above against vacuity: without escaping the same payload changes the query."""
    naive = 'absent(nope{l="{{ params.v }}"})'.replace("{{ params.v }}", HOSTILE[0])
    body = prometheus.query(naive)
    assert body["status"] == "success"
    # `absent(nope{l=""} or vector(1) or x{a=""})`: the injected vector(1) silenced absent().
    assert body["data"]["result"] == []


@pytest.mark.integration
def test_hostile_values_match_exactly_their_own_series(exporter: Exporter, prometheus: PrometheusServer) -> None:
    """Series whose label holds the hostile text: equality and regex matchers find that one only."""
    for case, value in enumerate(HOSTILE):
        exporter.set("hostile_probe", case, case=str(case), tag=value)
    exporter.set("hostile_probe", 99, case="99", tag="ab")  # ".*" or "a|b" would also match this one
    prometheus.wait_for("count(hostile_probe)", lambda n: n == len(HOSTILE) + 1)
    for case, value in enumerate(HOSTILE):
        for matcher in ("=", "=~"):
            rendered = render(f'hostile_probe{{tag{matcher}"{{{{ params.tag }}}}"}}', {"params.tag": value})
            body = prometheus.query(rendered)
            assert body["status"] == "success", (value, rendered, body)
            results = body["data"]["result"]
            assert [(r["metric"]["tag"], r["value"][1]) for r in results] == [(value, str(case))], rendered
