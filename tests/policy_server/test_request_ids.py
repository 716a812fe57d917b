"""Request ids: signed, so any process with the rollout's key attributes a reward; duplicates refused per process."""

import pytest

from policy_server import attribution
from policy_server.request_ids import RequestIds, RewardCheck

KEY = attribution.RewardKeys.parse("k" * 40)
NOW = 1_800_000_000.0


def serving(variant: str = "candidate", version: str = "v2", *, keys=KEY, window: int = 1000, **kw) -> RequestIds:
    ids = RequestIds(window, keys, **kw)
    ids.serve(variant, version)
    return ids


def test_generated_ids_are_unique_and_take_no_memory():
    ids = serving()
    served = [ids.generate(NOW) for _ in range(5000)]
    assert len(set(served)) == 5000
    assert ids.stored == 0


def test_another_replica_with_the_same_key_accepts_and_attributes_the_reward():
    issuer, other = serving("candidate", "v2"), serving("stable", "v1")
    rid = issuer.generate(NOW)
    verdict = other.reward(rid, None, NOW + 60)
    assert verdict.check is RewardCheck.ACCEPTED
    found = verdict.attribution
    assert (found.request_id, found.variant, found.policy_version) == (rid, "candidate", "v2")
    assert found.decision_time == pytest.approx(NOW, abs=1e-3)


def test_a_restarted_process_with_the_same_key_still_accepts_ids_issued_before():
    rid = serving().generate(NOW)
    assert serving().reward(rid, None, NOW + 3600).check is RewardCheck.ACCEPTED


def test_ids_of_another_key_or_tampered_ids_are_unknown_and_garbage_is_malformed():
    rid = serving().generate(NOW)
    stranger = serving(keys=attribution.RewardKeys.parse("s" * 40))
    assert stranger.reward(rid, None, NOW).check is RewardCheck.UNKNOWN
    payload, tag = rid[3:].split(".")
    forged_variant = attribution._b64(attribution._unb64(payload).replace(b"candidate", b"stable"))
    assert serving().reward(f"r1.{forged_variant}.{tag}", None, NOW).check is RewardCheck.UNKNOWN
    assert serving().reward("r1.!!!.???", None, NOW).check is RewardCheck.MALFORMED
    assert serving().reward("never-served", None, NOW).check is RewardCheck.UNKNOWN


def test_without_a_configured_key_only_the_issuing_process_verifies():
    alone = RequestIds(10, attribution.RewardKeys.from_env({}))
    alone.serve("stable", "v1")
    rid = alone.generate(NOW)
    other = RequestIds(10, attribution.RewardKeys.from_env({}))
    assert alone.reward(rid, None, NOW).check is RewardCheck.ACCEPTED
    assert other.reward(rid, None, NOW).check is RewardCheck.UNKNOWN


def test_a_reward_is_accepted_once_per_event_per_process():
    ids = serving()
    rid = ids.generate(NOW)
    assert ids.reward(rid, None, NOW).check is RewardCheck.ACCEPTED
    assert ids.reward(rid, None, NOW).check is RewardCheck.DUPLICATE
    assert ids.reward(rid, "purchase-1", NOW).check is RewardCheck.ACCEPTED  # several events of one decision
    assert ids.reward(rid, "purchase-2", NOW).check is RewardCheck.ACCEPTED
    assert ids.reward(rid, "purchase-1", NOW).check is RewardCheck.DUPLICATE


def test_rewards_past_the_maximum_age_are_refused():
    ids = serving(max_age_s=3600)
    rid = ids.generate(NOW)
    assert ids.reward(rid, None, NOW + 3601).check is RewardCheck.EXPIRED
    assert ids.reward(rid, None, NOW + 3599).check is RewardCheck.ACCEPTED


def test_a_client_chosen_id_gets_a_signed_reward_id_that_any_replica_accepts():
    issuer, other = serving("candidate", "v2"), serving("stable", "v1")
    reward_id = issuer.claim("order-7", NOW)
    assert reward_id is not None and reward_id != "order-7"
    assert issuer.claim("order-7", NOW) is None  # in use
    verdict = other.reward(reward_id, None, NOW)
    assert verdict.check is RewardCheck.ACCEPTED
    assert (verdict.attribution.request_id, verdict.attribution.variant) == ("order-7", "candidate")
    assert verdict.attribution.client_chosen
    # the bare id: only the process that served it knows it, and it is the same decision as the reward_id's
    assert other.reward("order-7", None, NOW).check is RewardCheck.UNKNOWN
    assert issuer.reward("order-7", None, NOW).check is RewardCheck.ACCEPTED
    assert issuer.reward(reward_id, None, NOW).check is RewardCheck.DUPLICATE


def test_clients_cannot_choose_ids_in_the_signed_spelling():
    ids = serving()
    assert ids.claim(ids.generate(NOW), NOW) is None
    assert ids.claim("r1.anything", NOW) is None


def test_bare_client_ids_are_remembered_for_the_last_window_claims_only():
    ids = serving(window=2)
    ids.claim("a", NOW)
    ids.claim("b", NOW)
    ids.claim("c", NOW)  # "a" falls out
    assert ids.reward("a", None, NOW).check is RewardCheck.UNKNOWN
    assert ids.reward("c", None, NOW).check is RewardCheck.ACCEPTED


def test_memory_stays_bounded_by_the_window():
    ids = serving(window=50)
    for i in range(1000):
        assert ids.claim(f"c{i}", NOW) is not None
        assert ids.reward(f"c{i}", None, NOW).check is RewardCheck.ACCEPTED
        assert ids.reward(ids.generate(NOW), None, NOW).check is RewardCheck.ACCEPTED
    assert ids.stored <= 2 * 50


def test_window_must_be_positive():
    with pytest.raises(ValueError, match="window"):
        RequestIds(0, KEY)


@pytest.mark.parametrize("value", ["", "short", "a" * 40 + ",tiny"])
def test_short_keys_are_refused_with_how_to_make_one(value):
    with pytest.raises(attribution.RewardKeyError, match="token_urlsafe"):
        attribution.RewardKeys.from_env({attribution.ENV_VAR: value} if value else {attribution.ENV_VAR: " , "})


def test_rotation_the_first_key_signs_and_every_key_verifies():
    old, new = "o" * 40, "n" * 40
    before = serving(keys=attribution.RewardKeys.parse(old)).generate(NOW)
    during = serving(keys=attribution.RewardKeys.parse(f"{new},{old}"))
    after = serving(keys=attribution.RewardKeys.parse(new))
    assert during.reward(before, None, NOW).check is RewardCheck.ACCEPTED
    assert after.reward(during.generate(NOW), None, NOW).check is RewardCheck.ACCEPTED
    assert after.reward(before, None, NOW).check is RewardCheck.UNKNOWN


def test_extras_travel_signed_with_the_id_and_client_ids_may_hold_any_character():
    signer = attribution.IdSigner(KEY, variant="candidate", policy_version="v2")
    extras = attribution.encode_extras({"g": "north", "v": "1.25"})
    found = signer.verify(signer.generate(NOW, extras))
    assert (found.extra("g"), found.extra("v"), found.extra("missing")) == ("north", "1.25", None)
    odd = "order\x1f7;g=south"
    assert signer.verify(signer.bind(odd, NOW)).request_id == odd
    with pytest.raises(ValueError, match="must not contain"):
        attribution.encode_extras({"g": "a;b"})
