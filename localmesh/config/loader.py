"""mesh.yaml -> MeshConfig: read with positions, check every field, then the whole.

Reading is one pass over the positioned node tree (``yamlnodes``) that records every
problem instead of stopping at the first, so a user fixes a file in one round. Each
problem names ``file:line:col``, the key path (``services.api.routes[0].retries``), what
was expected, and a hint (did-you-mean for near-miss keys and names).

References (destinations, subsets, ports, sources, policy targets) are collected while
reading and resolved afterwards, against the services of mesh.yaml *and* the compose
project, because a route may name a service declared further down or only in compose.
Finally the file is merged over the mesh inferred from compose (``infer``): services
mesh.yaml does not mention are still meshed, and a service's inferred ports are kept
unless mesh.yaml redeclares the same port.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from localmesh.ca.names import INGRESS_IDENTITY, check_client_name, check_permitted, parse_host
from localmesh.compose.project import ComposeProject
from localmesh.config import values
from localmesh.config.infer import InferredService, infer_services
from localmesh.config.matching import route_is_catch_all
from localmesh.config.model import (
    RETRY_ON_VALUES,
    AuthorizationPolicy,
    ClientCerts,
    ConnectionPool,
    Destination,
    Fault,
    FaultAbort,
    FaultDelay,
    HashOn,
    HeaderMatch,
    HeaderOps,
    HealthCheck,
    HealthCheckKind,
    Ingress,
    IngressHost,
    IngressPositions,
    LbPolicy,
    Limits,
    LoadBalancer,
    MatchKind,
    MeshConfig,
    MeshSettings,
    Mirror,
    OutlierDetection,
    PeerAuthMode,
    PolicyAction,
    PortSpec,
    Protocol,
    QueryMatch,
    RateLimit,
    RequestMatch,
    RetryPolicy,
    Route,
    Service,
    StaticEndpoint,
    StringMatch,
    Subset,
    TLSMode,
    UpstreamTLS,
)
from localmesh.config.ports import ImagePorts, protocol_for
from localmesh.config.yamlnodes import MapNode, Node, Scalar, SeqNode, describe, parse_yaml
from localmesh.errors import CAError, ConfigError, Position, Problem

TOP_KEYS = ("mesh", "services", "policies", "ingress")
MESH_KEYS = (
    "name",
    "trust_domain",
    "admin_port",
    "admin_bind",
    "access_log",
    "metrics",
    "keep_network_isolation",
    "workload_cert_lifetime",
    "peer_auth",
)
SERVICE_KEYS = (
    "meshed",
    "ports",
    "endpoints",
    "subsets",
    "routes",
    "load_balancer",
    "connection_pool",
    "outlier_detection",
    "health_check",
    "tls",
    "rate_limit",
    "limits",
    "timeout",
    "retries",
)
ROUTE_KEYS = (
    "name",
    "match",
    "route",
    "rewrite",
    "headers",
    "timeout",
    "retries",
    "fault",
    "mirror",
    "rate_limit",
)
# What a route may use on a service with no HTTP port (an L4 route: split by source).
L4_ROUTE_KEYS = frozenset({"name", "match", "route"})
MATCH_KEYS = ("path", "methods", "headers", "query", "sources")
STRING_MATCH_KEYS = ("exact", "prefix", "regex")
DESTINATION_KEYS = ("service", "subset", "port", "weight")
RETRY_KEYS = (
    "attempts",
    "per_try_timeout",
    "retry_on",
    "retriable_status_codes",
    "backoff_base",
    "backoff_max",
    "budget_percent",
    "min_retry_concurrency",
)
POLICY_KEYS = ("name", "action", "to", "from", "paths", "methods")
INGRESS_KEYS = ("hosts", "https_port", "http_port", "redirect_http", "bind", "extra_cert_hosts")
HOST_KEYS = ("host", "client_certs", "routes")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")

SERVICE_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
ROUTE_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.:/-]*$")
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
LABEL_KEY = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9_./-]*[a-zA-Z0-9])?$")
RATE_SHORTHAND = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*/\s*(s|m|h)\s*$")
PORT_SHORTHAND = re.compile(r"^([0-9]+)/([a-z]+)$")

# Policy sources that are not service names (Istio principals): client certificates
# (`client:alice`, stored as its SPIFFE id), SPIFFE ids, and `*` wildcards.
CLIENT_PREFIX = "client:"
SPIFFE_PREFIX = "spiffe://"


def _did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    # short words differ by a larger share per typo (GTE/GET): be more lenient with them
    cutoff = 0.6 if len(word) <= 4 else 0.75
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f"did you mean '{close[0]}'?" if close else None


def _one_of(choices: Iterable[str]) -> str:
    return "expected one of: " + ", ".join(choices)


@dataclass(slots=True)
class _Ref:
    """A service named somewhere in mesh.yaml, checked once every service is known."""

    service: str
    at: Position
    path: str
    subset: str | None = None
    subset_at: Position | None = None
    port: int | None = None
    port_at: Position | None = None
    needs_http: bool = False  # ingress and mirrors speak HTTP to it


@dataclass(slots=True)
class _SourceRef:
    """A caller named in ``sources`` (a service) or a policy's ``from`` (also principals)."""

    name: str
    at: Position
    path: str
    principals: bool = False  # policy `from`: principals and wildcards allowed too


@dataclass(slots=True)
class _ServiceDraft:
    """What mesh.yaml wrote for one service, before merging with compose."""

    service: Service
    key: Scalar
    wrote_ports: tuple[PortSpec, ...] = ()
    guessed: set[int] = field(default_factory=set)  # written ports with no protocol given
    meshed_at: Position | None = None  # where `meshed:` is written, if it is
    routes_at: Position | None = None
    route_keys: list[tuple[str, str, Position]] = field(default_factory=list)  # l7-only uses
    health_at: Position | None = None


