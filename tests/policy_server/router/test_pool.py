"""How a variant's pool picks an endpoint: least requests in flight with round-robin ties, the
ready ones first (all of them when none is ready), and rendezvous hashing of entity keys: each key
has one endpoint, keys spread evenly, and an endpoint leaving or joining moves only its own keys."""

from __future__ import annotations

import collections

from policy_server.router import pool


def _pool(n: int) -> pool.Pool:
    return pool.Pool("stable", [pool.Endpoint(f"http://10.0.0.{i}:8080", "stable") for i in range(n)])


def test_equal_endpoints_take_turns_and_a_busy_one_is_skipped() -> None:
    p = _pool(3)
    assert collections.Counter(p.pick().url for _ in range(300)) == {e.url: 100 for e in p.endpoints}
    busy = p.endpoints[0]
    busy.outstanding = 5
    assert busy not in {p.pick() for _ in range(30)}


def test_endpoints_that_are_out_are_used_only_when_none_is_ready() -> None:
    p = _pool(3)
    p.endpoints[0].ready = p.endpoints[1].ready = False
    assert {p.pick() for _ in range(10)} == {p.endpoints[2]}
    assert p.ready_count() == 1
    p.endpoints[2].ready = False
    assert {p.pick() for _ in range(30)} == set(p.endpoints)  # a guess beats a certain failure
    assert p.pick(tried=p.endpoints) is None
    assert p.ranked()[:1] != [] and sorted(e.url for e in p.ranked()) == sorted(e.url for e in p.endpoints)


def test_rendezvous_hashing_spreads_entities_and_moves_only_the_departed_endpoints() -> None:
    keys = [f"user-{i}".encode() for i in range(3000)]
    p = _pool(4)
    home = {k: p.pick(k) for k in keys}
    assert all(p.pick(k) is home[k] for k in keys)  # one entity, one endpoint
    counts = collections.Counter(home.values())
    assert all(500 <= counts[e] <= 1000 for e in p.endpoints), counts  # about 750 each
    gone = p.endpoints[1]
    gone.ready = False
    for k in keys:
        now = p.pick(k)
        assert now is not gone
        assert now is home[k] or home[k] is gone
    # the runner-up a retry goes to is the endpoint the entity lands on once the first is out
    gone.ready = True
    assert all(p.pick(k, [gone]) is p.pick(k, [gone]) for k in keys[:100])
    grown = pool.Pool("stable", [*p.endpoints, pool.Endpoint("http://10.0.0.9:8080", "stable")])
    for k in keys:  # a new endpoint only takes entities, from everyone
        assert grown.pick(k) in (home[k], grown.endpoints[-1])
