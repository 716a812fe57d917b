"""Where the stable and candidate policies run: Kubernetes Deployments, or local processes."""