class _Reader:
    """Collects problems while turning nodes into model values; None marks a bad value."""

    def __init__(self, filename: str, project: ComposeProject | None) -> None:
        self.filename = filename
        self.project = project
        self.problems: list[Problem] = []
        self.refs: list[_Ref] = []
        self.sources: list[_SourceRef] = []
        self.policy_targets: list[tuple[str, Position, str]] = []
        self.listens: list[tuple[str, str, Position]] = []  # (host:port, path, where)
        self.value_at: dict[str, Position] = {}  # key path -> where its value is written
        self.trust_domain = MeshSettings().trust_domain  # set once `mesh` is read (first)

    # -- reporting ---------------------------------------------------------------------

    def error(self, at: Node | Position, path: str, message: str, hint: str | None = None) -> None:
        pos = at if isinstance(at, Position) else at.position
        text = f"{path}: {message}" if path else message
        self.problems.append(Problem(text, pos, key=path or None, hint=hint))

    def expected(self, node: Node, path: str, what: str, hint: str | None = None) -> None:
        quirk = node.quirk if isinstance(node, Scalar) else None
        self.error(node, path, f"expected {what}, got {describe(node)}", hint or quirk)

    # -- structure ---------------------------------------------------------------------

    def mapping(
        self,
        node: Node,
        path: str,
        allowed: Sequence[str],
        required: Sequence[str] = (),
        what: str = "a mapping",
    ) -> dict[str, tuple[Scalar, Node]] | None:
        if not isinstance(node, MapNode):
            self.expected(node, path, what, f"allowed keys: {', '.join(allowed)}")
            return None
        out: dict[str, tuple[Scalar, Node]] = {}
        for key, value in node.items:
            if key.text not in allowed:
                if key.text in node.merged:
                    continue  # an anchor merged in may carry keys meant elsewhere
                hint = _did_you_mean(key.text, allowed) or _one_of(allowed)
                self.error(key, f"{path}.{key.text}" if path else key.text, "unknown key", hint)
                continue
            out[key.text] = (key, value)
        for name in required:
            if name not in out:
                self.error(node, path, f"missing required key '{name}'")
        return out

    def listed(self, node: Node, path: str) -> list[tuple[str, Node]]:
        """A list, or a single item standing for a one-item list; with item paths."""
        if isinstance(node, SeqNode):
            return [(f"{path}[{i}]", item) for i, item in enumerate(node.items)]
        if isinstance(node, Scalar) and node.value is None:
            return []
        return [(path, node)]

    # -- scalars -----------------------------------------------------------------------

    def string(
        self,
        node: Node,
        path: str,
        *,
        pattern: re.Pattern[str] | None = None,
        pattern_help: str = "",
        allow_empty: bool = False,
    ) -> str | None:
        """Any scalar's text as written (``version: 1.10`` is '1.10'); null is missing."""
        if not isinstance(node, Scalar) or node.value is None:
            self.expected(node, path, "a string")
            return None
        text = node.text
        if not text and not allow_empty:
            self.error(node, path, "must not be empty")
            return None
        if pattern is not None and not pattern.match(text):
            self.error(node, path, f"invalid value '{text}'", pattern_help or None)
            return None
        return text

    def choice(self, node: Node, path: str, choices: Sequence[str]) -> str | None:
        if not isinstance(node, Scalar) or node.value is None or isinstance(node.value, bool):
            hint = node.quirk if isinstance(node, Scalar) else None
            if isinstance(node, Scalar) and node.value is False and "off" in choices:
                hint = "write off: false is a boolean, not one of these words"
            self.expected(node, path, "one of " + ", ".join(choices), hint)
            return None
        text = node.text
        if text in choices:
            return text
        if text.lower() in choices:
            return text.lower()
        self.error(
            node, path, f"invalid value '{text}'", _did_you_mean(text, choices) or _one_of(choices)
        )
        return None

    def integer(self, node: Node, path: str, lo: int, hi: int | None = None) -> int | None:
        rng = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
        value = node.value if isinstance(node, Scalar) else None
        if not isinstance(value, int) or isinstance(value, bool):
            hint = None
            if isinstance(node, Scalar) and node.quoted and node.text.strip().isdigit():
                hint = f"write {node.text.strip()} without quotes"
            self.expected(node, path, f"an integer {rng}", hint)
            return None
        if isinstance(node, Scalar) and node.quirk:
            self.error(node, path, f"ambiguous number {node.text}", node.quirk)
            return None
        if value < lo or (hi is not None and value > hi):
            self.error(node, path, f"{value} is out of range, expected an integer {rng}")
            return None
        return value

    def number(self, node: Node, path: str, lo: float, *, above: bool = False) -> float | None:
        value = node.value if isinstance(node, Scalar) else None
        bound = f"> {lo:g}" if above else f">= {lo:g}"
        if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
            self.expected(node, path, f"a number {bound}")
            return None
        if math.isinf(value) or value < lo or (above and value == lo):
            self.error(node, path, f"{node.text} is out of range, expected a number {bound}")  # type: ignore[union-attr]
            return None
        return float(value)

    def boolean(self, node: Node, path: str) -> bool | None:
        if isinstance(node, Scalar) and isinstance(node.value, bool):
            return node.value
        self.expected(node, path, "true or false")
        return None

    def duration(self, node: Node, path: str, *, allow_zero: bool = False) -> float | None:
        if (
            isinstance(node, Scalar)
            and isinstance(node.value, int | float)
            and not isinstance(node.value, bool)
        ):
            self.error(
                node,
                path,
                f"duration {node.text} has no unit",
                f"write {node.text}s or {node.text}ms",
            )
            return None
        if not isinstance(node, Scalar) or not isinstance(node.value, str):
            self.expected(node, path, "a duration", values.DURATION_HELP)
            return None
        try:
            seconds = values.parse_duration(node.value)
        except ValueError as exc:
            self.error(node, path, str(exc), node.quirk or values.DURATION_HELP)
            return None
        if seconds == 0 and not allow_zero:
            self.error(node, path, "duration must be greater than 0")
            return None
        return seconds

    def optional_off(self, node: Node) -> bool:
        """``false`` or null: the feature is turned off."""
        return isinstance(node, Scalar) and (node.value is False or node.value is None)

    def percent(self, node: Node, path: str) -> float | None:
        if not isinstance(node, Scalar) or node.value is None or isinstance(node.value, bool):
            self.expected(node, path, "a percentage", values.PERCENT_HELP)
            return None
        try:
            return values.parse_percent(node.text)
        except ValueError as exc:
            self.error(node, path, str(exc), values.PERCENT_HELP)
            return None

    def size(self, node: Node, path: str) -> int | None:
        if (
            isinstance(node, Scalar)
            and isinstance(node.value, int)
            and not isinstance(node.value, bool)
        ):
            return self.integer(node, path, 0)
        if not isinstance(node, Scalar) or not isinstance(node.value, str):
            self.expected(node, path, "a size", values.SIZE_HELP)
            return None
        try:
            return values.parse_size(node.value)
        except ValueError as exc:
            self.error(node, path, str(exc), values.SIZE_HELP)
            return None

    def port(self, node: Node, path: str) -> int | None:
        return self.integer(node, path, 1, 65535)

    def names(self, node: Node, path: str) -> list[tuple[str, Scalar, str]]:
        """A list of names (or one name): each with its node and path, for reference checks."""
        out: list[tuple[str, Scalar, str]] = []
        for item_path, item in self.listed(node, path):
            name = self.string(item, item_path)
            if name is not None and isinstance(item, Scalar):
                out.append((name, item, item_path))
        return out

    def labels(self, node: Node, path: str) -> tuple[tuple[str, str], ...] | None:
        if not isinstance(node, MapNode):
            self.expected(node, path, "a mapping of label names to values")
            return None
        out: list[tuple[str, str]] = []
        for key, value in node.items:
            kpath = f"{path}.{key.text}"
            if not LABEL_KEY.match(key.text):
                self.error(key, kpath, f"invalid label name '{key.text}'")
                continue
            text = self.string(value, kpath, allow_empty=True)
            if text is not None:
                out.append((key.text, text))
        return tuple(out)

    def each(
        self,
        fields: dict[str, tuple[Scalar, Node]],
        path: str,
        readers: dict[str, Callable[[Node, str], object]],
    ) -> dict[str, object]:
        """Read the fields present with their reader; bad ones are left out (None)."""
        out: dict[str, object] = {}
        for name, reader in readers.items():
            if name in fields:
                self.value_at[f"{path}.{name}"] = fields[name][1].position
                value = reader(fields[name][1], f"{path}.{name}")
                if value is not None:
                    out[name] = value
        return out

    def record(
        self,
        node: Node,
        path: str,
        readers: dict[str, Callable[[Node, str], object]],
        required: Sequence[str] = (),
        what: str = "a mapping",
    ) -> tuple[dict[str, tuple[Scalar, Node]], dict[str, object]] | None:
        """A mapping with the keys ``readers`` reads, all or nothing: its fields (for
        positions) and their values, or None when it is not one, misses a required key or
        has a bad value (each problem recorded)."""
        fields = self.mapping(node, path, tuple(readers), required, what)
        if fields is None or any(name not in fields for name in required):
            return None
        got = self.each(fields, path, readers)
        return (fields, got) if len(got) == len(fields) else None


# ---------------------------------------------------------------------------------------
# sections


def _read_mesh(r: _Reader, node: Node, project: ComposeProject | None) -> MeshSettings:
    default_name = project.name if project is not None and project.name else MeshSettings().name
    fields = r.mapping(node, "mesh", MESH_KEYS)
    if fields is None:
        return MeshSettings(name=default_name)
    got = r.each(
        fields,
        "mesh",
        {
            "name": lambda n, p: r.string(
                n, p, pattern=SERVICE_NAME, pattern_help="letters, digits, '-', '_', '.'"
            ),
            "trust_domain": lambda n, p: _trust_domain(r, n, p),
            "admin_port": r.port,
            "admin_bind": lambda n, p: _host(r, n, p),
            "access_log": r.boolean,
            "metrics": r.boolean,
            "keep_network_isolation": r.boolean,
            "workload_cert_lifetime": r.duration,
            "peer_auth": lambda n, p: _enum(r, n, p, PeerAuthMode),
        },
    )
    got.setdefault("name", default_name)
    lifetime = got.get("workload_cert_lifetime")
    if isinstance(lifetime, float) and lifetime < 600:
        r.error(
            fields["workload_cert_lifetime"][1],
            "mesh.workload_cert_lifetime",
            "must be at least 10m",
            "certificates rotate at 2/3 of their life",
        )
        del got["workload_cert_lifetime"]
    return MeshSettings(**got)  # type: ignore[arg-type]


EnumT = TypeVar(
    "EnumT",
    PeerAuthMode,
    Protocol,
    LbPolicy,
    HashOn,
    HealthCheckKind,
    TLSMode,
    PolicyAction,
    ClientCerts,
)


def _enum(r: _Reader, node: Node, path: str, kind: type[EnumT]) -> EnumT | None:
    text = r.choice(node, path, [m.value for m in kind])
    return kind(text) if text is not None else None


def _trust_domain(r: _Reader, node: Node, path: str) -> str | None:
    text = r.string(node, path)
    if text is not None and (text != text.lower() or not values.is_hostname(text)):
        r.error(
            node,
            path,
            f"invalid trust domain '{text}'",
            "lower-case letters, digits, '-' and dots, e.g. localmesh or shop.local",
        )
        return None
    return text


def _cert_host(r: _Reader, node: Node, path: str) -> str | None:
    """A host the local CA can certify (its root is name-constrained to dev names)."""
    text = r.string(node, path)
    if text is None:
        return None
    try:
        host = parse_host(text)
        check_permitted(host)
    except CAError as exc:
        r.error(node, path, exc.message, exc.hint)
        return None
    return host.value


def _host(r: _Reader, node: Node, path: str) -> str | None:
    text = r.string(node, path)
    if text is None:
        return None
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if ":" in bare or values.is_hostname(bare) or re.match(r"^[0-9.]+$", bare):
        return bare
    r.error(node, path, f"invalid host '{text}'", "an IP address or a host name")
    return None


def _address(r: _Reader, node: Node, path: str) -> tuple[str, int] | None:
    """``host:port`` (``[::1]:80`` for IPv6)."""
    text = r.string(node, path)
    if text is None:
        return None
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        r.error(node, path, f"invalid address '{text}'", "write host:port, e.g. 127.0.0.1:8000")
        return None
    return host, int(port)


def _read_services(
    r: _Reader, node: Node, project: ComposeProject | None
) -> dict[str, _ServiceDraft]:
    drafts: dict[str, _ServiceDraft] = {}
    if isinstance(node, Scalar) and node.value is None:
        return drafts
    if not isinstance(node, MapNode):
        r.expected(node, "services", "a mapping of service names to their settings")
        return drafts
    for key, value in node.items:
        path = f"services.{key.text}"
        if not SERVICE_NAME.match(key.text):
            r.error(
                key,
                path,
                f"invalid service name '{key.text}'",
                "letters, digits, '-', '_' and '.', like compose service names",
            )
            continue
        drafts[key.text] = _read_service(r, key, value, path, project)
    return drafts


