"""Request ids: one reward per id served within the window; generated ids cost no memory."""

import pytest

from policy_server.request_ids import RequestIds, RewardCheck


def test_generated_ids_are_unique_and_take_no_memory():
    ids = RequestIds(window=1000)
    served = [ids.generate() for _ in range(5000)]
    assert len(set(served)) == 5000
    assert ids.stored == 0


def test_a_generated_id_is_rewarded_once():
    ids = RequestIds(window=10)
    rid = ids.generate()
    assert ids.reward(rid) is RewardCheck.ACCEPTED
    assert ids.reward(rid) is RewardCheck.DUPLICATE


def test_ids_older_than_the_window_are_unknown():
    ids = RequestIds(window=3)
    first = ids.generate()
    chosen = "client-1"
    assert ids.claim(chosen)
    ids.generate()
    assert ids.reward(first) is RewardCheck.ACCEPTED  # 3 decisions: still inside
    ids.generate()
    assert ids.reward(first) is RewardCheck.UNKNOWN  # 4 decisions: the first fell out
    assert ids.reward(chosen) is RewardCheck.ACCEPTED
    ids.generate()
    ids.generate()
    assert ids.reward(chosen) is RewardCheck.UNKNOWN


def test_ids_never_served_or_not_yet_generated_are_unknown():
    ids = RequestIds(window=100)
    rid = ids.generate()
    prefix, _, seq = rid.rpartition("-")
    assert ids.reward("never-served") is RewardCheck.UNKNOWN
    assert ids.reward(f"{prefix}-{int(seq, 16) + 1:x}") is RewardCheck.UNKNOWN  # the next one, not served yet


@pytest.mark.parametrize("spelling", ["0x{seq:x}", "0{seq:x}", "{seq:X}0", " {seq:x}", "{seq:x}_", "-{seq:x}", "zz"])
def test_only_the_exact_generated_spelling_is_known(spelling):
    ids = RequestIds(window=100)
    for _ in range(11):
        rid = ids.generate()
    prefix, _, seq = rid.rpartition("-")
    assert ids.reward(prefix + "-" + spelling.format(seq=int(seq, 16))) is RewardCheck.UNKNOWN
    assert ids.reward(rid) is RewardCheck.ACCEPTED


def test_a_client_chosen_id_is_claimed_once_per_window_and_then_reusable():
    ids = RequestIds(window=2)
    assert ids.claim("order-7")
    assert not ids.claim("order-7")
    assert ids.reward("order-7") is RewardCheck.ACCEPTED
    ids.generate()
    ids.generate()  # order-7 is out of the window now
    assert ids.claim("order-7")
    assert ids.reward("order-7") is RewardCheck.ACCEPTED  # a new decision: its first reward
    assert ids.reward("order-7") is RewardCheck.DUPLICATE


def test_clients_cannot_claim_ids_in_the_servers_own_spelling():
    ids = RequestIds(window=10)
    rid = ids.generate()
    prefix = rid.rpartition("-")[0]
    assert not ids.claim(rid)
    assert not ids.claim(f"{prefix}-ff")  # would collide with a future generated id


def test_memory_stays_bounded_by_the_window():
    ids = RequestIds(window=50)
    for i in range(1000):
        rid = f"c{i}"
        assert ids.claim(rid)
        assert ids.reward(rid) is RewardCheck.ACCEPTED
    assert ids.stored <= 2 * 50


def test_window_must_be_positive():
    with pytest.raises(ValueError, match="window"):
        RequestIds(window=0)
