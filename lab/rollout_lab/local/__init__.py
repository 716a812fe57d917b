"""Local mode: run a PolicyRollout on this machine with the operator's own engine, no cluster.

The pieces implement the same small interfaces as the Kubernetes ones (`WorkloadManager`,
`TrafficRouter`, `JobRunner`, a status writer and an event recorder), so `reconciler.reconcile`
runs unchanged: policy servers, the router and Prometheus are local processes on loopback.
"""
