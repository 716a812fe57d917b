"""Splitting a micro-batch so that no entity appears twice in one pass of the shield."""

from __future__ import annotations

from policy_server.batching import rounds_by_key


def test_no_repeated_key_means_one_pass() -> None:
    assert rounds_by_key(["a", "b", None, None, "c"]) is None
    assert rounds_by_key([]) is None


def test_the_kth_occurrence_of_a_key_goes_to_round_k_in_arrival_order() -> None:
    keys = ["a", "b", "a", None, "a", "b", "c"]
    rounds = rounds_by_key(keys)
    assert rounds == [[0, 1, 3, 6], [2, 5], [4]]
    assert sorted(i for r in rounds for i in r) == list(range(len(keys)))  # every row once
    for r in rounds:
        named = [keys[i] for i in r if keys[i] is not None]
        assert len(named) == len(set(named))
