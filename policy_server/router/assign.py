"""Which variant serves a request, and with what probability.

Sticky assignment hashes the key into one of ``BUCKETS`` buckets; the candidate owns buckets
``[0, weight * BUCKETS / 100)``. Raising the weight only adds buckets to the candidate, so a key
that was on the candidate stays there, and a key on the stable variant moves at most once, when
the weight passes its bucket (consistent, not a fresh coin per request). Without a key, each
request is a fresh draw. Either way the assignment probability of a variant is its weight share,
which the router records for off-policy evaluation (for sticky keys: over the key population).
"""

from __future__ import annotations

import hashlib
import random

__all__ = ["BUCKETS", "bucket", "choose"]

BUCKETS = 10_000  # 0.01 % resolution


def bucket(key: bytes, salt: bytes = b"") -> int:
    """The key's bucket in ``[0, BUCKETS)``: uniform, stable across processes and restarts."""
    digest = hashlib.blake2b(key, digest_size=8, key=salt[:64]).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def choose(weight: float, key: bytes | None, salt: bytes = b"", rng: random.Random | None = None) -> tuple[bool, float]:
    """(to_candidate, probability of that assignment) for a candidate share of ``weight`` percent."""
    share = weight / 100.0
    if share <= 0.0:
        return False, 1.0
    if share >= 1.0:
        return True, 1.0
    to_candidate = (rng or random).random() < share if key is None else bucket(key, salt) < weight * (BUCKETS / 100)
    return to_candidate, share if to_candidate else 1.0 - share
