"""Builders of the Kubernetes objects a PolicyRollout owns. Pure functions: spec in, dict out.

The HTTPRoute builder is `resources.httproute.httproute` (the module keeps its name).
`kube.Client.apply` writes them; tests validate them against the official schemas.
"""

from rollout_operator.resources.meta import LABEL_VERSION, VARIANTS, Variant, workload_name
from rollout_operator.resources.workload import deployment, service

__all__ = ["LABEL_VERSION", "VARIANTS", "Variant", "deployment", "service", "workload_name"]
