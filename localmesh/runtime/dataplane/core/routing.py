"""Route tables: compiled once per snapshot, matched once per request.

A route table is a service's routes in order (first match wins, like an Istio
VirtualService). Everything a match needs is prepared at compile time: byte strings,
compiled regexes, frozensets, the cumulative weights of the split. The request side works
on what the HTTP parser hands over (bytes, lower-cased header names) and allocates nothing
unless a route looks at the query string.

Path rewriting follows Envoy's ``prefix_rewrite``: a prefix match replaces the matched
prefix, an exact or regex match the whole path; a match without a path condition is a
prefix match on ``/``.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Final, Generic, TypeVar
from urllib.parse import parse_qsl

from localmesh.config.model import (
    Destination,
    Fault,
    MatchKind,
    Mirror,
    RateLimit,
    RequestMatch,
    RetryPolicy,
    Route,
    Service,
    StringMatch,
)
from localmesh.runtime.dataplane.core.headers import CompiledHeaderOps

T = TypeVar("T")

Headers = Sequence[tuple[bytes, bytes]]  # (lower-cased name, value), in arrival order

_EXACT, _PREFIX, _REGEX = 0, 1, 2
_KINDS: Final = {MatchKind.EXACT: _EXACT, MatchKind.PREFIX: _PREFIX, MatchKind.REGEX: _REGEX}


class BytesMatch:
    """One exact/prefix/regex condition on a byte string (regexes match the whole value)."""

    __slots__ = ("kind", "regex", "value")

    def __init__(self, match: StringMatch) -> None:
        self.kind = _KINDS[match.kind]
        self.value = match.value.encode()
        self.regex = re.compile(self.value) if self.kind == _REGEX else None

    def __call__(self, text: bytes) -> bool:
        if self.kind == _EXACT:
            return text == self.value
        if self.kind == _PREFIX:
            return text.startswith(self.value)
        assert self.regex is not None
        return self.regex.fullmatch(text) is not None


def header_value(headers: Headers, name: bytes) -> bytes | None:
    """The first value of ``name`` (lower-case), or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


def parse_query(query: bytes) -> dict[bytes, bytes]:
    """Query parameters (first value wins), percent-decoded."""
    out: dict[bytes, bytes] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        out.setdefault(key, value)
    return out


class RouteMatcher(Generic[T]):
    """One ``RequestMatch`` of a route: all its conditions must hold."""

    __slots__ = (
        "headers",
        "methods",
        "path",
        "query",
        "rewrite_len",
        "route",
        "sources",
    )

    def __init__(self, match: RequestMatch | None, route: CompiledRoute[T]) -> None:
        self.route = route
        path = match.path if match is not None else None
        self.path = BytesMatch(path) if path is not None else None
        # How many leading path bytes a rewrite replaces (-1: the whole path).
        if path is None:
            self.rewrite_len = 1  # a prefix match on "/"
        elif path.kind is MatchKind.PREFIX:
            self.rewrite_len = len(path.value.encode())
        else:
            self.rewrite_len = -1
        if match is None:
            self.methods: frozenset[bytes] = frozenset()
            self.headers: tuple[tuple[bytes, BytesMatch | None, bool], ...] = ()
            self.query: tuple[tuple[bytes, BytesMatch | None], ...] = ()
            self.sources: frozenset[str] = frozenset()
            return
        self.methods = frozenset(m.encode() for m in match.methods)
        self.headers = tuple(
            (h.name.lower().encode(), BytesMatch(h.match) if h.match else None, h.invert)
            for h in match.headers
        )
        self.query = tuple(
            (q.name.encode(), BytesMatch(q.match) if q.match else None) for q in match.query
        )
        self.sources = frozenset(match.sources)

    def matches(
        self,
        method: bytes,
        path: bytes,
        headers: Headers,
        query: dict[bytes, bytes] | None,
        source: str,
    ) -> bool:
        if self.path is not None and not self.path(path):
            return False
        if self.methods and method not in self.methods:
            return False
        if self.sources and source not in self.sources:
            return False
        for name, cond, invert in self.headers:
            value = header_value(headers, name)
            ok = value is not None and (cond is None or cond(value))
            if ok is invert:
                return False
        if self.query:
            assert query is not None
            for qname, qcond in self.query:
                qvalue = query.get(qname)
                if qvalue is None or (qcond is not None and not qcond(qvalue)):
                    return False
        return True

    def rewrite(self, path: bytes) -> bytes:
        """The upstream path after the route's ``rewrite_prefix`` (if any)."""
        new = self.route.rewrite
        if new is None:
            return path
        if self.rewrite_len < 0:
            return new
        return new + path[self.rewrite_len :]


