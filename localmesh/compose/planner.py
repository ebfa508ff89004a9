"""Decide the mesh for a compose project: who is meshed, VIPs, names, ports, isolation.

Pure: the project (Compose's normalised JSON), the mesh config and what the Docker engine
knows come in as values, a ``Planned`` comes out. ``generate`` does the I/O around it.

Rules (why each exists is in docs/compose.md):

- A service is left alone (**unmeshed**) when it has a ``network_mode`` (its network
  namespace is not its own to rewrite), exposes UDP (the mesh relays TCP only, so its
  names must keep resolving to the real container) or mesh.yaml says ``meshed: false``.
- Every other service is both an **upstream** (it gets a VIP) and a **client** (its
  ``extra_hosts`` map the names of every other upstream to their VIPs).
- A client maps, for each other upstream: its service name, ``container_name`` and the
  default container names (``<project>-<service>-<n>``), which Docker's DNS answers on
  every network and so also on the shared mesh network; the upstream's network aliases on
  the networks the client is on; and the client's own ``links`` aliases. The client's own
  names are never mapped (a server binding to its own name must get its own address), and
  names the user already set in ``extra_hosts`` stay the user's.
- Isolation: a client may reach an upstream through the mesh when they shared a compose
  network before the rewrite (``Client.reach``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localmesh.compose import addresses, ports
from localmesh.compose.plan import (
    Client,
    MeshNetwork,
    MeshPlan,
    PlanPort,
    PublishedPorts,
    Unmeshed,
    Upstream,
)
from localmesh.compose.project import ComposeProject
from localmesh.config.model import MeshConfig
from localmesh.errors import ConfigError, Finding, Position, Problem

MESH_KEY = "localmesh"  # the service and the network generate adds


@dataclass(frozen=True)
class EngineFacts:
    """What the Docker engine knows that the compose files do not.

    ``networks``: every existing network's IPv4 subnets by network name; ``image_ports``:
    ``Config.ExposedPorts`` keys of the images present locally, by the reference the
    service uses. ``reachable`` is False when no engine answered (then both are empty).
    """

    networks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    image_ports: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    reachable: bool = True


@dataclass(frozen=True)
class Planned:
    """The plan, and the host entries each client gets (``(name, vip)``, sorted)."""

    plan: MeshPlan
    hosts: Mapping[str, tuple[tuple[str, str], ...]]


def image_ref(project: str, name: str, svc: Mapping[str, Any]) -> str | None:
    """The image a service runs: its ``image``, or Compose's name for a built one."""
    image = svc.get("image")
    if isinstance(image, str) and image:
        return image
    if svc.get("build") is not None:
        return f"{project}-{name}"
    return None


def make_plan(
    project: ComposeProject,
    mesh: MeshConfig,
    engine: EngineFacts,
    *,
    subnet: ipaddress.IPv4Network | None = None,
) -> Planned:
    return _Planner(project, mesh, engine).plan(subnet)


