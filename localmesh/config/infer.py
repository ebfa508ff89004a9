"""Zero-config: the mesh a compose project implies when there is no mesh.yaml.

Every service is meshed, with the ports it declares (``ports`` targets and ``expose``).
When it declares none, the server it runs gives them away: its image (``postgres:15``),
its command (``redis-server``) or its healthcheck (``curl http://127.0.0.1:8000/healthz``,
``pg_isready``, ``redis-cli ping``). A port's protocol is guessed from the port number,
then from the image, else HTTP:

- 5432 -> postgres, 6379 -> redis (mesh upstreams with protocol-aware extras);
- well-known non-HTTP ports (MySQL 3306, MongoDB 27017, memcached 11211, AMQP 5672, ...)
  -> tcp, so the mesh relays bytes instead of parsing them as HTTP;
- a Postgres/Redis/MySQL-like image on an unusual port -> that image's protocol;
- anything else -> http.

Services that share another network namespace (``network_mode: host``, ``service:x``,
``container:x``) cannot be intercepted and are left unmeshed; UDP ports are skipped.
A mesh.yaml overrides any of this per service and per port.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from localmesh.compose.project import ComposeProject
from localmesh.config.model import MeshConfig, MeshSettings, PortSpec, Protocol, Service

WELL_KNOWN_PORTS: Mapping[int, Protocol] = {
    5432: Protocol.POSTGRES,
    6379: Protocol.REDIS,
    3306: Protocol.TCP,  # MySQL / MariaDB
    33060: Protocol.TCP,  # MySQL X protocol
    27017: Protocol.TCP,  # MongoDB
    11211: Protocol.TCP,  # memcached
    5672: Protocol.TCP,  # AMQP (RabbitMQ)
    4222: Protocol.TCP,  # NATS
    9092: Protocol.TCP,  # Kafka
    2181: Protocol.TCP,  # ZooKeeper
    1883: Protocol.TCP,  # MQTT
    9042: Protocol.TCP,  # Cassandra
    1433: Protocol.TCP,  # SQL Server
    1521: Protocol.TCP,  # Oracle
    9300: Protocol.TCP,  # Elasticsearch transport
    25: Protocol.TCP,  # SMTP
    1025: Protocol.TCP,  # SMTP (mailhog, mailpit)
    22: Protocol.TCP,  # SSH
}

# image name (last path part, no tag) -> (protocol, default port)
IMAGE_DEFAULTS: Mapping[str, tuple[Protocol, int]] = {
    "postgres": (Protocol.POSTGRES, 5432),
    "postgresql": (Protocol.POSTGRES, 5432),
    "postgis": (Protocol.POSTGRES, 5432),
    "timescaledb": (Protocol.POSTGRES, 5432),
    "redis": (Protocol.REDIS, 6379),
    "redis-stack-server": (Protocol.REDIS, 6379),
    "valkey": (Protocol.REDIS, 6379),
    "keydb": (Protocol.REDIS, 6379),
    "mysql": (Protocol.TCP, 3306),
    "mariadb": (Protocol.TCP, 3306),
    "mongo": (Protocol.TCP, 27017),
    "mongodb": (Protocol.TCP, 27017),
    "memcached": (Protocol.TCP, 11211),
    "rabbitmq": (Protocol.TCP, 5672),
    "nats": (Protocol.TCP, 4222),
}

UNMESHABLE_NETWORK_MODE = re.compile(r"^(?:host|none|service:.+|container:.+)$")


@dataclass(frozen=True, slots=True)
class InferredPort:
    """A port with the reason its protocol was chosen (``init`` writes it as a comment)."""

    spec: PortSpec
    reason: str


@dataclass(frozen=True, slots=True)
class InferredService:
    service: Service
    ports: tuple[InferredPort, ...]
    note: str | None = None  # why it is unmeshed, for the comment in init's output
    udp_ports: tuple[int, ...] = ()


def image_name(image: str) -> str:
    """``'docker.io/library/postgres:15-alpine'`` -> ``'postgres'``."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[0].lower()


def declared_ports(svc: Mapping[str, Any]) -> tuple[list[int], list[int]]:
    """Container ports a service declares (``ports`` targets, ``expose``): TCP and UDP."""
    tcp: list[int] = []
    udp: list[int] = []
    for p in svc.get("ports") or ():
        if isinstance(p, Mapping) and isinstance(p.get("target"), int):
            (udp if p.get("protocol") == "udp" else tcp).append(int(p["target"]))
    for e in svc.get("expose") or ():
        text = str(e)
        spec, _, proto = text.partition("/")
        first, _, last = spec.partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            continue
        for port in range(int(first), int(last or first) + 1):
            (udp if proto == "udp" else tcp).append(port)
    return sorted(set(tcp)), sorted(set(udp))


