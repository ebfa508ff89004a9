"""``localmesh analyze``: setups that are valid but probably not what was meant.

Validation rejects what cannot work; analysis warns about what works oddly. Each finding
has a stable ``code`` (for ``--json`` consumers and for grepping) and a position in
mesh.yaml or the compose file. Policy reasoning follows Istio: a matching DENY wins;
when a service has ALLOW policies, a caller must match one of them.
"""

from __future__ import annotations

from collections.abc import Iterable

from localmesh.compose.project import ComposeProject
from localmesh.config.matching import route_is_catch_all, shadowing_routes
from localmesh.config.model import MeshConfig, PolicyAction, Route, Service
from localmesh.config.ports import Ports, declared, network_mode, spans
from localmesh.config.values import format_duration
from localmesh.errors import Finding

# Edge traffic, as a caller: only policies without ``from`` let it through unless it
# presents a client certificate, whose identity analysis cannot know in advance.
_INGRESS = "<ingress>"


def analyze(config: MeshConfig, project: ComposeProject | None = None) -> list[Finding]:
    """Every warning for this mesh, grouped by check, in file order within each."""
    findings: list[Finding] = []
    findings += _shadowed_routes(config)
    findings += _no_default_route(config)
    findings += _retry_timeouts(config)
    findings += _deny_all(config)
    findings += _unreachable(config, project)
    findings += _empty_subsets(config)
    if project is not None:
        findings += _compose_findings(project)
    return findings


def _route_lists(config: MeshConfig) -> Iterable[tuple[str, tuple[Route, ...]]]:
    for svc in config.services:
        yield f"service '{svc.name}'", svc.routes
    for host in config.ingress.hosts:
        yield f"ingress host '{host.host}'", host.routes


def _shadowed_routes(config: MeshConfig) -> Iterable[Finding]:
    for owner, routes in _route_lists(config):
        for i, route in enumerate(routes):
            by = shadowing_routes(list(routes[:i]), route)
            if by:
                names = ", ".join(f"'{r.name}'" for r in by)
                yield Finding(
                    "shadowed-route",
                    f"{owner}: route '{route.name}' never matches: {names} before it take "
                    "every request it matches",
                    route.position,
                )


def _no_default_route(config: MeshConfig) -> Iterable[Finding]:
    """Istio's rule, which surprises: once routes exist, a request none matches gets 404 NR."""
    for owner, routes in _route_lists(config):
        if routes and not any(route_is_catch_all(r) for r in routes):
            yield Finding(
                "no-default-route",
                f"{owner}: requests that match none of its routes get 404 (flag NR); "
                "add a last route without `match` to send them on",
                routes[-1].position,
            )


def _retry_timeouts(config: MeshConfig) -> Iterable[Finding]:
    for svc in config.services:
        for route in svc.routes:
            retries = route.retries or svc.retries
            timeout = route.timeout if route.timeout is not None else svc.timeout
            if (
                retries is not None
                and retries.attempts > 0
                and retries.per_try_timeout is not None
                and timeout is not None
                and retries.per_try_timeout >= timeout
            ):
                yield Finding(
                    "retry-after-timeout",
                    f"service '{svc.name}' route '{route.name}': per_try_timeout "
                    f"{format_duration(retries.per_try_timeout)} >= timeout "
                    f"{format_duration(timeout)}, so a timed-out try is never retried",
                    route.position,
                )


def _deny_all(config: MeshConfig) -> Iterable[Finding]:
    for p in config.policies:
        if p.action is PolicyAction.DENY and not (p.sources or p.paths or p.methods):
            yield Finding(
                "deny-all",
                f"policy '{p.name}' denies every call to {', '.join(p.to)}",
                p.position,
            )


def _names_caller(sources: tuple[str, ...], caller: str, trust_domain: str) -> bool:
    """Whether ``sources`` names this service caller (by name, SPIFFE id or wildcard)."""
    ids = (caller, f"spiffe://{trust_domain}/svc/{caller}") if caller != _INGRESS else ()
    for src in sources:
        if src == "*" and ids:
            return True
        for ident in ids:
            if (
                ident == src
                or (src.endswith("*") and ident.startswith(src[:-1]))
                or (src.startswith("*") and ident.endswith(src[1:]))
            ):
                return True
    return False


