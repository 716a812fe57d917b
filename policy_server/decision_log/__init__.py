"""Decision log: every served decision and every reward, as Parquet segments.

Off-policy evaluation needs each decision's propensity, policy version and request id, and the
rewards that arrive later, joined by ``request_id``. The policy server and the router write
them through :class:`DecisionLog` without waiting for storage; evaluation, training and the
demo read them back with :func:`read_decisions`, :func:`read_rewards` and :func:`join_rewards`.
Any fsspec URL works (local path, ``file://``, ``memory://``, ``s3://`` with ``s3fs``).

The modules, one concern each:

* ``schema``: the two streams' Arrow schemas (versioned) and :class:`DecisionBatch`, the row type
  of the server's micro-batches.
* ``writer``: :class:`DecisionLog` (buffering, the writer thread, retries, atomic segment writes).
* ``reader``: reading the streams back and joining rewards to decisions.
* ``wal``: the server's write-ahead log on local disk (group commit, replay on the next start).
* ``_buffer``, ``_convert``, ``_records``, ``_batches``, ``_storage``: the writer's internals
  (the per-stream buffer; converting a segment in GIL-friendly chunks; the dict path; the numpy
  batch path; URL resolution shared with the readers); ``_backlog``: how far Parquet is behind.

This package re-exports the public names, so ``from policy_server import decision_log`` and
``decision_log.DecisionLog`` keep working. See ``docs/decision-log.md`` for the column reference
and the versioning policy.
"""

from policy_server.decision_log.reader import join_rewards, read_decisions, read_rewards
from policy_server.decision_log.schema import DECISION_SCHEMA, REWARD_SCHEMA, SCHEMA_VERSION, DecisionBatch
from policy_server.decision_log.writer import DecisionLog, DecisionLogError

__all__ = [
    "DECISION_SCHEMA",
    "REWARD_SCHEMA",
    "SCHEMA_VERSION",
    "DecisionBatch",
    "DecisionLog",
    "DecisionLogError",
    "join_rewards",
    "read_decisions",
    "read_rewards",
]
