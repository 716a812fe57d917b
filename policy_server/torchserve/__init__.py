"""TorchServe compatibility: serve a policy artifact from TorchServe with the policy server's contract.

* `archive` packs an artifact directory into a ``.mar`` (``make mar ARTIFACT=dir OUT=dir``).
* `handler` is the custom handler TorchServe runs: same ``/v1/act`` body in, same decision fields out.
* `runner` starts an isolated TorchServe on loopback (tests, benchmarks, local trials).

Submodules are imported on demand: TorchServe itself is only a dev dependency.
"""