def _compose_image(project: ComposeProject | None, name: str) -> str | None:
    if project is None:
        return None
    image = project.services().get(name, {}).get("image")
    return image if isinstance(image, str) else None


def _read_service(
    r: _Reader, key: Scalar, node: Node, path: str, project: ComposeProject | None
) -> _ServiceDraft:
    name = key.text
    draft = _ServiceDraft(Service(name=name, position=key.position), key)
    if isinstance(node, Scalar) and node.value is None:
        return draft  # `db:` alone: mesh it with what compose implies
    fields = r.mapping(node, path, SERVICE_KEYS)
    if fields is None:
        return draft
    image = _compose_image(project, name)
    got: dict[str, object] = {}
    if "meshed" in fields:
        draft.meshed_at = fields["meshed"][1].position
        meshed = r.boolean(fields["meshed"][1], f"{path}.meshed")
        if meshed is not None:
            got["meshed"] = meshed
    if "ports" in fields:
        ports = _read_ports(r, fields["ports"][1], f"{path}.ports", image, draft.guessed)
        draft.wrote_ports = ports
        got["ports"] = ports
    if "endpoints" in fields:
        got["endpoints"] = tuple(_read_endpoints(r, fields["endpoints"][1], f"{path}.endpoints"))
    if "subsets" in fields:
        got["subsets"] = _read_subsets(r, fields["subsets"][1], f"{path}.subsets")
    if "routes" in fields:
        draft.routes_at = fields["routes"][0].position
        got["routes"] = _read_routes(
            r, fields["routes"][1], f"{path}.routes", owner=name, l7_uses=draft.route_keys
        )
    if "health_check" in fields and not r.optional_off(fields["health_check"][1]):
        draft.health_at = fields["health_check"][0].position
    for section, read, can_be_off in _SERVICE_SECTIONS:
        if section not in fields:
            continue
        value_node = fields[section][1]
        if can_be_off and r.optional_off(value_node):
            got[section] = None
            continue
        value = read(r, value_node, f"{path}.{section}")
        if value is not None:
            got[section] = value
    draft.service = dataclasses.replace(draft.service, **got)  # type: ignore[arg-type]
    return draft


def _read_ports(
    r: _Reader, node: Node, path: str, image: str | None, guessed: set[int]
) -> tuple[PortSpec, ...]:
    """The ports written; ``guessed`` collects those whose protocol was left to guess
    (compose's knowledge of them wins over the guess when merged)."""
    out: list[PortSpec] = []
    seen: dict[int, tuple[Protocol, Position]] = {}
    protocols = [p.value for p in Protocol]
    for item_path, item in r.listed(node, path):
        spec: PortSpec | None = None
        if (
            isinstance(item, Scalar)
            and isinstance(item.value, int)
            and not isinstance(item.value, bool)
        ):
            port = r.port(item, item_path)
            if port is not None:
                spec = PortSpec(port, protocol_for(port, image)[0], position=item.position)
                guessed.add(port)
        elif isinstance(item, Scalar) and isinstance(item.value, str):
            m = PORT_SHORTHAND.match(item.text)
            if not m:
                r.error(
                    item,
                    item_path,
                    f"invalid port '{item.text}'",
                    item.quirk or "write 8000, '5432/postgres' or {port: 8000, protocol: http}",
                )
            elif m.group(2) not in protocols:
                r.error(
                    item,
                    item_path,
                    f"unknown protocol '{m.group(2)}'",
                    _did_you_mean(m.group(2), protocols) or _one_of(protocols),
                )
            elif not 0 < int(m.group(1)) <= 65535:
                r.error(item, item_path, f"{m.group(1)} is out of range, expected a port 1-65535")
            else:
                spec = PortSpec(int(m.group(1)), Protocol(m.group(2)), position=item.position)
        else:
            fields = r.mapping(
                item,
                item_path,
                ("port", "protocol", "listen"),
                required=("port",),
                what="a port: 8000, '5432/postgres' or {port: 8000}",
            )
            if fields is None or "port" not in fields:
                continue
            port = r.port(fields["port"][1], f"{item_path}.port")
            protocol: Protocol | None = None
            if "protocol" in fields:
                protocol = _enum(r, fields["protocol"][1], f"{item_path}.protocol", Protocol)
                if protocol is None:
                    continue
            listen: str | None = None
            at = item.position
            if "listen" in fields:
                addr = _address(r, fields["listen"][1], f"{item_path}.listen")
                if addr is None:
                    continue
                listen = f"{addr[0]}:{addr[1]}" if ":" not in addr[0] else f"[{addr[0]}]:{addr[1]}"
                at = fields["listen"][1].position
                r.listens.append((listen, f"{item_path}.listen", at))
            if port is not None:
                spec = PortSpec(port, protocol or protocol_for(port, image)[0], listen, at)
                if protocol is None:
                    guessed.add(port)
        if spec is None:
            continue
        if spec.port in seen:
            first_proto, first_at = seen[spec.port]
            if first_proto is not spec.protocol:
                r.error(
                    item,
                    item_path,
                    f"port {spec.port} is declared twice with different protocols "
                    f"({first_proto.value} at line {first_at.line}, "
                    f"{spec.protocol.value} here)",
                    "one port speaks one protocol; keep one entry",
                )
            else:
                r.error(
                    item,
                    item_path,
                    f"port {spec.port} is declared twice (first at line {first_at.line})",
                )
            continue
        seen[spec.port] = (spec.protocol, item.position)
        out.append(spec)
    return tuple(out)


def _read_endpoints(r: _Reader, node: Node, path: str) -> Iterable[StaticEndpoint]:
    seen: dict[tuple[str, int], Position] = {}
    for item_path, item in r.listed(node, path):
        ep: StaticEndpoint | None = None
        if isinstance(item, Scalar):
            addr = _address(r, item, item_path)
            if addr is not None:
                ep = StaticEndpoint(addr[0], addr[1])
        else:
            fields = r.mapping(
                item,
                item_path,
                ("host", "port", "labels"),
                required=("host", "port"),
                what="an endpoint: '127.0.0.1:8000' or {host, port, labels}",
            )
            if fields is None or "host" not in fields or "port" not in fields:
                continue
            host = _host(r, fields["host"][1], f"{item_path}.host")
            port = r.port(fields["port"][1], f"{item_path}.port")
            labels: tuple[tuple[str, str], ...] | None = ()
            if "labels" in fields:
                labels = r.labels(fields["labels"][1], f"{item_path}.labels")
            if host is not None and port is not None and labels is not None:
                ep = StaticEndpoint(host, port, labels)
        if ep is None:
            continue
        if (ep.host, ep.port) in seen:
            r.error(
                item,
                item_path,
                f"endpoint {ep.host}:{ep.port} is listed twice "
                f"(first at line {seen[(ep.host, ep.port)].line})",
            )
            continue
        seen[(ep.host, ep.port)] = item.position
        yield ep


def _read_subsets(r: _Reader, node: Node, path: str) -> tuple[Subset, ...]:
    if not isinstance(node, MapNode):
        r.expected(
            node,
            path,
            "a mapping of subset names to labels",
            "e.g. subsets: {v1: {version: v1}, v2: {version: v2}}",
        )
        return ()
    out: list[Subset] = []
    for key, value in node.items:
        spath = f"{path}.{key.text}"
        if not SERVICE_NAME.match(key.text):
            r.error(key, spath, f"invalid subset name '{key.text}'")
            continue
        labels = r.labels(value, spath)
        if labels is None:
            continue
        if not labels:
            r.error(value, spath, "a subset needs at least one label to select endpoints")
            continue
        out.append(Subset(key.text, labels))
    return tuple(out)


def _read_lb(r: _Reader, node: Node, path: str) -> LoadBalancer | None:
    if isinstance(node, Scalar):
        policy = _enum(r, node, path, LbPolicy)
        if policy is LbPolicy.CONSISTENT_HASH:
            r.error(
                node,
                path,
                "consistent_hash needs hash_on",
                "write {policy: consistent_hash, hash_on: header, hash_key: x-user}",
            )
            return None
        return LoadBalancer(policy) if policy is not None else None
    read = r.record(
        node,
        path,
        {
            "policy": lambda n, p: _enum(r, n, p, LbPolicy),
            "hash_on": lambda n, p: _enum(r, n, p, HashOn),
            "hash_key": r.string,
        },
    )
    if read is None:
        return None
    fields, got = read
    lb = LoadBalancer(**got)  # type: ignore[arg-type]
    if lb.policy is LbPolicy.CONSISTENT_HASH:
        if lb.hash_on is None:
            r.error(node, path, "consistent_hash needs hash_on: header, cookie or source_ip")
            return None
        if lb.hash_on in (HashOn.HEADER, HashOn.COOKIE) and not lb.hash_key:
            r.error(
                node,
                path,
                f"hash_on: {lb.hash_on.value} needs hash_key (the {lb.hash_on.value} name)",
            )
            return None
        if lb.hash_on is HashOn.SOURCE_IP and lb.hash_key:
            r.error(
                fields["hash_key"][0], f"{path}.hash_key", "hash_on: source_ip takes no hash_key"
            )
            return None
    elif lb.hash_on is not None or lb.hash_key is not None:
        bad = "hash_on" if "hash_on" in fields else "hash_key"
        r.error(
            fields[bad][0],
            f"{path}.{bad}",
            f"only used with policy: consistent_hash (policy is {lb.policy.value})",
        )
        return None
    if lb.hash_on is HashOn.HEADER and lb.hash_key:
        lb = dataclasses.replace(lb, hash_key=lb.hash_key.lower())
    return lb


