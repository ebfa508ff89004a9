"""Which ports each compose service serves, and what protocol each speaks: the one place.

``localmesh init`` (the inferred mesh.yaml) and ``localmesh generate`` (the plan) both ask
``learn``, so the mesh a user reads and the listeners the mesh opens never disagree.
Pure functions over Compose's normalised JSON (values still ``$$``-escaped) plus, when
the caller could ask a Docker engine, the ``EXPOSE`` lists of local images.

Where a port comes from, recorded by name (the plan's ``sources``):

- ``ports`` (targets) and ``expose`` of the service itself; ranges up to ``MAX_RANGE``
  ports are listed, wider ones are left to the catch-all intercept;
- ``image``: the image's ``EXPOSE`` list when the image is present locally;
- ``well-known-image``: the usual ports of a well-known image, when nothing else is known;
- ``command`` / ``healthcheck``: the server the service evidently runs
  (``redis-server --port 6380``, ``pg_isready``, ``curl http://localhost:8000/healthz``),
  when still nothing is known;
- ``ports:<svc>`` / ``expose:<svc>``: a service sharing this one's network namespace
  (``network_mode: service:this``) serves its ports on this one's addresses;
- ``env:<client>`` / ``command:<client>``: a ``host:port`` or URL naming the service in
  another service's environment or command (``postgres://u:p@db:5432/x``,
  ``http://api/``, ``KAFKA=kafka:9092``, ``DB_HOST=db`` + ``DB_PORT=5432``), the name
  resolved the way that client resolves it (``config.names``).

A port's protocol: what a URL naming it says (a client's scheme, or the service's own
healthcheck URL; TLS schemes are opaque to the mesh, so TCP), else the image's knowledge
of that port, else the port number (5432 postgres, 6379 redis, other well-known non-HTTP
ports tcp), else the image's main protocol (``kafka:9093`` is Kafka, not HTTP), else
http. A service is left out of the mesh when it has a ``network_mode`` (its namespace is
not its own to rewrite) or any UDP port (the mesh carries TCP only, so its names must keep
resolving to the container).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from localmesh.compose.project import unescape
from localmesh.config.model import Protocol
from localmesh.config.names import NameTable, Services

#: Expanding ``expose: 30000-40000`` into listeners helps nobody: wider ranges are left to
#: the catch-all intercept.
MAX_RANGE = 64


class PortRange(NamedTuple):
    """A range too wide to list, and the field that declares it (``ports``, ``expose``)."""

    lo: int
    hi: int
    field: str


#: ``image`` -> ``Config.ExposedPorts`` keys (``"80/tcp"``), for images present locally;
#: keyed by the reference the service runs (``image_ref``).
ImagePorts = Mapping[str, Collection[str]]

_HTTP, _TCP = Protocol.HTTP, Protocol.TCP

#: Port numbers whose protocol is known whatever the image.
WELL_KNOWN_PORTS: Mapping[int, Protocol] = {
    5432: Protocol.POSTGRES,
    6379: Protocol.REDIS,
    3306: _TCP,  # MySQL / MariaDB
    33060: _TCP,  # MySQL X protocol
    27017: _TCP,  # MongoDB
    11211: _TCP,  # memcached
    5672: _TCP,  # AMQP (RabbitMQ)
    4222: _TCP,  # NATS
    9092: _TCP,  # Kafka
    2181: _TCP,  # ZooKeeper
    1883: _TCP,  # MQTT
    9042: _TCP,  # Cassandra
    1433: _TCP,  # SQL Server
    1521: _TCP,  # Oracle
    9300: _TCP,  # Elasticsearch transport
    25: _TCP,  # SMTP
    1025: _TCP,  # SMTP (mailhog, mailpit)
    22: _TCP,  # SSH
    443: _TCP,  # HTTPS: TLS, which an HTTP listener would parse as garbage
    8443: _TCP,  # HTTPS, the unprivileged one
}

_PG = ((5432, Protocol.POSTGRES),)
_REDIS = ((6379, Protocol.REDIS),)

#: Well-known images (the last path part of the reference, no tag): their ports, main one
#: first, each with its protocol. gRPC (HTTP/2) ports are tcp: the L7 engine speaks HTTP/1.
WELL_KNOWN_IMAGES: Mapping[str, tuple[tuple[int, Protocol], ...]] = {
    **dict.fromkeys(("postgres", "postgresql", "postgis", "timescaledb", "pgvector"), _PG),
    **dict.fromkeys(("redis", "redis-stack-server", "valkey", "keydb"), _REDIS),
    "mysql": ((3306, _TCP), (33060, _TCP)),
    "mariadb": ((3306, _TCP),),
    "percona": ((3306, _TCP),),
    "mongo": ((27017, _TCP),),
    "mongodb": ((27017, _TCP),),
    "memcached": ((11211, _TCP),),
    "rabbitmq": ((5672, _TCP), (15672, _HTTP)),  # AMQP, management UI
    "elasticsearch": ((9200, _HTTP), (9300, _TCP)),
    "opensearch": ((9200, _HTTP), (9300, _TCP)),
    "kibana": ((5601, _HTTP),),
    "nats": ((4222, _TCP), (8222, _HTTP)),  # clients, monitoring
    "kafka": ((9092, _TCP),),
    "cp-kafka": ((9092, _TCP),),
    "zookeeper": ((2181, _TCP),),
    "cp-zookeeper": ((2181, _TCP),),
    "minio": ((9000, _HTTP), (9001, _HTTP)),
    "mailhog": ((1025, _TCP), (8025, _HTTP)),  # SMTP, web UI
    "mailpit": ((1025, _TCP), (8025, _HTTP)),
    "cassandra": ((9042, _TCP),),
    "influxdb": ((8086, _HTTP),),
    "clickhouse-server": ((8123, _HTTP), (9000, _TCP)),  # HTTP, native
    "neo4j": ((7474, _HTTP), (7687, _TCP)),  # browser, Bolt
    "couchdb": ((5984, _HTTP),),
    "etcd": ((2379, _TCP),),  # gRPC
    "consul": ((8500, _HTTP),),
    "vault": ((8200, _HTTP),),
    "grafana": ((3000, _HTTP),),
    "prometheus": ((9090, _HTTP),),
    "jaeger": ((16686, _HTTP), (4317, _TCP), (4318, _HTTP)),  # UI, OTLP gRPC, OTLP HTTP
    "all-in-one": ((16686, _HTTP), (4317, _TCP), (4318, _HTTP)),  # jaegertracing/all-in-one
    "nginx": ((80, _HTTP),),
    "httpd": ((80, _HTTP),),
    "caddy": ((80, _HTTP), (443, _TCP)),
    "traefik": ((80, _HTTP),),
    "adminer": ((8080, _HTTP),),
    "keycloak": ((8080, _HTTP),),
    "localstack": ((4566, _HTTP),),
    "azurite": ((10000, _HTTP), (10001, _HTTP), (10002, _HTTP)),
    "server": ((1433, _TCP),),  # mcr.microsoft.com/mssql/server
}

#: Servers recognisable from a command or healthcheck word: (protocol, default port).
SERVER_COMMANDS: Mapping[str, tuple[Protocol, int]] = {
    "redis-server": (Protocol.REDIS, 6379),
    "redis-cli": (Protocol.REDIS, 6379),
    "valkey-server": (Protocol.REDIS, 6379),
    "postgres": (Protocol.POSTGRES, 5432),
    "pg_isready": (Protocol.POSTGRES, 5432),
    "mysqld": (_TCP, 3306),
    "mysqladmin": (_TCP, 3306),
    "memcached": (_TCP, 11211),
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
    "http": _HTTP,
    "ws": _HTTP,
    "postgres": Protocol.POSTGRES,
    "postgresql": Protocol.POSTGRES,
    "redis": Protocol.REDIS,
    **dict.fromkeys(
        ("https", "wss", "rediss", "mysql", "mariadb", "mongodb", "amqp", "amqps", "nats"), _TCP
    ),
    "memcached": _TCP,
}

_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^\s/?#\"'<>]*)")
# host:port outside URLs; the port must not run on into a version ("node:18.04") or
# userinfo ("user:1234@db"), and small numbers are image tags ("redis:7"), not ports.
_BARE = re.compile(r"(?<![\w.\-/@:])([A-Za-z_][\w.\-]*):(\d{2,5})(?![\w.:@\-])")
_MIN_BARE_PORT = 80
_HOST_KEY = re.compile(r"^(.*?)_?(?:HOST|HOSTNAME|SERVER|ADDR|ADDRESS)$", re.IGNORECASE)
_IPV4 = re.compile(r"(?<![\w.])(\d{1,3}(?:\.\d{1,3}){3})(?![\w.]|/\d)")
_LOCAL_URL = re.compile(
    r"(https?)://(?:127\.0\.0\.1|localhost|0\.0\.0\.0|\[::1\]):([0-9]{1,5})\b", re.IGNORECASE
)
_PORT_FLAG = re.compile(r"^(?:-p|--port)(?:=([0-9]{1,5}))?$")


def image_name(image: str) -> str:
    """``'docker.io/library/postgres:15-alpine'`` -> ``'postgres'``."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[0].lower()


