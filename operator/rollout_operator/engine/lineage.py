"""Where a candidate came from: its lineage, required before traffic and kept with each revision.

Why the operator reads lineage from status and spec, never from the artifact: the operator image
has no torch and no object-store client, and reading artifacts would make decisions depend on I/O.
A trained version's lineage arrives with its training Job's result (`status.trainingJobs[].lineage`,
the same block the trainer wrote into the manifest); a hand-provided artifact's comes from
`spec.policy.lineage` (copied from its manifest, through GitOps). The same two sources serve the
`requireLineage` check and the record kept in `status.revisions`.
"""

from __future__ import annotations

from rollout_operator import api

__all__ = ["missing", "of_candidate", "refusal", "revision"]


def of_candidate(spec: api.PolicyRolloutSpec, status: api.PolicyRolloutStatus) -> api.Lineage | None:
    """The candidate's lineage: `spec.policy.lineage`, else that of the training Job that produced it."""
    if spec.policy.lineage is not None:
        return spec.policy.lineage
    for entry in reversed(status.training_jobs):
        if (entry.phase == "Succeeded" and entry.version == spec.policy.version
                and entry.artifact == spec.policy.artifact):
            return entry.lineage
    return None


def missing(lineage: api.Lineage | None, required: list[api.LineagePart]) -> list[str]:
    """The required parts `lineage` lacks (absent or empty), in the order they were required."""
    present = lineage.wire() if lineage is not None else {}
    return [str(part) for part in dict.fromkeys(required) if not present.get(str(part))]


def refusal(spec: api.PolicyRolloutSpec, status: api.PolicyRolloutStatus) -> str | None:
    """Why the candidate may not start (a lineage part `spec.requireLineage` names is missing), or None."""
    lacking = missing(of_candidate(spec, status), spec.require_lineage)
    if not lacking:
        return None
    return (f"candidate {spec.policy.version} lacks lineage {', '.join(lacking)} required by spec.requireLineage; "
            "train it with spec.training (policy-server train writes lineage) or copy its manifest's lineage into "
            "spec.policy.lineage, then `kubectl policyrollout retry`")


def revision(spec: api.PolicyRolloutSpec, status: api.PolicyRolloutStatus, policy: api.PolicySpec,
             promoted_at: str) -> api.Revision:
    """The revision record of the promoted candidate: its policy, lineage and the offline gate it passed."""
    evaluation = status.offline_evaluation
    if evaluation is not None and evaluation.candidate_version != spec.policy.version:
        evaluation = None
    return api.Revision(version=spec.policy.version, policy=policy, promoted_at=promoted_at,
                        lineage=of_candidate(spec, status), offline_evaluation=evaluation)
