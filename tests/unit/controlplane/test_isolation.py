"""Compose network isolation compiled into DENY policies, and decided by the real policy core."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from localmesh.compose.plan import Client, MeshPlan, PublishedPorts, Upstream
from localmesh.compose.planner import mesh_network
from localmesh.config.model import (
    AuthorizationPolicy,
    MeshConfig,
    MeshSettings,
    PolicyAction,
    Service,
)
from localmesh.runtime.controlplane.isolation import with_isolation
from localmesh.runtime.dataplane.core.policy import Caller, compile_policies

pytestmark = pytest.mark.unit

NET = mesh_network("shop_localmesh", IPv4Network("10.1.0.0/22"))

# web -> api (front network), api -> db + cache (back network): web never shared one with db.
PLAN = MeshPlan(
    project="shop",
    network=NET,
    published=PublishedPorts(admin=15000),
    upstreams=tuple(
        Upstream(name, f"10.1.1.{i}", (name,)) for i, name in enumerate(("api", "cache", "db"), 10)
    ),
    clients=(Client("web", ("api",)), Client("api", ("cache", "db"))),
)


def config(*policies: AuthorizationPolicy, isolation: bool = True) -> MeshConfig:
    return MeshConfig(
        mesh=MeshSettings(name="shop", keep_network_isolation=isolation),
        services=tuple(Service(n) for n in ("web", "api", "db", "cache")),
        policies=policies,
    )


def verdict(cfg: MeshConfig, caller: str, target: str) -> str | None:
    table = compile_policies(cfg.policies)
    policy = table.get(target)
    return None if policy is None else policy.check_tcp(Caller.service(caller, "localmesh"))


def test_pairs_that_shared_no_network_are_denied_and_the_rest_allowed() -> None:
    cfg = with_isolation(config(), PLAN)
    assert verdict(cfg, "web", "db") == "denied by policy 'network-isolation-db'"
    assert verdict(cfg, "web", "cache") == "denied by policy 'network-isolation-cache'"
    assert verdict(cfg, "web", "api") is None
    assert verdict(cfg, "api", "db") is None
    assert verdict(cfg, "api", "cache") is None
    # db and cache call nobody: they may not start calling api either.
    assert verdict(cfg, "db", "api") == "denied by policy 'network-isolation-api'"
    # Callers the mesh cannot identify are left to the user's own policies.
    assert verdict(cfg, "unknown", "db") is None


def test_an_allow_policy_naming_the_caller_lifts_isolation_for_it_only() -> None:
    allow = AuthorizationPolicy("web-reads-cache", PolicyAction.ALLOW, ("cache",), ("web",))
    cfg = with_isolation(config(allow), PLAN)
    assert verdict(cfg, "web", "cache") is None
    assert verdict(cfg, "web", "db") is not None


def test_an_allow_policy_without_sources_lifts_it_for_everyone() -> None:
    allow = AuthorizationPolicy("db-open", PolicyAction.ALLOW, ("db",))
    cfg = with_isolation(config(allow), PLAN)
    assert not any(p.name == "network-isolation-db" for p in cfg.policies)
    assert verdict(cfg, "web", "db") is None


def test_isolation_off_adds_nothing() -> None:
    cfg = config(isolation=False)
    assert with_isolation(cfg, PLAN) is cfg