def image_ref(project: str, name: str, svc: Mapping[str, Any]) -> str | None:
    """The image a service runs: its ``image``, or Compose's name for a built one."""
    image = svc.get("image")
    if isinstance(image, str) and image:
        return image
    if svc.get("build") is not None:
        return f"{project}-{name}"
    return None


def well_known_image(image: str | None) -> tuple[int, ...]:
    """The usual ports of a well-known image, main one first."""
    return tuple(p for p, _ in WELL_KNOWN_IMAGES.get(image_name(image), ())) if image else ()


def protocol_for(port: int, image: str | None) -> tuple[Protocol, str]:
    """The protocol of a port nobody named with a URL, and the reason in a few words."""
    known = WELL_KNOWN_IMAGES.get(image_name(image), ()) if image else ()
    for number, protocol in known:
        if number == port:
            return protocol, f"image {image_name(image or '')}"
    if port in WELL_KNOWN_PORTS:
        return WELL_KNOWN_PORTS[port], f"well-known port {port}"
    if known:
        return known[0][1], f"image {image_name(image or '')}"
    return _HTTP, "default"


@dataclass
class Ports:
    """What is known about one service's ports, with where each was learned."""

    image: str | None = None  # the service's ``image``, for protocol guesses
    tcp: dict[int, set[str]] = field(default_factory=dict)
    udp: dict[int, set[str]] = field(default_factory=dict)
    wide_ranges: list[PortRange] = field(default_factory=list)  # left to the intercept
    hints: dict[int, tuple[Protocol, str]] = field(default_factory=dict)  # from URLs, servers

    def add(self, port: int, source: str, protocol: str = "tcp") -> None:
        if 0 < port < 65536 and not self.in_wide_range(port):
            (self.udp if protocol == "udp" else self.tcp).setdefault(port, set()).add(source)

    def hint(self, port: int, protocol: Protocol, reason: str) -> None:
        """What a URL or a server says a known port speaks (the first one said wins)."""
        if port in self.tcp:
            self.hints.setdefault(port, (protocol, reason))

    def in_wide_range(self, port: int) -> bool:
        return any(r.lo <= port <= r.hi for r in self.wide_ranges)

    @property
    def unknown(self) -> bool:
        """Whether calls may arrive on ports nobody listed (the catch-all intercept)."""
        return not self.tcp or bool(self.wide_ranges)

    def protocol(self, port: int) -> tuple[Protocol, str]:
        return self.hints.get(port) or protocol_for(port, self.image)


