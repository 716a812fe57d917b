"""The router server: assign, forward, fall back, shadow, log, count.

One /v1/act request through the router:

1. the sticky and entity keys are read (a header captured while parsing, or ``context.FIELD``);
2. ``assign.choose`` picks the variant and the probability of that assignment;
3. the variant's pool (pool.py) picks an endpoint (least requests in flight, or the entity's
   rendezvous-hashed one) and the request goes there over a pooled keep-alive connection; a
   connection error takes that endpoint out and the request is retried once on another endpoint
   of the variant; a candidate failure (connect error, reset, non-200 answer, or no answer within
   the latency budget) is answered by the fallback (default: the stable policy) in the same request;
4. the answer gets ``variant`` (who served), ``served_by`` (stable | candidate | fallback) and
   ``assignment_probability``; the decision is logged with them when ``--log-dir`` is set;
5. in shadow, after the stable answer is written, the same observation (with the served
   request id) goes to the candidate in the background: its action is compared with the served
   one and logged (``served_by = "shadow"``), never returned.

Rewards (``/v1/reward``) are verified and forwarded by rewards.py. The HTTP layer is the policy
server's (protocol.py); the key headers are captured by a subclass. Everything runs on one event loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from policy_server import attribution, protocol
from policy_server.router import assign, metrics, pool, rewards, shadow_ope, upstream
from policy_server.router import table as table_mod

__all__ = ["Router", "RouterConfig", "RouterProtocol"]

log = logging.getLogger("policy_server.router")

SWEEP_S = 0.5  # how often client timeouts are checked
REQUEST_IDS = 200_000  # unverifiable request id -> endpoint that answered it, so /v1/reward reaches it
_MARK = {"stable": b'"variant":"stable"', "candidate": b'"variant":"candidate"'}
_NAMES = {name: name.encode() for name in ("stable", "candidate", "fallback")}
_RID = b'{"request_id":"'
_RID_LEN = len(_RID)
_SIGNED = attribution.PREFIX.encode()


@dataclass
class RouterConfig:
    table: table_mod.RoutingTable
    config_path: str | None = None  # where the last applied table is kept (survives restarts)
    log_dir: str | None = None
    latency_budget_ms: float = 100.0  # candidate's budget when the table sets none
    upstream_timeout_s: float = 5.0  # stable / fallback deadline
    max_body: int = 1 << 20
    max_shadow_inflight: int = 512
    seed: int | None = None
    shutdown_timeout_s: float = 20.0
    timeouts: protocol.Timeouts = field(default_factory=protocol.Timeouts)  # slow or idle clients are closed
    reward_keys: attribution.RewardKeys | None = None  # default: POLICY_SERVER_REWARD_KEY (or none: no verifying)


class RouterProtocol(protocol.HttpProtocol):
    """The policy server's HTTP protocol plus capture of the sticky and entity headers of each request."""

    def __init__(self, app: Router, max_body: int) -> None:
        super().__init__(app, max_body)
        self.sticky_value: bytes | None = None
        self.entity_value: bytes | None = None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.sticky_value = self.entity_value = None

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        app: Router = self.app  # type: ignore[assignment]
        if app.sticky_header is not None or app.entity_header is not None:
            lower = name.lower()
            if lower == app.sticky_header:
                self.sticky_value = value
            if lower == app.entity_header:
                self.entity_value = value


def _error(message: str) -> bytes:
    return orjson.dumps({"error": message})


def _flat(value: Any) -> list[float]:
    if isinstance(value, list):
        out: list[float] = []
        for v in value:
            out.extend(_flat(v))
        return out
    return [float(value)]


def compare(served: Any, shadow: Any) -> tuple[bool | None, float | None]:
    """(same action?, mean |difference|): discrete actions are ints, continuous ones lists."""
    if isinstance(served, int) and isinstance(shadow, int):
        return served == shadow, None
    a, b = _flat(served), _flat(shadow)
    if len(a) != len(b) or not a:
        return False, None
    return None, sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)