def _read_pool(r: _Reader, node: Node, path: str) -> ConnectionPool | None:
    read = r.record(
        node,
        path,
        {
            "max_connections": lambda n, p: r.integer(n, p, 1),
            "max_pending_requests": lambda n, p: r.integer(n, p, 0),
            "max_requests_per_connection": lambda n, p: r.integer(n, p, 0),
            "connect_timeout": r.duration,
            "idle_timeout": r.duration,
        },
    )
    return ConnectionPool(**read[1]) if read else None  # type: ignore[arg-type]


def _read_outlier(r: _Reader, node: Node, path: str) -> OutlierDetection | None:
    read = r.record(
        node,
        path,
        {
            "consecutive_5xx": lambda n, p: r.integer(n, p, 1),
            "consecutive_gateway_errors": lambda n, p: r.integer(n, p, 1),
            "interval": r.duration,
            "base_ejection_time": r.duration,
            "max_ejection_percent": r.percent,
            "min_health_percent": r.percent,
        },
        what="a mapping, or false to turn outlier detection off",
    )
    return OutlierDetection(**read[1]) if read else None  # type: ignore[arg-type]


def _read_health(r: _Reader, node: Node, path: str) -> HealthCheck | None:
    read = r.record(
        node,
        path,
        {
            "kind": lambda n, p: _enum(r, n, p, HealthCheckKind),
            "path": lambda n, p: _http_path(r, n, p),
            "interval": r.duration,
            "timeout": r.duration,
            "unhealthy_threshold": lambda n, p: r.integer(n, p, 1),
            "healthy_threshold": lambda n, p: r.integer(n, p, 1),
        },
        what="a mapping, or false for no active health check",
    )
    if read is None:
        return None
    fields, got = read
    got.setdefault("kind", HealthCheckKind.HTTP)
    hc = HealthCheck(**got)  # type: ignore[arg-type]
    if hc.kind is HealthCheckKind.TCP and "path" in fields:
        r.error(
            fields["path"][0],
            f"{path}.path",
            "a tcp health check has no path",
            "remove path, or use kind: http",
        )
        return None
    if hc.timeout >= hc.interval:
        at = fields.get("timeout", fields.get("interval"))
        r.error(
            at[1] if at else node,
            f"{path}.timeout",
            f"timeout ({values.format_duration(hc.timeout)}) must be shorter than interval "
            f"({values.format_duration(hc.interval)})",
        )
        return None
    return hc


def _http_path(r: _Reader, node: Node, path: str) -> str | None:
    text = r.string(node, path)
    if text is not None and not text.startswith("/"):
        r.error(node, path, f"an HTTP path must start with '/', got '{text}'")
        return None
    return text


def _read_tls(r: _Reader, node: Node, path: str) -> UpstreamTLS | None:
    if isinstance(node, Scalar):
        mode = _enum(r, node, path, TLSMode)
        return UpstreamTLS(mode) if mode is not None else None
    read = r.record(
        node,
        path,
        {
            "mode": lambda n, p: _enum(r, n, p, TLSMode),
            "ca_file": r.string,
            "sni": lambda n, p: _sni(r, n, p),
        },
    )
    if read is None:
        return None
    fields, got = read
    tls = UpstreamTLS(**got)  # type: ignore[arg-type]
    if tls.mode is TLSMode.DISABLE and (tls.ca_file or tls.sni):
        bad = "ca_file" if "ca_file" in fields else "sni"
        r.error(
            fields[bad][0],
            f"{path}.{bad}",
            "has no effect with mode: disable",
            "set mode: simple or mutual, or remove it",
        )
        return None
    return tls


def _sni(r: _Reader, node: Node, path: str) -> str | None:
    text = r.string(node, path)
    if text is not None and not values.is_hostname(text):
        r.error(node, path, f"invalid SNI host name '{text}'")
        return None
    return text


def _read_rate_limit(r: _Reader, node: Node, path: str) -> RateLimit | None:
    if isinstance(node, Scalar) and isinstance(node.value, str):
        m = RATE_SHORTHAND.match(node.value)
        if not m:
            r.error(
                node,
                path,
                f"invalid rate '{node.text}'",
                "write 100/s, 600/m, or {requests_per_second: 100, burst: 200}",
            )
            return None
        rps = float(m.group(1)) / {"s": 1, "m": 60, "h": 3600}[m.group(2)]
        if rps <= 0:
            r.error(node, path, "rate must be greater than 0")
            return None
        return RateLimit(rps, max(1, math.ceil(rps)))
    read = r.record(
        node,
        path,
        {
            "requests_per_second": lambda n, p: r.number(n, p, 0, above=True),
            "burst": lambda n, p: r.integer(n, p, 1),
            "per_source": r.boolean,
        },
        required=("requests_per_second",),
        what="a rate: 100/s, or {requests_per_second: 100, burst: 200}",
    )
    if read is None:
        return None
    got = read[1]
    rate = got["requests_per_second"]
    assert isinstance(rate, float)
    got.setdefault("burst", max(1, math.ceil(rate)))
    return RateLimit(**got)  # type: ignore[arg-type]


def _read_limits(r: _Reader, node: Node, path: str) -> Limits | None:
    read = r.record(
        node,
        path,
        {
            "max_request_headers_bytes": r.size,
            "max_request_headers_count": lambda n, p: r.integer(n, p, 1),
            "max_request_body_bytes": r.size,
            "header_timeout": r.duration,
        },
    )
    if read is None:
        return None
    fields, got = read
    if got.get("max_request_headers_bytes") == 0:
        r.error(
            fields["max_request_headers_bytes"][1],
            f"{path}.max_request_headers_bytes",
            "must be greater than 0",
        )
        return None
    return Limits(**got)  # type: ignore[arg-type]


def _read_retries(r: _Reader, node: Node, path: str) -> RetryPolicy | None:
    if (
        isinstance(node, Scalar)
        and isinstance(node.value, int)
        and not isinstance(node.value, bool)
    ):
        attempts = r.integer(node, path, 0, 10)
        return RetryPolicy(attempts=attempts) if attempts is not None else None
    fields = r.mapping(node, path, RETRY_KEYS, what="a mapping, a number of attempts, or false")
    if fields is None:
        return None
    got = r.each(
        fields,
        path,
        {
            "attempts": lambda n, p: r.integer(n, p, 0, 10),
            "per_try_timeout": r.duration,
            "backoff_base": r.duration,
            "backoff_max": r.duration,
            "budget_percent": r.percent,
            "min_retry_concurrency": lambda n, p: r.integer(n, p, 0),
        },
    )
    codes: set[int] = set()
    if "retriable_status_codes" in fields:
        for item_path, item in r.listed(
            fields["retriable_status_codes"][1], f"{path}.retriable_status_codes"
        ):
            code = r.integer(item, item_path, 100, 599)
            if code is not None:
                codes.add(code)
    retry_on: set[str] = set()
    bad = False
    if "retry_on" in fields:
        for item_path, item in r.listed(fields["retry_on"][1], f"{path}.retry_on"):
            # Istio allows status codes among the conditions: retry_on: [503, connect-failure]
            if isinstance(item, Scalar) and isinstance(item.value, int):
                code = r.integer(item, item_path, 100, 599)
                if code is None:
                    bad = True
                else:
                    codes.add(code)
                continue
            text = r.choice(item, item_path, sorted(RETRY_ON_VALUES))
            if text is None:
                bad = True
            else:
                retry_on.add(text)
        if not retry_on and not codes and not bad:
            r.error(
                fields["retry_on"][1],
                f"{path}.retry_on",
                "must not be empty",
                "list conditions, e.g. [5xx, connect-failure], or set attempts: 0",
            )
            bad = True
    if codes:
        if "retry_on" not in fields:  # the codes add to the default conditions
            retry_on |= RetryPolicy().retry_on
        retry_on.add("retriable-status-codes")
        got["retriable_status_codes"] = frozenset(codes)
    if retry_on:
        got["retry_on"] = frozenset(retry_on)
    expected_count = len([k for k in fields if k not in ("retry_on", "retriable_status_codes")])
    if bad or len([k for k in got if k not in ("retry_on", "retriable_status_codes")]) != (
        expected_count
    ):
        return None
    policy = RetryPolicy(**got)  # type: ignore[arg-type]
    if policy.backoff_base > policy.backoff_max:
        at = fields.get("backoff_base", fields.get("backoff_max"))
        r.error(
            at[1] if at else node,
            f"{path}.backoff_base",
            f"backoff_base ({values.format_duration(policy.backoff_base)}) is longer than "
            f"backoff_max ({values.format_duration(policy.backoff_max)})",
        )
        return None
    return policy


def _read_timeout(r: _Reader, node: Node, path: str) -> float | None:
    return r.duration(node, path)


#: A service's settings read by one function each, in file-reading order; ``True``: false
#: or null turns the feature off (the value becomes None).
_SERVICE_SECTIONS: tuple[tuple[str, Callable[[_Reader, Node, str], object], bool], ...] = (
    ("load_balancer", _read_lb, False),
    ("connection_pool", _read_pool, False),
    ("outlier_detection", _read_outlier, True),
    ("health_check", _read_health, True),
    ("tls", _read_tls, False),
    ("rate_limit", _read_rate_limit, True),
    ("limits", _read_limits, False),
    ("timeout", _read_timeout, True),
    ("retries", _read_retries, True),
)


# -- routes ----------------------------------------------------------------------------


