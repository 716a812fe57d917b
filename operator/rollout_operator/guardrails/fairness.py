"""The `group-disparity` guardrail: the largest gap between fairness groups of one variant, from `policy_group_*`.

Why a builder rather than one fixed query: `metric` (reward, cost, action-rate) and `mode` (difference, ratio)
change the query's shape, not just a value in it, and PromQL cannot branch on a string. They are checked against
fixed choices here; every other parameter is substituted by `templating.render` like any template's.

Per group of `params.variant` over the window: the mean reward (or cost `params.cost`) per rewarded decision, or
the share of decisions that took action `params.action`. A group is left out when it has fewer than
`params.min_support` decisions in the window, and a group without rewards (count 0) is left out by the `> 0`
guard, so an idle group never divides 0 by 0 into a NaN that poisons max/min. The query then returns
max - min (difference) or max / min (ratio) over the remaining groups; with none it returns no data
(inconclusive). A single supported group gives 0 (difference) or 1 (ratio): nothing to compare. A ratio needs
positive values: with a group at 0 or below it has no data (inconclusive), never a negative ratio that passes.
"""

from __future__ import annotations

from collections.abc import Mapping

from rollout_operator.guardrails import templating

__all__ = ["METRICS", "MODES", "PARAMS", "group_disparity"]

METRICS = ("reward", "cost", "action-rate")
MODES = ("difference", "ratio")
PARAMS: dict[str, str] = {
    "window": "<analysis interval>",  # templates.INTERVAL (imported there, not here: no import cycle)
    "variant": "candidate",
    "metric": "reward",
    "mode": "difference",
    "min_support": "30",
    "cost": "",
    "action": "",
}

_WINDOW = "[{{ params.window }}]"


def _sel(metric: str, extra: str = "") -> str:
    return (
        f'{metric}{{rollout="{{{{ rollout }}}}",namespace="{{{{ namespace }}}}",'
        f'variant="{{{{ params.variant }}}}"{extra}}}'
    )


def _by_group(metric: str, extra: str = "") -> str:
    return f"sum by (group) (increase({_sel(metric, extra)}{_WINDOW}))"


def group_disparity(params: Mapping[str, str]) -> str:
    """The PromQL (still with placeholders) for these parameter values; TemplateError on a bad choice."""
    metric, mode = params.get("metric", "reward"), params.get("mode", "difference")
    if metric not in METRICS:
        raise templating.TemplateError(f"group-disparity: metric {metric!r} must be one of {', '.join(METRICS)}")
    if mode not in MODES:
        raise templating.TemplateError(f"group-disparity: mode {mode!r} must be difference or ratio")
    decisions = _by_group("policy_group_decisions_total")
    if metric == "action-rate":
        if not params.get("action"):
            raise templating.TemplateError("group-disparity: metric action-rate needs the parameter action (an index)")
        taken = _by_group("policy_group_actions_total", ',action="{{ params.action }}"')
        per_group = f"({taken} / ({decisions} > 0))"
    else:
        extra = ""
        base = "policy_group_reward"
        if metric == "cost":
            if not params.get("cost"):
                raise templating.TemplateError("group-disparity: metric cost needs the parameter cost (its name)")
            extra, base = ',cost="{{ params.cost }}"', "policy_group_cost"
        per_group = f"({_by_group(base + '_sum', extra)} / ({_by_group(base + '_count', extra)} > 0))"
    supported = f"({per_group} and on (group) ({decisions} >= {{{{ params.min_support }}}}))"
    if mode == "difference":
        return f"max({supported}) - min({supported})"
    # a ratio only means something between positive values: a group at 0 or below would give +Inf or a
    # negative ratio that passes "< X"; `> 0` makes it no data (inconclusive) instead
    return f"max({supported}) / (min({supported}) > 0)"
