"""Findings for valid but suspicious meshes, each with its code and position."""

from __future__ import annotations

import textwrap

from localmesh.compose.project import ComposeProject
from localmesh.config import analyze, parse_mesh_text
from tests.unit.config.conftest import MakeProject


def codes(text: str, project: ComposeProject | None = None) -> list[tuple[str, int | None]]:
    config = parse_mesh_text(textwrap.dedent(text), "mesh.yaml", project)
    return [(f.code, f.position.line if f.position else None) for f in analyze(config, project)]


def test_a_clean_mesh_has_no_findings() -> None:
    assert codes("services: {api: {ports: [8000]}, web: {ports: [80]}}") == []


def test_shadowed_route() -> None:
    assert codes("""
        services:
          api:
            routes:
              - {name: api, match: [{path: {prefix: /api}}]}
              - {name: v2, match: [{path: {prefix: /api/v2}}]}
    """) == [("shadowed-route", 6), ("no-default-route", 6)]


def test_routes_without_a_catch_all_404_the_rest() -> None:
    assert codes("""
        services:
          api:
            routes:
              - {name: items, match: [{path: {prefix: /items}}], timeout: 1s}
    """) == [("no-default-route", 5)]
    assert (
        codes("""
        services:
          api:
            routes:
              - {name: items, match: [{path: {prefix: /items}}], timeout: 1s}
              - {name: default}
    """)
        == []
    )


def test_retry_that_the_timeout_prevents() -> None:
    assert codes("""
        services:
          api:
            timeout: 1s
            routes:
              - {name: slow, retries: {attempts: 2, per_try_timeout: 1s}}
    """) == [("retry-after-timeout", 6)]


def test_deny_all_and_the_unreachable_service_it_makes() -> None:
    assert codes("""
        services: {api: {ports: [8000]}, web: {ports: [80]}}
        policies:
          - {name: lockdown, action: deny, to: [api]}
    """) == [("deny-all", 4), ("unreachable-service", 2)]


def test_allow_listing_nobody_who_can_call() -> None:
    assert codes("""
        services: {api: {ports: [8000]}, web: {ports: [80]}}
        policies:
          - {name: only-alice, to: [api], from: ["client:alice"]}
    """) == [("unreachable-service", 2)]
    # named by SPIFFE id or wildcard, the service caller counts
    spiffe = "policies: [{to: [api], from: ['spiffe://localmesh/svc/web']}]\n"
    wildcard = "policies: [{to: [api], from: ['w*']}]\n"
    two = "services: {api: {ports: [8000]}, web: {ports: [80]}}\n"
    assert codes(two + spiffe) == []
    assert codes(two + wildcard) == []


def test_ingress_counts_as_a_caller_only_for_policies_without_from() -> None:
    head = "services: {api: {ports: [8000]}}\n"
    ingress = "ingress:\n  hosts: [{host: api.localhost, routes: [{route: api}]}]\n"
    ops = "policies: [{name: ops, to: [api], paths: [/ops/*]}]\n"
    alice = "policies: [{name: alice, to: [api], from: ['client:alice']}]\n"
    assert codes(head + ops + ingress) == []
    assert codes(head + alice + ingress) == [("unreachable-service", 1)]


def test_network_isolation_in_compose(make_project: MakeProject) -> None:
    project = make_project(
        web={"image": "ghcr.io/x/web:1", "networks": {"front": None}},  # no known ports
        api={"expose": ["8000"], "networks": {"back": None}},
        published={"ports": [{"target": 80, "published": "8080"}], "networks": {"x": None}},
    )
    assert codes("", project) == [("unreachable-service", None)]  # api: no peer, no ingress


def test_compose_findings(make_project: MakeProject) -> None:
    project = make_project(
        dns={"ports": [{"target": 53, "protocol": "udp"}]},
        metrics={"image": "x", "network_mode": "host"},
    )
    assert codes("", project) == [("udp-upstream", None), ("unmeshed-network-mode", None)]


def test_subset_without_endpoints() -> None:
    assert codes("""
        services:
          api:
            endpoints: [{host: 127.0.0.1, port: 8001, labels: {version: v1}}]
            subsets: {v1: {version: v1}, v2: {version: v2}}
    """) == [("empty-subset", 3)]