class CompiledRoute(Generic[T]):
    """A route with its service's defaults folded in and its split ready to pick from.

    ``targets`` are parallel to ``destinations``: what the I/O layer forwards to (its
    cluster objects), made once per snapshot by the ``make_target`` given to the compiler.
    """

    __slots__ = (
        "_cumulative",
        "_total",
        "destinations",
        "fault",
        "mirror",
        "name",
        "per_try_timeout",
        "rate_limit",
        "request_ops",
        "response_ops",
        "retry",
        "rewrite",
        "service",
        "targets",
        "timeout",
    )

    def __init__(
        self, route: Route, service: Service, targets: tuple[T, ...], default_dest: Destination
    ) -> None:
        self.name = route.name
        self.service = service.name
        self.destinations = route.destinations or (default_dest,)
        self.targets = targets
        weights = [max(d.weight, 0) for d in self.destinations]
        cumulative: list[int] = []
        running = 0
        for w in weights:
            running += w
            cumulative.append(running)
        self._cumulative = cumulative
        self._total = running
        self.rewrite = route.rewrite_prefix.encode() if route.rewrite_prefix is not None else None
        self.request_ops = CompiledHeaderOps.of(route.request_headers)
        self.response_ops = CompiledHeaderOps.of(route.response_headers)
        self.timeout: float | None = route.timeout if route.timeout is not None else service.timeout
        self.retry: RetryPolicy | None = (
            route.retries if route.retries is not None else (service.retries)
        )
        self.per_try_timeout = self.retry.per_try_timeout if self.retry is not None else 0.0
        self.fault: Fault | None = route.fault
        self.mirror: Mirror | None = route.mirror
        self.rate_limit: RateLimit | None = route.rate_limit

    def pick(self, rnd: float) -> int:
        """Index of the weighted destination for a uniform ``rnd`` in [0, 1)."""
        if len(self._cumulative) == 1:
            return 0
        return min(bisect_right(self._cumulative, rnd * self._total), len(self._cumulative) - 1)


class RouteTable(Generic[T]):
    """A service's routes in order; ``match`` returns the first matching ``RouteMatcher``.

    Matchers are indexed by the first path segment they require (``/api/...`` prefixes
    and exact paths), so a request only tries the matchers of its own first segment plus
    those that cannot be indexed (regexes, no path, prefixes without a full segment), in
    their original order: lookups stay flat as route tables grow.
    """

    __slots__ = ("_buckets", "_catch_all", "_unindexed", "needs_query", "routes")

    def __init__(self, routes: tuple[CompiledRoute[T], ...], matchers: list[RouteMatcher[T]]):
        self.routes = routes
        self.needs_query = any(m.query for m in matchers)
        first = matchers[0] if matchers else None
        trivial = first is not None and (
            first.path is None
            and not (first.methods or first.headers or first.query or first.sources)
        )
        self._catch_all = first if trivial else None
        keyed: dict[bytes, list[tuple[int, RouteMatcher[T]]]] = {}
        unindexed: list[tuple[int, RouteMatcher[T]]] = []
        for order, m in enumerate(matchers):
            key = _segment_key(m.path)
            if key is None:
                unindexed.append((order, m))
            else:
                keyed.setdefault(key, []).append((order, m))
        self._unindexed = tuple(m for _, m in unindexed)
        self._buckets = {
            key: tuple(m for _, m in sorted(items + unindexed, key=lambda om: om[0]))
            for key, items in keyed.items()
        }

    def match(
        self, method: bytes, path: bytes, query: bytes, headers: Headers, source: str
    ) -> RouteMatcher[T] | None:
        if self._catch_all is not None:
            return self._catch_all
        segment = path[1:].partition(b"/")[0]  # partition takes one argument: a cheap call
        candidates = self._buckets.get(segment, self._unindexed)
        params = parse_query(query) if self.needs_query else None
        for matcher in candidates:
            if matcher.matches(method, path, headers, params, source):
                return matcher
        return None


def _segment_key(path: BytesMatch | None) -> bytes | None:
    """The first path segment every path accepted by ``path`` has, if it is certain."""
    if path is None or path.kind == _REGEX or not path.value.startswith(b"/"):
        return None
    end = path.value.find(b"/", 1)
    if end > 0:
        return path.value[1:end]
    if path.kind == _EXACT:
        return path.value[1:]
    return None  # "/api" also matches "/apix": the segment is not certain


def compile_routes(
    service: Service,
    make_target: Callable[[Destination], T],
    routes: tuple[Route, ...] | None = None,
) -> RouteTable[T]:
    """Compile ``routes`` (default: the service's own; none = one route to the service)."""
    source_routes = routes if routes is not None else service.routes
    default_dest = Destination(service=service.name)
    if not source_routes:
        source_routes = (Route(name="default", destinations=(default_dest,)),)
    compiled: list[CompiledRoute[T]] = []
    matchers: list[RouteMatcher[T]] = []
    for route in source_routes:
        dests = route.destinations or (default_dest,)
        cr = CompiledRoute(route, service, tuple(make_target(d) for d in dests), default_dest)
        compiled.append(cr)
        if route.matches:
            matchers.extend(RouteMatcher(m, cr) for m in route.matches)
        else:
            matchers.append(RouteMatcher(None, cr))
    return RouteTable(tuple(compiled), matchers)
