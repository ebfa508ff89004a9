"""The mesh plan: what ``generate`` decided, and the contract with the runtime.

``generate`` writes it as ``.localmesh/plan.json`` beside the rewritten compose file; the
mesh container reads it (mounted at ``/etc/localmesh/plan.json``) to know which addresses
to own and which callers to allow. Words:

- the **mesh network** is the compose network ``localmesh`` that generate adds: every
  meshed service joins it; the mesh container owns ``mesh_ip`` and every VIP on it.
- an **upstream** is a meshed service other services call by name. Its **VIP** (a /32 in
  ``vip_range``) is what every one of its ``names`` resolves to in every client (through
  ``extra_hosts``); the mesh listens on ``VIP:port`` for each known port, and an upstream
  with ``unknown_ports`` must also be served on any other port of its VIP (the runtime
  redirects the VIP range to one intercept listener and reads ``SO_ORIGINAL_DST``).
- a **client** is a meshed service that calls others. ``reach`` is the set of upstreams
  it shared a compose network with before the rewrite: network isolation the user built
  is kept by denying every other pair unless mesh.yaml allows it.
- **unmeshed** services are left exactly as they were (``network_mode``, UDP, ...).

The JSON form is stable (sorted keys, two-space indent, trailing newline), so the same
plan is the same bytes. ``version`` changes only when a field changes meaning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from localmesh.config.model import Protocol
from localmesh.errors import ConfigError, Finding, Position, Problem

PLAN_VERSION = 1


@dataclass(frozen=True, slots=True)
class PlanPort:
    """A port an upstream serves; ``sources`` say how generate learned it (``expose``,
    ``ports``, ``image``, ``well-known-image``, ``env:<client>``, ``mesh.yaml``, ...)."""

    port: int
    protocol: Protocol
    sources: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Upstream:
    service: str
    vip: str
    names: tuple[str, ...]  # every host name that resolves to the VIP in some client
    ports: tuple[PlanPort, ...] = ()
    unknown_ports: bool = False

    def port(self, number: int) -> PlanPort | None:
        return next((p for p in self.ports if p.port == number), None)


@dataclass(frozen=True, slots=True)
class Client:
    service: str
    reach: tuple[str, ...]  # upstreams it shared a network with before the rewrite


@dataclass(frozen=True, slots=True)
class Unmeshed:
    service: str
    reason: str


@dataclass(frozen=True, slots=True)
class MeshNetwork:
    """The network generate adds; all addresses are IPv4 inside ``subnet``.

    ``gateway`` is the bridge, ``mesh_ip`` the mesh container, ``vip_range`` holds every
    VIP and ``ip_range`` is where Docker places the other containers: the two never meet.
    """

    key: str  # the compose key ("localmesh")
    name: str  # the Docker network name ("<project>_localmesh")
    subnet: str
    gateway: str
    mesh_ip: str
    vip_range: str
    ip_range: str


@dataclass(frozen=True, slots=True)
class PublishedPorts:
    """Ports of the mesh container published on the host's 127.0.0.1 (host port = port)."""

    admin: int
    https: int | None = None  # ingress; None when mesh.yaml declares no ingress hosts
    http: int | None = None


@dataclass(frozen=True)
class MeshPlan:
    project: str
    network: MeshNetwork
    published: PublishedPorts
    upstreams: tuple[Upstream, ...] = ()
    clients: tuple[Client, ...] = ()
    unmeshed: tuple[Unmeshed, ...] = ()
    warnings: tuple[Finding, ...] = ()
    version: int = PLAN_VERSION

    def upstream(self, service: str) -> Upstream | None:
        return next((u for u in self.upstreams if u.service == service), None)

    def client(self, service: str) -> Client | None:
        return next((c for c in self.clients if c.service == service), None)

    def may_reach(self, client: str, upstream: str) -> bool:
        """Whether compose networks connected the pair before the rewrite."""
        found = self.client(client)
        return found is not None and upstream in found.reach

    # --- JSON -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        net = self.network
        pub = self.published
        return {
            "version": self.version,
            "project": self.project,
            "network": {
                "key": net.key,
                "name": net.name,
                "subnet": net.subnet,
                "gateway": net.gateway,
                "mesh_ip": net.mesh_ip,
                "vip_range": net.vip_range,
                "ip_range": net.ip_range,
            },
            "published": {"admin": pub.admin, "https": pub.https, "http": pub.http},
            "upstreams": {
                u.service: {
                    "vip": u.vip,
                    "names": list(u.names),
                    "ports": [
                        {"port": p.port, "protocol": p.protocol.value, "sources": list(p.sources)}
                        for p in u.ports
                    ],
                    "unknown_ports": u.unknown_ports,
                }
                for u in self.upstreams
            },
            "clients": {c.service: {"reach": list(c.reach)} for c in self.clients},
            "unmeshed": {u.service: u.reason for u in self.unmeshed},
            "warnings": [w.as_dict() for w in self.warnings],
        }

    def to_json(self) -> str:
        return stable_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeshPlan:
        version = data.get("version")
        if version != PLAN_VERSION:
            raise ConfigError(
                Problem(f"plan version {version!r} is not {PLAN_VERSION}"),
                hint="regenerate it with the localmesh that runs it (localmesh generate)",
            )
        net = data["network"]
        pub = data["published"]
        return cls(
            project=data["project"],
            network=MeshNetwork(
                key=net["key"],
                name=net["name"],
                subnet=net["subnet"],
                gateway=net["gateway"],
                mesh_ip=net["mesh_ip"],
                vip_range=net["vip_range"],
                ip_range=net["ip_range"],
            ),
            published=PublishedPorts(admin=pub["admin"], https=pub["https"], http=pub["http"]),
            upstreams=tuple(
                Upstream(
                    service=name,
                    vip=u["vip"],
                    names=tuple(u["names"]),
                    ports=tuple(
                        PlanPort(p["port"], Protocol(p["protocol"]), tuple(p["sources"]))
                        for p in u["ports"]
                    ),
                    unknown_ports=u["unknown_ports"],
                )
                for name, u in sorted(data["upstreams"].items())
            ),
            clients=tuple(
                Client(name, tuple(c["reach"])) for name, c in sorted(data["clients"].items())
            ),
            unmeshed=tuple(Unmeshed(n, r) for n, r in sorted(data["unmeshed"].items())),
            warnings=tuple(_finding(w) for w in data["warnings"]),
            version=version,
        )

    @classmethod
    def from_json(cls, text: str, source: str = "plan.json") -> MeshPlan:
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError(f"a JSON {type(data).__name__}, not an object")
            return cls.from_dict(data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(
                Problem(f"{source} is not a localmesh plan: {type(exc).__name__}: {exc}"),
                hint="regenerate it with localmesh generate",
            ) from None


def stable_json(data: Any) -> str:
    """Sorted keys, two-space indent, trailing newline: the same data is the same bytes."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _finding(d: dict[str, Any]) -> Finding:
    pos = Position(d["file"], d["line"], d["column"]) if d.get("file") else None
    return Finding(d["code"], d["message"], pos)
