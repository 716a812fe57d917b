"""Reward accounting: a reward counts as joined only when the run's decision logs pair it with its decision.

The logs are written by `DecisionLog` as the servers write them: two variants' directories, a
candidate decision whose reward was accepted by a stable replica (after a rollback), a reward
the client saw accepted that never reached a log, and one that was refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rollout_lab.local import loadgen, rewards

from policy_server.decision_log.writer import DecisionLog


def _decision(rid: str, variant: str, t: float) -> dict[str, Any]:
    return {"request_id": rid, "time": t, "policy_version": "v1", "variant": variant, "observation": [0.0],
            "action": 1, "propensity": 0.5, "probabilities": [0.5, 0.5], "shield_reasons": [], "latency_ms": 0.3}


def _write(directory: Path, decisions: list[dict[str, Any]], reward_ids: list[str]) -> str:
    with DecisionLog(str(directory), flush_interval_s=0.1) as log:
        for d in decisions:
            log.log_decision(d)
        for rid in reward_ids:
            log.log_reward({"request_id": rid, "time": 1_700_000_100.0, "reward": 1.0})
    return str(directory)


def test_a_reward_logged_by_the_other_variants_servers_is_joined(tmp_path: Path) -> None:
    # c1 was decided by the candidate; its reward arrived after the rollback and a stable replica logged it
    stable = _write(tmp_path / "stable", [_decision("s1", "stable", 1e9), _decision("s2", "stable", 1e9)], ["s1", "c1"])
    candidate = _write(tmp_path / "candidate", [_decision("c1", "candidate", 1e9), _decision("c2", "candidate", 1e9)],
                       ["c2"])
    assert rewards.joined_request_ids([stable, candidate]) == {"s1", "c1", "c2"}
    assert rewards.joined_request_ids([stable]) == {"s1"}, "a decision outside the logs read joins nothing"


def test_a_log_never_written_joins_nothing(tmp_path: Path) -> None:
    assert rewards.joined_request_ids([str(tmp_path / "stable"), str(tmp_path / "candidate")]) == set()


def test_lost_is_what_was_posted_and_not_joined_refusals_included() -> None:
    ledgers = {
        "stable": loadgen.RewardLedger(posted=3, accepted=3, accepted_ids=["s1", "s2", "s3"]),
        # c3 was refused (a 4xx); c2 was acknowledged but is in no log
        "candidate": loadgen.RewardLedger(posted=3, accepted=2, refused=1, accepted_ids=["c1", "c2"]),
    }
    counts = rewards.account(ledgers, joined={"s1", "s2", "s3", "c1", "other"})
    assert counts == {"candidate": {"posted": 3, "accepted": 2, "joined": 1, "lost": 2},
                      "stable": {"posted": 3, "accepted": 3, "joined": 3, "lost": 0}}
    report = rewards.summary(counts)
    assert (report["rewards_posted"], report["rewards_accepted"], report["rewards_joined"],
            report["rewards_lost"]) == (6, 5, 4, 2)
    assert report["rewards_posted"] == report["rewards_joined"] + report["rewards_lost"]
    assert report["rewards_by_variant"] == counts