def _read_routes(
    r: _Reader,
    node: Node,
    path: str,
    owner: str | None,
    l7_uses: list[tuple[str, str, Position]] | None = None,
) -> tuple[Route, ...]:
    """A list of routes for ``owner`` (None: ingress, where every route needs ``route``)."""
    if not isinstance(node, SeqNode):
        r.expected(
            node, path, "a list of routes", "each route: - name: ..., match: ..., route: ..."
        )
        return ()
    routes: list[Route] = []
    names: dict[str, Position] = {}
    for i, item in enumerate(node.items):
        rpath = f"{path}[{i}]"
        route = _read_route(r, item, rpath, i, owner=owner, l7_uses=l7_uses)
        if route is None:
            continue
        assert route.position is not None
        if route.name in names:
            r.error(
                route.position,
                f"{rpath}.name",
                f"duplicate route name '{route.name}' (first at line {names[route.name].line})",
                "route names must be unique within a service or host",
            )
            continue
        names[route.name] = route.position
        for earlier in routes:
            if route_is_catch_all(earlier):
                assert earlier.position is not None
                r.error(
                    route.position,
                    rpath,
                    f"route '{route.name}' can never match: route '{earlier.name}' "
                    f"(line {earlier.position.line}) before it matches every request",
                    f"move it above '{earlier.name}' or narrow the match of '{earlier.name}'",
                )
                break
        routes.append(route)
    return tuple(routes)


def _read_route(
    r: _Reader,
    node: Node,
    path: str,
    index: int,
    *,
    owner: str | None,
    l7_uses: list[tuple[str, str, Position]] | None,
) -> Route | None:
    required = ("route",) if owner is None else ()
    fields = r.mapping(node, path, ROUTE_KEYS, required=required, what="a route mapping")
    if fields is None:
        return None
    ok = True
    name = f"route-{index}"
    if "name" in fields:
        got_name = r.string(
            fields["name"][1],
            f"{path}.name",
            pattern=ROUTE_NAME,
            pattern_help="letters, digits, '-', '_', '.', ':', '/'",
        )
        ok &= got_name is not None
        name = got_name or name
    if l7_uses is not None:
        for key, (key_node, _) in fields.items():
            if key not in L4_ROUTE_KEYS:
                l7_uses.append((f"{path}.{key}", key, key_node.position))
    matches: tuple[RequestMatch, ...] = ()
    if "match" in fields:
        read = [
            _read_match(r, item, ipath, l7_uses)
            for ipath, item in r.listed(fields["match"][1], f"{path}.match")
        ]
        ok &= all(m is not None for m in read)
        matches = tuple(m for m in read if m is not None)
    destinations: tuple[Destination, ...] = (Destination(owner),) if owner is not None else ()
    if "route" in fields:
        dests = _read_destinations(r, fields["route"][1], f"{path}.route", owner is None)
        ok &= dests is not None
        destinations = dests or ()
    got: dict[str, object] = {}
    if "rewrite" in fields:
        rw = _read_rewrite(r, fields["rewrite"][1], f"{path}.rewrite", matches)
        ok &= rw is not None
        got["rewrite_prefix"] = rw
    if "headers" in fields:
        ops = _read_header_ops(r, fields["headers"][1], f"{path}.headers")
        ok &= ops is not None
        if ops is not None:
            got["request_headers"], got["response_headers"] = ops
    if "timeout" in fields:
        t_node = fields["timeout"][1]
        if r.optional_off(t_node):  # `timeout: false`: none here, whatever the service has
            got["timeout"] = 0.0
        else:
            got["timeout"] = r.duration(t_node, f"{path}.timeout")
            ok &= got["timeout"] is not None
    if "retries" in fields:
        rt_node = fields["retries"][1]
        # a route's `retries: false` turns retries off even if the service has them
        got["retries"] = (
            RetryPolicy(attempts=0)
            if r.optional_off(rt_node)
            else _read_retries(r, rt_node, f"{path}.retries")
        )
        ok &= got["retries"] is not None
    if "fault" in fields:
        got["fault"] = _read_fault(r, fields["fault"][1], f"{path}.fault")
        ok &= got["fault"] is not None
    if "mirror" in fields:
        got["mirror"] = _read_mirror(r, fields["mirror"][1], f"{path}.mirror")
        ok &= got["mirror"] is not None
    if "rate_limit" in fields:
        got["rate_limit"] = _read_rate_limit(r, fields["rate_limit"][1], f"{path}.rate_limit")
        ok &= got["rate_limit"] is not None
    if not ok:
        return None
    return Route(
        name=name,
        matches=matches,
        destinations=destinations,
        position=node.position,
        **got,  # type: ignore[arg-type]
    )


def _read_string_match(
    r: _Reader, node: Node, path: str, *, is_path: bool = False
) -> StringMatch | None:
    if isinstance(node, Scalar) and isinstance(node.value, str) and not is_path:
        return StringMatch(MatchKind.EXACT, node.text)  # header/query shorthand: exact value
    fields = r.mapping(
        node,
        path,
        STRING_MATCH_KEYS,
        what="a match: {exact: /a}, {prefix: /a/} or {regex: '/a/[0-9]+'}",
    )
    if fields is None:
        return None
    if len(fields) != 1:
        r.error(
            node,
            path,
            "needs exactly one of exact, prefix, regex"
            + (f" (got {', '.join(fields)})" if fields else ""),
        )
        return None
    kind_text, (_, value_node) = next(iter(fields.items()))
    kind = MatchKind(kind_text)
    vpath = f"{path}.{kind_text}"
    text = r.string(value_node, vpath, allow_empty=kind is not MatchKind.EXACT or not is_path)
    if text is None:
        return None
    if kind is MatchKind.REGEX:
        try:
            re.compile(text)
        except re.error as exc:
            r.error(value_node, vpath, f"regex '{text}' does not compile: {exc}")
            return None
    elif is_path and not text.startswith("/"):
        r.error(
            value_node,
            vpath,
            f"path {kind_text} '{text}' can never match: request paths start with '/'",
            f"write '/{text}'",
        )
        return None
    return StringMatch(kind, text)


def _read_match(
    r: _Reader, node: Node, path: str, l7_uses: list[tuple[str, str, Position]] | None
) -> RequestMatch | None:
    fields = r.mapping(
        node,
        path,
        MATCH_KEYS,
        what="a match: {path: {prefix: /api}, methods: [GET], headers: {...}}",
    )
    if fields is None:
        return None
    if l7_uses is not None:
        for key, (key_node, _) in fields.items():
            if key != "sources":
                l7_uses.append((f"{path}.{key}", f"match.{key}", key_node.position))
    ok = True
    got: dict[str, object] = {}
    if "path" in fields:
        got["path"] = _read_string_match(r, fields["path"][1], f"{path}.path", is_path=True)
        ok &= got["path"] is not None
    if "methods" in fields:
        methods: list[str] = []
        for ipath, item in r.listed(fields["methods"][1], f"{path}.methods"):
            text = r.string(item, ipath)
            if text is None:
                ok = False
            elif text.upper() not in HTTP_METHODS:
                r.error(
                    item,
                    ipath,
                    f"unknown HTTP method '{text}'",
                    _did_you_mean(text.upper(), HTTP_METHODS) or _one_of(HTTP_METHODS),
                )
                ok = False
            elif text.upper() in methods:
                r.error(item, ipath, f"method {text.upper()} is listed twice")
                ok = False
            else:
                methods.append(text.upper())
        got["methods"] = tuple(methods)
    if "headers" in fields:
        headers = _read_header_matches(r, fields["headers"][1], f"{path}.headers")
        ok &= headers is not None
        got["headers"] = headers or ()
    if "query" in fields:
        query = _read_query_matches(r, fields["query"][1], f"{path}.query")
        ok &= query is not None
        got["query"] = query or ()
    if "sources" in fields:
        got["sources"] = tuple(_read_sources(r, fields["sources"][1], f"{path}.sources"))
    return RequestMatch(**got) if ok else None  # type: ignore[arg-type]


def _present_or_match(
    r: _Reader, node: Node, path: str, extra: tuple[str, ...]
) -> tuple[StringMatch | None, dict[str, tuple[Scalar, Node]]] | None:
    """A header/query condition: 'value' (exact), {exact|prefix|regex}, or {present: true}."""
    if isinstance(node, Scalar):
        if isinstance(node.value, str):
            return StringMatch(MatchKind.EXACT, node.text), {}
        r.expected(node, path, "a value or a match", "quote numbers and booleans: '1', 'true'")
        return None
    fields = r.mapping(node, path, (*STRING_MATCH_KEYS, "present", *extra))
    if fields is None:
        return None
    kinds = [k for k in STRING_MATCH_KEYS if k in fields]
    if "present" in fields:
        present = r.boolean(fields["present"][1], f"{path}.present")
        if present is None:
            return None
        if not present:
            r.error(
                fields["present"][1],
                f"{path}.present",
                "present: false is not supported",
                "to match when a header is absent, use present: true with invert: true",
            )
            return None
        if kinds:
            r.error(
                fields["present"][0],
                f"{path}.present",
                f"present conflicts with {kinds[0]}: use one",
            )
            return None
        return None, fields
    if len(kinds) != 1:
        r.error(node, path, "needs exactly one of exact, prefix, regex, present")
        return None
    sm = _read_string_match(
        r, MapNode(((fields[kinds[0]][0], fields[kinds[0]][1]),), node.position), path
    )
    return (sm, fields) if sm is not None else None


