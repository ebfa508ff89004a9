"""Route matching, rewriting and weighted splits, with plain values."""

from __future__ import annotations

import random
from typing import TypedDict, Unpack

import pytest

from localmesh.config.model import (
    Destination,
    HeaderMatch,
    HeaderOps,
    MatchKind,
    QueryMatch,
    RequestMatch,
    RetryPolicy,
    Route,
    Service,
    StringMatch,
)
from localmesh.runtime.dataplane.core.routing import Headers, RouteTable, compile_routes

pytestmark = pytest.mark.unit


def sm(kind: MatchKind, value: str) -> StringMatch:
    return StringMatch(kind, value)


def table(*routes: Route, service: Service | None = None) -> RouteTable[Destination]:
    svc = service or Service(name="api", routes=routes)
    return compile_routes(svc, lambda d: d)


class Request(TypedDict, total=False):
    method: bytes
    headers: Headers
    query: bytes
    source: str


def name_of(t: RouteTable[Destination], path: bytes = b"/", **kw: Unpack[Request]) -> str | None:
    method = kw.get("method", b"GET")
    headers = kw.get("headers", [])
    query = kw.get("query", b"")
    source = kw.get("source", "web")
    m = t.match(method, path, query, headers, source)
    return None if m is None else m.route.name


def test_no_routes_means_one_default_route_to_the_service() -> None:
    t = table()
    m = t.match(b"GET", b"/anything", b"", [], "web")
    assert m is not None
    assert m.route.name == "default"
    assert m.route.targets == (Destination("api"),)


def test_first_match_wins_and_unmatched_is_none() -> None:
    t = table(
        Route("exact", matches=(RequestMatch(path=sm(MatchKind.EXACT, "/a")),)),
        Route("prefix", matches=(RequestMatch(path=sm(MatchKind.PREFIX, "/a")),)),
        Route("regex", matches=(RequestMatch(path=sm(MatchKind.REGEX, r"/b/\d+")),)),
    )
    assert name_of(t, b"/a") == "exact"
    assert name_of(t, b"/ab") == "prefix"
    assert name_of(t, b"/b/12") == "regex"
    assert name_of(t, b"/b/12x") is None  # regexes match the whole path
    assert name_of(t, b"/c") is None


def test_method_header_query_and_source_conditions_all_apply() -> None:
    t = table(
        Route(
            "strict",
            matches=(
                RequestMatch(
                    methods=("POST",),
                    headers=(
                        HeaderMatch("x-user", sm(MatchKind.PREFIX, "adm")),
                        HeaderMatch("x-debug", None, invert=True),
                    ),
                    query=(QueryMatch("v", sm(MatchKind.EXACT, "2")),),
                    sources=("web",),
                ),
            ),
        ),
        Route("rest"),
    )
    ok: Request = {"method": b"POST", "headers": [(b"x-user", b"admin")], "query": b"v=2&x=1"}
    assert name_of(t, **ok) == "strict"
    assert name_of(t, **(ok | {"method": b"GET"})) == "rest"
    assert name_of(t, **(ok | {"headers": [(b"x-user", b"bob")]})) == "rest"
    assert name_of(t, **(ok | {"headers": [(b"x-user", b"admin"), (b"x-debug", b"1")]})) == "rest"
    assert name_of(t, **(ok | {"query": b"v=3"})) == "rest"
    assert name_of(t, **(ok | {"source": "worker"})) == "rest"


def test_header_presence_match_and_or_of_matches() -> None:
    t = table(
        Route(
            "either",
            matches=(
                RequestMatch(headers=(HeaderMatch("x-canary"),)),
                RequestMatch(path=sm(MatchKind.PREFIX, "/beta")),
            ),
        ),
    )
    assert name_of(t, headers=[(b"x-canary", b"")]) == "either"
    assert name_of(t, b"/beta/x") == "either"
    assert name_of(t, b"/alpha") is None


