"""Observation drift: PSI of a rolling window of served observations vs the artifact's reference.

Why PSI: it needs only binned reference fractions (small, stored in the manifest), is additive
over bins and has well-known rules of thumb (< 0.1 stable, 0.1-0.25 moderate, > 0.25 major
shift). The hot path only copies each micro-batch into a ring buffer (one numpy slice
assignment under a lock); a daemon thread recomputes PSI every ``interval_s`` from a snapshot,
so scoring never delays a request.

PSI of one feature = sum over bins of (p - q) * ln(p / q), p = window fractions, q = reference
fractions, both floored at ``EPS`` so that an empty bin gives a large but finite value.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np

from policy_server import artifact

__all__ = ["EPS", "DriftMonitor", "psi"]

EPS = 1e-4


def psi(window: np.ndarray, edges: np.ndarray, fractions: np.ndarray) -> float:
    """PSI of the 1-D sample ``window`` against reference bins (interior ``edges``, ``fractions``)."""
    counts = np.bincount(np.searchsorted(edges, window, side="left"), minlength=len(fractions))
    p = np.maximum(counts / max(len(window), 1), EPS)
    q = np.maximum(np.asarray(fractions, dtype=np.float64), EPS)
    return float(np.sum((p - q) * np.log(p / q)))


class DriftMonitor:
    """Rolling window of observations (flattened features) scored against the reference."""

    def __init__(
        self,
        reference: Sequence[artifact.FeatureReference],
        features: Sequence[str],
        on_update: Callable[[dict[str, float], int], None],
        *,
        window: int = 10_000,
        min_samples: int = 100,
        interval_s: float = 5.0,
    ) -> None:
        self.features = list(features)
        self.edges = [np.asarray(r.edges, dtype=np.float64) for r in reference]
        self.fractions = [np.asarray(r.fractions, dtype=np.float64) for r in reference]
        self.on_update = on_update
        self.min_samples = min_samples
        self.interval_s = interval_s
        self._buf = np.zeros((window, len(self.features)), dtype=np.float32)
        self._pos = 0
        self._size = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, batch: np.ndarray) -> None:
        """Append a (B, *shape) batch; cheap, called on the hot path."""
        rows = batch.reshape(batch.shape[0], -1)
        n = len(self._buf)
        if len(rows) >= n:
            rows = rows[-n:]
        with self._lock:
            end = self._pos + len(rows)
            if end <= n:
                self._buf[self._pos : end] = rows
            else:
                k = n - self._pos
                self._buf[self._pos :] = rows[:k]
                self._buf[: end - n] = rows[k:]
            self._pos = end % n
            self._size = min(self._size + len(rows), n)

    def compute(self) -> tuple[dict[str, float], int]:
        """PSI per feature of the current window (zeros until ``min_samples`` observations)."""
        with self._lock:
            snapshot = self._buf[: self._size].copy()
        size = len(snapshot)
        if size < self.min_samples:
            return dict.fromkeys(self.features, 0.0), size
        return {f: psi(snapshot[:, j], self.edges[j], self.fractions[j]) for j, f in enumerate(self.features)}, size

    def update(self) -> None:
        self.on_update(*self.compute())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="drift", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)  # one PSI update takes milliseconds; shutdown has a grace period to keep

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.update()
