"""Turn model outputs into served actions with exact propensities.

Pure torch/numpy, no HTTP: both the policy server and the TorchServe handler call
:meth:`Policy.decide`, so for the same observations, masks and ``numpy.random.Generator`` state
they serve the same actions with the same propensities.

Why explicit probabilities: off-policy evaluation needs the probability with which the
behaviour policy chose the *served* action. Every discrete rule is written as a probability
vector ``p`` over actions and the action is drawn by inverse-CDF sampling with one uniform
number per row; the propensity is ``p[action]`` exactly.

- greedy: ``p`` is one-hot on the argmax (ties: lowest index), propensity 1.0.
- epsilon_greedy: ``1 - eps + eps/K`` for the greedy action, ``eps/K`` for the others
  (``K`` = number of allowed actions).
- softmax: ``p = softmax(output / temperature)``.
- masks (False = forbidden) restrict every rule to the allowed actions: greedy takes the best
  allowed action, epsilon spreads over the allowed ones, softmax is renormalised over them.

Continuous actions: ``greedy`` serves the mean (propensity 1.0, deterministic). ``gaussian``
samples ``mean + exp(log_std) * z`` and reports the density of the served action. The action
is clipped to per-row bounds (the action space, intersected with shield bounds); a clipped
dimension sits on a point mass, so its factor is the Gaussian tail probability beyond the bound
instead of a density. The propensity is the product over dimensions of these factors: a
density with respect to Lebesgue measure plus atoms at the bounds, which is what importance
weights for clipped Gaussians need.

The same uniform numbers / normal draws are reused to compute the action the policy would have
served without masks and bounds (``unconstrained_actions``); the shield compares both to tell
whether a constraint changed the action.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from policy_server import artifact

__all__ = ["BatchDecision", "Policy", "discrete_probabilities", "sample_discrete"]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class BatchDecision:
    """Decisions for one batch (row i answers observation i)."""

    actions: np.ndarray  # int64 (B,) discrete | float32 (B, D) continuous
    propensities: np.ndarray  # float64 (B,)
    probabilities: np.ndarray | None  # float64 (B, K) discrete; None for continuous
    raw: np.ndarray  # float32 (B, K) model output
    unconstrained_actions: np.ndarray  # the coupled draw without masks/bounds
    finite: np.ndarray  # bool (B,): False where the model output had NaN/inf


def discrete_probabilities(raw: np.ndarray, exploration: artifact.Exploration, mask: np.ndarray | None) -> np.ndarray:
    """Probability of each action (B, K) under ``exploration`` restricted to ``mask`` (True = allowed)."""
    values = raw.astype(np.float64, copy=False)
    b, k = values.shape
    if exploration.kind == "softmax":
        z = values / exploration.temperature if exploration.temperature != 1.0 else values
        if mask is not None:
            z = np.where(mask, z, -np.inf)
        z = z - z.max(axis=1, keepdims=True)  # a new array: safe to work in place below
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z
    best = np.argmax(values if mask is None else np.where(mask, values, -np.inf), axis=1)  # lowest index on ties
    rows = np.arange(b)
    if exploration.kind == "greedy":
        p = np.zeros((b, k))
        p[rows, best] = 1.0
        return p
    if exploration.kind == "epsilon_greedy":
        eps = exploration.epsilon
        p = np.full((b, k), eps / k) if mask is None else np.where(mask, eps / mask.sum(axis=1, keepdims=True), 0.0)
        p[rows, best] += 1.0 - eps
        return p
    raise ValueError(f"exploration {exploration.kind!r} is not defined for discrete actions")


def sample_discrete(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw: the first action whose cumulative probability exceeds ``u * total``."""
    return _sample(p, u)[0]


# Renormalising the unmasked softmax over the allowed actions equals the masked softmax as long as
# the allowed mass is a normal float; below this the masked softmax is recomputed from the logits.
_MIN_ALLOWED_MASS = 1e-200