def declared(svc: Mapping[str, Any], into: Ports, source_suffix: str = "") -> None:
    """``ports`` targets and ``expose`` entries (``"8000"``, ``"8000-8010"``, ``"53/udp"``).

    Compose lists each port of a ``ports`` range (``"8000-9000:8000-9000"``) on its own, so
    a wide range is found again as a run of consecutive targets.
    """
    targets: list[int] = []
    for p in svc.get("ports") or ():
        if isinstance(p, Mapping) and isinstance(p.get("target"), int):
            if p.get("protocol") == "udp":
                into.add(int(p["target"]), "ports" + source_suffix, "udp")
            else:
                targets.append(int(p["target"]))
    for lo, hi in runs(targets):
        if hi - lo >= MAX_RANGE:
            into.wide_ranges.append(PortRange(lo, hi, "ports"))
            continue
        for port in range(lo, hi + 1):
            into.add(port, "ports" + source_suffix)
    for e in svc.get("expose") or ():
        spec, _, proto = str(e).partition("/")
        first, _, last = spec.partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            continue
        lo, hi = int(first), int(last or first)
        if hi - lo >= MAX_RANGE and proto != "udp":  # any UDP port matters: see ``learn``
            into.wide_ranges.append(PortRange(lo, hi, "expose"))
            continue
        for port in range(lo, hi + 1):
            into.add(port, "expose" + source_suffix, proto or "tcp")


def image_exposed(exposed: Iterable[str], into: Ports) -> None:
    """An image's ``Config.ExposedPorts`` keys: ``"80/tcp"``, ``"53/udp"``."""
    for item in exposed:
        port, _, proto = item.partition("/")
        if port.isdigit():
            into.add(int(port), "image", proto or "tcp")


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


def served(svc: Mapping[str, Any], into: Ports) -> None:
    """Ports the service's own command or healthcheck evidently serves, with the protocol
    the server or the URL says."""
    health = svc.get("healthcheck")
    test = _words(health.get("test")) if isinstance(health, Mapping) else []
    for source, words in (("command", _words(svc.get("command"))), ("healthcheck", test)):
        for i, word in enumerate(words):
            server = SERVER_COMMANDS.get(word.rsplit("/", 1)[-1])
            if server is not None:
                port = _port_flag(words, i) or server[1]
                into.add(port, source)
                into.hint(port, server[0], f"{source} {word}")
            for m in _LOCAL_URL.finditer(word):
                port = int(m.group(2))
                scheme = m.group(1).lower()
                into.add(port, source)
                into.hint(port, SCHEME_PROTOCOLS[scheme], f"{source} {m.group(0)}")