def _allowed(target: str, caller: str, config: MeshConfig) -> bool:
    """Could *some* request from ``caller`` to ``target`` pass the policies?"""
    domain = config.mesh.trust_domain
    relevant = [p for p in config.policies if target in p.to]
    for p in relevant:
        if (
            p.action is PolicyAction.DENY
            and not (p.paths or p.methods)
            and (not p.sources or _names_caller(p.sources, caller, domain))
        ):
            return False
    allows = [p for p in relevant if p.action is PolicyAction.ALLOW]
    return not allows or any(
        not p.sources or _names_caller(p.sources, caller, domain) for p in allows
    )


def _networks(svc: Service, project: ComposeProject | None) -> set[str] | None:
    if project is None:
        return None
    compose = project.services().get(svc.name)
    if compose is None:
        return None
    nets = compose.get("networks")
    return set(nets) if isinstance(nets, dict) else set()


def _unreachable(config: MeshConfig, project: ComposeProject | None) -> Iterable[Finding]:
    """Meshed services with ports that no caller (service or ingress) can reach."""
    ingress_targets = {
        d.service for h in config.ingress.hosts for r in h.routes for d in r.destinations
    }
    isolate = config.mesh.keep_network_isolation
    for svc in config.services:
        if not svc.meshed or not svc.ports:
            continue
        if project is not None and svc.name in project.services():
            published = any(
                isinstance(p, dict) and p.get("published")
                for p in project.services()[svc.name].get("ports") or ()
            )
            if published:
                continue  # reached from the host, outside the mesh
        nets = _networks(svc, project)
        callers: list[str] = [_INGRESS] if svc.name in ingress_targets else []
        for other in config.services:
            if other.name == svc.name or not other.meshed:
                continue
            other_nets = _networks(other, project)
            if isolate and nets is not None and other_nets is not None and not nets & other_nets:
                continue
            callers.append(other.name)
        if not callers:
            if nets is not None:
                yield Finding(
                    "unreachable-service",
                    f"service '{svc.name}' shares no network with any other service and no "
                    "ingress route leads to it",
                    svc.position,
                )
            continue
        if not any(_allowed(svc.name, c, config) for c in callers):
            names = ", ".join("the ingress" if c == _INGRESS else c for c in callers)
            yield Finding(
                "unreachable-service",
                f"service '{svc.name}': the policies deny every possible caller ({names})",
                svc.position,
            )


def _empty_subsets(config: MeshConfig) -> Iterable[Finding]:
    for svc in config.services:
        if not svc.endpoints:
            continue  # discovered endpoints: labels are known only at run time
        for subset in svc.subsets:
            wanted = set(subset.labels)
            if not any(wanted <= set(ep.labels) for ep in svc.endpoints):
                yield Finding(
                    "empty-subset",
                    f"service '{svc.name}': subset '{subset.name}' selects none of its endpoints",
                    svc.position,
                )


def _compose_findings(project: ComposeProject) -> Iterable[Finding]:
    for name, svc in sorted(project.services().items()):
        found = Ports()
        declared(svc, found)
        if found.udp:
            yield Finding(
                "udp-upstream",
                f"service '{name}' has UDP ports ({', '.join(spans(found.udp))}): the mesh "
                "carries TCP only, so it is left unmeshed and callers reach it directly, "
                "without policy or telemetry",
                project.position_of("services", name, "ports")
                or project.position_of("services", name, "expose"),
            )
        mode = network_mode(svc)
        if mode is not None:
            yield Finding(
                "unmeshed-network-mode",
                f"service '{name}' uses network_mode: {mode} and is left unmeshed: its calls "
                "bypass routing, policy and telemetry",
                project.position_of("services", name, "network_mode"),
            )
