"""What ports each service listens on, learned from everything a compose project says.

An upstream's known ports get their own listeners on its VIP; ports nobody could learn are
still served through the catch-all intercept, but knowing them means the right protocol.
Sources, each recorded by name in the plan:

- ``ports`` (targets) and ``expose`` of the service itself;
- ``image``: the image's ``EXPOSE`` list when the image is present locally (the caller
  asks the engine; this module only reads the answer);
- ``well-known-image``: the usual port of a well-known image, when nothing else is known;
- ``env:<client>`` / ``command:<client>``: a ``host:port`` or URL naming the service in
  another service's environment or command (``postgres://u:p@db:5432/x``,
  ``http://api/``, ``KAFKA=kafka:9092``, ``DB_HOST=db`` + ``DB_PORT=5432``);
- ``mesh-config``: ports the mesh config has (mesh.yaml, or what it infers from commands
  and healthchecks).

Pure functions over Compose's normalised JSON (values still ``$$``-escaped).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from localmesh.compose.project import unescape
from localmesh.config.infer import IMAGE_DEFAULTS, WELL_KNOWN_PORTS, guess_protocol, image_name
from localmesh.config.model import Protocol

#: Expanding ``expose: 30000-40000`` into listeners helps nobody: wider ranges are left to
#: the catch-all intercept.
MAX_RANGE = 64

#: Ports of well-known images, used when a service declares none and its image is not
#: present locally to ask. The first port is the main one.
WELL_KNOWN_IMAGE_PORTS: Mapping[str, tuple[int, ...]] = {
    "postgres": (5432,),
    "postgresql": (5432,),
    "postgis": (5432,),
    "timescaledb": (5432,),
    "pgvector": (5432,),
    "redis": (6379,),
    "redis-stack-server": (6379,),
    "valkey": (6379,),
    "keydb": (6379,),
    "mysql": (3306, 33060),
    "mariadb": (3306,),
    "percona": (3306,),
    "mongo": (27017,),
    "mongodb": (27017,),
    "memcached": (11211,),
    "rabbitmq": (5672, 15672),
    "elasticsearch": (9200, 9300),
    "opensearch": (9200, 9300),
    "kibana": (5601,),
    "nats": (4222, 8222),
    "kafka": (9092,),
    "cp-kafka": (9092,),
    "zookeeper": (2181,),
    "cp-zookeeper": (2181,),
    "minio": (9000, 9001),
    "mailhog": (1025, 8025),
    "mailpit": (1025, 8025),
    "cassandra": (9042,),
    "influxdb": (8086,),
    "clickhouse-server": (8123, 9000),
    "neo4j": (7474, 7687),
    "couchdb": (5984,),
    "etcd": (2379,),
    "consul": (8500,),
    "vault": (8200,),
    "grafana": (3000,),
    "prometheus": (9090,),
    "jaeger": (16686, 4317, 4318),
    "all-in-one": (16686, 4317, 4318),  # jaegertracing/all-in-one
    "nginx": (80,),
    "httpd": (80,),
    "caddy": (80, 443),
    "traefik": (80,),
    "adminer": (8080,),
    "keycloak": (8080,),
    "localstack": (4566,),
    "azurite": (10000, 10001, 10002),
    "server": (1433,),  # mcr.microsoft.com/mssql/server
}

SCHEME_PORTS: Mapping[str, int] = {
    "http": 80,
    "ws": 80,
    "https": 443,
    "wss": 443,
    "postgres": 5432,
    "postgresql": 5432,
    "redis": 6379,
    "rediss": 6379,
    "mysql": 3306,
    "mariadb": 3306,
    "mongodb": 27017,
    "amqp": 5672,
    "amqps": 5671,
    "nats": 4222,
    "memcached": 11211,
}

#: What a URL scheme says about the bytes on the wire. TLS schemes are opaque to the mesh
#: (the client encrypts end to end), so they are relayed as TCP.
SCHEME_PROTOCOLS: Mapping[str, Protocol] = {
    "http": Protocol.HTTP,
    "ws": Protocol.HTTP,
    "postgres": Protocol.POSTGRES,
    "postgresql": Protocol.POSTGRES,
    "redis": Protocol.REDIS,
    **dict.fromkeys(
        ("https", "wss", "rediss", "mysql", "mariadb", "mongodb", "amqp", "amqps", "nats"),
        Protocol.TCP,
    ),
    "memcached": Protocol.TCP,
}

_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^\s/?#\"'<>]*)")
# host:port outside URLs; the port must not run on into a version ("node:18.04") or
# userinfo ("user:1234@db"), and small numbers are image tags ("redis:7"), not ports.
_BARE = re.compile(r"(?<![\w.\-/@:])([A-Za-z_][\w.\-]*):(\d{2,5})(?![\w.:@\-])")
_MIN_BARE_PORT = 80
_HOST_KEY = re.compile(r"^(.*?)_?(?:HOST|HOSTNAME|SERVER|ADDR|ADDRESS)$", re.IGNORECASE)
_IPV4 = re.compile(r"(?<![\w.])(\d{1,3}(?:\.\d{1,3}){3})(?![\w.]|/\d)")


@dataclass
class Ports:
    """What is known about one service's ports, with where each was learned."""

    tcp: dict[int, set[str]] = field(default_factory=dict)
    udp: dict[int, set[str]] = field(default_factory=dict)
    wide_ranges: list[tuple[int, int]] = field(default_factory=list)  # left to the intercept
    hints: dict[int, Protocol] = field(default_factory=dict)  # from URL schemes

    def add(self, port: int, source: str, protocol: str = "tcp") -> None:
        if 0 < port < 65536 and not self.in_wide_range(port):
            (self.udp if protocol == "udp" else self.tcp).setdefault(port, set()).add(source)

    def in_wide_range(self, port: int) -> bool:
        return any(lo <= port <= hi for lo, hi in self.wide_ranges)


