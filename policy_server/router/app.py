"""The router server: assign, forward, fall back, shadow, log, count.

One /v1/act request through the router:

1. the sticky key is read (a header captured while parsing, or ``context.FIELD`` of the body);
2. ``assign.choose`` picks the variant and the probability of that assignment;
3. the request goes to that variant's policy server over a pooled keep-alive connection; a
   candidate failure (connect error, reset, non-200 answer, or no answer within the latency
   budget) is answered by the fallback (default: the stable policy) in the same request;
4. the answer gets ``variant`` (who served), ``served_by`` (stable | candidate | fallback) and
   ``assignment_probability``; the decision is logged with them when ``--log-dir`` is set;
5. in shadow, after the stable answer is written, the same observation (with the served
   request id) goes to the candidate in the background: its action is compared with the served
   one and logged (``served_by = "shadow"``), never returned.

The HTTP layer is the policy server's (protocol.py); the sticky header is captured by a
subclass. Everything runs on one event loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from policy_server import protocol
from policy_server.router import assign, metrics, shadow_ope, upstream
from policy_server.router import table as table_mod

__all__ = ["Router", "RouterConfig", "RouterProtocol"]

log = logging.getLogger("policy_server.router")

SWEEP_S = 0.5  # how often client timeouts are checked
REQUEST_IDS = 200_000  # request id -> non-stable server that answered it, so /v1/reward reaches it
_MARK = {"stable": b'"variant":"stable"', "candidate": b'"variant":"candidate"'}
_NAMES = {name: name.encode() for name in ("stable", "candidate", "fallback")}
_RID = b'{"request_id":"'
_RID_LEN = len(_RID)


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


class RouterProtocol(protocol.HttpProtocol):
    """The policy server's HTTP protocol plus capture of the sticky header of each request."""

    def __init__(self, app: Router, max_body: int) -> None:
        super().__init__(app, max_body)
        self.sticky_value: bytes | None = None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.sticky_value = None

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        wanted = self.app.sticky_header  # type: ignore[attr-defined]
        if wanted is not None and name.lower() == wanted:
            self.sticky_value = value


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
        self._sticky_field: str | None = None
        self._upstreams: dict[str, upstream.Upstream] = {}
        self._stable: upstream.Upstream
        self._candidate: upstream.Upstream | None = None
        self._fallback: upstream.Upstream
        self._served_by_id: collections.OrderedDict[str, upstream.Upstream] = collections.OrderedDict()
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

    def _upstream(self, url: str) -> upstream.Upstream:
        up = self._upstreams.get(url)
        if up is None:
            up = self._upstreams[url] = upstream.Upstream(url)
        return up

    def apply(self, new: table_mod.RoutingTable, *, source: str, persist: bool = True) -> None:
        """Switch to ``new`` at once (requests already in flight finish where they went)."""
        if new.shadow and not (self.table.shadow and self.table.candidate == new.candidate):
            self.shadow_ope.reset()  # a new shadow window: estimates describe this candidate's shadow only
        self._stable = self._upstream(new.stable)
        self._candidate = self._upstream(new.candidate) if new.candidate else None
        self._fallback = self._upstream(new.fallback) if new.fallback else self._stable
        wanted = {u for u in (new.stable, new.candidate, new.fallback) if u}
        for url in [u for u in self._upstreams if u not in wanted]:
            self._upstreams.pop(url).close()  # idle connections only; in-flight ones finish
        kind, _, name = (new.sticky_key or "").partition(":")
        self.sticky_header = name.lower().encode() if kind == "header" else None
        self._sticky_field = name if kind == "context" else None
        self._salt = new.salt.encode()
        self._budget_s = (new.latency_budget_ms or self.config.latency_budget_ms) / 1000.0
        self.table, self.table_source = new, source
        self.applied_at = time.time()
        propagation = self.applied_at - new.updated_at if new.updated_at else None
        self.metrics.table(new.weight, new.shadow, new.generation, propagation)
        if persist and self.config.config_path:
            try:
                table_mod.save(new, self.config.config_path)
            except OSError as exc:  # serving the new table matters more than remembering it
                log.error("cannot save the routing table to %s: %s", self.config.config_path, exc)
        log.info(
            "routing table generation %d from %s: candidate %s%% shadow %s sticky %s",
            new.generation,
            source,
            new.weight,
            new.shadow,
            new.sticky_key,
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self._server = await loop.create_server(
            lambda: RouterProtocol(self, self.config.max_body), host, port, backlog=2048
        )
        self._sweeper = loop.call_later(SWEEP_S, self._sweep)
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
        for up in self._upstreams.values():
            up.close()
        if self.decision_log is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.decision_log.close)

    # ------------------------------------------------------------------ HTTP

    def protocol_error(self, status: int) -> None:
        pass

    def handle(self, conn: protocol.HttpProtocol, seq: int, method: bytes, path: bytes, body: bytes, t0: float) -> None:
        if path == b"/v1/act" and method == b"POST":
            self._act(conn, seq, body, t0, getattr(conn, "sticky_value", None))
        elif path == b"/v1/reward" and method == b"POST":
            self._spawn(self._reward(conn, seq, body))
        elif path == b"/v1/model" and method == b"GET":
            self._spawn(self._forward(conn, seq, self._stable, b"GET", path, b""))
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
                    {"table": self.table.to_json(), "source": self.table_source, "appliedAt": self.applied_at}
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

    async def _forward(
        self, conn: protocol.HttpProtocol, seq: int, up: upstream.Upstream, method: bytes, path: bytes, body: bytes
    ) -> None:
        try:
            status, resp = await up.request(method, path, body, self.config.upstream_timeout_s)
        except upstream.UpstreamError as exc:
            conn.respond(seq, 502, _error(f"policy server {up.url} unavailable: {exc}"))
            return
        conn.respond(seq, status, resp)

    async def _reward(self, conn: protocol.HttpProtocol, seq: int, body: bytes) -> None:
        up = self._stable
        try:
            data = orjson.loads(body)
            rid = data.get("request_id")
            up = self._served_by_id.get(rid, up) if isinstance(rid, str) else up
            if self.table.shadow:
                self.shadow_ope.rewarded(rid, data.get("reward"), data.get("costs"))
        except (orjson.JSONDecodeError, AttributeError):
            pass  # the policy server explains what is wrong with the body
        await self._forward(conn, seq, up, b"POST", b"/v1/reward", body)

    # ------------------------------------------------------------------ /v1/act

    def _key(self, sticky: bytes | None, body: bytes) -> bytes | None:
        if self._sticky_field is None:
            return sticky
        try:
            context = orjson.loads(body).get("context")
            value = context.get(self._sticky_field) if isinstance(context, dict) else None
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return None if value is None else str(value).encode()

    def _act(self, conn: protocol.HttpProtocol, seq: int, body: bytes, t0: float, sticky: bytes | None) -> None:
        """Assign and send; the rest happens in ``_Act``'s callbacks (no task or coroutine per request)."""
        cand = self._candidate
        to_candidate, prob = assign.choose(self.table.weight, self._key(sticky, body), self._salt, self.rng)
        req = _Act(self, conn, seq, body, t0, prob)
        if to_candidate and cand is not None:
            self.metrics.assign("candidate")
            req.upstream = cand
            cand.send(b"POST", b"/v1/act", body, self._budget_s, req.on_candidate)
        else:
            self.metrics.assign("stable")
            req.shadow = self._candidate if self.table.shadow else None
            req.upstream = self._stable
            self._stable.send(b"POST", b"/v1/act", body, self.config.upstream_timeout_s, req.on_stable)

    def _answer(
        self,
        conn: protocol.HttpProtocol,
        seq: int,
        body: bytes,
        resp: bytes,
        t0: float,
        variant: str,
        served_by: str,
        prob: float,
        fallback_reason: str | None,
        up: upstream.Upstream,
        need_decision: bool = False,
    ) -> dict[str, Any] | None:
        """Write the answer; return the parsed decision when it was parsed (shadow, decision log)."""
        decision: dict[str, Any] | None = None
        if self.decision_log is None and not need_decision and resp[-1:] == b"}" and _MARK[variant] in resp:
            # Fast path: the server already labels itself with our variant name (the operator runs it with
            # --variant stable|candidate), so append our fields instead of parsing and re-serialising.
            extra = b',"served_by":"%s","assignment_probability":%s' % (_NAMES[served_by], orjson.dumps(prob))
            if fallback_reason:
                extra += b',"fallback_reason":"%s"' % fallback_reason.encode()
            conn.respond(seq, 200, b"%s%s}" % (resp[:-1], extra))
            rid = None
            if up is not self._stable and resp.startswith(_RID):
                rid = resp[_RID_LEN : resp.find(b'"', _RID_LEN)].decode()
        else:
            try:
                decision = orjson.loads(resp)
            except orjson.JSONDecodeError:
                conn.respond(seq, 502, _error(f"policy server {up.url} answered invalid JSON"))
                self.metrics.fail(variant)
                return None
            decision["variant"] = variant
            decision["served_by"] = served_by
            decision["assignment_probability"] = prob
            if fallback_reason:
                decision["fallback_reason"] = fallback_reason
            conn.respond(seq, 200, orjson.dumps(decision))
            rid = decision.get("request_id") if up is not self._stable else None
        elapsed = time.perf_counter() - t0
        self.metrics.served(variant, served_by, elapsed)
        if isinstance(rid, str):  # rewards default to the stable server: remember the others' ids only
            ids = self._served_by_id
            ids[rid] = up
            if len(ids) > REQUEST_IDS:
                ids.popitem(last=False)
        if decision is not None and self.decision_log is not None:
            self._log(body, decision, variant, served_by, prob, elapsed)
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

    def _start_shadow(self, cand: upstream.Upstream, body: bytes, served: dict[str, Any]) -> None:
        if self._shadow_inflight >= self.config.max_shadow_inflight:
            self.metrics.shadow_outcome("dropped")  # a slow candidate must not eat the router's memory
            return
        self._shadow_inflight += 1
        self._spawn(self._shadow(cand, body, served))

    async def _shadow(self, cand: upstream.Upstream, body: bytes, served: dict[str, Any]) -> None:
        m = self.metrics
        t = time.perf_counter()
        try:
            request = orjson.loads(body)
            if isinstance(request, dict) and "request_id" in served:
                request["request_id"] = served["request_id"]  # join the shadow decision to the served one
            status, resp = await cand.request(b"POST", b"/v1/act", orjson.dumps(request), self._budget_s)
            elapsed = time.perf_counter() - t
            if status != 200:
                m.shadow_outcome("status", elapsed)
                return
            shadow = orjson.loads(resp)
            m.shadow_outcome("ok", elapsed)
            m.shadow_compare(*compare(served.get("action"), shadow.get("action")))
            self.shadow_ope.decided(served.get("request_id"), served.get("action"), served.get("propensity"),
                                    shadow.get("action"))
            if self.decision_log is not None:
                self._log(body, shadow, "candidate", "shadow", None, elapsed)
        except upstream.UpstreamTimeout:
            m.shadow_outcome("timeout")
        except (upstream.UpstreamError, orjson.JSONDecodeError, AttributeError):
            m.shadow_outcome("error")
        finally:
            self._shadow_inflight -= 1


