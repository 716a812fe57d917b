"""Webhook notifications on phase transitions, rollbacks and waits for a human.

- `base`: what a notification is, the `Formatter` interface, a delivery `Target`.
- `webhook`: the generic JSON payload; `slack`: a Slack-compatible incoming-webhook payload.
- `factory`: format name -> formatter (raises on unknown names).
- `dispatcher`: delivery off the reconcile path (queue + thread, timeout, bounded retries).
- `observer`: turns a reconcile's before/after into notifications for the global and
  per-rollout (`spec.notifications`) targets.
"""