@pytest.mark.parametrize(
    ("match", "path", "expected"),
    [
        (sm(MatchKind.PREFIX, "/api"), b"/api/users", b"/v2/users"),
        (sm(MatchKind.EXACT, "/api"), b"/api", b"/v2"),
        (sm(MatchKind.REGEX, "/a.*"), b"/anything", b"/v2"),
        (None, b"/x", b"/v2x"),
    ],
)
def test_rewrite_replaces_the_matched_prefix(
    match: StringMatch | None, path: bytes, expected: bytes
) -> None:
    t = table(Route("r", matches=(RequestMatch(path=match),), rewrite_prefix="/v2"))
    m = t.match(b"GET", path, b"", [], "web")
    assert m is not None
    assert m.rewrite(path) == expected


def test_weighted_split_follows_the_weights() -> None:
    t = table(
        Route(
            "split",
            destinations=(Destination("api", "v1", weight=90), Destination("api", "v2", weight=10)),
        )
    )
    route = t.routes[0]
    rng = random.Random(7)
    picks = [route.targets[route.pick(rng.random())].subset for _ in range(10_000)]
    share = picks.count("v2") / len(picks)
    assert 0.08 < share < 0.12
    assert route.targets[route.pick(0.0)].subset == "v1"
    assert route.targets[route.pick(0.95)].subset == "v2"


def test_service_defaults_fold_into_routes() -> None:
    retry = RetryPolicy(attempts=5)
    svc = Service(
        name="api",
        timeout=3.0,
        retries=retry,
        routes=(Route("own", timeout=1.0), Route("inherits")),
    )
    t = compile_routes(svc, lambda d: d)
    own, inherits = t.routes
    assert (own.timeout, inherits.timeout) == (1.0, 3.0)
    assert inherits.retry is retry


def test_header_ops_compile_once_and_apply() -> None:
    t = table(
        Route(
            "ops",
            request_headers=HeaderOps(
                set=(("X-Env", "prod"),), add=(("x-tag", "a"),), remove=("x-secret",)
            ),
        )
    )
    ops = t.routes[0].request_ops
    assert ops is not None
    out = ops.apply([(b"x-env", b"dev"), (b"x-secret", b"1"), (b"x-tag", b"b")])
    assert out == [(b"x-tag", b"b"), (b"x-env", b"prod"), (b"x-tag", b"a")]
    assert t.routes[0].response_ops is None


def test_index_keeps_first_match_order_across_buckets() -> None:
    t = table(
        Route("regex-first", matches=(RequestMatch(path=sm(MatchKind.REGEX, "/api/v[0-9]")),)),
        Route("api", matches=(RequestMatch(path=sm(MatchKind.PREFIX, "/api/")),)),
        Route("apix", matches=(RequestMatch(path=sm(MatchKind.PREFIX, "/api")),)),
        Route("exact", matches=(RequestMatch(path=sm(MatchKind.EXACT, "/users")),)),
        Route("users", matches=(RequestMatch(path=sm(MatchKind.PREFIX, "/users/")),)),
        Route("rest"),
    )
    assert name_of(t, b"/api/v1") == "regex-first"
    assert name_of(t, b"/api/x") == "api"
    assert name_of(t, b"/apix") == "apix"
    assert name_of(t, b"/api") == "apix"
    assert name_of(t, b"/users") == "exact"
    assert name_of(t, b"/users/7") == "users"
    assert name_of(t, b"/other") == "rest"
    assert name_of(t, b"/") == "rest"


def test_a_thousand_routes_match_like_a_linear_scan() -> None:
    routes = [
        Route(f"r{i}", matches=(RequestMatch(path=sm(MatchKind.PREFIX, f"/svc{i}/")),))
        for i in range(1000)
    ]
    t = table(*routes, Route("fallback"))
    for i in (0, 1, 500, 999):
        assert name_of(t, f"/svc{i}/x".encode()) == f"r{i}"
    assert name_of(t, b"/svc1000/x") == "fallback"
