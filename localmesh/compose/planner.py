"""Decide the mesh for a compose project: who is meshed, VIPs, names, ports, isolation.

Pure: the project (Compose's normalised JSON), the mesh config and what the Docker engine
knows come in as values, a ``Planned`` comes out. ``generate`` does the I/O around it.

Rules (why each exists is in docs/compose.md):

- A service is left alone (**unmeshed**) when it has a ``network_mode`` (its network
  namespace is not its own to rewrite), exposes UDP (the mesh relays TCP only, so its
  names must keep resolving to the real container) or mesh.yaml says ``meshed: false``.
- Every other service is both an **upstream** (it gets a VIP) and a **client** (its
  ``extra_hosts`` map the names of every other upstream to their VIPs).
- Which names a client maps, and to which upstream, is ``config.names``: service and
  container names (which Docker's DNS answers on every network and so also on the shared
  mesh network), aliases on the client's networks, its ``links`` aliases; never the
  client's own names (a server binding to its own name must get its own address), and
  names the user already set in ``extra_hosts`` stay the user's.
- Ports and protocols are ``config.ports.learn``'s, the same ``init`` writes, plus what
  a mesh.yaml adds or overrides (source ``mesh-config``).
- Isolation: a client may reach an upstream through the mesh when they shared a compose
  network before the rewrite (``Client.reach``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from localmesh.compose import addresses
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
from localmesh.config.names import networks_of, user_extra_hosts
from localmesh.config.ports import Learned, Ports, ip_literals, learn
from localmesh.errors import ConfigError, Finding, Position, Problem

MESH_KEY = "localmesh"  # the service and the network generate adds


def mesh_network(docker_name: str, subnet: ipaddress.IPv4Network) -> MeshNetwork:
    """The mesh network on ``subnet`` as ``addresses.layout`` splits it."""
    lay = addresses.layout(subnet)
    return MeshNetwork(
        key=MESH_KEY,
        name=docker_name,
        subnet=str(lay.subnet),
        gateway=str(lay.gateway),
        mesh_ip=str(lay.mesh_ip),
        vip_range=str(lay.vip_range),
        ip_range=str(lay.ip_range),
    )


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
    """The plan, the host entries each client gets (``(name, vip)``, sorted), and whether
    the mesh network is ``internal`` (no way out of the host through it)."""

    plan: MeshPlan
    hosts: Mapping[str, tuple[tuple[str, str], ...]]
    internal: bool = False


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
        return networks_of(self.services[name])

    # --- the plan -------------------------------------------------------------------------

    def plan(self, requested: ipaddress.IPv4Network | None) -> Planned:
        self.check_reserved()
        for w in self.project.warnings:  # Compose's own, first: they came first
            self.findings.append(replace(w, position=relative(self.project, w.position)))
        if not self.engine.reachable:
            self.warn(
                "no-engine",
                "no Docker engine answered: the mesh subnet was picked without seeing the "
                "engine's networks and images were not inspected for ports",
            )
        excluded = {s.name for s in self.mesh.services if not s.meshed}
        learned = learn(self.name, self.services, self.engine.image_ports, unmeshed=excluded)
        meshed = learned.upstreams
        unmeshed = self.split(learned)
        self.warn_addresses()
        net = self.network(requested)
        vips = addresses.assign_vips(meshed, ipaddress.IPv4Network(net.vip_range))
        hosts = self.client_hosts(learned, vips)
        names = {n: learned.names.all_names(n) for n in meshed}
        for client in meshed:
            for host, upstream in learned.names.route(client).items():
                names[upstream].add(host)
        upstreams = tuple(
            self.upstream(n, vips[n], names[n], learned.ports[n]) for n in sorted(meshed)
        )
        clients = tuple(Client(n, self.reach(n, meshed)) for n in sorted(meshed))
        internal = self.internal(meshed)
        plan = MeshPlan(
            project=self.name,
            network=net,
            published=self.published(),
            upstreams=upstreams,
            clients=clients,
            unmeshed=tuple(Unmeshed(n, r) for n, r in sorted(unmeshed.items())),
            warnings=tuple(self.findings),
        )
        return Planned(plan, hosts, internal)

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

    def split(self, learned: Learned) -> dict[str, str]:
        """The services left alone, with the reason; a warning for each compose made so."""
        for name, why in sorted(learned.unmeshed.items()):
            if why.kind == "network-mode":
                self.warn(
                    "network-mode",
                    f"service '{name}' has {why.reason}; it is left as it was and its "
                    "calls do not go through the mesh",
                    "services",
                    name,
                    "network_mode",
                )
            elif why.kind == "udp":
                listed = why.reason.removeprefix("UDP ports ")
                self.warn(
                    "udp",
                    f"service '{name}' uses UDP ({listed}); the mesh relays TCP only, so it is "
                    "left as it was and its names keep resolving to the container itself",
                    "services",
                    name,
                )
        return {name: why.reason for name, why in learned.unmeshed.items()}

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
            for key, ip in ip_literals(svc):
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
        return mesh_network(docker_name, chosen)

    def client_hosts(
        self, learned: Learned, vips: Mapping[str, str]
    ) -> dict[str, tuple[tuple[str, str], ...]]:
        """Per client: the ``(name, VIP)`` host entries, warning about names two upstreams
        claim and names the user maps itself."""
        hosts: dict[str, tuple[tuple[str, str], ...]] = {}
        for client in learned.upstreams:
            user = user_extra_hosts(self.services[client])
            entries: list[tuple[str, str]] = []
            for n, winners in learned.names.claims(client).items():
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
            hosts[client] = tuple(entries)
        return hosts

    def upstream(self, name: str, vip: str, names: set[str], known: Ports) -> Upstream:
        """Ports and protocols as learned, with the mesh config's additions and overrides
        (source ``mesh-config``: only the config knows the port, or it says otherwise)."""
        configured = self.mesh.service(name)
        for spec in configured.ports if configured else ():
            if spec.port not in known.tcp or spec.protocol is not known.protocol(spec.port)[0]:
                known.add(spec.port, "mesh-config")
        protocols = {p.port: p.protocol for p in configured.ports} if configured else {}
        plan_ports = tuple(
            PlanPort(
                port,
                protocols.get(port) or known.protocol(port)[0],
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
        for key in ("ports", "expose"):
            wide = ", ".join(f"{r.lo}-{r.hi}" for r in known.wide_ranges if r.field == key)
            if plan_ports and wide:
                self.warn(
                    "unknown-ports",
                    f"service '{name}' {'publishes' if key == 'ports' else 'exposes'} the "
                    f"wide range {wide}; those ports are relayed as TCP through the catch-all "
                    "intercept",
                    "services",
                    name,
                    key,
                )
        return Upstream(name, vip, tuple(sorted(names)), plan_ports, unknown)

    def internal(self, meshed: list[str]) -> bool:
        """Whether the mesh network must be ``internal``: a meshed service only on internal
        networks had no way out, and a plain bridge joined to it would give it one. Then
        nothing but the mesh container needs one through the mesh network: it publishes its
        ports through another network of the project, which must exist."""
        networks = self.project.networks()
        closed = {n for n, cfg in networks.items() if (cfg or {}).get("internal")}
        confined = [s for s in sorted(meshed) if (nets := self.networks_of(s)) and nets <= closed]
        if not confined:
            return False
        if any(n not in closed and joined_by_mesh(cfg) for n, cfg in networks.items()):
            return True
        theirs = sorted({n for s in confined for n in self.networks_of(s)})
        self.warn(
            "internal-network",
            f"the mesh network is a plain bridge, so {', '.join(confined)} (on internal "
            f"networks only: {', '.join(theirs)}) can reach outside through it; it cannot be "
            "internal: the mesh container publishes its ports through it, and no other "
            "network of the project can",
            "networks",
            theirs[0],
            "internal",
        )
        return False

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
    return relative(project, project.position_of(*path))


def relative(project: ComposeProject, found: Position | None) -> Position | None:
    """``found`` with its file relative to the project directory, when it is inside."""
    if found is None:
        return None
    try:
        rel = Path(found.file).relative_to(project.working_dir)
    except ValueError:
        return found
    return Position(rel.as_posix(), found.line, found.column)


def joined_by_mesh(cfg: Mapping[str, Any] | None) -> bool:
    """Whether the mesh container joins a network of the project: all but host and none."""
    return str((cfg or {}).get("driver") or "") not in ("host", "none")


def _ipv4(text: str) -> ipaddress.IPv4Network | None:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    return net if isinstance(net, ipaddress.IPv4Network) else None