def _header_name(r: _Reader, key: Scalar, path: str) -> str | None:
    if not HEADER_NAME.match(key.text):
        r.error(key, path, f"invalid header name '{key.text}'")
        return None
    return key.text.lower()


def _read_header_matches(r: _Reader, node: Node, path: str) -> tuple[HeaderMatch, ...] | None:
    if not isinstance(node, MapNode):
        r.expected(
            node,
            path,
            "a mapping of header names to matches",
            "e.g. headers: {x-user: alice, x-debug: {present: true}}",
        )
        return None
    out: list[HeaderMatch] = []
    ok = True
    for key, value in node.items:
        hpath = f"{path}.{key.text}"
        name = _header_name(r, key, hpath)
        got = _present_or_match(r, value, hpath, ("invert",))
        if name is None or got is None:
            ok = False
            continue
        sm, fields = got
        invert = False
        if "invert" in fields:
            inv = r.boolean(fields["invert"][1], f"{hpath}.invert")
            if inv is None:
                ok = False
                continue
            invert = inv
        out.append(HeaderMatch(name, sm, invert))
    return tuple(out) if ok else None


def _read_query_matches(r: _Reader, node: Node, path: str) -> tuple[QueryMatch, ...] | None:
    if not isinstance(node, MapNode):
        r.expected(node, path, "a mapping of query parameters to matches")
        return None
    out: list[QueryMatch] = []
    ok = True
    for key, value in node.items:
        got = _present_or_match(r, value, f"{path}.{key.text}", ())
        if got is None:
            ok = False
            continue
        out.append(QueryMatch(key.text, got[0]))
    return tuple(out) if ok else None


def _read_sources(r: _Reader, node: Node, path: str, *, principals: bool = False) -> Iterable[str]:
    """Caller names; in a policy's ``from``, ``client:NAME`` becomes its SPIFFE id."""
    for name, item, item_path in r.names(node, path):
        r.sources.append(_SourceRef(name, item.position, item_path, principals))
        if principals and name.startswith(CLIENT_PREFIX):
            client = name[len(CLIENT_PREFIX) :]
            yield f"{SPIFFE_PREFIX}{r.trust_domain}/client/{client}"
        else:
            yield name


def _read_destinations(
    r: _Reader, node: Node, path: str, ingress: bool
) -> tuple[Destination, ...] | None:
    items = r.listed(node, path)
    if not items:
        r.error(node, path, "needs at least one destination", "e.g. route: [{service: api}]")
        return None
    dests: list[Destination] = []
    weights_at: list[tuple[Node, int | None]] = []
    ok = True
    for ipath, item in items:
        if isinstance(item, Scalar):
            svc = r.string(item, ipath, pattern=SERVICE_NAME)
            if svc is None:
                ok = False
                continue
            r.refs.append(_Ref(svc, item.position, ipath, needs_http=ingress))
            dests.append(Destination(svc))
            weights_at.append((item, None))
            continue
        fields = r.mapping(
            item,
            ipath,
            DESTINATION_KEYS,
            required=("service",),
            what="a destination: api or {service: api, subset: v2, weight: 10}",
        )
        if fields is None or "service" not in fields:
            ok = False
            continue
        svc_node = fields["service"][1]
        svc = r.string(svc_node, f"{ipath}.service", pattern=SERVICE_NAME)
        subset = port = weight = None
        if "subset" in fields:
            subset = r.string(fields["subset"][1], f"{ipath}.subset")
            ok &= subset is not None
        if "port" in fields:
            port = r.port(fields["port"][1], f"{ipath}.port")
            ok &= port is not None
        if "weight" in fields:
            weight = r.integer(fields["weight"][1], f"{ipath}.weight", 0, 100)
            ok &= weight is not None
        if svc is None:
            ok = False
            continue
        r.refs.append(
            _Ref(
                svc,
                svc_node.position,
                f"{ipath}.service",
                subset=subset,
                subset_at=fields["subset"][1].position if "subset" in fields else None,
                port=port,
                port_at=fields["port"][1].position if "port" in fields else None,
                needs_http=ingress,
            )
        )
        dests.append(Destination(svc, subset, port, weight if weight is not None else 100))
        weights_at.append((fields["weight"][1] if "weight" in fields else item, weight))
    if not ok:
        return None
    seen: dict[tuple[str, str | None, int | None], int] = {}
    for i, d in enumerate(dests):
        k = (d.service, d.subset, d.port)
        if k in seen:
            label = d.service + (f" subset {d.subset}" if d.subset else "")
            r.error(
                weights_at[i][0],
                f"{path}[{i}]",
                f"destination {label} is listed twice",
                "merge them into one weight",
            )
            return None
        seen[k] = i
    given = [w for _, w in weights_at if w is not None]
    if len(dests) == 1:
        if given and given[0] != 100:
            r.error(
                weights_at[0][0],
                f"{path}[0].weight" if isinstance(node, SeqNode) else path,
                f"a single destination takes all traffic; weight {given[0]} would be ignored",
                "remove weight, or add the destination that takes the rest",
            )
            return None
        return tuple(dests)
    if len(given) != len(dests):
        missing = next(i for i, (_, w) in enumerate(weights_at) if w is None)
        r.error(
            weights_at[missing][0],
            f"{path}[{missing}]",
            "with several destinations, every one needs a weight",
            "weights are percentages of traffic and must add up to 100",
        )
        return None
    if sum(given) != 100:
        r.error(
            node,
            path,
            f"weights add up to {sum(given)}, expected 100",
            " + ".join(str(w) for w in given) + f" = {sum(given)}",
        )
        return None
    return tuple(dests)


def _read_rewrite(
    r: _Reader,
    node: Node,
    path: str,
    matches: tuple[RequestMatch, ...],
) -> str | None:
    fields = r.mapping(
        node, path, ("prefix",), required=("prefix",), what="a rewrite: {prefix: /new}"
    )
    if fields is None or "prefix" not in fields:
        return None
    prefix = _http_path(r, fields["prefix"][1], f"{path}.prefix")
    if prefix is None:
        return None
    bad = not matches or any(m.path is None or m.path.kind is MatchKind.REGEX for m in matches)
    if bad:
        r.error(
            node,
            path,
            "rewrite.prefix replaces the matched path prefix, so every match needs "
            "path.prefix or path.exact",
        )
        return None
    return prefix


def _read_header_ops(r: _Reader, node: Node, path: str) -> tuple[HeaderOps, HeaderOps] | None:
    fields = r.mapping(
        node,
        path,
        ("request", "response"),
        what="{request: {set|add|remove}, response: {set|add|remove}}",
    )
    if fields is None:
        return None
    out = [HeaderOps(), HeaderOps()]
    for i, side in enumerate(("request", "response")):
        if side not in fields:
            continue
        spath = f"{path}.{side}"
        ops = r.mapping(fields[side][1], spath, ("set", "add", "remove"))
        if ops is None:
            return None
        got: dict[str, object] = {}
        for op in ("set", "add"):
            if op in ops:
                pairs = _header_values(r, ops[op][1], f"{spath}.{op}")
                if pairs is None:
                    return None
                got[op] = pairs
        if "remove" in ops:
            names: list[str] = []
            for ipath, item in r.listed(ops["remove"][1], f"{spath}.remove"):
                text = r.string(item, ipath, pattern=HEADER_NAME, pattern_help="a header name")
                if text is None:
                    return None
                names.append(text.lower())
            got["remove"] = tuple(names)
        out[i] = HeaderOps(**got)  # type: ignore[arg-type]
    return out[0], out[1]


def _header_values(r: _Reader, node: Node, path: str) -> tuple[tuple[str, str], ...] | None:
    if not isinstance(node, MapNode):
        r.expected(node, path, "a mapping of header names to values")
        return None
    out: list[tuple[str, str]] = []
    for key, value in node.items:
        hpath = f"{path}.{key.text}"
        name = _header_name(r, key, hpath)
        text = r.string(value, hpath, allow_empty=True)
        if name is None or text is None:
            return None
        if "\n" in text or "\r" in text:
            r.error(value, hpath, "a header value must be one line")
            return None
        out.append((name, text))
    return tuple(out)


def _read_fault(r: _Reader, node: Node, path: str) -> Fault | None:
    fields = r.mapping(
        node,
        path,
        ("delay", "abort", "sources"),
        what="a fault: {delay: 2s} or {abort: {status: 503, percent: 5}}",
    )
    if fields is None:
        return None
    if "delay" not in fields and "abort" not in fields:
        r.error(node, path, "a fault needs delay, abort or both")
        return None
    delay = abort = None
    ok = True
    if "delay" in fields:
        dnode, dpath = fields["delay"][1], f"{path}.delay"
        if isinstance(dnode, Scalar):
            fixed = r.duration(dnode, dpath, allow_zero=True)
            delay = FaultDelay(fixed) if fixed is not None else None
        else:
            read = r.record(
                dnode,
                dpath,
                {"fixed": lambda n, p: r.duration(n, p, allow_zero=True), "percent": r.percent},
                required=("fixed",),
            )
            delay = FaultDelay(**read[1]) if read else None  # type: ignore[arg-type]
        ok &= delay is not None
    if "abort" in fields:
        anode, apath = fields["abort"][1], f"{path}.abort"
        if isinstance(anode, Scalar):
            status = r.integer(anode, apath, 200, 599)
            abort = FaultAbort(status) if status is not None else None
        else:
            read = r.record(
                anode,
                apath,
                {"status": lambda n, p: r.integer(n, p, 200, 599), "percent": r.percent},
                required=("status",),
            )
            abort = FaultAbort(**read[1]) if read else None  # type: ignore[arg-type]
        ok &= abort is not None
    sources: tuple[str, ...] = ()
    if "sources" in fields:
        sources = tuple(_read_sources(r, fields["sources"][1], f"{path}.sources"))
    return Fault(delay, abort, sources) if ok else None