def declared(svc: Mapping[str, Any], into: Ports, source_suffix: str = "") -> None:
    """``ports`` targets and ``expose`` entries (``"8000"``, ``"8000-8010"``, ``"53/udp"``)."""
    for p in svc.get("ports") or ():
        if isinstance(p, Mapping) and isinstance(p.get("target"), int):
            into.add(int(p["target"]), "ports" + source_suffix, str(p.get("protocol") or "tcp"))
    for e in svc.get("expose") or ():
        spec, _, proto = str(e).partition("/")
        first, _, last = spec.partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            continue
        lo, hi = int(first), int(last or first)
        if hi - lo >= MAX_RANGE:
            into.wide_ranges.append((lo, hi))
            continue
        for port in range(lo, hi + 1):
            into.add(port, "expose" + source_suffix, proto or "tcp")


def image_exposed(exposed: Iterable[str], into: Ports) -> None:
    """An image's ``Config.ExposedPorts`` keys: ``"80/tcp"``, ``"53/udp"``."""
    for item in exposed:
        port, _, proto = item.partition("/")
        if port.isdigit():
            into.add(int(port), "image", proto or "tcp")


def well_known_image(image: str | None) -> tuple[int, ...]:
    return WELL_KNOWN_IMAGE_PORTS.get(image_name(image), ()) if image else ()


def protocol_for(port: int, image: str | None) -> Protocol:
    """The config's guess (port number, then image), except that another port of a
    well-known non-HTTP server (``kafka:9093``) is that server's protocol, not HTTP."""
    guessed = guess_protocol(port, image)[0]
    if port in WELL_KNOWN_PORTS or (image and image_name(image) in IMAGE_DEFAULTS):
        return guessed
    main = well_known_image(image)
    if main and guess_protocol(main[0], image)[0] is not Protocol.HTTP:
        return guess_protocol(main[0], image)[0]
    return guessed


@dataclass(frozen=True, slots=True)
class Reference:
    """``client`` names ``host`` (on ``port``) in its environment or command."""

    client: str
    where: str  # "env" | "command"
    key: str  # the environment key, or "" for a command
    host: str
    port: int | None
    protocol: Protocol | None = None  # what the URL scheme says, if anything


def references(name: str, svc: Mapping[str, Any]) -> Iterator[Reference]:
    """Every host (and port, when given or implied by a URL scheme) one service mentions."""
    env = svc.get("environment") or {}
    if isinstance(env, Mapping):
        for key, raw in env.items():
            if isinstance(raw, str):
                yield from _scan(name, "env", str(key), unescape(raw))
        yield from _host_port_pairs(name, env)
    for field_name in ("command", "entrypoint"):
        value = svc.get(field_name)
        parts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        for part in parts:
            if isinstance(part, str):
                yield from _scan(name, "command", "", unescape(part))


def _scan(client: str, where: str, key: str, text: str) -> Iterator[Reference]:
    rest = text
    for m in _URL.finditer(text):
        scheme = m.group(1).lower().split("+", 1)[0]
        authority = m.group(2).rsplit("@", 1)[-1]
        protocol = SCHEME_PROTOCOLS.get(scheme)
        for hostport in authority.split(","):
            host, port = _split_hostport(hostport)
            if host:
                port = port or SCHEME_PORTS.get(scheme)
                yield Reference(client, where, key, host, port, protocol)
        rest = rest.replace(m.group(0), " ")
    for m in _BARE.finditer(rest):
        port = int(m.group(2))
        if port >= _MIN_BARE_PORT:
            yield Reference(client, where, key, m.group(1), port)


def _split_hostport(text: str) -> tuple[str, int | None]:
    if text.startswith("["):  # an IPv6 literal: never a service name
        return "", None
    host, sep, port = text.partition(":")
    if sep and port.isdigit():
        return host, int(port)
    return host, None


def _host_port_pairs(client: str, env: Mapping[str, Any]) -> Iterator[Reference]:
    """``DB_HOST=db`` with ``DB_PORT=5432`` (also ``_HOSTNAME``, ``_SERVER``, ``_ADDR``)."""
    for key, raw in env.items():
        found = _HOST_KEY.match(str(key))
        if not found or not isinstance(raw, str) or ":" in raw or "/" in raw:
            continue
        prefix = found.group(1)
        port = env.get(f"{prefix}_PORT") if prefix else env.get("PORT")
        if isinstance(port, str) and port.isdigit():
            yield Reference(client, "env", str(key), unescape(raw).strip(), int(port))


def ip_literals(svc: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """``(environment key, address)`` for every private IPv4 literal a service's environment
    uses: calls to an address bypass name lookup, so the mesh cannot intercept them.
    Loopback and unspecified addresses are the container's own business and skipped."""
    env = svc.get("environment") or {}
    if not isinstance(env, Mapping):
        return
    for key, raw in env.items():
        if not isinstance(raw, str):
            continue
        for m in _IPV4.finditer(raw):
            try:
                ip = ipaddress.IPv4Address(m.group(1))
            except ValueError:
                continue
            if ip.is_private and not (ip.is_loopback or ip.is_unspecified or ip.is_link_local):
                yield str(key), str(ip)
