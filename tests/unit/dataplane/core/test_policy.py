"""Authorization decisions with Istio semantics."""

from __future__ import annotations

import pytest

from localmesh.config.model import AuthorizationPolicy, MatchKind, PolicyAction, StringMatch
from localmesh.runtime.dataplane.core.policy import UNKNOWN_CALLER, Caller, compile_policies

pytestmark = pytest.mark.unit

ALLOW, DENY = PolicyAction.ALLOW, PolicyAction.DENY


def caller(name: str) -> Caller:
    return Caller.service(name, "shop")


def test_targets_without_policies_are_absent_from_the_map() -> None:
    table = compile_policies([AuthorizationPolicy("p", ALLOW, to=("db",), sources=("api",))])
    assert "web" not in table


def test_allow_list_admits_only_listed_sources() -> None:
    db = compile_policies([AuthorizationPolicy("p", ALLOW, to=("db",), sources=("api",))])["db"]
    assert db.check(caller("api"), b"GET", b"/") is None
    assert db.check(caller("web"), b"GET", b"/") == "no allow policy matches"
    assert db.check(UNKNOWN_CALLER, b"GET", b"/") is not None
    # memoised answers stay right
    assert db.check(caller("web"), b"GET", b"/") is not None
    assert db.check_tcp(caller("api")) is None
    assert db.check_tcp(caller("web")) is not None


def test_deny_wins_over_allow() -> None:
    api = compile_policies(
        [
            AuthorizationPolicy("all", ALLOW, to=("api",)),
            AuthorizationPolicy(
                "no-admin",
                DENY,
                to=("api",),
                paths=(StringMatch(MatchKind.PREFIX, "/admin"),),
                methods=("POST",),
            ),
        ]
    )["api"]
    assert api.check(caller("web"), b"POST", b"/admin/x") == "denied by policy 'no-admin'"
    assert api.check(caller("web"), b"GET", b"/admin/x") is None
    assert api.check(caller("web"), b"POST", b"/public") is None
    # TCP: a DENY rule with HTTP fields denies the whole connection (the safe side)
    assert api.check_tcp(caller("web")) is not None


def test_allow_with_http_fields_never_matches_tcp() -> None:
    db = compile_policies(
        [AuthorizationPolicy("p", ALLOW, to=("db",), methods=("GET",), sources=("api",))]
    )["db"]
    assert db.check(caller("api"), b"GET", b"/") is None
    assert db.check_tcp(caller("api")) is not None


def test_principals_and_wildcards() -> None:
    table = compile_policies(
        [
            AuthorizationPolicy("a", ALLOW, to=("a",), sources=("spiffe://shop/svc/api",)),
            AuthorizationPolicy("b", ALLOW, to=("b",), sources=("*",)),
            AuthorizationPolicy("c", ALLOW, to=("c",), sources=("spiffe://shop/*",)),
            AuthorizationPolicy("d", ALLOW, to=("d",), sources=("*-client",)),
        ]
    )
    assert table["a"].check(caller("api"), b"GET", b"/") is None
    assert table["a"].check(caller("web"), b"GET", b"/") is not None
    assert table["b"].check(caller("web"), b"GET", b"/") is None
    assert table["b"].check(UNKNOWN_CALLER, b"GET", b"/") is not None
    assert table["c"].check(caller("web"), b"GET", b"/") is None
    assert table["c"].check(Caller("alice"), b"GET", b"/") is not None
    assert table["d"].check(Caller("ci-client"), b"GET", b"/") is None