def _read_mirror(r: _Reader, node: Node, path: str) -> Mirror | None:
    if isinstance(node, Scalar):
        svc = r.string(node, path, pattern=SERVICE_NAME)
        if svc is None:
            return None
        r.refs.append(_Ref(svc, node.position, path, needs_http=True))
        return Mirror(svc)
    read = r.record(
        node,
        path,
        {
            "service": lambda n, p: r.string(n, p, pattern=SERVICE_NAME),
            "subset": r.string,
            "percent": r.percent,
        },
        required=("service",),
    )
    if read is None:
        return None
    fields, got = read
    svc_node = fields["service"][1]
    mirror = Mirror(**got)  # type: ignore[arg-type]
    r.refs.append(
        _Ref(
            mirror.service,
            svc_node.position,
            f"{path}.service",
            subset=mirror.subset,
            subset_at=fields["subset"][1].position if "subset" in fields else None,
            needs_http=True,
        )
    )
    return mirror


# -- policies and ingress ----------------------------------------------------------------


def _read_policies(r: _Reader, node: Node) -> tuple[AuthorizationPolicy, ...]:
    if isinstance(node, Scalar) and node.value is None:
        return ()
    if not isinstance(node, SeqNode):
        r.expected(
            node,
            "policies",
            "a list of policies",
            "- {name: only-api-to-db, action: allow, to: [db], from: [api]}",
        )
        return ()
    out: list[AuthorizationPolicy] = []
    names: dict[str, Position] = {}
    for i, item in enumerate(node.items):
        path = f"policies[{i}]"
        fields = r.mapping(item, path, POLICY_KEYS, required=("to",), what="a policy mapping")
        if fields is None or "to" not in fields:
            continue
        ok = True
        name = f"policy-{i}"
        if "name" in fields:
            got_name = r.string(fields["name"][1], f"{path}.name", pattern=ROUTE_NAME)
            ok &= got_name is not None
            name = got_name or name
        action = PolicyAction.ALLOW
        if "action" in fields:
            got_action = _enum(r, fields["action"][1], f"{path}.action", PolicyAction)
            ok &= got_action is not None
            action = got_action or action
        targets: list[str] = []
        for target, tnode, tpath in r.names(fields["to"][1], f"{path}.to"):
            r.policy_targets.append((target, tnode.position, tpath))
            targets.append(target)
        if not targets:
            r.error(fields["to"][1], f"{path}.to", "needs at least one service (or '*' for all)")
            ok = False
        sources: tuple[str, ...] = ()
        if "from" in fields:
            sources = tuple(_read_sources(r, fields["from"][1], f"{path}.from", principals=True))
            if not sources:
                r.error(
                    fields["from"][1],
                    f"{path}.from",
                    "an empty 'from' matches no caller",
                    "remove 'from' to match every caller, or list callers",
                )
                ok = False
        paths: list[StringMatch] = []
        if "paths" in fields:
            for ipath, pnode in r.listed(fields["paths"][1], f"{path}.paths"):
                sm = _policy_path(r, pnode, ipath)
                ok &= sm is not None
                if sm is not None:
                    paths.append(sm)
        methods: list[str] = []
        if "methods" in fields:
            for ipath, mnode in r.listed(fields["methods"][1], f"{path}.methods"):
                text = r.string(mnode, ipath)
                if text is not None and text.upper() not in HTTP_METHODS:
                    r.error(
                        mnode,
                        ipath,
                        f"unknown HTTP method '{text}'",
                        _did_you_mean(text.upper(), HTTP_METHODS) or _one_of(HTTP_METHODS),
                    )
                    text = None
                ok &= text is not None
                if text is not None:
                    methods.append(text.upper())
        if not ok:
            continue
        if name in names:
            r.error(
                item,
                f"{path}.name",
                f"duplicate policy name '{name}' (first at line {names[name].line})",
            )
            continue
        names[name] = item.position
        out.append(
            AuthorizationPolicy(
                name,
                action,
                tuple(targets),
                sources,
                tuple(paths),
                tuple(methods),
                position=item.position,
            )
        )
    return tuple(out)


def _policy_path(r: _Reader, node: Node, path: str) -> StringMatch | None:
    """Istio's path forms: '/exact', '/prefix/*', or a {exact|prefix|regex} mapping."""
    if isinstance(node, Scalar) and isinstance(node.value, str):
        text = node.text
        if text == "*":
            return StringMatch(MatchKind.PREFIX, "/")
        if text.startswith("*"):
            r.error(
                node,
                path,
                f"suffix paths like '{text}' are not supported",
                f"use {{regex: '.*{re.escape(text[1:])}'}}",
            )
            return None
        if not text.startswith("/"):
            r.error(node, path, f"path '{text}' can never match: request paths start with '/'")
            return None
        if text.endswith("*"):
            return StringMatch(MatchKind.PREFIX, text[:-1])
        return StringMatch(MatchKind.EXACT, text)
    return _read_string_match(r, node, path, is_path=True)


def _read_ingress(r: _Reader, key: Scalar, node: Node) -> Ingress:
    fields = r.mapping(node, "ingress", INGRESS_KEYS)
    if fields is None:
        return Ingress()

    def at(name: str) -> Position | None:
        return fields[name][1].position if name in fields else None

    got = r.each(
        fields,
        "ingress",
        {
            "https_port": r.port,
            "http_port": r.port,
            "redirect_http": r.boolean,
            "bind": lambda n, p: _host(r, n, p),
        },
    )
    if "extra_cert_hosts" in fields:
        hosts: list[str] = []
        for ipath, item in r.listed(fields["extra_cert_hosts"][1], "ingress.extra_cert_hosts"):
            text = _cert_host(r, item, ipath)
            if text is not None:
                hosts.append(text)
        got["extra_cert_hosts"] = tuple(hosts)
    if "hosts" in fields:
        got["hosts"] = _read_hosts(r, fields["hosts"][1])
    got["positions"] = IngressPositions(key.position, at("https_port"), at("http_port"), at("bind"))
    ingress = Ingress(**got)  # type: ignore[arg-type]
    if ingress.https_port == ingress.http_port:
        clash = "https_port" if "https_port" in fields else "http_port"
        r.error(
            fields[clash][1],
            f"ingress.{clash}",
            f"https_port and http_port are both {ingress.http_port}",
        )
    return ingress


def _read_hosts(r: _Reader, node: Node) -> tuple[IngressHost, ...]:
    if not isinstance(node, SeqNode):
        r.expected(
            node,
            "ingress.hosts",
            "a list of hosts",
            "- {host: shop.localhost, routes: [{route: [{service: web}]}]}",
        )
        return ()
    out: list[IngressHost] = []
    seen: dict[str, Position] = {}
    for i, item in enumerate(node.items):
        path = f"ingress.hosts[{i}]"
        fields = r.mapping(
            item, path, HOST_KEYS, required=("host", "routes"), what="a host mapping"
        )
        if fields is None or "host" not in fields or "routes" not in fields:
            continue
        host_node = fields["host"][1]
        host = _cert_host(r, host_node, f"{path}.host")
        client_certs = ClientCerts.OFF
        if "client_certs" in fields:
            cc = _enum(r, fields["client_certs"][1], f"{path}.client_certs", ClientCerts)
            if cc is None:
                continue
            client_certs = cc
        routes = _read_routes(r, fields["routes"][1], f"{path}.routes", owner=None)
        if host is None:
            continue
        host = host.lower()
        if host in seen:
            r.error(
                host_node,
                f"{path}.host",
                f"host '{host}' is declared twice (first at line {seen[host].line})",
                "put all its routes under one entry",
            )
            continue
        seen[host] = host_node.position
        if not routes:
            continue
        out.append(IngressHost(host, routes, client_certs, position=item.position))
    return tuple(out)


# ---------------------------------------------------------------------------------------
# the whole file