class _Planner:
    def __init__(self, project: ComposeProject, mesh: MeshConfig, engine: EngineFacts) -> None:
        self.project = project
        self.name = project.name
        self.services = project.services()
        self.mesh = mesh
        self.engine = engine
        self.findings: list[Finding] = []

    # --- helpers --------------------------------------------------------------------------

    def warn(self, code: str, message: str, *path: str) -> None:
        pos = relative_position(self.project, *path) if path else None
        self.findings.append(Finding(code, message, pos))

    def networks_of(self, name: str) -> set[str]:
        nets = self.services[name].get("networks") or {}
        return {str(n) for n in nets}

    # --- the plan -------------------------------------------------------------------------

    def plan(self, requested: ipaddress.IPv4Network | None) -> Planned:
        self.check_reserved()
        if not self.engine.reachable:
            self.warn(
                "no-engine",
                "no Docker engine answered: the mesh subnet was picked without seeing the "
                "engine's networks and images were not inspected for ports",
            )
        known = {n: self.scan(n) for n in self.services}
        meshed, unmeshed = self.split(known)
        for name, found in known.items():
            self.complete(name, found)
        self.add_namespace_sharers(known, unmeshed)
        self.warn_addresses()
        net = self.network(requested)
        vips = addresses.assign_vips(meshed, ipaddress.IPv4Network(net.vip_range))
        hosts, routes = self.client_hosts(meshed, vips)
        self.add_references(known, meshed, routes)
        names = {n: set().union(*self.names_of(n).values()) for n in meshed}
        for route in routes.values():
            for host, upstream in route.items():
                names[upstream].add(host)
        upstreams = tuple(self.upstream(n, vips[n], names[n], known[n]) for n in sorted(meshed))
        clients = tuple(Client(n, self.reach(n, meshed)) for n in sorted(meshed))
        plan = MeshPlan(
            project=self.name,
            network=net,
            published=self.published(),
            upstreams=upstreams,
            clients=clients,
            unmeshed=tuple(Unmeshed(n, r) for n, r in sorted(unmeshed.items())),
            warnings=tuple(self.findings),
        )
        return Planned(plan, hosts)

    def check_reserved(self) -> None:
        problems = [
            Problem(
                f"the {kind} name '{MESH_KEY}' is reserved for the mesh",
                self.project.position_of(section, MESH_KEY),
                hint=f"rename your {kind}",
            )
            for section, kind in (("services", "service"), ("networks", "network"))
            if MESH_KEY in (self.project.model.get(section) or {})
        ]
        if problems:
            raise ConfigError(problems)

    def split(self, known: Mapping[str, ports.Ports]) -> tuple[list[str], dict[str, str]]:
        meshed: list[str] = []
        unmeshed: dict[str, str] = {}
        for name, svc in sorted(self.services.items()):
            mode = svc.get("network_mode")
            configured = self.mesh.service(name)
            udp = sorted(known[name].udp)
            if isinstance(mode, str) and mode:
                unmeshed[name] = f"network_mode: {mode}"
                self.warn(
                    "network-mode",
                    f"service '{name}' has network_mode: {mode}; it is left as it was and its "
                    "calls do not go through the mesh",
                    "services",
                    name,
                    "network_mode",
                )
            elif configured is not None and not configured.meshed:
                unmeshed[name] = "meshed: false in the mesh config"
            elif udp:
                listed = ", ".join(f"{p}/udp" for p in udp)
                unmeshed[name] = f"UDP ports {listed}"
                self.warn(
                    "udp",
                    f"service '{name}' uses UDP ({listed}); the mesh relays TCP only, so it is "
                    "left as it was and its names keep resolving to the container itself",
                    "services",
                    name,
                )
            else:
                meshed.append(name)
        return meshed, unmeshed

    def scan(self, name: str) -> ports.Ports:
        """What the service itself and its image say (TCP and UDP)."""
        svc = self.services[name]
        found = ports.Ports()
        ports.declared(svc, found)
        ref = image_ref(self.name, name, svc)
        if ref is not None:
            ports.image_exposed(self.engine.image_ports.get(ref, ()), found)
        return found

    def complete(self, name: str, found: ports.Ports) -> None:
        """Well-known image ports when nothing else is known, then the mesh config's."""
        svc = self.services[name]
        if not found.tcp:
            for port in ports.well_known_image(svc.get("image")):
                found.add(port, "well-known-image")
        configured = self.mesh.service(name)
        if configured is not None:
            for spec in configured.ports:
                if spec.port not in found.tcp:
                    found.add(spec.port, "mesh-config")

    def add_namespace_sharers(
        self, known: dict[str, ports.Ports], unmeshed: Mapping[str, str]
    ) -> None:
        """``network_mode: service:x`` serves its ports on x's addresses: they are x's ports."""
        for name in unmeshed:
            mode = self.services[name].get("network_mode")
            if isinstance(mode, str) and mode.startswith("service:"):
                owner = mode.split(":", 1)[1]
                if owner in known:
                    ports.declared(self.services[name], known[owner], f":{name}")

    def names_of(self, name: str) -> dict[str, set[str]]:
        """Network-independent names and per-network aliases: ``{"": {...}, net: {...}}``."""
        svc = self.services[name]
        out: dict[str, set[str]] = {"": {name}}
        container_name = svc.get("container_name")
        if isinstance(container_name, str) and container_name:
            out[""].add(container_name)
        else:
            out[""].update(f"{self.name}-{name}-{i}" for i in range(1, replicas(svc) + 1))
        nets = svc.get("networks") or {}
        if isinstance(nets, Mapping):
            for net, cfg in nets.items():
                aliases = cfg.get("aliases") if isinstance(cfg, Mapping) else None
                if aliases:
                    out.setdefault(str(net), set()).update(str(a) for a in aliases)
        return out

    def add_references(
        self,
        known: dict[str, ports.Ports],
        meshed: list[str],
        routes: Mapping[str, Mapping[str, str]],
    ) -> None:
        """Ports other services name: ``db:5432`` in a client's env is a port of ``db``.

        A name means what it means in that client (aliases differ per network); names a
        client does not map (its own, or any in an unmeshed client) fall back to service
        and container names, which mean the same everywhere.
        """
        everywhere: dict[str, str] = {}
        for name in meshed:
            for n in self.names_of(name)[""]:
                everywhere.setdefault(n, name)
        for client, svc in sorted(self.services.items()):
            route = routes.get(client, {})
            for ref in ports.references(client, svc):
                owner = route.get(ref.host) or everywhere.get(ref.host)
                if owner is None or ref.port is None:
                    continue
                known[owner].add(ref.port, f"{ref.where}:{client}")
                if ref.protocol is not None and ref.port in known[owner].tcp:
                    known[owner].hints.setdefault(ref.port, ref.protocol)

    def warn_addresses(self) -> None:
        """Static addresses and IP literals: every service, since unmeshed ones call too."""
        for name in sorted(self.services):
            svc = self.services[name]
            nets = svc.get("networks") or {}
            if isinstance(nets, Mapping):
                for net, cfg in sorted(nets.items()):
                    for key in ("ipv4_address", "ipv6_address"):
                        addr = cfg.get(key) if isinstance(cfg, Mapping) else None
                        if addr:
                            self.warn(
                                "static-ip",
                                f"service '{name}' has the static address {addr} on network "
                                f"'{net}'; calls to that address bypass the mesh (calls by name "
                                "go through it)",
                                "services",
                                name,
                                "networks",
                                str(net),
                                key,
                            )
            for key, ip in ports.ip_literals(svc):
                self.warn(
                    "ip-literal",
                    f"service '{name}' names the address {ip} in {key}; calls to an address "
                    "bypass the mesh (use a service name to have them meshed)",
                    "services",
                    name,
                    "environment",
                    key,
                )

    def network(self, requested: ipaddress.IPv4Network | None) -> MeshNetwork:
        docker_name = f"{self.name}_{MESH_KEY}"
        taken: list[ipaddress.IPv4Network] = []
        previous: ipaddress.IPv4Network | None = None
        for net_name, subnets in sorted(self.engine.networks.items()):
            parsed = [_ipv4(s) for s in subnets]
            if net_name == docker_name:
                previous = next((p for p in parsed if p is not None), None)
                continue
            taken += [p for p in parsed if p is not None]
        for cfg in self.project.networks().values():
            for pool in ((cfg or {}).get("ipam") or {}).get("config") or ():
                found = _ipv4(str(pool.get("subnet") or ""))
                if found is not None:
                    taken.append(found)
        chosen = addresses.choose_subnet(self.name, taken, requested=requested, previous=previous)
        lay = addresses.layout(chosen)
        return MeshNetwork(
            key=MESH_KEY,
            name=docker_name,
            subnet=str(lay.subnet),
            gateway=str(lay.gateway),
            mesh_ip=str(lay.mesh_ip),
            vip_range=str(lay.vip_range),
            ip_range=str(lay.ip_range),
        )

    def client_hosts(
        self, meshed: list[str], vips: Mapping[str, str]
    ) -> tuple[dict[str, tuple[tuple[str, str], ...]], dict[str, dict[str, str]]]:
        """Per client: the ``(name, VIP)`` host entries, and which upstream each of those
        names means there."""
        names = {n: self.names_of(n) for n in meshed}
        all_names: dict[str, set[str]] = {n: set().union(*g.values()) for n, g in names.items()}
        hosts: dict[str, tuple[tuple[str, str], ...]] = {}
        routes: dict[str, dict[str, str]] = {}
        for client in meshed:
            svc = self.services[client]
            own = all_names[client]
            user = user_extra_hosts(svc)
            nets = self.networks_of(client)
            # name -> {upstream: priority}; lower wins (links, then names, then aliases)
            claims: dict[str, dict[str, int]] = {}
            for link in svc.get("links") or ():
                target, _, alias = str(link).partition(":")
                if target in vips and target != client:
                    claims.setdefault(alias or target, {})[target] = 0
            for upstream in meshed:
                if upstream == client:
                    continue
                for net, group in names[upstream].items():
                    if net and net not in nets:
                        continue
                    for n in group:
                        prio = 2 if net else 1
                        current = claims.setdefault(n, {})
                        current[upstream] = min(current.get(upstream, prio), prio)
            entries: list[tuple[str, str]] = []
            route: dict[str, str] = {}
            for n, owners in sorted(claims.items()):
                if n in own:
                    continue
                best = min(owners.values())
                winners = sorted(u for u, p in owners.items() if p == best)
                if len(winners) > 1:
                    self.warn(
                        "name-conflict",
                        f"in service '{client}', the name '{n}' belongs to "
                        f"{' and '.join(repr(w) for w in winners)}; the mesh sends it to "
                        f"'{winners[0]}'",
                        "services",
                        client,
                    )
                if n in user:
                    self.warn(
                        "user-extra-host",
                        f"service '{client}' maps '{n}' itself in extra_hosts; calls to that "
                        "name keep going where it says, not through the mesh",
                        "services",
                        client,
                        "extra_hosts",
                    )
                    continue
                entries.append((n, vips[winners[0]]))
                route[n] = winners[0]
            hosts[client] = tuple(entries)
            routes[client] = route
        return hosts, routes

    def upstream(self, name: str, vip: str, names: set[str], known: ports.Ports) -> Upstream:
        """Protocols: the mesh config's, else what a client's URL scheme says, else a guess."""
        svc = self.services[name]
        configured = self.mesh.service(name)
        protocols = {p.port: p.protocol for p in configured.ports} if configured else {}
        image = svc.get("image") if isinstance(svc.get("image"), str) else None
        plan_ports = tuple(
            PlanPort(
                port,
                protocols.get(port) or known.hints.get(port) or ports.protocol_for(port, image),
                tuple(sorted(sources)),
            )
            for port, sources in sorted(known.tcp.items())
        )
        unknown = not plan_ports or bool(known.wide_ranges)
        if not plan_ports:
            self.warn(
                "unknown-ports",
                f"the ports of service '{name}' are unknown: calls to any port of its VIP are "
                "relayed as plain TCP (declare `expose:` for HTTP-aware routing)",
                "services",
                name,
            )
        elif known.wide_ranges:
            wide = ", ".join(f"{lo}-{hi}" for lo, hi in known.wide_ranges)
            self.warn(
                "unknown-ports",
                f"service '{name}' exposes the wide range {wide}; "
                "those ports are relayed as TCP through the catch-all intercept",
                "services",
                name,
                "expose",
            )
        return Upstream(name, vip, tuple(sorted(names)), plan_ports, unknown)

    def reach(self, client: str, meshed: list[str]) -> tuple[str, ...]:
        mine = self.networks_of(client)
        return tuple(u for u in sorted(meshed) if u != client and mine & self.networks_of(u))

    def published(self) -> PublishedPorts:
        settings = self.mesh.mesh
        ingress = self.mesh.ingress
        pub = PublishedPorts(
            admin=settings.admin_port,
            https=ingress.https_port if ingress.hosts else None,
            http=ingress.http_port if ingress.hosts else None,
        )
        taken = self.host_ports()
        for label, port in (
            ("admin", pub.admin),
            ("ingress https", pub.https),
            ("ingress http", pub.http),
        ):
            if port is not None and port in taken:
                svc, index = taken[port]
                raise ConfigError(
                    Problem(
                        f"the mesh's {label} port {port} is already published by service '{svc}'",
                        self.project.position_of("services", svc, "ports", str(index)),
                    ),
                    hint="choose another port in mesh.yaml (mesh.admin_port, "
                    "ingress.https_port / ingress.http_port)",
                )
        return pub

    def host_ports(self) -> dict[int, tuple[str, int]]:
        """Host TCP ports the user's services publish: ``port -> (service, index)``."""
        out: dict[int, tuple[str, int]] = {}
        for name, svc in sorted(self.services.items()):
            for i, p in enumerate(svc.get("ports") or ()):
                if not isinstance(p, Mapping) or p.get("protocol") == "udp":
                    continue
                published = str(p.get("published") or "")
                lo, _, hi = published.partition("-")
                if lo.isdigit():
                    for port in range(int(lo), int(hi or lo) + 1):
                        out.setdefault(port, (name, i))
        return out


