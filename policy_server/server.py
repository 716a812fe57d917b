"""The policy server application: routes, the micro-batch step, readiness and graceful shutdown.

One process, one event loop (uvloop), one thread doing inference: see protocol.py for why the
HTTP layer is hand-rolled and batching.py for why inference runs on the loop thread. What
happens to one /v1/act request:

1. protocol.py parses it and calls :meth:`PolicyServer.handle`;
2. validation.py checks the body (4xx with the field at fault, the server stays ready);
3. the request joins the micro-batch; :meth:`PolicyServer._run_batch` runs one forward pass for
   the batch, the shield (exploration + constraints + fallbacks), logs the batch (server_log.py:
   the write-ahead log, then the numpy columns into the staging area of log_staging.py, which
   hands the log one large batch per 4,096 decisions or every second; the log's writer thread
   builds Arrow columns and writes Parquet), writes every response, then updates metrics once
   and feeds the drift window.

The model is loaded and warmed in a worker thread after the socket is bound: /healthz answers
at once, /readyz (and /v1/act, /v1/model, /metrics) answer 503 until the model is warm.

Rewards (request_ids.py, attribution.py): every generated request id is signed with the rollout's
key (``POLICY_SERVER_REWARD_KEY``) and names its variant, policy version and decision time, so
/v1/reward on any server or router of the rollout accepts it (up to ``max_reward_age_s`` after
the decision), logs the reward with that attribution and counts it under the deciding variant's
``variant`` label. A client-chosen id gets a signed ``reward_id`` in its response; the bare id is
accepted by this process among its last ``max_request_ids`` decisions. A second reward with the
same (request id, event id) seen by this process answers 409; the joiner de-duplicates across
replicas.

Critic error (docs/policy-server.md): a policy with ``output: q_values`` answers ``predicted_value``
(the Q of the served action) and signs it into the id as the extra ``v``, so the id is issued after
the forward pass; /v1/reward compares it with the reward (``policy_value_*`` metrics).

Action envelope (envelope.py, docs/policy-server.md "Action envelope"): with ``envelope`` the shield serves only
actions inside it and replaces the rest by the fallback artifact's action (``envelope_fallback_model``); the
response says ``shield.reasons: ["envelope"]`` but not the proposal, which is logged (``proposed_action``) and
counted (``policy_envelope_proposals_total``) for a person to review.

Decision durability (docs/decision-log.md, "Durability contract"; server_log.py): a batch's decisions are
logged *before* its responses are written, so a row that cannot be logged is answered 500, never
acknowledged and then dropped, and one bad row never takes its batch with it. With ``wal_dir``
each batch and reward is also appended to a write-ahead log on local disk (group commit every
``wal_commit_ms``), replayed into Parquet on the next start: a SIGKILL loses at most that window.
With ``durable`` responses wait for the commit (nothing acknowledged is lost).

Shutdown (SIGTERM/SIGINT via the CLI): stop accepting connections, finish every request
already read (at most ``shutdown_timeout_s``), close idle connections, then close the decision
log (at most ``log_flush_timeout_s``; both together stay inside the pod's grace period). What
could not be written is counted in :attr:`PolicyServer.unwritten` and stays in the WAL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import orjson

from policy_server import (
    artifact,
    attribution,
    batching,
    drift,
    envelope,
    group_metrics,
    groups,
    metrics,
    openapi,
    protocol,
    request_ids,
    server_log,
    shield,
    validation,
    worker_metrics,
)
from policy_server import policy as policy_mod

__all__ = ["PolicyServer", "ServerConfig"]

log = logging.getLogger("policy_server")

SWEEP_S = 0.5  # how often connection timeouts and durable waits are checked

_ERR_REASON = {413: "body_too_large", 431: "bad_request", 400: "bad_request", 408: "timeout"}


@dataclass
class ServerConfig:
    model: str
    variant: str = "default"
    device: str = "cpu"
    max_batch: int = 32
    max_wait_ms: float = 0.0
    exploration: artifact.Exploration | None = None
    seed: int | None = None
    log_dir: str | None = None
    latency_budget_ms: float | None = None
    max_body: int = 1 << 20
    max_request_ids: int = 1_000_000  # client-chosen ids and rewarded ids remembered (generated ids cost nothing)
    max_reward_age_s: float = request_ids.DEFAULT_MAX_AGE_S
    reward_keys: attribution.RewardKeys | None = None  # None: from POLICY_SERVER_REWARD_KEY (random if unset)
    drift_window: int = 10_000
    drift_interval_s: float = 5.0
    warmup_iters: int = 20
    shutdown_timeout_s: float = 10.0  # finishing requests already read; + log_flush_timeout_s < grace period
    log_flush_timeout_s: float = 15.0
    log_flush_interval_s: float = 5.0  # Parquet segments are written at least this often
    reuse_port: bool = False  # SO_REUSEPORT, bound once the model is warm: zero-downtime replacement
    wal_dir: str | None = None  # write-ahead log on local disk (needs log_dir)
    wal_commit_ms: float = 5.0
    wal_fsync: bool = False
    durable: bool = False  # acknowledge only after the WAL commit
    durable_timeout_s: float = 5.0  # a response waiting longer for its commit gets 503
    on_log_failure: Literal["serve", "unready"] = "serve"
    limits: validation.Limits = field(default_factory=validation.Limits)
    timeouts: protocol.Timeouts = field(default_factory=protocol.Timeouts)
    trusted_keys: tuple[str, ...] = ()  # Ed25519 public keys: the artifact must be signed by one
    metrics_dir: str | None = None  # serve --workers: /metrics answers the sum of every worker (worker_metrics.py)
    envelope: str | None = None  # the action envelope as JSON (envelope.py); None: no envelope
    envelope_fallback_model: str | None = None  # the rollout's fallback artifact, serving out-of-envelope rows
    groups: groups.GroupKey | None = None  # fairness groups: policy_group_* metrics and g= in ids (groups.py)


@dataclass(slots=True)
class _Pending:
    conn: protocol.HttpProtocol
    seq: int
    t0: float
    obs: list[Any]
    request_id: str
    context_json: str | None
    mask: np.ndarray | None
    entity: str | None
    reward_id: str | None  # the signed id of a client-chosen request id
    current: int | list[float] | None  # context.current_action
    shadow: bool = False  # a mirror of another variant's served decision: answered and counted, not logged
    decided: float = 0.0  # Unix time of the decision (signed into the id issued after the forward pass)
    spent: float | None = None  # context.envelope_spent (only with an envelope)
    group: str | None = None  # fairness group (folded, groups.py): signed into the id, counted by group


def _error(message: str) -> bytes:
    return orjson.dumps({"error": message})


class PolicyServer:
    """Serve one policy artifact over HTTP. Use :meth:`start`, :meth:`wait_ready`, :meth:`shutdown`."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        loader: Callable[[str, str], artifact.LoadedArtifact] = artifact.load_artifact,
    ) -> None:
        self.config = config
        self.loader = loader
        self.connections: set[protocol.HttpProtocol] = set()
        self.ready = False
        self.load_error: BaseException | None = None
        self.rng = np.random.default_rng(config.seed)
        self.policy: policy_mod.Policy | None = None
        self.metrics: metrics.ServerMetrics | None = None
        self.shield: shield.Shield | None = None
        self._envelope_on = False
        self._envelope_fallback: policy_mod.Policy | None = None
        self.drift: drift.DriftMonitor | None = None
        self.log: server_log.ServerLog | None = None  # with log_dir: decisions and rewards (server_log.py)
        keys = config.reward_keys if config.reward_keys is not None else attribution.RewardKeys.from_env()
        if keys.generated:
            log.warning(
                "%s is unset: rewards are accepted by this process only; give every server and router of the "
                "rollout the same key to accept them on any replica",
                attribution.ENV_VAR,
            )
        self._ids = request_ids.RequestIds(config.max_request_ids, keys, max_age_s=config.max_reward_age_s)
        self._server: asyncio.AbstractServer | None = None
        self._loaded = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._openapi = orjson.dumps(openapi.document())
        self._model_body = b""
        self._groups = config.groups
        self._group_metrics: group_metrics.GroupMetrics | None = None
        self._shared_metrics: worker_metrics.SharedMetrics | None = None
        if config.metrics_dir:
            self._shared_metrics = worker_metrics.SharedMetrics(config.metrics_dir)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Bind and start loading the model in a worker thread; returns the bound port.

        With ``reuse_port`` the model is loaded first and the socket bound (SO_REUSEPORT) only
        once it is warm, so a replacement server can start on the port of the one it replaces
        and take connections only when it can answer them; if loading fails, nothing is bound
        (``wait_ready`` raises) and ``port`` is returned as given.
        """
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.batcher: batching.MicroBatcher[_Pending] = batching.MicroBatcher(
            loop,
            self._run_batch,
            max_batch=self.config.max_batch,
            max_wait_ms=self.config.max_wait_ms,
            expected=lambda: len(self.connections),
        )
        self._sweeper = loop.call_later(SWEEP_S, self._sweep)
        if self._shared_metrics is not None:
            self._shared_metrics.start(loop, self._render_metrics)
        reuse = self.config.reuse_port
        if not reuse:
            port = await self._bind(host, port, reuse_port=False)
        fut = loop.run_in_executor(None, self._load)
        fut.add_done_callback(self._on_loaded)
        if reuse:
            await self._loaded.wait()
            if self.load_error is None:
                port = await self._bind(host, port, reuse_port=True)
        return port

    async def _bind(self, host: str, port: int, *, reuse_port: bool) -> int:
        self._server = await self.loop.create_server(
            lambda: protocol.HttpProtocol(self, self.config.max_body), host, port, backlog=2048, reuse_port=reuse_port
        )
        return self._server.sockets[0].getsockname()[1]

    def _sweep(self) -> None:
        """Every ``SWEEP_S``: close connections past their timeouts; answer 503 to durable waits past theirs."""
        protocol.sweep(self.connections, self.config.timeouts)
        if self.log is not None:
            for conn, seq, _, _ in self.log.expired():
                self._fail(conn, seq, 503, "not_logged", "the decision log could not commit in time; retry")
        if not self._stopped.is_set():
            self._sweeper = self.loop.call_later(SWEEP_S, self._sweep)

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def wait_ready(self) -> None:
        """Wait for the model; re-raise the load error (e.g. :class:`artifact.ArtifactError`)."""
        await self._loaded.wait()
        if self.load_error is not None:
            raise self.load_error

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def _load(self) -> tuple[artifact.LoadedArtifact, policy_mod.Policy]:
        cfg = self.config
        if cfg.trusted_keys and self.loader is artifact.load_artifact:  # verified on the very bytes it loads
            loaded = artifact.load_artifact(cfg.model, cfg.device, trusted_keys=cfg.trusted_keys)
        else:
            if cfg.trusted_keys:
                artifact.verify_signature(cfg.model, cfg.trusted_keys)
            loaded = self.loader(cfg.model, cfg.device)
        pol = policy_mod.Policy.from_artifact(loaded, cfg.exploration)
        if cfg.envelope is not None and cfg.envelope_fallback_model:  # verified like the served artifact
            fb = artifact.load_artifact(cfg.envelope_fallback_model, cfg.device, trusted_keys=cfg.trusted_keys)
            self._envelope_fallback = policy_mod.Policy.from_artifact(fb)
        if cfg.log_dir:  # pyarrow is imported there: ~45 MB of RSS, only worth it when logging
            opened = server_log.ServerLog(cfg)
            opened.open()
            self.log = opened
        warm_rng = np.random.default_rng(0)
        size = 1
        while True:  # every power-of-two batch size up to max_batch: JIT profiling runs happen here
            obs = warm_rng.standard_normal((size, *pol.obs_shape)).astype(np.float32)
            for _ in range(self.config.warmup_iters):
                pol.decide(obs, warm_rng)
            if size >= self.config.max_batch:
                break
            size = min(size * 2, self.config.max_batch)
        return loaded, pol

    @property
    def unwritten(self) -> int:
        """Rows the shutdown could not write to Parquet (kept in the WAL if there is one)."""
        return self.log.unwritten if self.log is not None else 0

    def _on_loaded(self, fut: asyncio.Future) -> None:
        try:
            loaded, pol = fut.result()
            self._setup(loaded, pol)
        except BaseException as exc:  # reported by wait_ready / the CLI
            self.load_error = exc
            log.error("cannot serve %s: %s", self.config.model, exc)
        else:
            gc.collect()
            gc.freeze()  # the model and tables are long-lived: keep them out of GC scans
            self.ready = not self._stopping
            log.info("ready: %s %s (variant %s)", loaded.manifest.name, loaded.manifest.version, self.config.variant)
        self._loaded.set()

    def _setup(self, loaded: artifact.LoadedArtifact, pol: policy_mod.Policy) -> None:
        m = loaded.manifest
        cfg = self.config
        self.policy = pol
        self.manifest = m
        self.shape = pol.obs_shape
        self.n_actions = pol.n_outputs if pol.discrete else None
        self.shield = shield.Shield(pol, latency_budget_ms=cfg.latency_budget_ms)
        if cfg.envelope is not None:
            self._setup_envelope(pol)
        features = m.observation.feature_names() if m.observation.reference else []
        actions = [str(i) for i in range(pol.n_outputs)] if pol.discrete else ["continuous"]
        self.metrics = metrics.ServerMetrics(
            variant=cfg.variant, name=m.name, version=m.version, actions=actions, features=features, costs=m.costs
        )
        if self.log is not None:
            self.metrics.register_log_health(self.log.health)
        if m.observation.reference:
            self.drift = drift.DriftMonitor(
                m.observation.reference,
                features,
                self.metrics.set_drift,
                window=cfg.drift_window,
                interval_s=cfg.drift_interval_s,
            )
            self.drift.start()
        self._model_body = orjson.dumps(
            {
                "name": m.name,
                "version": m.version,
                "format": m.format,
                "observation": {
                    "shape": m.observation.shape,
                    "dtype": m.observation.dtype,
                    "names": m.observation.names,
                },
                "action": m.action.model_dump(),
                "output": m.output,
                "exploration": pol.exploration.model_dump(),
                "shield": (m.shield.model_dump(exclude_none=True) if m.shield else {}),
                "costs": m.costs,
                "variant": cfg.variant,
            }
        )
        self._version = m.version
        self._predicts_value = pol.discrete and m.output == "q_values"  # one check per batch, nothing else
        if self._predicts_value:
            self.metrics.init_value(cfg.variant)
        if self._envelope_on:
            self.metrics.init_envelope(envelope.proposal_labels(pol))
        if cfg.groups is not None:
            self._group_metrics = group_metrics.GroupMetrics(
                cfg.groups, variant=cfg.variant, actions=actions if pol.discrete else None, costs=m.costs
            )
            self.metrics.registry.register(self._group_metrics)
        self._ids.serve(cfg.variant, m.version)
        self._zeros = np.zeros(cfg.max_batch, dtype=np.int64)
        if self.log is not None:
            self.log.start(self.loop, policy_version=m.version, variant=cfg.variant)

    def _setup_envelope(self, pol: policy_mod.Policy) -> None:
        """The envelope must fit the served policy's actions (and the fallback its observations): else no start."""
        spec = envelope.parse_spec(self.config.envelope)
        self.shield.envelope = envelope.Envelope(spec, pol, self._envelope_fallback)
        self._envelope_on = True

    async def shutdown(self) -> None:
        """Stop accepting, answer what was read, close the decision log. Idempotent; never hangs.

        Bounded by ``shutdown_timeout_s`` + ``log_flush_timeout_s``; ``wait_stopped`` returns even
        if closing the log fails (what it could not write is counted in :attr:`unwritten`).
        """
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self.ready = False
        try:
            await self._drain_connections()
            if self.drift is not None:
                self.drift.stop()
            await self._close_log()
        finally:
            if hasattr(self, "_sweeper"):
                self._sweeper.cancel()
            if self._shared_metrics is not None:  # the final counts, for the other workers' scrapes
                self._shared_metrics.close()
            self._stopped.set()

    async def _drain_connections(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.drain()
        deadline = time.monotonic() + self.config.shutdown_timeout_s
        batcher = getattr(self, "batcher", None)  # absent if start() never ran
        while (self.connections or (batcher and batcher.pending)) and time.monotonic() < deadline:
            if batcher and batcher.pending:
                batcher.flush()
            await asyncio.sleep(0.005)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()

    async def _close_log(self) -> None:
        if self.log is not None:
            await self.log.close()

    # ------------------------------------------------------------------ routing

    def protocol_error(self, status: int) -> None:
        if self.metrics is not None:
            self.metrics.error(_ERR_REASON.get(status, "bad_request"))

    def _fail(self, conn: protocol.HttpProtocol, seq: int, status: int, reason: str, message: str, extra=b"") -> None:
        if self.metrics is not None:
            self.metrics.error(reason)
        conn.respond(seq, status, _error(message), extra=extra)

    def handle(self, conn: protocol.HttpProtocol, seq: int, method: bytes, path: bytes, body: bytes, t0: float) -> None:
        try:
            if path == b"/v1/act":
                if method != b"POST":
                    return self._not_allowed(conn, seq, b"POST")
                return self._act(conn, seq, body, t0)
            if path == b"/v1/reward":
                if method != b"POST":
                    return self._not_allowed(conn, seq, b"POST")
                return self._reward(conn, seq, body)
            if path in _GET_ROUTES:
                if method != b"GET":
                    return self._not_allowed(conn, seq, b"GET")
                return getattr(self, _GET_ROUTES[path])(conn, seq)
            self._fail(conn, seq, 404, "not_found", f"no route {path.decode('latin-1')!r}; see GET /openapi.json")
        except Exception as exc:  # a bug, not a client error: answer 500, keep serving
            log.exception("internal error on %r", path)
            self._fail(conn, seq, 500, "internal", f"internal error: {type(exc).__name__}")

    def _not_allowed(self, conn: protocol.HttpProtocol, seq: int, allow: bytes) -> None:
        self._fail(
            conn, seq, 405, "method_not_allowed", f"method not allowed; use {allow.decode()}", b"Allow: %s\r\n" % allow
        )

    def _not_ready(self, conn: protocol.HttpProtocol, seq: int) -> None:
        why = "shutting down" if self._stopping else "the model is still loading/warming up"
        self._fail(conn, seq, 503, "not_ready", f"not ready: {why}; retry when GET /readyz answers 200")

    def _healthz(self, conn: protocol.HttpProtocol, seq: int) -> None:
        conn.respond(seq, 200, b'{"status":"ok"}')

    def _readyz(self, conn: protocol.HttpProtocol, seq: int) -> None:
        if self.ready and self.config.on_log_failure == "unready" and self.log is not None and self.log.failing:
            conn.respond(seq, 503, b'{"status":"log_failing"}')
        elif self.ready:
            conn.respond(seq, 200, b'{"status":"ready"}')
        elif self.load_error is not None:
            conn.respond(seq, 503, orjson.dumps({"status": "failed", "error": str(self.load_error)}))
        else:
            conn.respond(seq, 503, b'{"status":"stopping"}' if self._stopping else b'{"status":"loading"}')

    def _model(self, conn: protocol.HttpProtocol, seq: int) -> None:
        if not self._model_body:
            return self._not_ready(conn, seq)
        conn.respond(seq, 200, self._model_body)

    def _render_metrics(self) -> bytes | None:
        return self.metrics.render() if self.metrics is not None else None

    def _metrics(self, conn: protocol.HttpProtocol, seq: int) -> None:
        if self.metrics is None:
            return self._not_ready(conn, seq)
        body = self.metrics.render()
        if self._shared_metrics is not None:  # one worker answers for all of them
            body = self._shared_metrics.scrape(body)
        conn.respond(seq, 200, body, protocol.TEXT.replace(b"text/plain", b"text/plain; version=0.0.4"))

    def _openapi_doc(self, conn: protocol.HttpProtocol, seq: int) -> None:
        conn.respond(seq, 200, self._openapi)

    # ------------------------------------------------------------------ /v1/act

    def _act(self, conn: protocol.HttpProtocol, seq: int, body: bytes, t0: float) -> None:
        if not self.ready:
            return self._not_ready(conn, seq)
        try:
            req = validation.parse_act(body, self.shape, self.n_actions)
            problem = None
            if req.mask is not None:
                problem = self.shield.check_request_mask(req.mask)
            if req.current_action is not None and problem is None:
                problem = self.shield.check_current_action(req.current_action)
            spent = None
            if self._envelope_on and req.context is not None and problem is None:
                spent = req.context.get("envelope_spent")
                if spent is not None:
                    problem = envelope.Envelope.check_spent(spent)
            if problem:
                raise validation.BadRequest(problem)
        except validation.BadRequest as exc:
            return self._fail(conn, seq, exc.status, exc.reason, str(exc))
        rid, reward_id, now = req.request_id, None, time.time()
        group = None if self._groups is None else self._groups.fold(req.context)
        extras = "" if group is None else groups.id_extras(group, None)  # without groups: as cheap as before
        if req.shadow_of is not None:  # the served decision is logged by its own server and the router
            rid = req.shadow_of
        elif rid is None:  # a value-predicting policy signs its id after the forward pass (_sign_predictions)
            rid = "" if self._predicts_value else self._ids.generate(now, extras)
        else:
            reward_id = self._ids.claim(rid, now, extras)
            if reward_id is None:
                return self._fail(
                    conn,
                    seq,
                    409,
                    "duplicate_request_id",
                    f"request_id {rid!r} was already used (or starts with the reserved 'r1.'); "
                    "send a unique id or none",
                )
        self.batcher.submit(
            _Pending(
                conn,
                seq,
                t0,
                req.observation,
                rid,
                req.context_json,
                req.mask,
                req.entity,
                reward_id,
                req.current_action,
                req.shadow_of is not None,
                now,
                spent,
                group,
            )
        )

    def _run_batch(self, items: list[_Pending]) -> None:
        if self.shield.remembers_entities:
            rounds = batching.rounds_by_key([it.entity for it in items])
            if rounds is not None:  # one entity twice: each decision must see the one before (batching.py)
                for rows in rounds:
                    self._run_round([items[i] for i in rows])
                return
        self._run_round(items)

    def _run_round(self, items: list[_Pending]) -> None:
        pol = self.policy
        try:
            obs = np.array([it.obs for it in items], dtype=np.float32)
            started = np.fromiter([it.t0 for it in items], dtype=np.float64, count=len(items))
            raw = pol.forward(obs)
            waited = None if self.shield.latency_budget_s is None else time.perf_counter() - started
            res = self.shield.run(
                raw,
                self.rng,
                masks=[it.mask for it in items],
                entities=[it.entity for it in items],
                waited_s=waited,
                current=[it.current for it in items],
                **({"obs": obs, "spent": [it.spent for it in items]} if self._envelope_on else {}),
            )
            q, predicted = self._sign_predictions(items, raw, res.decision.actions) if self._predicts_value else _NO_Q
        except Exception as exc:
            log.exception("batch of %d failed", len(items))
            for it in items:
                self._fail(it.conn, it.seq, 500, "internal", f"internal error: {type(exc).__name__}")
            return
        d = res.decision
        reasons = res.reasons
        latency_s = time.perf_counter() - started
        failed = self._log_batch(items, obs, d, reasons, latency_s, q, res.proposed)
        actions = d.actions.tolist()
        props = d.propensities.tolist()
        version, variant, dumps = self._version, self.config.variant, orjson.dumps
        replies: list[server_log.Reply] = []
        for i, it in enumerate(items):
            if i in failed:
                self._fail(it.conn, it.seq, 500, "not_logged", "internal error: the decision could not be logged")
                continue
            r = reasons[i]
            answer = {
                "request_id": it.request_id,
                "action": actions[i],
                "propensity": props[i],
                "policy_version": version,
                "variant": variant,
                "shield": {"intervened": bool(r), "reasons": r},
            }
            if it.reward_id is not None:
                answer["reward_id"] = it.reward_id
            if predicted is not None:
                answer["predicted_value"] = predicted[i]
            body = dumps(answer)
            replies.append((it.conn, it.seq, 200, body))
        self._reply(replies)
        latency = time.perf_counter() - started
        self.metrics.record_batch(d.actions if pol.discrete else self._zeros[: len(items)], latency, res.counts)
        if res.proposals:
            self.metrics.record_proposals(res.proposals)
        if self._group_metrics is not None:
            self._group_metrics.record_batch([it.group for it in items], d.actions if pol.discrete else None)
        if self.drift is not None:
            self.drift.add(obs)

    def _sign_predictions(
        self, items: list[_Pending], raw: np.ndarray, actions: np.ndarray
    ) -> tuple[np.ndarray, list[float | None]]:
        """Q of each served action (for the log, and for the responses); signed into its id (``v=``, 6 significant
        digits) so any replica's /v1/reward knows the prediction without per-decision state. Non-finite values
        are no prediction: not signed, null in the response and the log. The id's one extras string, with the
        decision's group beside the value, comes from groups.id_extras."""
        q = raw[np.arange(len(items)), actions].astype(np.float64)
        out: list[float | None] = []
        for it, value in zip(items, q.tolist(), strict=True):
            finite = math.isfinite(value)
            out.append(value if finite else None)
            if it.shadow:
                continue
            extras = groups.id_extras(it.group, value if finite else None)
            if it.request_id == "":
                it.request_id = self._ids.generate(it.decided, extras)
            elif it.reward_id is not None and extras:
                it.reward_id = self._ids.rebind(it.request_id, it.decided, extras)
        return q, out

    def _log_batch(
        self, items: list[_Pending], obs, d, reasons, latency_s, q: np.ndarray | None, proposed=None
    ) -> set[int]:
        """Log the batch's decisions, except shadow mirrors (never served: the router logs them as such)."""
        if self.log is None:
            return set()
        if not any(it.shadow for it in items):
            return self.log.log_batch(items, obs, d, reasons, latency_s, self._version, q, proposed)
        failed: set[int] = set()
        for i, it in enumerate(items):  # mixed batches are rare: shadow traffic comes alone in a shadow step
            if not it.shadow:
                one = slice(i, i + 1)
                q_one = None if q is None else q[one]
                p_one = None if proposed is None else proposed[one]
                if self.log.log_batch(
                    items[one], obs[one], _rows(d, one), reasons[one], latency_s[one], self._version, q_one, p_one
                ):
                    failed.add(i)
        return failed

    def _reply(self, replies: list[server_log.Reply]) -> None:
        if self.log is not None:
            self.log.reply(replies)  # durable: once committed
        else:
            for conn, seq, status, body in replies:
                conn.respond(seq, status, body)

    # ------------------------------------------------------------------ /v1/reward

    def _reward(self, conn: protocol.HttpProtocol, seq: int, body: bytes) -> None:
        if not self.ready:
            return self._not_ready(conn, seq)
        try:
            req = validation.parse_reward(body, self.config.limits)
            for name in req.costs or ():
                if not self.metrics.can_record_cost(name):
                    raise validation.BadRequest(
                        f"too many distinct cost names (max {metrics.MAX_COST_NAMES}); declare costs in the manifest"
                    )
        except validation.BadRequest as exc:
            return self._fail(conn, seq, exc.status, exc.reason, str(exc))
        now = time.time()
        verdict = self._ids.reward(req.request_id, req.event_id, now)
        if verdict.check is not request_ids.RewardCheck.ACCEPTED:
            status, reason, what = _REWARD_REFUSALS[verdict.check]
            return self._fail(conn, seq, status, reason, f"{what} {req.request_id[:80]!r}: {verdict.message}")
        found = verdict.attribution
        self.metrics.record_reward(req.reward, req.costs, variant=found.variant)
        if found.extras:  # the decision's predicted value (critic-error metrics); none for most policies
            predicted = found.extra("v")
            if predicted is not None:
                self.metrics.record_value(predicted, req.reward, variant=found.variant)
            group = found.extra("g")
            if group is not None and self._group_metrics is not None:
                self._group_metrics.record_reward(group, req.reward, req.costs, found.variant)
        if self.log is not None:
            self.log.log_reward(
                {
                    "request_id": found.request_id,
                    "time": now,
                    "reward": req.reward,
                    "costs": req.costs,
                    "variant": found.variant,
                    "policy_version": found.policy_version,
                    "decision_time": found.decision_time,
                    "received_by": self.config.variant,
                    "event_id": req.event_id,
                    "terminal": req.terminal,
                }
            )
        self._reply([(conn, seq, 202, b'{"status":"accepted"}')])


def _rows(d: policy_mod.BatchDecision, rows: slice) -> policy_mod.BatchDecision:
    """The decisions of ``rows`` only (for logging part of a batch)."""
    return dataclasses.replace(
        d,
        **{
            f.name: getattr(d, f.name)[rows]
            for f in dataclasses.fields(d)
            if isinstance(getattr(d, f.name), np.ndarray)
        },
    )


_NO_Q: tuple[None, None] = (None, None)  # a policy without a value: nothing to sign, respond or log

_REWARD_REFUSALS = {
    request_ids.RewardCheck.UNKNOWN: (404, "unknown_request_id", "unknown request_id"),
    request_ids.RewardCheck.MALFORMED: (400, "bad_request", "malformed request_id"),
    request_ids.RewardCheck.DUPLICATE: (409, "duplicate_request_id", "request_id"),
    request_ids.RewardCheck.EXPIRED: (410, "expired_request_id", "expired request_id"),
}


_GET_ROUTES = {
    b"/healthz": "_healthz",
    b"/readyz": "_readyz",
    b"/v1/model": "_model",
    b"/metrics": "_metrics",
    b"/openapi.json": "_openapi_doc",
}