def _restrict(free: np.ndarray, values: np.ndarray, exploration: artifact.Exploration, mask: np.ndarray) -> np.ndarray:
    """The exploration rule over the allowed actions, reusing the unmasked distribution ``free`` where exact."""
    if exploration.kind == "softmax":
        p = free * mask
        total = p.sum(axis=1, keepdims=True)
        if total.min() > _MIN_ALLOWED_MASS:
            p /= total
            return p
    return discrete_probabilities(values, exploration, mask)


def _sample(p: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-CDF draw plus the drawn actions' probabilities (few numpy calls: this is the hot path)."""
    cdf = np.cumsum(p, axis=1)
    a = (cdf <= u[:, None] * cdf[:, -1:]).sum(axis=1)
    rows = np.arange(p.shape[0])
    prop = p[rows, a]
    # u < 1 keeps a <= K-1; only float round-off at the very top can land on a trailing zero-probability
    # action: move those rows to the last action with positive probability
    if not prop.min() > 0:
        last = p.shape[1] - 1 - np.argmax((p > 0)[:, ::-1], axis=1)
        a = np.minimum(a, last)
        prop = p[rows, a]
    return a, prop


class Policy:
    """A loaded model plus its exploration rule. See the module docstring for the maths."""

    def __init__(
        self,
        manifest: artifact.Manifest,
        module: object,
        device: str = "cpu",
        exploration: artifact.Exploration | None = None,
    ) -> None:
        self.manifest = manifest
        self.module = module
        self.device = device
        self.exploration = exploration or manifest.exploration
        self.discrete = isinstance(manifest.action, artifact.DiscreteAction)
        self.obs_shape = tuple(manifest.observation.shape)
        self.n_outputs = manifest.output_size
        if self.discrete and self.exploration.kind == "gaussian":
            raise ValueError("exploration 'gaussian' is for continuous actions; use greedy/epsilon_greedy/softmax")
        if not self.discrete:
            if self.exploration.kind not in ("greedy", "gaussian"):
                raise ValueError("continuous actions support exploration 'greedy' or 'gaussian'")
            if self.exploration.kind == "gaussian" and manifest.log_std is None:
                raise ValueError("exploration 'gaussian' needs log_std in the manifest")
            self.low = np.asarray(manifest.action.low, dtype=np.float64)
            self.high = np.asarray(manifest.action.high, dtype=np.float64)
            self.std = np.exp(np.asarray(manifest.log_std or [0.0] * self.n_outputs, dtype=np.float64))
        # A ScriptModule's own forward skips nn.Module's hook dispatch (a few µs per call, the
        # size of a small MLP's whole forward pass); other callables are called as they are.
        self._run = module.forward if isinstance(module, torch.jit.ScriptModule) else module

    @classmethod
    def from_artifact(cls, loaded: artifact.LoadedArtifact, exploration: artifact.Exploration | None = None) -> Policy:
        return cls(loaded.manifest, loaded.module, loaded.device, exploration)

    def forward(self, observations: np.ndarray) -> np.ndarray:
        """Run the model on a (B, *shape) batch; returns float32 (B, K)."""
        obs = observations
        if obs.dtype != np.float32 or not obs.flags.c_contiguous:
            obs = np.ascontiguousarray(obs, dtype=np.float32)
        if obs.shape[1:] != self.obs_shape:
            raise ValueError(
                f"observations have shape {obs.shape}, expected (B, {', '.join(map(str, self.obs_shape))})"
            )
        with torch.inference_mode():
            x = torch.from_numpy(obs)
            if self.device != "cpu":
                x = x.to(self.device, non_blocking=True)
            out = self._run(x)
            if out.device.type != "cpu" or out.dtype != torch.float32:
                out = out.to("cpu", torch.float32)
            return out.numpy()

    def decide(
        self,
        observations: np.ndarray,
        rng: np.random.Generator,
        masks: np.ndarray | None = None,
        *,
        low: np.ndarray | None = None,
        high: np.ndarray | None = None,
    ) -> BatchDecision:
        """Forward pass + exploration for a batch.

        ``masks``: bool (B, K), True = allowed (discrete only). ``low``/``high``: per-row bounds
        (B, D) for continuous actions, default the action space.
        """
        return self.choose(self.forward(observations), rng, masks, low=low, high=high)

    def choose(
        self,
        raw: np.ndarray,
        rng: np.random.Generator,
        masks: np.ndarray | None = None,
        *,
        low: np.ndarray | None = None,
        high: np.ndarray | None = None,
        masks_checked: bool = False,
    ) -> BatchDecision:
        """Apply the exploration rule to model outputs ``raw`` (B, K).

        ``masks_checked``: the caller guarantees ``masks`` is a bool (B, K) array allowing at least
        one action per row (the shield does), so the checks are skipped.
        """
        if np.isfinite(raw).all():
            finite = np.ones(raw.shape[0], dtype=bool)
            values = raw.astype(np.float64)
        else:
            finite = np.isfinite(raw).all(axis=1)
            values = np.where(finite[:, None], raw, 0.0).astype(np.float64)
        if self.discrete:
            if masks is not None and not masks_checked:
                masks = self._checked_masks(masks, values.shape)
            return self._choose_discrete(raw, values, finite, rng, masks)
        return self._choose_continuous(raw, values, finite, rng, low, high)

    @staticmethod
    def _checked_masks(masks: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        masks = np.asarray(masks, dtype=bool)
        if masks.shape != shape:
            raise ValueError(f"masks have shape {masks.shape}, expected {shape}")
        if not masks.any(axis=1).all():
            raise ValueError("a mask allows no action")
        return masks

    def _choose_discrete(
        self,
        raw: np.ndarray,
        values: np.ndarray,
        finite: np.ndarray,
        rng: np.random.Generator,
        masks: np.ndarray | None,
    ) -> BatchDecision:
        b = values.shape[0]
        u = rng.random(b)
        free = discrete_probabilities(values, self.exploration, None)
        if masks is None:
            actions, propensities = _sample(free, u)
            return BatchDecision(actions, propensities, free, raw, actions, finite)
        p = _restrict(free, values, self.exploration, masks)
        # one draw for the masked and the unmasked rule, same uniform number per row
        drawn, drawn_p = _sample(np.concatenate((p, free)), np.concatenate((u, u)))
        return BatchDecision(drawn[:b], drawn_p[:b], p, raw, drawn[b:], finite)

    def _choose_continuous(
        self,
        raw: np.ndarray,
        mean: np.ndarray,
        finite: np.ndarray,
        rng: np.random.Generator,
        low: np.ndarray | None,
        high: np.ndarray | None,
    ) -> BatchDecision:
        b = mean.shape[0]
        lo = np.broadcast_to(self.low if low is None else low, mean.shape)
        hi = np.broadcast_to(self.high if high is None else high, mean.shape)
        if self.exploration.kind == "greedy":
            pre = mean
            actions = np.clip(pre, lo, hi)
            propensities = np.ones(b)
        else:
            std = self.std
            pre = mean + std * rng.standard_normal(mean.shape)
            actions = np.clip(pre, lo, hi)
            propensities = np.exp(gaussian_log_propensity(pre, mean, std, lo, hi))
        return BatchDecision(
            actions=actions.astype(np.float32),
            propensities=propensities,
            probabilities=None,
            raw=raw,
            unconstrained_actions=pre.astype(np.float32),
            finite=finite,
        )


def gaussian_log_propensity(
    pre: np.ndarray, mean: np.ndarray, std: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """Log propensity (B,) of ``clip(pre, lo, hi)`` when ``pre ~ N(mean, std)`` per dimension.

    Inside the bounds: the log density; at a bound: the log tail mass beyond it; a degenerate
    interval (lo >= hi) is a sure point: 0.
    """
    z = (pre - mean) / std
    log_pdf = -0.5 * z * z - np.log(std) - _LOG_SQRT_2PI
    below = torch.special.log_ndtr(torch.from_numpy((lo - mean) / std)).numpy()
    above = torch.special.log_ndtr(torch.from_numpy((mean - hi) / std)).numpy()
    out = np.where(pre <= lo, below, np.where(pre >= hi, above, log_pdf))
    out = np.where(lo >= hi, 0.0, out)
    return out.sum(axis=1)
