"""status.revisions: every promotion is remembered (bounded), so `kubectl policyrollout undo` can go back."""

from __future__ import annotations

from engine_harness import T0, Driver, make_rollout, with_status
from rollout_operator import api
from rollout_operator.engine import timeutil

P = api.Phase


def _promote(driver: Driver, version: str, generation: int) -> None:
    driver.rollout = with_status(make_rollout([{"setWeight": 100}], version=version, generation=generation),
                                 driver.status)
    driver.run_until(driver.phase_is(P.PROMOTED))


def test_each_promotion_appends_the_promoted_policy() -> None:
    driver = Driver(make_rollout([{"pause": {}}, {"setWeight": 100}]))
    assert driver.tick().status.revisions == [], "nothing is promoted before the last step"
    driver.tick(1, action="promote/go")
    driver.run_until(driver.phase_is(P.PROMOTED))
    _promote(driver, "v3", 2)

    revisions = driver.status.revisions
    assert [r.version for r in revisions] == ["v2", "v3"]
    assert revisions[0].policy.artifact == "s3://p/v2" and revisions[1].policy.artifact == "s3://p/v3"
    assert T0 <= timeutil.from_iso(revisions[0].promoted_at) <= timeutil.from_iso(revisions[1].promoted_at)
    assert revisions[-1].policy == driver.status.stable_policy


def test_a_rollback_records_no_revision() -> None:
    driver = Driver(make_rollout([{"setWeight": 50}, {"pause": {}}]))
    driver.run_until(driver.phase_is(P.PAUSED))
    driver.tick(1, action="abort/x")
    assert driver.status.phase is P.ABORTED and driver.status.revisions == []


def test_revisions_keep_only_the_newest() -> None:
    driver = Driver(make_rollout([{"setWeight": 100}]))
    driver.run_until(driver.phase_is(P.PROMOTED))
    for n in range(api.REVISION_LIMIT + 2):
        _promote(driver, f"v{n + 3}", n + 2)
    versions = [r.version for r in driver.status.revisions]
    assert len(versions) == api.REVISION_LIMIT
    assert versions[-1] == f"v{api.REVISION_LIMIT + 4}" and "v2" not in versions
    api.PolicyRolloutStatus.model_validate(driver.status.wire())  # still within the schema's maxItems
