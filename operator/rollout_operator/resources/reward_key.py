"""The rollout's reward key: the Secret that signs request ids, and how pods read it. Pure: no I/O.

Every policy server and the router of a rollout sign and verify request ids with one shared key
(``POLICY_SERVER_REWARD_KEY``, ``policy_server.attribution``), so a reward posted to any replica
of any variant, or to the router, is attributed to the variant that decided, and nobody without
the key can forge that attribution. The operator makes ``{rollout}-reward-key`` once (32 random
bytes, URL-safe base64, under data key ``key``) and never writes it again: a human edits it to
rotate (docs/security.md). ``spec.rewardKeySecret`` names a Secret of the user's instead; the
operator then only references it, and checks that it exists, holds the key and consents to being
used (label ``policy.rollouts.io/reward-key: "true"``; :func:`problem`).

Pods read the key through ``valueFrom.secretKeyRef``: the value never passes through the
operator, and the env entry (a name, not the value) does not change when the key rotates, so a
reconcile never restarts pods on its account; a rotation takes effect when a human rolls them.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Any

from rollout_operator import api
from rollout_operator.resources import meta

__all__ = [
    "DATA_KEY",
    "ENV_VAR",
    "KEY_BYTES",
    "MIN_KEY_CHARS",
    "env_var",
    "new_key",
    "problem",
    "secret",
    "secret_name",
    "secret_ref",
]

ENV_VAR = "POLICY_SERVER_REWARD_KEY"  # = policy_server.attribution.ENV_VAR (the contract; a test checks)
MIN_KEY_CHARS = 32  # = policy_server.attribution.MIN_KEY_CHARS
DATA_KEY = "key"
KEY_BYTES = 32
COMPONENT = "reward-key"


def secret_name(rollout: api.PolicyRollout) -> str:
    """``{rollout}-reward-key``: the Secret the operator makes when the spec names none."""
    return f"{rollout.metadata.name}-reward-key"


def secret_ref(rollout: api.PolicyRollout) -> tuple[str, str]:
    """(Secret name, data key) the pods read the key from: the user's if named, else ours."""
    ref = rollout.spec.reward_key_secret
    return (ref.name, ref.key) if ref is not None else (secret_name(rollout), DATA_KEY)


def env_var(rollout: api.PolicyRollout) -> dict[str, Any]:
    """The container env entry that reads the key from its Secret (never the value itself)."""
    name, key = secret_ref(rollout)
    return {"name": ENV_VAR, "valueFrom": {"secretKeyRef": {"name": name, "key": key}}}


def new_key() -> str:
    """32 random bytes, URL-safe base64 without padding (43 characters, as ``secrets.token_urlsafe(32)``)."""
    return secrets.token_urlsafe(KEY_BYTES)


def secret(rollout: api.PolicyRollout, key: str | None = None) -> dict[str, Any]:
    """The operator's Secret holding a fresh key (or `key`), owned by the rollout: deleted with it."""
    value = key if key is not None else new_key()
    labels = {**meta.labels(rollout), "app.kubernetes.io/component": COMPONENT}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta.object_meta(rollout, secret_name(rollout), labels),
        "type": "Opaque",
        "data": {DATA_KEY: base64.b64encode(value.encode()).decode("ascii")},
    }


def problem(rollout: api.PolicyRollout, found: dict[str, Any] | None) -> str | None:
    """Why the user's Secret (`found`, as read; None: missing) cannot serve as the reward key, in one line.

    None when it can, or when the spec names no Secret (the operator makes its own).
    """
    ref = rollout.spec.reward_key_secret
    if ref is None:
        return None
    ns = rollout.metadata.namespace
    where = f"Secret {ref.name!r} (spec.rewardKeySecret) in namespace {ns!r}"
    make = (f"kubectl -n {ns} create secret generic {ref.name} --from-literal={ref.key}=$(python3 -c "
            f"'import secrets; print(secrets.token_urlsafe(32))') && kubectl -n {ns} label secret {ref.name} "
            f"{api.LABEL_REWARD_KEY}=true")
    if found is None:
        return f"{where} does not exist: create it with `{make}`, or remove spec.rewardKeySecret"
    labels = (found.get("metadata") or {}).get("labels") or {}
    if labels.get(api.LABEL_REWARD_KEY) != "true":
        return (f"{where} is not labelled {api.LABEL_REWARD_KEY}=true: label it (`kubectl -n {ns} label secret "
                f"{ref.name} {api.LABEL_REWARD_KEY}=true`) to allow its use as this rollout's reward key")
    raw = (found.get("data") or {}).get(ref.key)
    if raw is None:
        return f"{where} has no data key {ref.key!r}: add it, or set spec.rewardKeySecret.key to the key it has"
    try:
        value = base64.b64decode(raw, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return f"{where} key {ref.key!r} is not text: store comma-separated keys of {MIN_KEY_CHARS}+ characters"
    keys = [k.strip() for k in value.split(",") if k.strip()]
    if not keys or any(len(k) < MIN_KEY_CHARS for k in keys):
        return (f"{where} key {ref.key!r} must hold comma-separated keys of at least {MIN_KEY_CHARS} characters "
                "each; make one with `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    return None
