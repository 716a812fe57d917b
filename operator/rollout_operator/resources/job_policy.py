"""Which images and ServiceAccounts the operator's Jobs may run with: operator-level policy. Pure.

A PolicyRollout names the image (`spec.training.image`, `spec.offlineEvaluation.job.image`, by
default `spec.policy.image`) and the ServiceAccount of the Jobs the operator creates for it.
The operator may create Jobs that its author may not: without a limit, whoever may create a
PolicyRollout could run any image under any ServiceAccount of the namespace, with whatever
cloud identity that ServiceAccount carries (IRSA, Workload Identity). The allow-lists come
from the operator's configuration (chart values `jobs.*`, docs/security.md), never from the
rollout. Entries are exact, or a prefix ending in `*` (`ghcr.io/acme/policy-server:*`); `*`
alone allows everything. A Job that names no ServiceAccount runs as the namespace's `default`
one, which any Pod of the namespace gets, with no token mounted (resources.jobs): always allowed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from rollout_operator import api
from rollout_operator.resources import jobs

__all__ = ["JobAllowList", "matches"]


def matches(value: str, entries: Iterable[str]) -> bool:
    """Whether `value` is an entry, or starts with the part before an entry's trailing `*`."""
    for entry in entries:
        if entry.endswith("*") and value.startswith(entry[:-1]):
            return True
        if value == entry:
            return True
    return False


@dataclasses.dataclass(frozen=True)
class JobAllowList:
    """The images and ServiceAccount names Jobs may use; empty lists allow no image and no named account."""

    images: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()

    @classmethod
    def of(cls, images: Iterable[str], service_accounts: Iterable[str]) -> JobAllowList:
        def clean(items: Iterable[str]) -> tuple[str, ...]:
            return tuple(dict.fromkeys(i.strip() for i in items if i.strip()))

        return cls(clean(images), clean(service_accounts))

    def problems(self, rollout: api.PolicyRollout) -> list[str]:
        """One sentence per Job setting the policy refuses, saying how to fix it; empty when all are allowed."""
        found = []
        for field, template in jobs.job_templates(rollout):
            image = jobs.job_image(rollout, template)
            if not matches(image, self.images):
                where = f"{field}.image" if template.image else f"{field}.image (unset: spec.policy.image)"
                found.append(
                    f"{where} {image!r} is not an image the operator may run Jobs with (allowed: "
                    f"{', '.join(self.images) or 'none'}): use an allowed image, or ask the operator's admin to "
                    "add it (chart value jobs.allowedImages, env POLICY_ROLLOUTS_ALLOWED_JOB_IMAGES)")
            account = template.service_account_name
            if account and not matches(account, self.service_accounts):
                found.append(
                    f"{field}.serviceAccountName {account!r} is not a ServiceAccount the operator may run Jobs as "
                    f"(allowed: {', '.join(self.service_accounts) or 'none'}): use an allowed one or leave it unset, "
                    "or ask the operator's admin to add it (chart value jobs.allowedServiceAccounts, env "
                    "POLICY_ROLLOUTS_ALLOWED_JOB_SERVICE_ACCOUNTS)")
        return found
