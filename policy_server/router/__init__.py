"""The policy router: a weighted, sticky, shadowing HTTP proxy in front of two policy servers' endpoints.

Why a router of our own when meshes exist: a policy rollout needs things a plain weighted proxy
does not give — the probability that each request was assigned to its variant (for off-policy
evaluation), shadow agreement between the two policies' *actions*, and a data-plane fallback to
the stable policy inside the same request when the candidate fails or is slow. See docs/router.md.

Modules: ``table`` (the routing table and its file), ``assign`` (weighted / sticky choice),
``pool`` (each variant's endpoints: balancing, entity stickiness, taking out and probing back),
``upstream`` (keep-alive HTTP/1.1 client pool), ``metrics``, ``app`` (the server), ``rewards``
(``/v1/reward``: verify, forward to a live endpoint), ``kubewatch`` (follows the ConfigMap and the
variants' EndpointSlices through the Kubernetes API), ``cli`` (``policy-server route``).
"""
