"""The built-in guardrail library: PromQL templates usable by name in `analysis.guardrails[].template`.

Written against the policy server's metrics contract (docs/metrics.md) and the router's
(policy_server/router/metrics.py). Every series is selected by `rollout` and `namespace`, labels
the scrape configuration adds to each pod's targets (docs/guardrails.md shows the relabelling),
and by `variant`, which the servers put on every series themselves.

A template is rendered by `templating.render`, so parameters are escaped for where they sit and
a manifest cannot inject PromQL. Each template declares its parameters with defaults; the
default window is the analysis interval. Counters that may not exist yet (no error has ever
happened) are wrapped in `or vector(0)`, so "none yet" reads 0, while a variant without traffic
still divides 0 by 0 and stays inconclusive.

`SERIES` holds the raw per-variant sums and counts a comparing judge (`sequential`) reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from rollout_operator import api
from rollout_operator.guardrails import fairness, templating

__all__ = ["INTERVAL", "SERIES", "TEMPLATES", "GuardrailTemplate", "render_guardrail", "render_series"]


@dataclasses.dataclass(frozen=True)
class GuardrailTemplate:
    """A named PromQL template, its parameters (name -> default; `INTERVAL`: the analysis interval; None:
    required) and an example condition."""

    name: str
    description: str
    query: str
    params: Mapping[str, str | None]
    example_condition: str
    build: Callable[[Mapping[str, str]], str] | None = None  # the query from the parameters (its shape varies)


def _sel(metric: str, variant: str = "candidate", extra: str = "") -> str:
    labels = f'rollout="{{{{ rollout }}}}",namespace="{{{{ namespace }}}}",variant="{variant}"{extra}'
    return f"{metric}{{{labels}}}"


def _increase(metric: str, variant: str = "candidate") -> str:
    return f"sum(increase({_sel(metric, variant)}[{{{{ params.window }}}}]))"


def _mean(base: str, variant: str) -> str:
    return f"({_increase(base + '_sum', variant)} / {_increase(base + '_count', variant)})"


def _positive(denominator: str) -> str:
    """A ratio's denominator kept only when > 0: a ratio of rewards means nothing otherwise (two negative means
    give a ratio above 1 for a worse candidate, a negative one a ratio that passes `< X`), so it is no data
    (inconclusive) rather than a verdict."""
    return f"({denominator} > 0)"


def _ratio_of_counters(numerator: str, denominator: str) -> str:
    return f"({_increase(numerator)} or vector(0)) / {_increase(denominator)}"


def _shares(variant: str, other: str) -> str:
    """Each action's share of `variant`'s decisions, with 0 for actions only `other` took."""
    window = "[{{ params.window }}]"
    counts = (
        f"sum by (action) (increase({_sel('policy_decisions_total', variant)}{window}) "
        f"or 0 * increase({_sel('policy_decisions_total', other)}{window}))"
    )
    return f"({counts} / scalar({_increase('policy_decisions_total', variant)}))"


def _estimate(quantity: str, bound: str) -> str:
    """The router's off-policy estimate of the shadow candidate (policy_server/router/shadow_ope.py)."""
    return _sel("policy_router_shadow_estimate", extra=f',quantity="{quantity}",bound="{bound}"')


def _js_divergence() -> str:
    p, q = _shares("candidate", "stable"), _shares("stable", "candidate")
    m = f"(({p} + {q}) / 2)"
    # 0 log 0 = 0: `> 0` drops those actions. A variant without decisions makes every share NaN,
    # so its half is empty and the whole query has no data: inconclusive, never a pass.
    return f"0.5 * sum(({p} > 0) * log2(({p} > 0) / {m})) + 0.5 * sum(({q} > 0) * log2(({q} > 0) / {m}))"


def _value_mean(what: str, shifted: bool = False) -> str:
    """Mean of `policy_value_<what>` per rewarded prediction of `params.variant` over the window
    (`shifted`: the window `params.offset` ago). A variant without rewarded predictions gives 0/0: no data."""
    span = "[{{ params.window }}]" + (" offset {{ params.offset }}" if shifted else "")
    sel = {part: _sel(f"policy_value_{what}_{part}", "{{ params.variant }}") for part in ("sum", "count")}
    return f"(sum(increase({sel['sum']}{span})) / sum(increase({sel['count']}{span})))"


