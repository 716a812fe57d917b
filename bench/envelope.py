"""The action envelope's cost per micro-batch (docs/policy-server.md, "Action envelope").

    PYTHONPATH=operator:. python bench/envelope.py [--batches 2000] [--batch 32]

Times the model's forward pass plus the shield for one micro-batch, as the server runs them, for the
same example policy (8 features, 4 actions) and observations:

- ``no envelope``: the peer, what every server without ``spec.envelope`` does;
- ``inside, greedy``: an envelope that allows the candidate's greedy action on every row (nothing to
  replace: the check alone);
- ``25 % replaced, greedy``: the envelope forbids the greedy action of about a quarter of the rows, whose
  decisions the in-process fallback policy replaces (its forward pass on those rows only);
- ``softmax``: the candidate explores (softmax), so every row puts mass outside the envelope and the
  fallback runs on every row to keep the propensities exact.

Ratios are against ``no envelope`` of the same run (best of 5 rounds). Results: bench/results/envelope.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from policy_server import artifact, envelope, policy, shield


def _policy(directory: Path, name: str, seed: int, exploration: dict[str, object]) -> policy.Policy:
    path = artifact.write_example_model(directory / name, seed=seed, exploration=exploration)
    return policy.Policy.from_artifact(artifact.load_artifact(str(path)))


def _per_batch_us(pol: policy.Policy, shielded: shield.Shield, obs: np.ndarray, batches: int) -> float:
    rng = np.random.default_rng(0)
    masks, entities = [None] * len(obs), [None] * len(obs)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(batches):
            raw = pol.forward(obs)
            shielded.run(raw, rng, masks=masks, entities=entities, obs=obs)
        best = min(best, (time.perf_counter() - start) / batches)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "envelope.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # as a server worker runs its forward passes (one core each)
    pool = np.random.default_rng(1).standard_normal((20_000, 8)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        greedy = _policy(Path(tmp), "greedy", 0, {"kind": "greedy"})
        soft = _policy(Path(tmp), "softmax", 0, {"kind": "softmax", "temperature": 1.0})
        fallback = _policy(Path(tmp), "fallback", 7, {"kind": "greedy"})
        # a batch in which a quarter of the rows' greedy action is the one the narrow envelope forbids
        greedy_actions = greedy.forward(pool).argmax(axis=1)
        counts = np.bincount(greedy_actions, minlength=4)
        forbidden = int(np.argsort(counts)[-2])  # the second most chosen action: enough rows of both kinds
        quarter = args.batch // 4
        rows = np.concatenate([np.nonzero(greedy_actions == forbidden)[0][:quarter],
                               np.nonzero(greedy_actions != forbidden)[0][: args.batch - quarter]])
        obs = pool[rows]
        chosen = np.bincount(greedy.forward(obs).argmax(axis=1), minlength=4)
        everything = list(range(4))
        narrow = [a for a in range(4) if a != forbidden]

        def shielded(pol: policy.Policy, allowed: list[int] | None) -> shield.Shield:
            s = shield.Shield(pol)
            if allowed is not None:
                s.envelope = envelope.Envelope(envelope.EnvelopeSpec(actions=tuple(allowed)), pol, fallback)
            return s

        cases = {
            "no envelope": (greedy, None),
            "inside, greedy": (greedy, everything),
            "replaced, greedy": (greedy, narrow),
            "no envelope, softmax": (soft, None),
            "softmax": (soft, narrow),
        }
        times = {name: _per_batch_us(pol, shielded(pol, allowed), obs, args.batches)
                 for name, (pol, allowed) in cases.items()}
    replaced = int(chosen[forbidden])
    result = {
        "batch": args.batch,
        "replaced_rows_greedy": replaced,
        "us_per_batch": {k: round(v, 1) for k, v in times.items()},
        "ratio_vs_no_envelope": {
            "inside, greedy": round(times["inside, greedy"] / times["no envelope"], 3),
            "replaced, greedy": round(times["replaced, greedy"] / times["no envelope"], 3),
            "softmax": round(times["softmax"] / times["no envelope, softmax"], 3),
        },
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for name, us in times.items():
        print(f"{name:>22}: {us:8.1f} us per batch of {args.batch}")
    print(f"replaced rows (greedy): {replaced}/{args.batch}; ratios: {result['ratio_vs_no_envelope']}")


if __name__ == "__main__":
    main()
