"""The endpoints of each variant: which one takes a request, which are out, probing them back.

Why the router picks endpoints itself instead of calling a Service's ClusterIP: kube-proxy picks a
pod per *connection*, and the router keeps connections alive, so behind one ClusterIP a few
long-lived connections pin the load onto the pods they happened to hit, and a dead pod is noticed
only on the next connect. The router knows each endpoint (a list in the routing table, or the
EndpointSlices of the variant's Service, see kubewatch.py) and picks one per request:

* without an entity key: the ready endpoint with the fewest requests in flight, ties broken round
  robin, so equal endpoints share evenly and a slow one gets fewer;
* with an entity key: rendezvous (highest random weight) hashing over the ready endpoints: each
  scores BLAKE2b(endpoint, key) and the highest wins. An endpoint that leaves moves only its own
  entities (each to its runner-up); one that joins takes only the entities it now wins.

An endpoint is taken out on a connection error (refused, reset, garbage answer; a timeout is the
latency budget's business, not a sign the process is gone) and probed with ``GET /readyz`` every
``PROBE_S`` until it answers 200. When no endpoint of a variant is ready, all are tried: a guess
beats a certain failure. Endpoint objects live as long as some table names them, so a table or
EndpointSlice change keeps their state and their pooled connections; requests in flight finish.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence

from policy_server.router import upstream

__all__ = ["PROBE_S", "Endpoint", "Endpoints", "Pool"]

log = logging.getLogger("policy_server.router.pool")

PROBE_S = 0.5  # how often an endpoint that is out is probed
PROBE_TIMEOUT_S = 1.0


class Endpoint:
    """One policy server process: its connection pool, readiness and requests in flight."""

    __slots__ = ("hash_key", "outstanding", "probe", "ready", "upstream", "url", "variant")

    def __init__(self, url: str, variant: str) -> None:
        self.url = url
        self.variant = variant  # the first variant naming it (metrics label)
        self.upstream = upstream.Upstream(url)
        self.hash_key = url.encode() + b"\x00"
        self.ready = True
        self.outstanding = 0
        self.probe: asyncio.Task[None] | None = None

    def score(self, key: bytes) -> bytes:
        """Rendezvous score of ``key`` on this endpoint (bytes compare like big-endian numbers)."""
        return hashlib.blake2b(self.hash_key + key, digest_size=8).digest()


class Pool:
    """The endpoints of one variant, in table order."""

    __slots__ = ("_rr", "endpoints", "variant")

    def __init__(self, variant: str, endpoints: Sequence[Endpoint]) -> None:
        self.variant = variant
        self.endpoints = tuple(endpoints)
        self._rr = 0

    def pick(self, key: bytes | None = None, tried: Iterable[Endpoint] = ()) -> Endpoint | None:
        """The endpoint for the next request (``tried`` ones excluded); None when none is left."""
        eps = self.endpoints
        if len(eps) == 1 and not tried:
            return eps[0]
        left = [e for e in eps if e not in tried] if tried else list(eps)
        ready = [e for e in left if e.ready] or left
        if not ready:
            return None
        if key is not None:
            return max(ready, key=lambda e: e.score(key))
        n = len(ready)
        start = self._rr % n
        self._rr += 1
        best = ready[start]
        for i in range(1, n):
            e = ready[(start + i) % n]
            if e.outstanding < best.outstanding:
                best = e
        return best

    def ranked(self, key: bytes | None = None) -> list[Endpoint]:
        """Every endpoint in the order the pool would try them (cold paths: rewards, /v1/model)."""
        out: list[Endpoint] = []
        while (e := self.pick(key, out)) is not None:
            out.append(e)
        return out

    def ready_count(self) -> int:
        return sum(e.ready for e in self.endpoints)


class Endpoints:
    """Every endpoint the router knows, by URL; takes endpoints out and probes them back."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self.by_url: dict[str, Endpoint] = {}
        self.on_change = on_change  # readiness changed (the router refreshes its gauges)

    def get(self, url: str, variant: str) -> Endpoint:
        ep = self.by_url.get(url)
        if ep is None:
            ep = self.by_url[url] = Endpoint(url, variant)
        return ep

    def keep_only(self, urls: set[str]) -> None:
        """Forget endpoints no table names any more: idle connections closed, in-flight ones finish."""
        for url in [u for u in self.by_url if u not in urls]:
            ep = self.by_url.pop(url)
            if ep.probe is not None:
                ep.probe.cancel()
                ep.probe = None
            ep.upstream.close()

    def failed(self, ep: Endpoint, err: Exception) -> None:
        """A connection error on ``ep``: take it out until it answers ``/readyz`` again."""
        if not ep.ready or self.by_url.get(ep.url) is not ep:
            return
        ep.ready = False
        log.warning("endpoint %s (%s) taken out: %s", ep.url, ep.variant, err)
        ep.probe = asyncio.get_running_loop().create_task(self._probe(ep))
        self.on_change()

    async def _probe(self, ep: Endpoint) -> None:
        while True:
            await asyncio.sleep(PROBE_S)
            try:
                status, _ = await ep.upstream.request(b"GET", b"/readyz", b"", PROBE_TIMEOUT_S)
            except upstream.UpstreamError:
                continue
            if status == 200:
                break
        ep.ready, ep.probe = True, None
        log.warning("endpoint %s (%s) is back", ep.url, ep.variant)
        self.on_change()

    def close(self) -> None:
        self.keep_only(set())
