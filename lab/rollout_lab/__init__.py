"""Everything that runs without a cluster: local mode, the demo and the judge benchmark.

Depends on the operator (`rollout_operator`) and on the policy server (`policy_server`); neither
imports it. Its commands join `policy-rollouts` through the `policy_rollouts.commands` entry point.
"""
