"""The `policy-rollouts` command line (entry point: `rollout_operator.cli.main:main`)."""
