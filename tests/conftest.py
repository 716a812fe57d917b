"""Fixture registration only: helpers live in tests/support/ (extend this list, don't add logic here)."""

from tests.support.cluster import cluster, control_plane, operator_rbac  # noqa: F401
from tests.support.kube import client, fake_deployment_controller, kube_api  # noqa: F401
from tests.support.operator_process import operator  # noqa: F401
from tests.support.prometheus import exporter, prometheus, prometheus_factory  # noqa: F401
