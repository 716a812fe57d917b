"""``policy_group_*``: decisions, actions, rewards and costs by variant and fairness group (groups.py).

Why a collector of its own rather than prometheus_client children: the hot path then costs one list
append per micro-batch (the batch's groups and actions), folded into numpy counts at scrape time
like :class:`metrics.ServerMetrics` does; rewards arrive one by one and add to plain dicts. Counters
and summaries only, so ``serve --workers`` merges them by summing (worker_metrics.py).

Series (docs/metrics.md), every label set created at start for this server's variant so that a
group without traffic reads 0, not "no data":

* ``policy_group_decisions_total{variant,group}``;
* ``policy_group_actions_total{variant,group,action}``: discrete policies only (the action index).
  A continuous policy's actions are not summed: sums of signed values would look like counter resets
  to ``rate()``. Its disparities are judged on rewards and costs;
* ``policy_group_reward_sum`` / ``_count{variant,group}`` and ``policy_group_cost_sum`` /
  ``_count{variant,group,cost}``: by the *deciding* variant and the group signed into the id, whichever
  replica received the reward.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from prometheus_client.core import CounterMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

from policy_server import groups as groups_mod

__all__ = ["MAX_VARIANTS", "GroupMetrics"]

MAX_VARIANTS = 16  # deciding variants of rewards (a rollout has 2-3); beyond: "other", as metrics.py does
MAX_COSTS = 64  # metrics.MAX_COST_NAMES: /v1/reward refuses more cost names before they get here


class GroupMetrics(Collector):
    """The group series of one server process; register it in the server's registry."""

    def __init__(
        self, spec: groups_mod.GroupKey, *, variant: str, actions: Sequence[str] | None, costs: Sequence[str] = ()
    ) -> None:
        self.spec = spec
        self.variant = variant
        self.labels = spec.labels
        self._index = {g: i for i, g in enumerate(self.labels)}
        self.actions = list(actions) if actions is not None else None  # None: continuous, no action series
        n_actions = len(self.actions) if self.actions is not None else 1
        self.decisions = np.zeros(len(self.labels), dtype=np.int64)
        self.action_counts = np.zeros((len(self.labels), n_actions), dtype=np.int64)
        self._pending: list[tuple[list[str], np.ndarray | None]] = []
        # (deciding variant, group) -> [sum, count]; (deciding variant, group, cost) -> [sum, count]
        self.rewards: dict[tuple[str, str], list[float]] = {(variant, g): [0.0, 0] for g in self.labels}
        self.costs: dict[tuple[str, str, str], list[float]] = {
            (variant, g, c): [0.0, 0] for g in self.labels for c in costs
        }
        self._variants = {variant}
        self._cost_names = set(costs)

    # ------------------------------------------------------------------ updates

    def record_batch(self, groups: list[str], actions: np.ndarray | None) -> None:
        """One micro-batch's groups (folded) and action indices; ``actions`` must not change afterwards."""
        self._pending.append((groups, actions))
        if len(self._pending) >= 256:
            self.fold()

    def fold(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        index = self._index
        rows = np.fromiter((index[g] for batch, _ in pending for g in batch), dtype=np.int64)
        self.decisions += np.bincount(rows, minlength=len(self.labels))
        if self.actions is not None:
            n = len(self.actions)
            acts = np.concatenate([a for _, a in pending]).astype(np.int64)
            cells = np.bincount(rows * n + acts, minlength=len(self.labels) * n)
            self.action_counts += cells.reshape(len(self.labels), n)

    def record_reward(self, group: str, reward: float, costs: dict[str, float] | None, variant: str) -> None:
        """A reward of a decision of ``variant`` in ``group`` (the ``g`` extra of its signed id)."""
        if not math.isfinite(reward):
            return
        if variant not in self._variants:
            if len(self._variants) >= MAX_VARIANTS:
                variant = "other"
            self._variants.add(variant)
        group = self.spec.label(group)
        acc = self.rewards.setdefault((variant, group), [0.0, 0])
        acc[0] += reward
        acc[1] += 1
        for name, value in (costs or {}).items():
            if not math.isfinite(value):
                continue
            key = (variant, group, name)
            cost = self.costs.get(key)
            if cost is None:
                if name not in self._cost_names and len(self._cost_names) >= MAX_COSTS:
                    continue
                self._cost_names.add(name)
                cost = self.costs[key] = [0.0, 0]
            cost[0] += value
            cost[1] += 1

    # ------------------------------------------------------------------ scrape

    def collect(self) -> Iterable[CounterMetricFamily | SummaryMetricFamily]:
        self.fold()
        v = self.variant
        decisions = CounterMetricFamily(
            "policy_group_decisions", "Decisions served, by fairness group", labels=["variant", "group"]
        )
        for g, n in zip(self.labels, self.decisions.tolist(), strict=True):
            decisions.add_metric([v, g], n)
        yield decisions
        if self.actions is not None:
            actions = CounterMetricFamily(
                "policy_group_actions",
                "Decisions served, by fairness group and (discrete) action",
                labels=["variant", "group", "action"],
            )
            for gi, g in enumerate(self.labels):
                for ai, a in enumerate(self.actions):
                    actions.add_metric([v, g, a], int(self.action_counts[gi, ai]))
            yield actions
        reward = SummaryMetricFamily(
            "policy_group_reward",
            "Rewards reported on /v1/reward, by the deciding variant and the decision's fairness group",
            labels=["variant", "group"],
        )
        for (variant, g), (total, count) in self.rewards.items():
            reward.add_metric([variant, g], count_value=count, sum_value=total)
        yield reward
        cost = SummaryMetricFamily(
            "policy_group_cost",
            "Costs reported on /v1/reward, by the deciding variant, fairness group and cost name",
            labels=["variant", "group", "cost"],
        )
        for (variant, g, name), (total, count) in self.costs.items():
            cost.add_metric([variant, g, name], count_value=count, sum_value=total)
        yield cost