def guess_protocol(port: int, image: str | None) -> tuple[Protocol, str]:
    """The protocol for a port, and the reason in a few words."""
    if port in WELL_KNOWN_PORTS:
        return WELL_KNOWN_PORTS[port], f"well-known port {port}"
    if image:
        known = IMAGE_DEFAULTS.get(image_name(image))
        if known is not None:
            return known[0], f"image {image_name(image)}"
    return Protocol.HTTP, "default"


# Servers recognisable from a command or healthcheck word: (protocol, default port).
SERVER_COMMANDS: Mapping[str, tuple[Protocol, int]] = {
    "redis-server": (Protocol.REDIS, 6379),
    "redis-cli": (Protocol.REDIS, 6379),
    "valkey-server": (Protocol.REDIS, 6379),
    "postgres": (Protocol.POSTGRES, 5432),
    "pg_isready": (Protocol.POSTGRES, 5432),
    "mysqld": (Protocol.TCP, 3306),
    "mysqladmin": (Protocol.TCP, 3306),
    "memcached": (Protocol.TCP, 11211),
}
_LOCAL_URL = re.compile(r"https?://(?:127\.0\.0\.1|localhost|0\.0\.0\.0|\[::1\]):([0-9]{1,5})\b")
_PORT_FLAG = re.compile(r"^(?:-p|--port)(?:=([0-9]{1,5}))?$")


def _words(value: Any) -> list[str]:
    """A compose command or healthcheck test as words (``CMD-SHELL`` strings split)."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [w for item in value if isinstance(item, str) for w in item.split()]
    return []


def _port_flag(words: list[str], start: int) -> int | None:
    """``-p 6380`` / ``--port=6380`` after a server word."""
    for i in range(start + 1, len(words)):
        m = _PORT_FLAG.match(words[i])
        if m:
            text = m.group(1) or (words[i + 1] if i + 1 < len(words) else "")
            return int(text) if text.isdigit() and 0 < int(text) <= 65535 else None
    return None


def ports_from_process(svc: Mapping[str, Any]) -> list[InferredPort]:
    """Ports a service without declared ports evidently serves, from command/healthcheck."""
    found: dict[int, InferredPort] = {}
    health = svc.get("healthcheck")
    test = _words(health.get("test")) if isinstance(health, Mapping) else []
    for source, words in (("command", _words(svc.get("command"))), ("healthcheck", test)):
        for i, word in enumerate(words):
            server = SERVER_COMMANDS.get(word.rsplit("/", 1)[-1])
            if server is not None:
                port = _port_flag(words, i) or server[1]
                found.setdefault(port, InferredPort(PortSpec(port, server[0]), f"{source} {word}"))
            for m in _LOCAL_URL.finditer(word):
                port = int(m.group(1))
                if 0 < port <= 65535:
                    protocol = WELL_KNOWN_PORTS.get(port, Protocol.HTTP)
                    found.setdefault(
                        port, InferredPort(PortSpec(port, protocol), f"{source} {m.group(0)}")
                    )
    return [found[p] for p in sorted(found)]


def infer_service(name: str, svc: Mapping[str, Any]) -> InferredService:
    """One compose service as the mesh sees it with no mesh.yaml."""
    tcp, udp = declared_ports(svc)
    image = svc.get("image") if isinstance(svc.get("image"), str) else None
    network_mode = svc.get("network_mode")
    if isinstance(network_mode, str) and UNMESHABLE_NETWORK_MODE.match(network_mode):
        return InferredService(
            Service(name=name, meshed=False),
            (),
            note=f"it uses network_mode: {network_mode}, which the mesh cannot intercept",
            udp_ports=tuple(udp),
        )
    ports: list[InferredPort] = []
    for port in tcp:
        protocol, reason = guess_protocol(port, image)
        ports.append(InferredPort(PortSpec(port, protocol), reason))
    known = IMAGE_DEFAULTS.get(image_name(image)) if image else None
    if not tcp and known is not None and image:
        protocol, port = known
        ports.append(InferredPort(PortSpec(port, protocol), f"image {image_name(image)}"))
    elif not tcp:
        ports = ports_from_process(svc)
    service = Service(name=name, ports=tuple(p.spec for p in ports))
    return InferredService(service, tuple(ports), udp_ports=tuple(udp))


def infer_services(project: ComposeProject) -> dict[str, InferredService]:
    return {name: infer_service(name, svc) for name, svc in sorted(project.services().items())}


def infer_mesh(project: ComposeProject) -> MeshConfig:
    """The mesh a compose project implies: every service meshed, protocols guessed."""
    services = tuple(s.service for s in infer_services(project).values())
    return MeshConfig(
        mesh=MeshSettings(name=project.name or MeshSettings().name),
        services=services,
        source=f"<inferred from {', '.join(str(f) for f in project.files) or project.name}>",
    )
