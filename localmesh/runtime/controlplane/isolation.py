"""Network isolation, kept as policy: compose networks the user split stay split.

Before the rewrite, a client could reach an upstream only if they shared a compose network
(``MeshPlan.clients[].reach``). After it, every meshed service shares the mesh network, so
the mesh must refuse the pairs that were not connected, unless mesh.yaml says otherwise.
The rule is compiled into ordinary DENY policies named ``network-isolation-<upstream>``, so
it is visible in ``/config`` and decided by the same policy code as the user's own.

An ALLOW policy in mesh.yaml on an upstream lifts isolation for the callers it names; one
with no ``from`` (or ``*``) lifts it for everyone. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from fnmatch import fnmatchcase

from localmesh.compose.plan import MeshPlan
from localmesh.config.model import AuthorizationPolicy, MeshConfig, PolicyAction

POLICY_PREFIX = "network-isolation-"


def with_isolation(config: MeshConfig, plan: MeshPlan) -> MeshConfig:
    """``config`` plus one DENY policy per upstream that some meshed service could not reach."""
    if not config.mesh.keep_network_isolation:
        return config
    extra = isolation_policies(config, plan)
    if not extra:
        return config
    return dataclasses.replace(config, policies=(*config.policies, *extra))


def isolation_policies(config: MeshConfig, plan: MeshPlan) -> tuple[AuthorizationPolicy, ...]:
    reach = {c.service: set(c.reach) for c in plan.clients}
    callers = sorted({*reach, *(u.service for u in plan.upstreams)})
    out: list[AuthorizationPolicy] = []
    for upstream in sorted(u.service for u in plan.upstreams):
        allowed = _explicitly_allowed(config, upstream)
        if allowed is None:
            continue
        denied = tuple(
            caller
            for caller in callers
            if caller != upstream
            and upstream not in reach.get(caller, set())
            and not any(fnmatchcase(caller, pattern) for pattern in allowed)
        )
        if denied:
            out.append(
                AuthorizationPolicy(
                    name=f"{POLICY_PREFIX}{upstream}",
                    action=PolicyAction.DENY,
                    to=(upstream,),
                    sources=denied,
                )
            )
    return tuple(out)


def _explicitly_allowed(config: MeshConfig, upstream: str) -> list[str] | None:
    """Caller patterns mesh.yaml allows to call ``upstream``; None when it allows anyone."""
    patterns: list[str] = []
    for policy in config.policies:
        if policy.action is not PolicyAction.ALLOW or upstream not in policy.to:
            continue
        if not policy.sources or "*" in policy.sources:
            return None
        patterns += policy.sources
    return patterns
