"""A real Kubernetes control plane on this machine, without Docker (`policy-rollouts cluster up`)."""