class _Act:
    """One /v1/act request in flight: its callbacks carry it from upstream answer to client response."""

    __slots__ = ("body", "conn", "fallback_reason", "prob", "router", "seq", "shadow", "t0", "upstream")

    def __init__(
        self, router: Router, conn: protocol.HttpProtocol, seq: int, body: bytes, t0: float, prob: float
    ) -> None:
        self.router, self.conn, self.seq, self.body, self.t0, self.prob = router, conn, seq, body, t0, prob
        self.fallback_reason: str | None = None
        self.shadow: upstream.Upstream | None = None
        self.upstream: upstream.Upstream | None = None

    def on_candidate(self, status: int, resp: bytes, err: Exception | None) -> None:
        r = self.router
        if err is None and status == 200:
            r._answer(
                self.conn, self.seq, self.body, resp, self.t0, "candidate", "candidate", self.prob, None, self.upstream
            )
            return
        reason = "status" if err is None else "timeout" if isinstance(err, upstream.UpstreamTimeout) else "error"
        r.metrics.upstream_error("candidate", reason)
        r.metrics.fallback(reason)
        self.fallback_reason = reason
        self.upstream = r._fallback
        r._fallback.send(b"POST", b"/v1/act", self.body, r.config.upstream_timeout_s, self.on_stable)

    def on_stable(self, status: int, resp: bytes, err: Exception | None) -> None:
        r, up = self.router, self.upstream
        if err is not None:
            reason = "timeout" if isinstance(err, upstream.UpstreamTimeout) else "error"
            r.metrics.upstream_error("stable", reason)
            r.metrics.fail("stable")
            self.conn.respond(
                self.seq,
                504 if reason == "timeout" else 502,
                _error(f"stable policy server {up.url} unavailable ({err}); no decision was made"),
            )
            return
        if status != 200:
            self.conn.respond(self.seq, status, resp)  # the client's own error (4xx), as the policy server worded it
            return
        served_by = "fallback" if self.fallback_reason else "stable"
        decision = r._answer(
            self.conn,
            self.seq,
            self.body,
            resp,
            self.t0,
            "stable",
            served_by,
            self.prob,
            self.fallback_reason,
            up,
            need_decision=self.shadow is not None,
        )
        if self.shadow is not None and decision is not None:
            r._start_shadow(self.shadow, self.body, decision)