class Router:
    """Serve /v1/act (and friends) by routing to the stable and candidate policy servers."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.connections: set[protocol.HttpProtocol] = set()
        self.shadow_ope = shadow_ope.ShadowEstimator()
        self.metrics = metrics.RouterMetrics(self.shadow_ope)
        self.rng = random.Random(config.seed)
        self.table: table_mod.RoutingTable = config.table
        self.table_source = "flags"
        self.applied_at = 0.0
        self.sticky_header: bytes | None = None
        self.entity_header: bytes | None = None
        self._sticky_field: str | None = None
        self._entity_field: str | None = None
        self.endpoints = pool.Endpoints(self._endpoints_changed)
        self.resolved: dict[str, tuple[str, ...]] = {}  # Service URL -> its ready endpoints (kubewatch)
        self._stable: pool.Pool
        self._candidate: pool.Pool | None = None
        self._fallback: pool.Pool
        self.served_by_id: collections.OrderedDict[str, pool.Endpoint] = collections.OrderedDict()
        self.reward_keys = config.reward_keys or attribution.RewardKeys.from_env()
        # Without a shared key the router cannot verify any server's id: remember who served each one.
        self._remember_signed = self.reward_keys.generated
        self.rewards = rewards.RewardForwarder(self)
        self._tasks: set[asyncio.Task[None]] = set()
        self._shadow_inflight = 0
        self._server: asyncio.AbstractServer | None = None
        self._stopping = False
        self._stopped = asyncio.Event()
        self.decision_log: Any = None
        if config.log_dir:
            from policy_server.decision_log import writer  # lazy: pyarrow only when logging

            self.decision_log = writer.DecisionLog(config.log_dir)
        self.apply(config.table, source=self.table_source, persist=False)

    # ------------------------------------------------------------------ routing table

    def _pool(self, variant: str, value: str | Sequence[str]) -> pool.Pool:
        urls: dict[str, None] = {}  # ordered, without repeats
        for url in table_mod.endpoints(value):
            for u in self.resolved.get(url) or (url,):  # a Service without ready endpoints: its own URL
                urls[u] = None
        return pool.Pool(variant, [self.endpoints.get(u, variant) for u in urls])

    def _build(self) -> None:
        """The pools of the current table and resolved endpoints (in-flight requests keep theirs)."""
        t = self.table
        self._stable = self._pool("stable", t.stable)
        self._candidate = self._pool("candidate", t.candidate) if t.candidate else None
        self._fallback = self._pool("stable", t.fallback) if t.fallback else self._stable
        pools = [p for p in (self._stable, self._candidate, self._fallback) if p is not None]
        self.endpoints.keep_only({e.url for p in pools for e in p.endpoints})
        self._endpoints_changed()

    def _endpoints_changed(self) -> None:
        if hasattr(self, "_stable"):
            self.metrics.endpoints(
                {p.variant: (p.ready_count(), len(p.endpoints)) for p in (self._stable, self._candidate) if p}
            )

    def pools(self) -> list[pool.Pool]:
        """Stable, candidate (if any) and a separate fallback (if any), in that order."""
        out = [self._stable]
        for p in (self._candidate, self._fallback):
            if p is not None and p is not self._stable:
                out.append(p)
        return out

    def endpoint_states(self) -> dict[str, list[dict[str, Any]]]:
        """Each variant's endpoints now (after EndpointSlice resolution) and whether they are ready."""
        out = {"stable": self._stable, "candidate": self._candidate, "fallback": self._fallback}
        return {
            name: [{"url": e.url, "ready": e.ready, "inFlight": e.outstanding} for e in p.endpoints]
            for name, p in out.items()
            if p is not None and (name != "fallback" or p is not self._stable)
        }

    def set_endpoints(self, service_url: str, urls: Sequence[str]) -> None:
        """The ready endpoints behind ``service_url`` changed (kubewatch); an empty list means the URL itself."""
        new = tuple(urls)
        if self.resolved.get(service_url, ()) == new:
            return
        if new:
            self.resolved[service_url] = new
        else:
            self.resolved.pop(service_url, None)
        log.info("endpoints of %s: %s", service_url, list(new) or "none ready (using the URL itself)")
        self._build()

    def apply(self, new: table_mod.RoutingTable, *, source: str, persist: bool = True) -> None:
        """Switch to ``new`` at once (requests already in flight finish where they went)."""
        if new.shadow and not (self.table.shadow and self.table.candidate == new.candidate):
            self.shadow_ope.reset()  # a new shadow window: estimates describe this candidate's shadow only
        self.table = new
        self._build()
        kind, _, name = (new.sticky_key or "").partition(":")
        self.sticky_header = name.lower().encode() if kind == "header" else None
        self._sticky_field = name if kind == "context" else None
        kind, _, name = (new.entity_key or "").partition(":")
        self.entity_header = name.lower().encode() if kind == "header" else None
        self._entity_field = name if kind == "context" else None
        self._salt = new.salt.encode()
        self._budget_s = (new.latency_budget_ms or self.config.latency_budget_ms) / 1000.0
        self.table_source = source
        self.applied_at = time.time()
        propagation = self.applied_at - new.updated_at if new.updated_at else None
        self.metrics.table(new.weight, new.shadow, new.generation, propagation)
        if persist and self.config.config_path:
            try:
                table_mod.save(new, self.config.config_path)
            except OSError as exc:  # serving the new table matters more than remembering it
                log.error("cannot save the routing table to %s: %s", self.config.config_path, exc)
        log.info(
            "routing table generation %d from %s: candidate %s%% shadow %s sticky %s entity %s",
            new.generation,
            source,
            new.weight,
            new.shadow,
            new.sticky_key,
            new.entity_key,
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self._server = await loop.create_server(
            lambda: RouterProtocol(self, self.config.max_body), host, port, backlog=2048
        )
        self._sweeper = loop.call_later(SWEEP_S, self._sweep)
        if self.reward_keys.generated:
            log.warning(
                "%s is not set: the router cannot verify request ids and forwards a reward only to the endpoint "
                "that served it while it remembers it; give the router the rollout's key",
                attribution.ENV_VAR,
            )
        return int(self._server.sockets[0].getsockname()[1])

    def _sweep(self) -> None:
        protocol.sweep(self.connections, self.config.timeouts)
        if not self._stopped.is_set():
            self._sweeper = self.loop.call_later(SWEEP_S, self._sweep)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def shutdown(self) -> None:
        """Stop accepting, finish requests already read (and shadows), close the decision log.

        ``wait_stopped`` returns even if closing the log fails (the error is raised here).
        """
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        try:
            await self._shutdown()
        finally:
            if hasattr(self, "_sweeper"):
                self._sweeper.cancel()
            self._stopped.set()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.drain()
        deadline = time.monotonic() + self.config.shutdown_timeout_s
        while (self.connections or self._tasks) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        self.endpoints.close()
        if self.decision_log is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.decision_log.close)

    # ------------------------------------------------------------------ HTTP

    def protocol_error(self, status: int) -> None:
        pass

    def handle(self, conn: protocol.HttpProtocol, seq: int, method: bytes, path: bytes, body: bytes, t0: float) -> None:
        if path == b"/v1/act" and method == b"POST":
            self._act(conn, seq, body, t0)
        elif path == b"/v1/reward" and method == b"POST":
            self._spawn(self.rewards.handle(conn, seq, body))
        elif path == b"/v1/model" and method == b"GET":
            self._spawn(self._forward(conn, seq, self._stable.ranked(), b"GET", path, b""))
        elif path == b"/metrics" and method == b"GET":
            conn.respond(seq, 200, self.metrics.render(), b"text/plain; version=0.0.4; charset=utf-8")
        elif path == b"/healthz":
            conn.respond(seq, 200, b'{"status":"ok"}')
        elif path == b"/readyz":
            if self._stopping:
                conn.respond(seq, 503, b'{"status":"stopping"}')
            else:
                conn.respond(seq, 200, b'{"status":"ready"}')
        elif path == b"/router/config" and method == b"GET":
            conn.respond(
                seq,
                200,
                orjson.dumps(
                    {
                        "table": self.table.to_json(),
                        "source": self.table_source,
                        "appliedAt": self.applied_at,
                        "endpoints": self.endpoint_states(),
                    }
                ),
            )
        elif path in (b"/v1/act", b"/v1/reward", b"/v1/model", b"/metrics", b"/router/config"):
            conn.respond(seq, 405, _error("method not allowed; see the policy server API (GET /openapi.json)"))
        else:
            conn.respond(
                seq,
                404,
                _error(
                    f"no route {path.decode('latin-1')!r} on the router; it serves /v1/act, /v1/reward, /v1/model, "
                    "/metrics, /healthz, /readyz, /router/config"
                ),
            )

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def forward(
        self, endpoints: Sequence[pool.Endpoint], method: bytes, path: bytes, body: bytes
    ) -> tuple[int, bytes, str | None]:
        """Send to the first endpoint that answers without a 5xx (each tried once, in order).

        (status, body, None) for an answer, else (502, error body, the last error) when every
        endpoint failed or answered 5xx (the last 5xx answer is returned as it was).
        """
        last: tuple[int, bytes, str | None] = (502, _error("no policy server endpoint to send to"), "no endpoint")
        for ep in endpoints:
            ep.outstanding += 1
            try:
                status, resp = await ep.upstream.request(method, path, body, self.config.upstream_timeout_s)
            except upstream.UpstreamError as exc:
                if not isinstance(exc, upstream.UpstreamTimeout):
                    self.endpoints.failed(ep, exc)
                last = (502, _error(f"policy server {ep.url} unavailable: {exc}"), str(exc))
                continue
            finally:
                ep.outstanding -= 1
            if status < 500:
                return status, resp, None
            last = (status, resp, f"{ep.url} answered {status}")
        return last

    async def _forward(
        self,
        conn: protocol.HttpProtocol,
        seq: int,
        endpoints: Sequence[pool.Endpoint],
        method: bytes,
        path: bytes,
        body: bytes,
    ) -> None:
        status, resp, _ = await self.forward(endpoints, method, path, body)
        conn.respond(seq, status, resp)

    # ------------------------------------------------------------------ /v1/act

    def _keys(self, conn: protocol.HttpProtocol, body: bytes) -> tuple[bytes | None, bytes | None]:
        """(sticky key, entity key) of a request: captured headers, or fields of the body's context."""
        sticky: bytes | None = getattr(conn, "sticky_value", None)
        entity: bytes | None = getattr(conn, "entity_value", None)
        if self._sticky_field is None and self._entity_field is None:
            return sticky, entity
        try:
            context = orjson.loads(body).get("context")
        except (orjson.JSONDecodeError, AttributeError):
            context = None
        if not isinstance(context, dict):
            context = {}
        if self._sticky_field is not None:
            value = context.get(self._sticky_field)
            sticky = None if value is None else str(value).encode()
        if self._entity_field is not None:
            value = context.get(self._entity_field)
            entity = None if value is None else str(value).encode()
        return sticky, entity

    def _act(self, conn: protocol.HttpProtocol, seq: int, body: bytes, t0: float) -> None:
        """Assign and send; the rest happens in ``_Act``'s callbacks (no task or coroutine per request)."""
        cand = self._candidate
        if self._sticky_field is None and self._entity_field is None:
            sticky, entity = conn.sticky_value, conn.entity_value  # type: ignore[attr-defined]
        else:
            sticky, entity = self._keys(conn, body)
        to_candidate, prob = assign.choose(self.table.weight, sticky, self._salt, self.rng)
        req = _Act(self, conn, seq, body, t0, prob, entity)
        if to_candidate and cand is not None:
            self.metrics.assign("candidate")
            req.send(cand, self._budget_s, req.on_candidate)
        else:
            self.metrics.assign("stable")
            req.shadow = self._candidate if self.table.shadow else None
            req.send(self._stable, self.config.upstream_timeout_s, req.on_stable)

    def _answer(
        self,
        req: _Act,
        resp: bytes,
        variant: str,
        served_by: str,
        need_decision: bool = False,
    ) -> dict[str, Any] | None:
        """Write the answer; return the parsed decision when it was parsed (shadow, decision log)."""
        conn, seq, prob, fallback_reason, ep = req.conn, req.seq, req.prob, req.fallback_reason, req.endpoint
        decision: dict[str, Any] | None = None
        rid: Any = None
        if self.decision_log is None and not need_decision and resp[-1:] == b"}" and _MARK[variant] in resp:
            # Fast path: the server already labels itself with our variant name (the operator runs it with
            # --variant stable|candidate), so append our fields instead of parsing and re-serialising.
            extra = b',"served_by":"%s","assignment_probability":%s' % (_NAMES[served_by], orjson.dumps(prob))
            if fallback_reason:
                extra += b',"fallback_reason":"%s"' % fallback_reason.encode()
            conn.respond(seq, 200, b"%s%s}" % (resp[:-1], extra))
            if resp.startswith(_RID) and (self._remember_signed or not resp.startswith(_SIGNED, _RID_LEN)):
                rid = resp[_RID_LEN : resp.find(b'"', _RID_LEN)].decode()
        else:
            try:
                decision = orjson.loads(resp)
            except orjson.JSONDecodeError:
                conn.respond(seq, 502, _error(f"policy server {ep.url} answered invalid JSON"))
                self.metrics.fail(variant)
                return None
            decision["variant"] = variant
            decision["served_by"] = served_by
            decision["assignment_probability"] = prob
            if fallback_reason:
                decision["fallback_reason"] = fallback_reason
            conn.respond(seq, 200, orjson.dumps(decision))
            rid = decision.get("request_id")
            if isinstance(rid, str) and not self._remember_signed and attribution.is_signed(rid):
                rid = None
        elapsed = time.perf_counter() - req.t0
        self.metrics.served(variant, served_by, elapsed)
        if isinstance(rid, str):  # an id the router cannot verify: remember who served it, for its reward
            ids = self.served_by_id
            ids[rid] = ep
            if len(ids) > REQUEST_IDS:
                ids.popitem(last=False)
        if decision is not None and self.decision_log is not None:
            self._log(req.body, decision, variant, served_by, prob, elapsed)
        return decision

    def _log(
        self, body: bytes, decision: dict[str, Any], variant: str, served_by: str, prob: float | None, elapsed_s: float
    ) -> None:
        try:
            request = orjson.loads(body)
            context = request.get("context")
            self.decision_log.log_decision(
                {
                    "request_id": decision["request_id"],
                    "time": time.time(),
                    "policy_version": str(decision.get("policy_version", "")),
                    "variant": variant,
                    "observation": _flat(request["observation"]),
                    "action": decision["action"],
                    "propensity": float(decision["propensity"]),
                    "probabilities": None,
                    "shield_reasons": list((decision.get("shield") or {}).get("reasons") or []),
                    "latency_ms": elapsed_s * 1000.0,
                    "context_json": orjson.dumps(context).decode() if context is not None else None,
                    "assignment_probability": prob,
                    "served_by": served_by,
                }
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("decision not logged (unexpected shape): %s", exc)

    # ------------------------------------------------------------------ shadow

    def _start_shadow(self, cand: pool.Pool, req: _Act, served: dict[str, Any]) -> None:
        if self._shadow_inflight >= self.config.max_shadow_inflight:
            self.metrics.shadow_outcome("dropped")  # a slow candidate must not eat the router's memory
            return
        ep = cand.pick(req.entity)
        if ep is None:
            return
        self._shadow_inflight += 1
        self._spawn(self._shadow(ep, req.body, served))

    async def _shadow(self, ep: pool.Endpoint, body: bytes, served: dict[str, Any]) -> None:
        m = self.metrics
        t = time.perf_counter()
        ep.outstanding += 1
        try:
            request = orjson.loads(body)
            if isinstance(request, dict) and "request_id" in served:
                # answered under the served id and not logged by the candidate: it was never served (this
                # router logs it as served_by "shadow"); a client-chosen id is the stable's, not to be claimed
                request.pop("request_id", None)
                request["shadow_of"] = served["request_id"]
            status, resp = await ep.upstream.request(b"POST", b"/v1/act", orjson.dumps(request), self._budget_s)
            elapsed = time.perf_counter() - t
            if status != 200:
                m.shadow_outcome("status", elapsed)
                return
            shadow = orjson.loads(resp)
            m.shadow_outcome("ok", elapsed)
            m.shadow_compare(*compare(served.get("action"), shadow.get("action")))
            self.shadow_ope.decided(
                served.get("request_id"), served.get("action"), served.get("propensity"), shadow.get("action")
            )
            if self.decision_log is not None:
                self._log(body, shadow, "candidate", "shadow", None, elapsed)
        except upstream.UpstreamTimeout:
            m.shadow_outcome("timeout")
        except upstream.UpstreamError as exc:
            self.endpoints.failed(ep, exc)
            m.shadow_outcome("error")
        except (orjson.JSONDecodeError, AttributeError):
            m.shadow_outcome("error")
        finally:
            ep.outstanding -= 1
            self._shadow_inflight -= 1


class _Act:
    """One /v1/act request in flight: its callbacks carry it from upstream answer to client response."""

    __slots__ = (
        "body",
        "conn",
        "endpoint",
        "entity",
        "fallback_reason",
        "pool",
        "prob",
        "router",
        "seq",
        "shadow",
        "t0",
        "timeout_s",
        "tried",
    )

    def __init__(
        self,
        router: Router,
        conn: protocol.HttpProtocol,
        seq: int,
        body: bytes,
        t0: float,
        prob: float,
        entity: bytes | None,
    ) -> None:
        self.router, self.conn, self.seq, self.body, self.t0, self.prob = router, conn, seq, body, t0, prob
        self.entity = entity
        self.fallback_reason: str | None = None
        self.shadow: pool.Pool | None = None
        self.tried: list[pool.Endpoint] | None = None

    def send(self, p: pool.Pool, timeout_s: float, cb: upstream.Callback) -> None:
        eps = p.endpoints
        ep = eps[0] if len(eps) == 1 else p.pick(self.entity)
        assert ep is not None  # a pool has at least one endpoint and nothing is excluded yet
        self.pool, self.endpoint, self.timeout_s = p, ep, timeout_s
        ep.outstanding += 1
        ep.upstream.send(b"POST", b"/v1/act", self.body, timeout_s, cb)

    def _retry(self, err: Exception, cb: upstream.Callback) -> bool:
        """After an error: True when the request was re-sent to another endpoint of the variant.

        A connection error (not a timeout: the budget is spent) takes the endpoint out and the
        request goes once to another endpoint of the same variant, within what is left of the
        deadline (counted from the request's arrival: conservative after a fallback).
        """
        if isinstance(err, upstream.UpstreamTimeout):
            return False
        r, ep = self.router, self.endpoint
        r.endpoints.failed(ep, err)
        if self.tried is not None:
            return False
        self.tried = [ep]
        nxt = self.pool.pick(self.entity, self.tried)
        left = self.timeout_s - (time.perf_counter() - self.t0)
        if nxt is None or left <= 0:
            return False
        r.metrics.retry(self.pool.variant)
        self.endpoint = nxt
        nxt.outstanding += 1
        nxt.upstream.send(b"POST", b"/v1/act", self.body, left, cb)
        return True

    def on_candidate(self, status: int, resp: bytes, err: Exception | None) -> None:
        self.endpoint.outstanding -= 1
        if err is not None and self._retry(err, self.on_candidate):
            return
        r = self.router
        if err is None and status == 200:
            r._answer(self, resp, "candidate", "candidate")
            return
        reason = "status" if err is None else "timeout" if isinstance(err, upstream.UpstreamTimeout) else "error"
        r.metrics.upstream_error("candidate", reason)
        r.metrics.fallback(reason)
        self.fallback_reason = reason
        self.tried = None
        self.send(r._fallback, r.config.upstream_timeout_s, self.on_stable)

    def on_stable(self, status: int, resp: bytes, err: Exception | None) -> None:
        self.endpoint.outstanding -= 1
        if err is not None and self._retry(err, self.on_stable):
            return
        r = self.router
        if err is not None:
            reason = "timeout" if isinstance(err, upstream.UpstreamTimeout) else "error"
            r.metrics.upstream_error("stable", reason)
            r.metrics.fail("stable")
            self.conn.respond(
                self.seq,
                504 if reason == "timeout" else 502,
                _error(f"stable policy server {self.endpoint.url} unavailable ({err}); no decision was made"),
            )
            return
        if status != 200:
            self.conn.respond(self.seq, status, resp)  # the client's own error (4xx), as the policy server worded it
            return
        served_by = "fallback" if self.fallback_reason else "stable"
        decision = r._answer(self, resp, "stable", served_by, need_decision=self.shadow is not None)
        if self.shadow is not None and decision is not None:
            r._start_shadow(self.shadow, self, decision)