INTERVAL = "<analysis interval>"
WINDOW: dict[str, str | None] = {"window": INTERVAL}
CRITIC: dict[str, str | None] = {"window": INTERVAL, "variant": "candidate"}

TEMPLATES: dict[str, GuardrailTemplate] = {
    t.name: t
    for t in (
        GuardrailTemplate(
            "reward-ratio",
            "Candidate's mean reward over the window divided by stable's (1 = equal; for positive rewards: no "
            "data when stable's mean is 0 or below).",
            f"{_mean('policy_reward', 'candidate')} / {_positive(_mean('policy_reward', 'stable'))}",
            WINDOW,
            "> 0.95",
        ),
        GuardrailTemplate(
            "constraint-violation-rate",
            "Candidate's constraint violations (rewards whose cost was > 0, all costs) per decision.",
            _ratio_of_counters("policy_constraint_violations_total", "policy_decisions_total"),
            WINDOW,
            "< 0.01",
        ),
        GuardrailTemplate(
            "shield-intervention-rate",
            "Candidate's safety-shield interventions (all reasons) per decision.",
            _ratio_of_counters("policy_shield_interventions_total", "policy_decisions_total"),
            WINDOW,
            "< 0.05",
        ),
        GuardrailTemplate(
            "action-divergence",
            "Jensen-Shannon divergence (base 2, 0..1) between the variants' action distributions over the window.",
            _js_divergence(),
            WINDOW,
            "< 0.1",
        ),
        GuardrailTemplate(
            "observation-drift",
            "Largest per-feature population stability index of the candidate's observations (PSI).",
            f"max({_sel('policy_observation_drift_psi_max')})",
            {},
            "< 0.2",
        ),
        GuardrailTemplate(
            "shadow-agreement",
            "Share of mirrored (shadow) decisions where the candidate chose the served action (router metrics).",
            " / ".join(_increase(f"policy_router_shadow_{m}_total") for m in ("agreements", "compared")),
            WINDOW,
            ">= 0.9",
        ),
        GuardrailTemplate(
            "shadow-mean-abs-diff",
            "Continuous actions: mean absolute difference between the candidate's mirrored (shadow) actions and the "
            "served ones over the window (router metrics).",
            " / ".join(_increase(f"policy_router_shadow_{m}_total") for m in ("abs_diff", "compared")),
            WINDOW,
            "< 0.1",
        ),
        GuardrailTemplate(
            "shadow-reward-ratio",
            "Lower confidence bound of the shadow candidate's mean reward, estimated off-policy (SNIPS) from the "
            "stable's live decisions and their rewards, over the stable's own mean on the same requests (router; "
            "no data when that mean is 0 or below).",
            f"max({_estimate('reward', 'lower')}) / " + _positive(f"max({_estimate('reward', 'baseline')})"),
            {},
            ">= 0.95",
        ),
        GuardrailTemplate(
            "shadow-cost",
            "Upper confidence bound of the shadow candidate's mean cost `cost`, estimated off-policy (SNIPS) from "
            "the stable's live decisions and the costs reported with their rewards (router).",
            f"max({_estimate('cost:{{ params.cost }}', 'upper')})",
            {"cost": None},
            "< 0.05",
        ),
        GuardrailTemplate(
            "critic-error",
            "Mean absolute error between the value the variant's policy predicted for its served actions (Q of the "
            "action, output q_values) and the reward each decision then received, over the window (reward units).",
            _value_mean("abs_error"),
            CRITIC,
            "< 0.5",
        ),
        GuardrailTemplate(
            "critic-calibration",
            "Variant's mean predicted value over its mean realised reward for the same decisions (1 = calibrated; "
            "for rewards that stay positive, like reward-ratio: no data when the realised mean is 0 or below).",
            f"{_value_mean('predicted')} / {_positive(_value_mean('realized'))}",
            CRITIC,
            "< 1.25",
        ),
        GuardrailTemplate(
            "critic-error-trend",
            "How much the variant's critic error (mean absolute error) grew: its value over the window minus its "
            "value over the same window `offset` ago (no data until the variant has predictions that old).",
            f"{_value_mean('abs_error')} - {_value_mean('abs_error', shifted=True)}",
            {**CRITIC, "offset": "1h"},
            "< 0.2",
        ),
        GuardrailTemplate(
            "envelope-proposal-rate",
            "Variant's proposals outside the action envelope (replaced by the fallback's action, all proposed "
            "actions) per decision over the window: how often the policy wants what a person has not approved.",
            f"({_increase('policy_envelope_proposals_total', '{{ params.variant }}')} or vector(0)) / "
            f"{_increase('policy_decisions_total', '{{ params.variant }}')}",
            {"window": INTERVAL, "variant": "candidate"},
            "< 0.05",
        ),
        GuardrailTemplate(
            "group-disparity",
            "Largest disparity between the variant's fairness groups (spec.fairness) over the window: max - min "
            "(mode difference) or max / min (ratio) of each group's mean reward, mean cost `cost` or rate of action "
            "`action` (metric); groups with fewer than min_support decisions or no rewards are left out.",
            fairness.group_disparity(fairness.PARAMS),
            {**fairness.PARAMS, "window": INTERVAL},  # every parameter has a default: none is required
            "< 0.1",
            fairness.group_disparity,
        ),
        GuardrailTemplate(
            "error-rate",
            "Candidate's requests answered with an error, as a share of all its requests.",
            f"({_increase('policy_errors_total')} or vector(0)) / "
            f"(({_increase('policy_errors_total')} or vector(0)) + {_increase('policy_decisions_total')})",
            WINDOW,
            "< 0.01",
        ),
        GuardrailTemplate(
            "latency-p99",
            "Candidate's decision latency quantile in seconds (default p99) from the latency histogram.",
            "histogram_quantile({{ params.quantile }}, sum by (le) (rate("
            + _sel("policy_decision_latency_seconds_bucket")
            + "[{{ params.window }}])))",
            {"window": INTERVAL, "quantile": "0.99"},
            "< 0.05",
        ),
    )
}

