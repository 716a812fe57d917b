"""Benchmarks that run the operator's own code paths on synthetic data (no cluster, no Prometheus)."""
