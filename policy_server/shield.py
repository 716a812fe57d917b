"""Safety shield: constrain or replace the policy's action, vectorised over a micro-batch.

Why here and not in the model: a shield is a promise the *server* makes regardless of the
policy it serves (an unproven candidate included), so it lives beside the exploration rule and
changes the propensity that gets logged. Every intervention is reported with its reason; the
reported propensity is always the probability of the served action under the shielded rule:

``action_mask`` (discrete; artifact mask AND per-request ``context.action_mask``)
    the exploration rule is restricted to the allowed actions (greedy: best allowed action;
    epsilon: spread over allowed actions; softmax: renormalised). Reason ``action_mask`` when
    the action the unmasked rule would have drawn (same random number) is forbidden.
``bounds`` (continuous; action space intersected with shield ``low``/``high``)
    the action is clipped; a clipped dimension's propensity factor is the Gaussian tail mass
    beyond the bound (see policy.py). Reason ``bounds`` when a dimension was clipped.
``max_delta`` (per ``context.entity``, between its consecutive decisions)
    discrete: actions with ``|a - last| > max_delta`` are masked (ordinal actions);
    continuous: the bounds shrink to ``[last - d, last + d]``. If that leaves nothing allowed
    (e.g. the mask forbids every nearby action) the delta limit is skipped for that row: masks
    and bounds are hard constraints, the delta limit is a smoothness preference. ``last`` is
    ``context.current_action`` when the caller sends it: the entity's action as the caller's
    world has it now (the price on the shelf), which holds whatever replica, variant or restart
    serves the entity, so this is the guarantee with several replicas (docs/policy-server.md,
    "Per-entity guarantees"). Without it, the last action this process served the entity,
    from a bounded LRU (``entity_capacity``, default 100,000; one entity twice in a micro-batch is
    decided in two rounds, server.py): exact on one replica, and kept
    useful on several by the router's per-entity endpoint stickiness, but lost when the entity
    moves to another process (a pod dies, scales, or a rollout moves it between variants).
``non_finite_output`` / ``latency_budget``
    NaN/inf model output, or a request older than ``latency_budget_ms`` when its batch finishes,
    gets the fallback action with propensity 1.0 (a deterministic rule). The fallback is
    ``fallback_action`` if configured and allowed by the row's mask / within the static bounds,
    else the lowest allowed index (discrete) or 0 clipped into the bounds (continuous). The
    fallback ignores ``max_delta`` on purpose: it is the known-safe action.
``envelope`` (optional, envelope.py; ``--envelope``)
    an action outside the pre-approved envelope (allow-list, bounds, per-entity budget) is
    replaced by the fallback policy's action (``--envelope-fallback-model``), else by the rule
    above restricted to the envelope; the proposal is kept in :attr:`ShieldResult.proposed`
    for the decision log and the metrics, and the propensity stays exact (see envelope.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from policy_server import artifact, envelope, policy

__all__ = ["REASONS", "Shield", "ShieldResult"]

REASONS = ("action_mask", "bounds", "max_delta", "non_finite_output", "latency_budget", "envelope")


@dataclass
class ShieldResult:
    decision: policy.BatchDecision
    reasons: list[tuple[str, ...]]  # per row; rows the shield left alone share the empty tuple (no list each)
    counts: dict[str, int]  # per reason that occurred in this batch, for metrics
    proposed: np.ndarray | None = None  # envelope: float64 (B, D) proposed actions of replaced rows, NaN elsewhere
    proposals: dict[str, int] | None = None  # envelope: replaced rows per ``proposed`` metric label


class Shield:
    """Applies the shield around :meth:`policy.Policy.choose` for one batch at a time."""

    def __init__(
        self,
        pol: policy.Policy,
        config: artifact.ShieldConfig | None = None,
        *,
        latency_budget_ms: float | None = None,
        entity_capacity: int = 100_000,
    ) -> None:
        cfg = config if config is not None else pol.manifest.shield or artifact.ShieldConfig()
        self.policy = pol
        self.config = cfg
        self.latency_budget_s = (latency_budget_ms or cfg.latency_budget_ms or 0) / 1000 or None
        self.entity_capacity = entity_capacity
        self._last: OrderedDict[str, object] = OrderedDict()
        self.max_delta = cfg.max_delta
        self.envelope: envelope.Envelope | None = None  # set by the server with --envelope
        k = pol.n_outputs
        if pol.discrete:
            self.static_mask = None if cfg.action_mask is None else np.asarray(cfg.action_mask, dtype=bool)
            if self.static_mask is not None and (self.static_mask.shape != (k,) or not self.static_mask.any()):
                raise ValueError(f"shield action_mask must have {k} entries and allow at least one action")
            self._static_rows: dict[int, np.ndarray] = {}  # batch size -> read-only tiled static mask
            fb = cfg.fallback_action
            self.fallback = int(fb) if isinstance(fb, int) else None
        else:
            lo = pol.low if cfg.low is None else np.maximum(pol.low, np.asarray(cfg.low, dtype=np.float64))
            hi = pol.high if cfg.high is None else np.minimum(pol.high, np.asarray(cfg.high, dtype=np.float64))
            if np.any(lo > hi):
                raise ValueError("shield low/high do not overlap the action space; fix the manifest's shield bounds")
            self.low, self.high = lo, hi
            fb = np.zeros(k) if cfg.fallback_action is None else np.asarray(cfg.fallback_action, dtype=np.float64)
            self.fallback_vec = np.clip(fb, lo, hi)

    @property
    def remembers_entities(self) -> bool:
        """Whether a decision for an entity depends on the entity's earlier ones (max-delta, envelope budget)."""
        return self.max_delta is not None or (self.envelope is not None and self.envelope.budget is not None)

    # ------------------------------------------------------------------ request-level checks

    def check_request_mask(self, mask: np.ndarray) -> str | None:
        """Error message if a per-request mask leaves no action, else None."""
        combined = mask if self.static_mask is None else mask & self.static_mask
        if not combined.any():
            return "context.action_mask together with the artifact's mask allows no action; allow at least one"
        return None

    def check_current_action(self, value: int | list[float]) -> str | None:
        """Error message if ``context.current_action`` does not fit this policy's actions, else None."""
        if self.policy.discrete or isinstance(value, int):
            return None  # the index range is checked by validation.parse_act
        if len(value) != self.policy.n_outputs:
            dims = self.policy.n_outputs
            return f"'context.current_action' has {len(value)} numbers; this policy's actions have {dims}"
        return None

    # ------------------------------------------------------------------ the batch

    def run(
        self,
        raw: np.ndarray,
        rng: np.random.Generator,
        *,
        masks: Sequence[np.ndarray | None],
        entities: Sequence[str | None],
        waited_s: np.ndarray | None = None,
        current: Sequence[object | None] | None = None,
        obs: np.ndarray | None = None,
        spent: Sequence[float | None] | None = None,
    ) -> ShieldResult:
        """Choose shielded actions for model outputs ``raw`` (B, K).

        ``masks``/``entities``: per-row request mask (or None; each must have passed
        :meth:`check_request_mask`) and entity key (or None);
        ``waited_s``: per-row seconds since the request arrived, for the latency budget;
        ``current``: per-row ``context.current_action`` (or None; each must have passed
        :meth:`check_current_action`), which takes precedence over this process's memory;
        ``obs``/``spent``: the observations (the envelope's fallback policy runs on them) and per-row
        ``context.envelope_spent`` (or None), used only with an envelope.
        """
        b = raw.shape[0]
        found: dict[int, list[str]] = {}  # row -> reasons, for the few rows the shield changed
        has_entity = any(e is not None for e in entities)
        last = None
        has_current = current is not None and any(c is not None for c in current)
        if self.max_delta is not None and (has_entity or has_current):
            remembered = self._last
            last = [
                c if c is not None else (remembered.get(e) if e is not None else None)
                for c, e in zip(current or [None] * b, entities, strict=True)
            ]
        if self.policy.discrete:
            decision, base = self._discrete(raw, rng, masks, last, found)
        else:
            decision, base = self._continuous(raw, rng, last, found)
        applied = None
        if self.envelope is not None:
            rule = self._fallback_index if self.policy.discrete else self.fallback_vec
            applied = self.envelope.apply(decision, base, obs, rng, entities, spent, rule)
            if applied is not None:
                for i in applied.flagged.tolist():
                    found.setdefault(i, []).append("envelope")
                if applied.allowed is not None:
                    base = applied.allowed  # the shield's own fallback stays inside the envelope
        all_finite = bool(decision.finite.all())
        late = None
        if self.latency_budget_s is not None and waited_s is not None and waited_s.max() > self.latency_budget_s:
            late = waited_s > self.latency_budget_s
        if late is not None or not all_finite:
            late = np.zeros(b, dtype=bool) if late is None else late
            self._fallback(decision, base, ~decision.finite, late, found)
        if has_entity:
            self._remember(decision.actions, entities)
            if self.envelope is not None:
                self.envelope.remember(decision.actions, entities)
        reasons: list[tuple[str, ...]] = [()] * b
        counts: dict[str, int] = {}
        for i, row in found.items():
            reasons[i] = tuple(row)
            for reason in row:
                counts[reason] = counts.get(reason, 0) + 1
        if applied is not None:
            return ShieldResult(decision, reasons, counts, applied.proposed, applied.labels)
        return ShieldResult(decision=decision, reasons=reasons, counts=counts)

    def _discrete(self, raw, rng, masks, last, found):
        b, k = raw.shape
        base = None
        if any(m is not None for m in masks):
            base = np.ones((b, k), dtype=bool) if self.static_mask is None else np.tile(self.static_mask, (b, 1))
            for i, m in enumerate(masks):
                if m is not None:
                    base[i] &= m
        elif self.static_mask is not None:
            base = self._static_rows.get(b)
            if base is None:
                base = self._static_rows[b] = np.tile(self.static_mask, (b, 1))
                base.flags.writeable = False
        full = base
        if last is not None and any(v is not None for v in last):
            idx = np.arange(k)
            full = np.ones((b, k), dtype=bool) if base is None else base.copy()
            for i, v in enumerate(last):
                if v is None:
                    continue
                row = full[i] & (np.abs(idx - int(v)) <= self.max_delta)
                if row.any():
                    full[i] = row
        # every row allows an action: the static mask is checked above, request masks by
        # check_request_mask, and a delta limit that would forbid everything is skipped
        decision = self.policy.choose(raw, rng, full, masks_checked=True)
        if full is not None:
            for i in np.nonzero(decision.actions != decision.unconstrained_actions)[0]:
                a0 = decision.unconstrained_actions[i]
                reason = "action_mask" if base is not None and not base[i, a0] else "max_delta"
                found.setdefault(i, []).append(reason)
        return decision, base

    def _continuous(self, raw, rng, last, found):
        b, d = raw.shape
        lo = np.broadcast_to(self.low, (b, d))
        hi = np.broadcast_to(self.high, (b, d))
        row_lo, row_hi = lo, hi
        if last is not None and any(v is not None for v in last):
            row_lo, row_hi = lo.copy(), hi.copy()
            delta = np.broadcast_to(np.asarray(self.max_delta, dtype=np.float64), (d,))
            for i, v in enumerate(last):
                if v is None:
                    continue
                nlo = np.maximum(lo[i], np.asarray(v) - delta)
                nhi = np.minimum(hi[i], np.asarray(v) + delta)
                if np.all(nlo <= nhi):
                    row_lo[i], row_hi[i] = nlo, nhi
        decision = self.policy.choose(raw, rng, low=row_lo, high=row_hi)
        pre = decision.unconstrained_actions
        clipped = decision.actions != pre
        if clipped.any():
            outside = (pre < lo) | (pre > hi)
            by_bounds = (clipped & outside).any(axis=1)
            by_delta = (clipped & ~outside).any(axis=1)
            for i in np.nonzero(by_bounds | by_delta)[0]:
                for reason, hit in (("bounds", by_bounds[i]), ("max_delta", by_delta[i])):
                    if hit:
                        found.setdefault(i, []).append(reason)
        return decision, (row_lo, row_hi)

    def _fallback(self, decision, base, bad, late, found):
        for i in np.nonzero(bad | late)[0]:
            reason = "non_finite_output" if bad[i] else "latency_budget"
            found.setdefault(i, []).append(reason)
            decision.propensities[i] = 1.0
            if self.policy.discrete:
                a = self._fallback_index(base[i] if base is not None else None)
                decision.actions[i] = a
                decision.probabilities[i] = 0.0
                decision.probabilities[i, a] = 1.0
            else:
                decision.actions[i] = self.fallback_vec

    def _fallback_index(self, allowed: np.ndarray | None) -> int:
        """``fallback_action`` if ``allowed`` (a row's mask) allows it, else the lowest allowed index."""
        a = self.fallback
        if a is None or (allowed is not None and not allowed[a]):
            a = int(np.argmax(allowed)) if allowed is not None else 0
        return a

    def _remember(self, actions: np.ndarray, entities: Sequence[str | None]) -> None:
        store = self._last
        for i, e in enumerate(entities):
            if e is None:
                continue
            store[e] = actions[i].copy() if actions.ndim > 1 else int(actions[i])
            store.move_to_end(e)
        while len(store) > self.entity_capacity:
            store.popitem(last=False)
