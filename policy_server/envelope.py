"""The action envelope: what the server may serve without a person, and what replaces the rest.

Why in the server: decisions cannot wait for a human, so the agent *proposes*, the server serves
only actions inside a pre-approved envelope and replaces any other at once by the fallback
policy's action (the rollout's known-safe rule, loaded in-process), recording the proposal for
review (decision log ``proposed_action``, ``policy_envelope_proposals_total``). A person widens
the envelope through the PolicyRollout spec (GitOps), never through a request.

The envelope (``--envelope`` JSON, from ``spec.envelope``):

``actions`` (discrete): the allowed action indices.
``low`` / ``high`` (continuous): per-dimension bounds (``null`` = unbounded on that side).
``budget``: ``{"limit": L, "window": "24h", "weights": [...] | "abs"}``: an entity's cumulative
    weighted actions within the window may not exceed ``L``; an action that would is outside.
    The spend so far is ``context.envelope_spent`` when the caller sends it (exact with any
    number of replicas: the caller's world counts it), else what this process served the
    entity within the window (a bounded LRU: exact on one replica only).

Propensities stay exact (discrete). With ``E`` the row's envelope, ``π_c`` the candidate's
(shielded) distribution and ``q`` what the replacement branch serves (the fallback policy's
``π_f`` inside ``E``, its mass outside ``E`` on the shield's fallback action ``r``), the served
action ``a`` has probability ``π_c(a)·1[a∈E] + (1 - Σ_{a'∈E} π_c(a'))·q(a)``. So the fallback runs
on every row whose candidate puts mass outside ``E`` (for a greedy candidate: only the replaced
rows). Continuous, following the ``bounds`` clip convention: a replaced action is an atom whose
mass is the candidate's probability of leaving the box (Gaussian tails, like a clipped
dimension) times the fallback's own propensity; a kept action keeps the candidate's density.
Exact for a deterministic fallback; a budget on continuous actions needs a greedy candidate
(the mass of an L1 ball under a Gaussian has no closed form), refused otherwise at start-up.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import orjson
import torch

from policy_server import policy
from policy_server.errors import PolicyServerError

__all__ = ["Budget", "Envelope", "EnvelopeError", "EnvelopeSpec", "parse_spec", "parse_window"]

_WINDOW = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)?$")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
MAX_ENTITY_SPENDS = 1_000  # per entity: actions remembered within the window (the oldest are folded together)


class EnvelopeError(PolicyServerError, ValueError):
    """An envelope that cannot be applied; the message says what to fix."""


@dataclass(frozen=True)
class Budget:
    limit: float
    window_s: float
    weights: tuple[float, ...] | None  # per discrete action; None: the sum of |a| (continuous, "abs")


@dataclass(frozen=True)
class EnvelopeSpec:
    actions: tuple[int, ...] | None = None
    low: tuple[float | None, ...] | None = None
    high: tuple[float | None, ...] | None = None
    budget: Budget | None = None


def parse_window(value: object) -> float:
    """``"24h"``, ``"30m"``, ``"90s"``, ``"7d"`` or a number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    m = _WINDOW.match(str(value).strip())
    if not m or float(m.group(1)) <= 0:
        raise EnvelopeError(f"envelope budget window {value!r} is not a duration; write e.g. '24h', '30m' or '3600s'")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_spec(text: str) -> EnvelopeSpec:
    """The ``--envelope`` JSON; raises :class:`EnvelopeError` with a one-line reason."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise EnvelopeError("--envelope is not JSON; write e.g. '{\"actions\": [0, 1]}'") from None
    if not isinstance(data, dict):
        raise EnvelopeError("--envelope must be a JSON object with actions, low/high and/or budget")
    unknown = set(data) - {"actions", "low", "high", "budget"}
    if unknown:
        raise EnvelopeError(f"--envelope has unknown keys {sorted(unknown)}; use actions, low, high, budget")
    actions = data.get("actions")
    if actions is not None:
        if not isinstance(actions, list) or not actions or not all(type(a) is int and a >= 0 for a in actions):
            raise EnvelopeError("envelope actions must be a non-empty list of action indices (integers >= 0)")
        actions = tuple(sorted(set(actions)))
    bounds = {}
    for side in ("low", "high"):
        v = data.get(side)
        if v is not None:
            ok = isinstance(v, list) and v and all(x is None or _number(x) for x in v)
            if not ok:
                raise EnvelopeError(f"envelope {side} must be a list with one number (or null) per action dimension")
            v = tuple(None if x is None else float(x) for x in v)
        bounds[side] = v
    budget = data.get("budget")
    if budget is not None:
        budget = _budget(budget)
    if actions is None and bounds["low"] is None and bounds["high"] is None and budget is None:
        raise EnvelopeError("the envelope is empty; give actions (discrete), low/high (continuous) and/or budget")
    return EnvelopeSpec(actions, bounds["low"], bounds["high"], budget)


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _budget(data: object) -> Budget:
    if not isinstance(data, dict) or set(data) - {"limit", "window", "weights"}:
        raise EnvelopeError("envelope budget must be {limit: number, window: '24h', weights: [..] or 'abs'}")
    limit = data.get("limit")
    if not _number(limit) or limit < 0:
        raise EnvelopeError("envelope budget limit must be a finite number >= 0")
    weights = data.get("weights", "abs")
    if weights != "abs":
        if not isinstance(weights, list) or not weights or not all(_number(w) and w >= 0 for w in weights):
            raise EnvelopeError("envelope budget weights must be one number >= 0 per discrete action, or 'abs'")
        weights = tuple(float(w) for w in weights)
    else:
        weights = None
    return Budget(float(limit), parse_window(data.get("window", "24h")), weights)


def proposal_labels(pol: policy.Policy) -> list[str]:
    """Every value the ``proposed`` label can take for `pol`: the discrete action, or the bound a continuous
    action crossed (``dim<i>_low``/``dim<i>_high``) or ``budget``; created at zero so rates exist before a
    first proposal."""
    if pol.discrete:
        return [str(i) for i in range(pol.n_outputs)]
    return [f"dim{i}_{side}" for i in range(pol.n_outputs) for side in ("low", "high")] + ["budget"]


@dataclass
class Applied:
    """What the envelope did to a batch: the proposals it replaced (rows with ``flagged``)."""

    flagged: np.ndarray  # row indices replaced
    proposed: np.ndarray  # float64 (B, D): the proposed action of replaced rows, NaN elsewhere (D = 1 discrete)
    labels: dict[str, int]  # proposals per ``proposed`` label, for policy_envelope_proposals_total
    allowed: np.ndarray | None  # discrete: bool (B, K) envelope AND base mask, for the shield's own fallback


class Envelope:
    """One policy's envelope, checked against its action space at start-up (see the module docstring)."""

    def __init__(
        self,
        spec: EnvelopeSpec,
        pol: policy.Policy,
        fallback: policy.Policy | None = None,
        *,
        entity_capacity: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec
        self.policy = pol
        self.fallback = fallback
        self.budget = spec.budget
        self.entity_capacity = entity_capacity
        self.clock = clock
        self._spends: OrderedDict[str, deque[tuple[float, float]]] = OrderedDict()
        k = pol.n_outputs
        if pol.discrete:
            if spec.low is not None or spec.high is not None:
                raise EnvelopeError(
                    "envelope low/high are for continuous actions; this policy's are discrete: use actions"
                )
            self.allowed = np.ones(k, dtype=bool)
            if spec.actions is not None:
                bad = [a for a in spec.actions if a >= k]
                if bad:
                    raise EnvelopeError(
                        f"envelope actions {bad} are not actions of this policy (0..{k - 1}); fix spec.envelope"
                    )
                self.allowed = np.zeros(k, dtype=bool)
                self.allowed[list(spec.actions)] = True
            if self.budget is not None and (self.budget.weights is None or len(self.budget.weights) != k):
                raise EnvelopeError(f"envelope budget weights must list {k} numbers, one per action of this policy")
            self.weights = None if self.budget is None else np.asarray(self.budget.weights, dtype=np.float64)
        else:
            if spec.actions is not None:
                raise EnvelopeError(
                    "envelope actions are for discrete actions; this policy's are continuous: use low/high"
                )
            for side in (spec.low, spec.high):
                if side is not None and len(side) != k:
                    raise EnvelopeError(f"envelope low/high must have {k} entries, one per action dimension")
            self.low = np.array([-np.inf if x is None else x for x in (spec.low or [None] * k)], dtype=np.float64)
            self.high = np.array([np.inf if x is None else x for x in (spec.high or [None] * k)], dtype=np.float64)
            if np.any(np.maximum(self.low, pol.low) > np.minimum(self.high, pol.high)):
                raise EnvelopeError("envelope low/high leave no action inside the action space; fix spec.envelope")
            if self.budget is not None:
                if self.budget.weights is not None:
                    raise EnvelopeError("envelope budget weights of continuous actions must be 'abs' (sum of |a|)")
                if pol.exploration.kind != "greedy":
                    raise EnvelopeError(
                        "an envelope budget on continuous actions needs greedy exploration (exact propensities)"
                    )
        if fallback is not None:
            same = fallback.discrete == pol.discrete and fallback.n_outputs == k and fallback.obs_shape == pol.obs_shape
            if not same:
                raise EnvelopeError(
                    "--envelope-fallback-model does not take this policy's observations or give its actions; "
                    "pass the rollout's fallback artifact"
                )

    # ------------------------------------------------------------------ request and memory

    @staticmethod
    def check_spent(value: object) -> str | None:
        """Error message if ``context.envelope_spent`` is not a finite number >= 0, else None."""
        if not _number(value) or value < 0:
            return "'context.envelope_spent' must be a finite number >= 0 (the entity's spend within the window)"
        return None

    def _spent(self, entities: Sequence[str | None], spent: Sequence[float | None] | None, now: float) -> np.ndarray:
        """Per row: the entity's spend so far (NaN: no budget for this row, no entity and none sent)."""
        out = np.full(len(entities), np.nan)
        horizon = now - self.budget.window_s
        for i, e in enumerate(entities):
            s = spent[i] if spent is not None else None
            if s is not None:
                out[i] = s
            elif e is not None:
                q = self._spends.get(e)
                while q and q[0][0] < horizon:
                    q.popleft()
                out[i] = sum(w for _, w in q) if q else 0.0
        return out

    def remember(self, actions: np.ndarray, entities: Sequence[str | None]) -> None:
        """Add the served actions' weights to their entities' spend (bounded LRU)."""
        if self.budget is None:
            return
        now = self.clock()
        w = self._weights(actions)
        store = self._spends
        for i, e in enumerate(entities):
            if e is None or w[i] == 0:
                continue
            q = store.get(e)
            if q is None:
                q = store[e] = deque()
            if len(q) >= MAX_ENTITY_SPENDS:  # fold the two oldest: the window ends later, never earlier
                _, w0 = q.popleft()
                t1, w1 = q.popleft()
                q.appendleft((t1, w0 + w1))
            q.append((now, float(w[i])))
            store.move_to_end(e)
        while len(store) > self.entity_capacity:
            store.popitem(last=False)

    def _weights(self, actions: np.ndarray) -> np.ndarray:
        if self.policy.discrete:
            return self.weights[actions]
        return np.abs(actions.astype(np.float64)).sum(axis=1)

    # ------------------------------------------------------------------ the batch

    def apply(
        self,
        d: policy.BatchDecision,
        limits: object,
        obs: np.ndarray | None,
        rng: np.random.Generator,
        entities: Sequence[str | None],
        spent: Sequence[float | None] | None,
        shield_fallback: Callable[[np.ndarray], int] | np.ndarray,
    ) -> Applied | None:
        """Replace out-of-envelope actions of ``d`` in place; None when every row was inside.

        ``limits``: discrete, the base mask (B, K) or None; continuous, the per-row bounds (lo, hi).
        ``shield_fallback``: discrete, the shield's rule (allowed row -> action); continuous, its vector.
        """
        now = self.clock()
        s = self._spent(entities, spent, now) if self.budget is not None else None
        if self.policy.discrete:
            return self._discrete(d, limits, obs, rng, s, shield_fallback)
        return self._continuous(d, limits, obs, rng, s, shield_fallback)

    def _discrete(self, d, base, obs, rng, s, shield_fallback) -> Applied | None:
        p = d.probabilities
        b, k = p.shape
        env = np.broadcast_to(self.allowed, (b, k))
        if s is not None and not np.isnan(s).all():
            fits = ~(s[:, None] + self.weights[None, :] > self.budget.limit)  # NaN spend: no budget
            env = env & fits
        rows = np.arange(b)
        outside = (p * ~env).sum(axis=1)  # exactly 0 where the envelope allows every action with mass
        need = (outside > 0.0) & d.finite
        flagged = need & ~env[rows, d.actions]
        if not need.any():
            return None
        idx = np.nonzero(need)[0]
        allowed = env if base is None else env & base
        allowed = np.where(allowed.any(axis=1, keepdims=True), allowed, base if base is not None else True)
        last = np.array([shield_fallback(allowed[i]) for i in idx], dtype=np.int64)
        e = env[idx]
        q = np.zeros((len(idx), k))
        if self.fallback is not None and obs is not None:
            sub_mask = None if base is None else base[idx]
            fd = self.fallback.choose(self.fallback.forward(obs[idx]), rng, sub_mask, masks_checked=True)
            ok = fd.finite[:, None]
            pf = np.where(ok, fd.probabilities, 0.0) * e
            q += pf
            fb_action = np.where(fd.finite & e[np.arange(len(idx)), fd.actions], fd.actions, last)
        else:
            fb_action = last
        q[np.arange(len(idx)), last] += np.clip(1.0 - q.sum(axis=1), 0.0, 1.0)
        out = np.clip(outside[idx], 0.0, 1.0)
        served_dist = p[idx] * e + out[:, None] * q
        proposed = np.full((b, 1), np.nan)
        labels: dict[str, int] = {}
        sub_flag = flagged[idx]
        d.actions = d.actions.copy()  # without a mask it is the same array as unconstrained_actions
        for j in np.nonzero(sub_flag)[0]:
            i = idx[j]
            a = int(d.actions[i])
            proposed[i, 0] = a
            labels[str(a)] = labels.get(str(a), 0) + 1
            d.actions[i] = fb_action[j]
        d.probabilities[idx] = served_dist
        d.propensities[idx] = served_dist[np.arange(len(idx)), d.actions[idx]]
        return Applied(np.nonzero(flagged)[0], proposed, labels, allowed)

    def _continuous(self, d, limits, obs, rng, s, shield_fallback) -> Applied | None:
        a = d.actions.astype(np.float64)
        below, above = a < self.low, a > self.high
        over = np.zeros(len(a), dtype=bool)
        if s is not None:
            with np.errstate(invalid="ignore"):
                over = s + self._weights(d.actions) > self.budget.limit  # NaN spend: False
        flagged = (below.any(axis=1) | above.any(axis=1) | over) & d.finite
        if not flagged.any():
            return None
        idx = np.nonzero(flagged)[0]
        lo, hi = limits
        out = 1.0 - self._box_mass(self.policy, d.raw[idx], lo[idx], hi[idx])  # greedy: 1.0 (left the envelope)
        safe = np.clip(shield_fallback, np.maximum(self.low, self.policy.low), np.minimum(self.high, self.policy.high))
        served = np.broadcast_to(safe, (len(idx), a.shape[1])).astype(np.float32).copy()
        prop = out.copy()
        if self.fallback is not None and obs is not None:
            fd = self.fallback.choose(self.fallback.forward(obs[idx]), rng, low=lo[idx], high=hi[idx])
            fa = fd.actions.astype(np.float64)
            ok = fd.finite & ((fa >= self.low) & (fa <= self.high)).all(axis=1)
            if s is not None:
                with np.errstate(invalid="ignore"):
                    ok &= ~(s[idx] + np.abs(fa).sum(axis=1) > self.budget.limit)
            served[ok] = fd.actions[ok]
            f_in = self._box_mass(self.fallback, fd.raw, lo[idx], hi[idx])
            prop = np.where(ok, out * fd.propensities, out * (1.0 - f_in))
        proposed = np.full(a.shape, np.nan)
        proposed[idx] = a[idx]
        labels: dict[str, int] = {}
        for i in idx:
            if below[i].any():
                label = f"dim{int(np.argmax(below[i]))}_low"
            elif above[i].any():
                label = f"dim{int(np.argmax(above[i]))}_high"
            else:
                label = "budget"
            labels[label] = labels.get(label, 0) + 1
        d.actions[idx] = served
        d.propensities[idx] = prop
        return Applied(idx, proposed, labels, None)

    def _box_mass(self, pol: policy.Policy, raw: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Probability that ``pol``'s clipped action lies in the envelope box (per row).

        A dimension whose envelope side is at or beyond the clip bound cannot leave on that side
        (the clip puts the action on the bound): only the Gaussian tail beyond an inner envelope
        side counts. Greedy: 1.0 or 0.0.
        """
        mean = raw.astype(np.float64)
        if pol.exploration.kind == "greedy":
            clipped = np.clip(mean, lo, hi)
            return ((clipped >= self.low) & (clipped <= self.high)).all(axis=1).astype(np.float64)
        std = pol.std
        upper = np.where(self.high < hi, (self.high - mean) / std, np.inf)
        lower = np.where(self.low > lo, (self.low - mean) / std, -np.inf)
        cdf = torch.special.ndtr
        mass = cdf(torch.from_numpy(upper)).numpy() - cdf(torch.from_numpy(lower)).numpy()
        return np.clip(mass, 0.0, 1.0).prod(axis=1)
