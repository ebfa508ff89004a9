"""Compile mesh config + discovered endpoints into a ``Snapshot``, and check it is consistent.

Pure: no sockets, no files, no asyncio. The control plane gathers the inputs (the loaded
``MeshConfig``, the optional compose project, what discovery found) and calls
``compile_snapshot``; nothing is published unless ``check_snapshot`` finds no problem,
like go-control-plane's ``Snapshot.Consistent()``: every route, mirror, subset, policy and
listener must point at something that exists, and no two listeners may want one socket.

Two modes, chosen by the inputs:

- **host mode** (no compose project): a cluster's endpoints are the service's static
  ``endpoints``; a port's listener binds ``PortSpec.listen`` or, when absent, the
  *host-mode default* ``127.0.0.1:<port + 10000>`` (5432 -> 15432, 8000 -> 18000), which
  keeps the real service's own port free on the same machine and is stable across
  restarts. A port above 55535 has no default and must set ``listen``. A caller is known
  by source IP when that IP hosts the endpoints of exactly one service (``host_sources``).
- **container mode** (a compose project): endpoints come from discovery (every A record of
  the service name inside the mesh container) unless the service lists static ones, a
  listener binds the service's virtual IP on the service's own port, and callers are
  known by source IP (``Discovered.sources``). A service the plan gave no VIP (nobody
  calls it by name) gets no listener; upstreams whose ports are unknown are served by one
  ``intercept`` listener that the VIP range's other ports are redirected to.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from localmesh.compose.project import ComposeProject
from localmesh.config.model import (
    Destination,
    MatchKind,
    MeshConfig,
    Mirror,
    Protocol,
    Route,
    Service,
)
from localmesh.errors import ConfigError, Position, Problem
from localmesh.runtime.snapshot import Endpoint, ListenerSpec, Snapshot

HOST_MODE_BIND = "127.0.0.1"
INTERCEPT_LISTENER = "intercept"
HOST_MODE_PORT_OFFSET = 10000


@dataclass(frozen=True, slots=True)
class Discovered:
    """What discovery found at one moment (container mode); empty in host mode."""

    endpoints: Mapping[str, tuple[Endpoint, ...]] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)  # caller IP -> service


@dataclass(frozen=True, slots=True)
class Inputs:
    """Everything one snapshot is compiled from, apart from discovery."""

    config: MeshConfig
    project: ComposeProject | None = None
    vips: Mapping[str, str] = field(default_factory=dict)  # service -> VIP (container mode)
    intercept_port: int | None = None  # container mode: catch-all for VIPs' unknown ports

    @property
    def host_mode(self) -> bool:
        return self.project is None


def host_mode_default_port(port: int) -> int | None:
    """The loopback port a host-mode listener takes when ``listen`` is not set."""
    candidate = port + HOST_MODE_PORT_OFFSET
    return candidate if candidate <= 65535 else None


def parse_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:15432"`` / ``"[::1]:15432"`` / ``":15432"`` -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"expected host:port, got '{text}'")
    host = host.strip("[]") or HOST_MODE_BIND
    return host, int(port_text)


def compile_snapshot(
    inputs: Inputs,
    discovered: Discovered | None = None,
    *,
    version: int,
    origin: str,
    reserved: Iterable[tuple[str, int]] = (),
    now: float | None = None,
) -> Snapshot:
    """Build and check one snapshot; raise ``ConfigError`` listing every problem.

    ``reserved`` are sockets something else in this process binds (the admin API), so a
    listener that would take one is refused here rather than failing at bind time.
    """
    discovered = discovered or Discovered()
    problems: list[Problem] = []
    listeners = _listeners(inputs, problems)
    endpoints = _endpoints(inputs, discovered)
    snapshot = Snapshot(
        config=inputs.config,
        listeners=tuple(listeners),
        endpoints=endpoints,
        sources=dict(discovered.sources)
        or (host_sources(inputs.config) if inputs.host_mode else {}),
        vips={vip: svc for svc, vip in inputs.vips.items()},
        version=version,
        created=time.time() if now is None else now,
        origin=origin,
    )
    problems += check_snapshot(snapshot, reserved=reserved, host_mode=inputs.host_mode)
    if problems:
        raise ConfigError(problems)  # a reload's rejection says what stays active
    return snapshot


def _listeners(inputs: Inputs, problems: list[Problem]) -> list[ListenerSpec]:
    out: list[ListenerSpec] = []
    for svc in inputs.config.services:
        if not svc.meshed:
            continue
        for spec in svc.ports:
            name = f"{svc.name}:{spec.port}"
            if spec.listen is not None:
                try:
                    host, port = parse_listen(spec.listen)
                except ValueError as exc:
                    problems.append(_problem(f"{name}: listen: {exc}", svc.position))
                    continue
            elif inputs.host_mode:
                default = host_mode_default_port(spec.port)
                if default is None:
                    problems.append(
                        _problem(
                            f"{name}: no default host-mode listener above port 55535",
                            svc.position,
                            hint=f'set listen: "127.0.0.1:PORT" on port {spec.port}',
                        )
                    )
                    continue
                host, port = HOST_MODE_BIND, default
            else:
                vip = inputs.vips.get(svc.name)
                if vip is None:
                    continue  # the plan gave it no VIP: nobody calls it by name
                host, port = vip, spec.port
            out.append(
                ListenerSpec(
                    name=name,
                    service=svc.name,
                    port=spec.port,
                    protocol=spec.protocol,
                    bind_host=host,
                    bind_port=port,
                )
            )
    if not inputs.host_mode and inputs.intercept_port:
        out.append(
            ListenerSpec(
                name=INTERCEPT_LISTENER,
                service="*",
                port=0,
                protocol=Protocol.TCP,
                bind_host="0.0.0.0",
                bind_port=inputs.intercept_port,
                intercept=True,
            )
        )
    return out


_EVERYONES = frozenset({"127.0.0.1", "::1"})  # the default source of any local connection


def host_sources(config: MeshConfig) -> dict[str, str]:
    """Host mode's caller identities: an IP that is the endpoint host of exactly one service.

    A caller connecting from 127.0.0.2 is ``web`` when web's endpoints live on 127.0.0.2
    and no other service's do. Shared addresses identify nobody: those callers stay
    ``unknown``, as non-mesh callers are in Istio. 127.0.0.1 and ::1 are always shared:
    every process on the machine connects from them, a developer's curl included.
    """
    owners: dict[str, set[str]] = {}
    for svc in config.services:
        for ep in svc.endpoints:
            try:
                ip = str(ipaddress.ip_address(ep.host))
            except ValueError:
                continue  # a host name: not a source address
            if ip not in _EVERYONES:
                owners.setdefault(ip, set()).add(svc.name)
    return {ip: next(iter(names)) for ip, names in sorted(owners.items()) if len(names) == 1}


def _endpoints(inputs: Inputs, discovered: Discovered) -> dict[str, tuple[Endpoint, ...]]:
    out: dict[str, tuple[Endpoint, ...]] = {}
    for svc in inputs.config.services:
        if svc.endpoints:
            out[svc.name] = tuple(Endpoint(e.host, e.port, e.labels) for e in svc.endpoints)
        else:
            found = discovered.endpoints.get(svc.name, ())
            out[svc.name] = tuple(sorted(found, key=lambda e: (e.host, e.port)))
    return out


def check_snapshot(
    snapshot: Snapshot, *, reserved: Iterable[tuple[str, int]] = (), host_mode: bool = True
) -> list[Problem]:
    """Every cross-reference resolved, every socket unique: the problems found, in order."""
    config = snapshot.config
    services = {s.name: s for s in config.services}
    problems: list[Problem] = []

    for svc in config.services:
        if host_mode and svc.meshed and svc.ports and not snapshot.endpoints.get(svc.name):
            problems.append(
                _problem(
                    f"service '{svc.name}' has no endpoints",
                    svc.position,
                    hint="host mode has no discovery: list endpoints: [{host: ..., port: ...}]",
                )
            )
        for route in svc.routes:
            problems += _check_route(route, services, snapshot, host_mode)
        names = [s.name for s in svc.subsets]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            problems.append(_problem(f"service '{svc.name}': subset '{dup}' twice", svc.position))

    for host in config.ingress.hosts:
        for route in host.routes:
            problems += _check_route(route, services, snapshot, host_mode, host.position)

    for policy in config.policies:
        for target in policy.to:
            if target not in services:
                problems.append(
                    _problem(
                        f"policy '{policy.name}': unknown service '{target}'",
                        policy.position,
                        hint=_did_you_mean(target, services),
                    )
                )

    for ip, svc_name in sorted(snapshot.sources.items()):
        if svc_name not in services:
            problems.append(_problem(f"source {ip} maps to unknown service '{svc_name}'"))
    for vip, svc_name in sorted(snapshot.vips.items()):
        if svc_name not in services:
            problems.append(_problem(f"virtual IP {vip} maps to unknown service '{svc_name}'"))

    problems += _check_sockets(snapshot, reserved, services)
    return problems


def _check_route(
    route: Route,
    services: Mapping[str, Service],
    snapshot: Snapshot,
    host_mode: bool,
    fallback: Position | None = None,
) -> list[Problem]:
    where = route.position or fallback
    problems: list[Problem] = []
    for dest in route.destinations:
        problems += _check_destination(
            route.name,
            dest,
            services=services,
            snapshot=snapshot,
            host_mode=host_mode,
            where=where,
        )
    if route.destinations and sum(d.weight for d in route.destinations) <= 0:
        problems.append(_problem(f"route '{route.name}': weights add up to 0", where))
    if route.mirror is not None:
        problems += _check_mirror(route.name, route.mirror, services, where)
    for match in route.matches:
        regexes = [match.path] + [h.match for h in match.headers] + [q.match for q in match.query]
        for m in regexes:
            if m is not None and m.kind is MatchKind.REGEX:
                try:
                    re.compile(m.value)
                except re.error as exc:
                    problems.append(
                        _problem(f"route '{route.name}': bad regex '{m.value}': {exc}", where)
                    )
        for source in match.sources:
            if source not in services:
                problems.append(
                    _problem(
                        f"route '{route.name}': unknown source service '{source}'",
                        where,
                        hint=_did_you_mean(source, services),
                    )
                )
    return problems


def _check_destination(
    route: str,
    dest: Destination,
    *,
    services: Mapping[str, Service],
    snapshot: Snapshot,
    host_mode: bool,
    where: Position | None,
) -> list[Problem]:
    svc = services.get(dest.service)
    if svc is None:
        return [
            _problem(
                f"route '{route}': unknown service '{dest.service}'",
                where,
                hint=_did_you_mean(dest.service, services),
            )
        ]
    problems: list[Problem] = []
    if dest.port is not None and svc.ports and dest.port not in {p.port for p in svc.ports}:
        problems.append(
            _problem(f"route '{route}': service '{svc.name}' has no port {dest.port}", where)
        )
    if dest.subset is not None:
        subset = next((s for s in svc.subsets if s.name == dest.subset), None)
        if subset is None:
            problems.append(
                _problem(
                    f"route '{route}': service '{svc.name}' has no subset '{dest.subset}'",
                    where,
                    hint=_did_you_mean(dest.subset, {s.name: s for s in svc.subsets}),
                )
            )
        elif host_mode:
            wanted = set(subset.labels)
            members = [e for e in snapshot.endpoints.get(svc.name, ()) if wanted <= set(e.labels)]
            if not members:
                problems.append(
                    _problem(
                        f"route '{route}': subset '{svc.name}/{subset.name}' selects no endpoint",
                        where,
                        hint="give an endpoint the subset's labels",
                    )
                )
    return problems


def _check_mirror(
    route: str, mirror: Mirror, services: Mapping[str, Service], where: Position | None
) -> list[Problem]:
    svc = services.get(mirror.service)
    if svc is None:
        return [_problem(f"route '{route}': unknown mirror service '{mirror.service}'", where)]
    if mirror.subset is not None and mirror.subset not in {s.name for s in svc.subsets}:
        return [
            _problem(
                f"route '{route}': mirror service '{svc.name}' has no subset '{mirror.subset}'",
                where,
            )
        ]
    return []


def _check_sockets(
    snapshot: Snapshot, reserved: Iterable[tuple[str, int]], services: Mapping[str, Service]
) -> list[Problem]:
    problems: list[Problem] = []
    taken: dict[tuple[str, int], str] = {addr: "the admin API" for addr in reserved}
    ingress = snapshot.config.ingress
    if ingress.hosts:
        for port, what in ((ingress.https_port, "HTTPS"), (ingress.http_port, "HTTP")):
            taken.setdefault((ingress.bind, port), f"the ingress ({what})")
    for listener in snapshot.listeners:
        if listener.bind_port == 0:
            continue
        key = (listener.bind_host, listener.bind_port)
        clash = taken.get(key) or _wildcard_clash(key, taken)
        if clash is not None:
            svc = services.get(listener.service)
            problems.append(
                _problem(
                    f"listener {listener.name} wants {listener.bind_host}:{listener.bind_port},"
                    f" already used by {clash}",
                    svc.position if svc else None,
                    hint=f"set listen: on port {listener.port} of '{listener.service}'",
                )
            )
        else:
            taken[key] = f"listener {listener.name}"
    return problems


def _wildcard_clash(key: tuple[str, int], taken: Mapping[tuple[str, int], str]) -> str | None:
    """0.0.0.0:P and 127.0.0.1:P cannot both be bound (without SO_REUSEPORT tricks)."""
    host, port = key
    for (other_host, other_port), what in taken.items():
        if other_port == port and "0.0.0.0" in (host, other_host) and host != other_host:
            return what
    return None


def _did_you_mean(name: str, known: Mapping[str, object]) -> str | None:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def _problem(message: str, where: Position | None = None, hint: str | None = None) -> Problem:
    return Problem(message=message, position=where, hint=hint)