def parse_mesh_text(
    text: str,
    filename: str,
    project: ComposeProject | None = None,
    image_ports: ImagePorts | None = None,
    *,
    empty_ok: bool = True,
) -> MeshConfig:
    """Parse and validate mesh.yaml text; raise ConfigError with every problem found.
    ``image_ports``: local images' EXPOSE lists, when an engine was asked. ``empty_ok``
    False refuses a file with no content (a truncating editor's mid-write state on a
    reload) instead of reading it as a mesh with nothing in it."""
    root = parse_yaml(text, filename)
    if root is None and not empty_ok:
        raise ConfigError(
            Problem(
                "mesh.yaml is empty",
                Position(filename, 1, 1),
                hint="an editor may be half-way through saving it; the last good config "
                "keeps serving until it has content",
            )
        )
    r = _Reader(filename, project)
    mesh = MeshSettings(name=project.name) if project is not None and project.name else None
    drafts: dict[str, _ServiceDraft] = {}
    policies: tuple[AuthorizationPolicy, ...] = ()
    ingress = Ingress()
    if root is not None:
        if not isinstance(root, MapNode):
            r.expected(root, "", "a mapping with keys " + ", ".join(TOP_KEYS))
            raise ConfigError(r.problems)
        known = [*TOP_KEYS]
        fields = r.mapping(
            MapNode(
                tuple((k, v) for k, v in root.items if not k.text.startswith("x-")),
                root.position,
                root.merged,
            ),
            "",
            known,
        )
        assert fields is not None
        if "mesh" in fields:
            mesh = _read_mesh(r, fields["mesh"][1], project)
            r.trust_domain = mesh.trust_domain
        if "services" in fields:
            drafts = _read_services(r, fields["services"][1], project)
        if "policies" in fields:
            policies = _read_policies(r, fields["policies"][1])
        if "ingress" in fields:
            ingress = _read_ingress(r, *fields["ingress"])
    services = _merge_with_compose(r, drafts, project, image_ports)
    _check_references(r, services, drafts)
    policies = _expand_targets(policies, services)
    settings = mesh or MeshSettings()
    if ingress.hosts and settings.admin_port in (ingress.http_port, ingress.https_port):
        at = (
            r.value_at.get("mesh.admin_port")
            or r.value_at.get("ingress.https_port")
            or (r.value_at.get("ingress.http_port") or Position(filename, 1, 1))
        )
        r.error(
            at,
            "mesh.admin_port",
            f"admin_port {settings.admin_port} is also an ingress port",
            "pick different ports for the admin API and the ingress",
        )
    gateway = services.get(INGRESS_IDENTITY)
    if ingress.hosts and gateway is not None and gateway.meshed:
        r.error(
            gateway.position or Position(filename, 1, 1),
            f"services.{INGRESS_IDENTITY}",
            f"a service named '{INGRESS_IDENTITY}' would be taken for the ingress gateway "
            "(they would share a workload identity and, in the mesh container, a certificate "
            "directory)",
            "rename the service, set `meshed: false` on it, or drop the ingress section",
        )
    _check_listens(r)
    if r.problems:
        raise ConfigError(
            sorted(
                r.problems,
                key=lambda p: (p.position.line, p.position.column) if p.position else (0, 0),
            ),
            hint="fix the lines above; `localmesh validate` checks again",
        )
    return MeshConfig(
        mesh=settings,
        services=tuple(services.values()),
        ingress=ingress,
        policies=policies,
        source=filename,
    )


def load_mesh_file(
    path: Path,
    project: ComposeProject | None = None,
    image_ports: ImagePorts | None = None,
    *,
    empty_ok: bool = True,
    shown_as: str | None = None,
) -> MeshConfig:
    """Read and validate a mesh.yaml file (see parse_mesh_text).

    ``shown_as`` names the file in positions and messages instead of ``path``: the mesh
    container reads mesh.yaml where it is mounted, the user knows it by its host path.
    """
    name = shown_as or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            Problem(f"mesh file not found: {name}"),
            hint="run `localmesh init` to write one, or pass --mesh PATH",
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            Problem(f"{name} is not UTF-8 text: {exc.reason}", Position(name, 1, 1))
        ) from None
    except OSError as exc:
        raise ConfigError(Problem(f"cannot read {name}: {exc.strerror}")) from None
    return parse_mesh_text(text, name, project, image_ports, empty_ok=empty_ok)


def _merge_with_compose(
    r: _Reader,
    drafts: dict[str, _ServiceDraft],
    project: ComposeProject | None,
    image_ports: ImagePorts | None,
) -> dict[str, Service]:
    """mesh.yaml over the inferred mesh: compose services first, then outside upstreams.
    A port written without a protocol speaks what compose says it does, if compose knows."""
    left_out = {n for n, d in drafts.items() if d.meshed_at and not d.service.meshed}
    inferred: dict[str, InferredService] = (
        infer_services(project, image_ports, unmeshed=left_out) if project is not None else {}
    )
    out: dict[str, Service] = {}
    for name, inf in inferred.items():
        base = dataclasses.replace(
            inf.service,
            position=project.position_of("services", name) if project is not None else None,
        )
        draft = drafts.get(name)
        if draft is None:
            out[name] = base
            continue
        svc = draft.service
        known = {p.port: p.protocol for p in base.ports}
        written = tuple(
            dataclasses.replace(p, protocol=known[p.port])
            if p.port in draft.guessed and p.port in known
            else p
            for p in draft.wrote_ports
        )
        wrote = {p.port for p in written}
        ports = written + tuple(p for p in base.ports if p.port not in wrote)
        meshed = svc.meshed if draft.meshed_at else base.meshed
        if draft.meshed_at and svc.meshed and not base.meshed:
            r.error(
                draft.meshed_at,
                f"services.{name}.meshed",
                f"service '{name}' cannot be meshed: {inf.note}",
                "remove meshed: true; the mesh leaves it alone",
            )
        out[name] = dataclasses.replace(
            svc, ports=tuple(sorted(ports, key=lambda p: p.port)), meshed=meshed
        )
    for name, draft in drafts.items():
        if name in out:
            continue
        svc = draft.service
        if project is not None and not svc.endpoints:
            hint = _did_you_mean(name, inferred) or (
                "an upstream outside compose needs endpoints: ['host:port']"
            )
            r.error(
                draft.key,
                f"services.{name}",
                f"service '{name}' is not in the compose project and has no endpoints",
                hint,
            )
        out[name] = svc
    return out


def _check_references(
    r: _Reader, services: dict[str, Service], drafts: dict[str, _ServiceDraft]
) -> None:
    for ref in r.refs:
        svc = services.get(ref.service)
        if svc is None:
            r.error(
                ref.at,
                ref.path,
                f"service '{ref.service}' does not exist",
                _did_you_mean(ref.service, services) or _known(services),
            )
            continue
        if ref.subset is not None and ref.subset not in {s.name for s in svc.subsets}:
            names = [s.name for s in svc.subsets]
            r.error(
                ref.subset_at or ref.at,
                ref.path.rsplit(".", 1)[0] + ".subset",
                f"service '{svc.name}' has no subset '{ref.subset}'",
                _did_you_mean(ref.subset, names)
                or (
                    f"its subsets: {', '.join(names)}"
                    if names
                    else f"declare it under services.{svc.name}.subsets"
                ),
            )
        if ref.port is not None and svc.ports and ref.port not in {p.port for p in svc.ports}:
            r.error(
                ref.port_at or ref.at,
                ref.path.rsplit(".", 1)[0] + ".port",
                f"service '{svc.name}' has no port {ref.port}",
                f"its ports: {', '.join(str(p.port) for p in svc.ports)}",
            )
        elif ref.needs_http and svc.ports:
            ports = [p for p in svc.ports if ref.port in (None, p.port)]
            if not any(p.protocol.is_http for p in ports):
                r.error(
                    ref.at,
                    ref.path,
                    f"service '{svc.name}' has no http port to forward HTTP to "
                    f"({', '.join(f'{p.port}/{p.protocol.value}' for p in ports)})",
                )
    for src in r.sources:
        if src.name in services:
            continue
        if src.principals:
            if (
                src.name.startswith(SPIFFE_PREFIX)
                or src.name.startswith("*")
                or (src.name.endswith("*"))
            ):
                continue
            if src.name.startswith(CLIENT_PREFIX):
                try:
                    check_client_name(src.name[len(CLIENT_PREFIX) :])
                except CAError as exc:
                    r.error(src.at, src.path, exc.message, exc.hint)
                continue
        r.error(
            src.at,
            src.path,
            f"unknown source '{src.name}'",
            _did_you_mean(src.name, services)
            or (
                "a service name, 'client:NAME', a spiffe:// identity or a '*' wildcard"
                if src.principals
                else "a service name"
            ),
        )
    for target, at, path in r.policy_targets:
        if target != "*" and target not in services:
            r.error(
                at,
                path,
                f"service '{target}' does not exist",
                _did_you_mean(target, services) or _known(services),
            )
    for name, draft in drafts.items():
        svc = services.get(name)
        if svc is None:
            continue
        if draft.routes_at is not None and not svc.meshed:
            r.error(
                draft.routes_at,
                f"services.{name}.routes",
                f"routes on service '{name}' never apply: it is not meshed",
            )
        has_http = not svc.ports or any(p.protocol.is_http for p in svc.ports)
        if not has_http:
            protos = ", ".join(sorted({p.protocol.value for p in svc.ports}))
            for path, key, at in draft.route_keys:
                r.error(
                    at,
                    path,
                    f"'{key}' needs an http port; '{name}' speaks {protos}",
                    "a route on a TCP service may only use match.sources and route",
                )
            if (
                draft.health_at is not None
                and svc.health_check is not None
                and (svc.health_check.kind is HealthCheckKind.HTTP)
            ):
                r.error(
                    draft.health_at,
                    f"services.{name}.health_check",
                    f"an http health check on '{name}', which speaks {protos}",
                    "use kind: tcp",
                )


def _known(services: Collection[str]) -> str:
    names = sorted(services)
    if not names:
        return "no services are declared"
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return f"known services: {shown}"


def _expand_targets(
    policies: tuple[AuthorizationPolicy, ...], services: dict[str, Service]
) -> tuple[AuthorizationPolicy, ...]:
    """``to: '*'`` means every service known now (compose + mesh.yaml)."""
    out = []
    for p in policies:
        out.append(dataclasses.replace(p, to=tuple(services)) if "*" in p.to else p)
    return tuple(out)


def _check_listens(r: _Reader) -> None:
    """Host mode binds each ``listen`` address once: two ports cannot share one."""
    seen: dict[str, tuple[str, Position]] = {}
    for listen, path, at in r.listens:
        if listen in seen:
            first_path, first_at = seen[listen]
            r.error(
                at,
                path,
                f"listen address {listen} is also used by {first_path} (line {first_at.line})",
            )
            continue
        seen[listen] = (path, at)