# Raw cumulative series per variant for judges that compare the variants (variant is a variable).
_ANY = 'rollout="{{ rollout }}",namespace="{{ namespace }}",variant="{{ variant }}"'
SERIES: dict[str, GuardrailTemplate] = {
    t.name: t
    for t in (
        GuardrailTemplate("reward-sum", "Sum of rewards reported.", f"sum(policy_reward_sum{{{_ANY}}})", {}, ""),
        GuardrailTemplate("reward-count", "Rewards reported.", f"sum(policy_reward_count{{{_ANY}}})", {}, ""),
        GuardrailTemplate(
            "cost-sum",
            "Sum of one cost.",
            f'sum(policy_cost_sum{{{_ANY},cost="{{{{ params.cost }}}}"}})',
            {"cost": None},
            "",
        ),
        GuardrailTemplate(
            "cost-count",
            "Costs reported.",
            f'sum(policy_cost_count{{{_ANY},cost="{{{{ params.cost }}}}"}})',
            {"cost": None},
            "",
        ),
    )
}


def _render(template: GuardrailTemplate, rollout: api.PolicyRollout, variant: str, params: Mapping[str, str]) -> str:
    known = ", ".join(sorted(template.params)) or "none"
    unknown = sorted(set(params) - set(template.params))
    if unknown:
        raise templating.TemplateError(
            f"template {template.name!r} has no parameter {', '.join(unknown)}; its parameters: {known}"
        )
    missing = sorted(k for k, default in template.params.items() if default is None and k not in params)
    if missing:
        raise templating.TemplateError(f"template {template.name!r} needs parameter(s) {', '.join(missing)}")
    interval = templating.promql_duration(rollout.spec.analysis.interval)
    values = {k: (interval if d == INTERVAL else d) for k, d in template.params.items() if d is not None}
    values.update(params)
    query = template.query if template.build is None else template.build(values)
    return templating.render(query, templating.guardrail_variables(rollout, variant, values))


def render_guardrail(rollout: api.PolicyRollout, name: str, params: Mapping[str, str]) -> str:
    """The PromQL of built-in template `name` for `rollout`; raises TemplateError naming the known ones."""
    template = TEMPLATES.get(name)
    if template is None:
        raise templating.TemplateError(
            f"unknown guardrail template {name!r}: use one of {', '.join(sorted(TEMPLATES))}, or write a query"
        )
    return _render(template, rollout, "candidate", params)


def render_series(rollout: api.PolicyRollout, name: str, variant: str, params: Mapping[str, str]) -> str:
    """The PromQL of raw series `name` (SERIES) for one variant of `rollout`."""
    template = SERIES.get(name)
    if template is None:
        raise templating.TemplateError(f"unknown series {name!r}: use one of {', '.join(sorted(SERIES))}")
    return _render(template, rollout, variant, params)