def relative_position(project: ComposeProject, *path: str) -> Position | None:
    """Where the user wrote ``path``, the file relative to the project: plans stay
    machine-free (golden files, the same plan on every checkout)."""
    found = project.position_of(*path)
    if found is None:
        return None
    try:
        rel = Path(found.file).resolve().relative_to(project.working_dir)
    except ValueError:
        return found
    return Position(rel.as_posix(), found.line, found.column)


def replicas(svc: Mapping[str, Any]) -> int:
    """How many containers a service runs (``scale``, else ``deploy.replicas``, else 1)."""
    scale = svc.get("scale")
    if isinstance(scale, int):
        return max(scale, 1)
    deploy = svc.get("deploy") or {}
    count = deploy.get("replicas") if isinstance(deploy, Mapping) else None
    return max(count, 1) if isinstance(count, int) else 1


def user_extra_hosts(svc: Mapping[str, Any]) -> set[str]:
    """Names the user maps in ``extra_hosts`` (list ``name=ip``/``name:ip`` or mapping)."""
    raw = svc.get("extra_hosts") or ()
    if isinstance(raw, Mapping):
        return {str(k) for k in raw}
    out: set[str] = set()
    for entry in raw:
        text = str(entry)
        sep = "=" if "=" in text else ":"
        out.add(text.split(sep, 1)[0])
    return out


def _ipv4(text: str) -> ipaddress.IPv4Network | None:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    return net if isinstance(net, ipaddress.IPv4Network) else None
