"""Reward accounting of a local run: what the client posted against what the decision log joined.

A reward counts only once it is in the dataset that guardrail reviews, OPE and retraining read:
the run's decision logs joined by request id. After the run (every server stopped, its log
flushed) the rewards the client posted are matched with that join, per variant:
``posted = joined + lost``, where lost = accepted (2xx) but not joined, plus refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

from rollout_lab.local.loadgen import RewardLedger

__all__ = ["account", "joined_request_ids", "summary"]


def _join(log_urls: Iterable[str]) -> pa.Table:
    """Decisions joined with their rewards over all of the run's logs (the rewarded decisions only).

    The reward joiner (`policy_server.join`), as the offline-evaluation and training Jobs run it: every
    writer's decisions (one row per served decision) and every writer's rewards, by request id.
    """
    from policy_server import join
    from policy_server.decision_log import reader

    urls = list(log_urls)
    decisions = pa.concat_tables([reader.read_decisions(u) for u in urls])
    rewards = pa.concat_tables([reader.read_rewards(u) for u in urls])
    joined, _ = join.join_tables(decisions, rewards, join.JoinOptions())  # no default: unrewarded left out
    return joined


def joined_request_ids(log_urls: Iterable[str]) -> set[str]:
    """Request ids whose decision and reward are both in the run's logs (a reward may sit in another variant's)."""
    table = _join(log_urls)
    return {rid for rid in table.column("request_id").to_pylist() if rid is not None}


def account(ledgers: Mapping[str, RewardLedger], joined: set[str]) -> dict[str, dict[str, int]]:
    """Per variant: ``posted``, ``accepted``, ``joined`` and ``lost`` (= posted - joined: refused or never joined)."""
    out: dict[str, dict[str, int]] = {}
    for variant, ledger in sorted(ledgers.items()):
        n_joined = len(set(ledger.accepted_ids) & joined)
        out[variant] = {"posted": ledger.posted, "accepted": ledger.accepted, "joined": n_joined,
                        "lost": ledger.posted - n_joined}
    return out


def summary(by_variant: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    """The report's scenario fields: totals over the variants, and the per-variant counts beside them."""
    total = {k: sum(v[k] for v in by_variant.values()) for k in ("posted", "accepted", "joined", "lost")}
    return {"rewards_posted": total["posted"], "rewards_accepted": total["accepted"],
            "rewards_joined": total["joined"], "rewards_lost": total["lost"],
            "rewards_by_variant": {v: dict(c) for v, c in by_variant.items()}}