@dataclass(frozen=True, slots=True)
class Reference:
    """``client`` names ``host`` (on ``port``) in its environment or command."""

    client: str
    where: str  # "env" | "command"
    key: str  # the environment key, or "" for a command
    host: str
    port: int | None
    scheme: str | None = None  # the URL's scheme, if it was a URL

    @property
    def protocol(self) -> Protocol | None:
        """What the URL scheme says, if anything."""
        return SCHEME_PROTOCOLS.get(self.scheme) if self.scheme else None


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
        for hostport in authority.split(","):
            host, port = _split_hostport(hostport)
            if host:
                port = port or SCHEME_PORTS.get(scheme)
                yield Reference(client, where, key, host, port, scheme)
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


def spans(ports: Iterable[int]) -> list[str]:
    """Sorted port numbers with consecutive runs written as ranges: ``["53", "6000-6100"]``."""
    return [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in runs(ports)]


def runs(ports: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted port numbers as ``(first, last)`` of each consecutive run."""
    out: list[list[int]] = []
    for port in sorted(set(ports)):
        if out and out[-1][1] == port - 1:
            out[-1][1] = port
        else:
            out.append([port, port])
    return [(lo, hi) for lo, hi in out]


def network_mode(svc: Mapping[str, Any]) -> str | None:
    """A ``network_mode``: the service's network namespace is not its own to rewrite."""
    mode = svc.get("network_mode")
    return mode if isinstance(mode, str) and mode else None


@dataclass(frozen=True, slots=True)
class Exclusion:
    """Why a service is left out of the mesh: ``kind`` is ``network-mode``, ``udp`` or
    ``mesh-config`` (the caller's mesh config says ``meshed: false``)."""

    kind: str
    reason: str  # as the plan says it: "network_mode: host", "UDP ports 53/udp"


@dataclass(frozen=True)
class Learned:
    """Every service's ports (unmeshed ones too), why some are left out, and the names."""

    ports: Mapping[str, Ports]
    unmeshed: Mapping[str, Exclusion]
    names: NameTable

    @property
    def upstreams(self) -> list[str]:
        return self.names.upstreams


def learn(
    project: str,
    services: Services,
    image_ports: ImagePorts | None = None,
    *,
    unmeshed: Collection[str] = (),
) -> Learned:
    """What a project says about its services' ports; ``unmeshed`` are services the mesh
    config leaves out (they are nobody's upstream, so references do not resolve to them)."""
    found: dict[str, Ports] = {}
    for name, svc in services.items():
        image = svc.get("image")
        found[name] = Ports(image=image if isinstance(image, str) else None)
        declared(svc, found[name])
        runs = image_ref(project, name, svc)
        if runs is not None and image_ports:
            image_exposed(image_ports.get(runs, ()), found[name])
    excluded: dict[str, Exclusion] = {}
    for name, svc in sorted(services.items()):
        mode = network_mode(svc)
        udp = spans(found[name].udp)
        if mode is not None:
            excluded[name] = Exclusion("network-mode", f"network_mode: {mode}")
        elif udp:
            excluded[name] = Exclusion("udp", "UDP ports " + ", ".join(f"{u}/udp" for u in udp))
        elif name in unmeshed:
            excluded[name] = Exclusion("mesh-config", "meshed: false in the mesh config")
    for name, svc in services.items():
        if not found[name].tcp:
            for port in well_known_image(found[name].image):
                found[name].add(port, "well-known-image")
        if not found[name].tcp:
            served(svc, found[name])
    for name, svc in services.items():  # namespace sharers serve on their owner's addresses
        mode = network_mode(svc) or ""
        host = mode.split(":", 1)[1] if mode.startswith("service:") else None
        if host in found:
            declared(svc, found[host], f":{name}")
    names = NameTable(project, services, [n for n in sorted(services) if n not in excluded])
    for client, svc in sorted(services.items()):
        for ref in references(client, svc):
            owner = names.owner(client, ref.host)
            if owner is None or ref.port is None:
                continue
            found[owner].add(ref.port, f"{ref.where}:{client}")
            if ref.protocol is not None:
                found[owner].hint(ref.port, ref.protocol, f"{ref.scheme}:// in {client}")
    return Learned(found, excluded, names)
