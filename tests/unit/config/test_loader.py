"""mesh.yaml text -> MeshConfig: shorthands, defaults, merging with compose, every problem."""

from __future__ import annotations

import textwrap

import pytest

from localmesh.config import parse_mesh_text
from localmesh.config.model import (
    ClientCerts,
    Destination,
    HashOn,
    HeaderMatch,
    LbPolicy,
    MatchKind,
    MeshConfig,
    PolicyAction,
    PortSpec,
    Protocol,
    RetryPolicy,
    Service,
    StringMatch,
    TLSMode,
)
from localmesh.errors import ConfigError
from tests.unit.config.conftest import MakeProject


def parse(text: str, project: object = None) -> MeshConfig:
    return parse_mesh_text(textwrap.dedent(text), "mesh.yaml", project)  # type: ignore[arg-type]


def problems(text: str, project: object = None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse(text, project)
    return [str(p).removeprefix("mesh.yaml:") for p in err.value.problems]


def svc(config: MeshConfig, name: str) -> Service:
    found = config.service(name)
    assert found is not None
    return found


def test_empty_file_is_the_default_mesh() -> None:
    config = parse("")
    assert config == MeshConfig(source="mesh.yaml")


def test_readme_flavour() -> None:
    config = parse("""
        mesh: {name: shop}
        services:
          api:
            ports: [{port: 8000, protocol: http}]
            subsets: {v1: {version: v1}, v2: {version: v2}}
            routes:
              - name: v2-canary
                match: [{path: {prefix: /v2}}]
                route:
                  - {service: api, subset: v1, weight: 90}
                  - {service: api, subset: v2, weight: 10}
                retries: {attempts: 3, per_try_timeout: 500ms, retry_on: [5xx, connect-failure]}
                fault: {abort: {status: 503, percent: "5%"}}
          db:
            ports: [5432]
        policies:
          - {name: only-api-to-db, action: allow, to: [db], from: [api]}
    """)
    api = svc(config, "api")
    (route,) = api.routes
    assert route.matches[0].path == StringMatch(MatchKind.PREFIX, "/v2")
    assert route.destinations == (
        Destination("api", "v1", None, 90),
        Destination("api", "v2", None, 10),
    )
    assert route.retries is not None
    assert route.retries.attempts == 3
    assert route.retries.per_try_timeout == 0.5
    assert route.retries.retry_on == frozenset({"5xx", "connect-failure"})
    assert route.fault is not None
    assert route.fault.abort is not None
    assert route.fault.abort.percent == 5.0
    assert route.position is not None
    assert route.position.line == 8
    assert route.position.column == 9
    assert svc(config, "db").ports == (PortSpec(5432, Protocol.POSTGRES),)
    (policy,) = config.policies
    assert (policy.action, policy.to, policy.sources) == (PolicyAction.ALLOW, ("db",), ("api",))


def test_shorthands() -> None:
    config = parse("""
        services:
          api:
            ports: [8000, "9000/tcp", {port: 6380, protocol: redis, listen: "127.0.0.1:16380"}]
            endpoints: ["127.0.0.1:8001", {host: 127.0.0.1, port: 8002, labels: {version: 1.10}}]
            load_balancer: least_request
            tls: simple
            rate_limit: 600/m
            retries: 4
            timeout: false
            outlier_detection: false
            routes:
              - match: {methods: get, headers: {X-User: alice, x-debug: {present: true}}}
                route: api
                fault: {delay: 2s, abort: 503}
                mirror: api
    """)
    api = svc(config, "api")
    assert api.ports == (
        PortSpec(8000, Protocol.HTTP),
        PortSpec(9000, Protocol.TCP),
        PortSpec(6380, Protocol.REDIS, "127.0.0.1:16380"),
    )
    assert api.endpoints[1].labels == (("version", "1.10"),)  # the text, not the float 1.1
    assert api.load_balancer.policy is LbPolicy.LEAST_REQUEST
    assert api.tls.mode is TLSMode.SIMPLE
    assert api.rate_limit is not None
    assert (api.rate_limit.requests_per_second, api.rate_limit.burst) == (10.0, 10)
    assert api.retries == RetryPolicy(attempts=4)
    assert api.timeout is None
    assert api.outlier_detection is None
    (route,) = api.routes
    assert route.name == "route-0"
    match = route.matches[0]
    assert match.methods == ("GET",)
    assert match.headers == (
        HeaderMatch("x-user", StringMatch(MatchKind.EXACT, "alice")),
        HeaderMatch("x-debug", None),
    )
    assert route.fault is not None
    assert route.fault.delay is not None
    assert route.fault.abort is not None
    assert (route.fault.delay.fixed, route.fault.abort.status) == (2.0, 503)
    assert route.mirror is not None
    assert route.mirror.service == "api"


def test_route_retries_false_turns_them_off_but_absent_inherits() -> None:
    config = parse("""
        services:
          api:
            routes:
              - {name: a, match: [{path: {exact: /a}}], retries: false}
              - {name: b}
    """)
    a, b = svc(config, "api").routes
    assert a.retries == RetryPolicy(attempts=0)
    assert b.retries is None


def test_route_timeout_false_turns_it_off_but_absent_inherits() -> None:
    config = parse("""
        services:
          api:
            timeout: 5s
            routes:
              - {name: stream, match: [{path: {prefix: /events}}], timeout: false}
              - {name: rest}
    """)
    stream, rest = svc(config, "api").routes
    assert stream.timeout == 0.0  # none, though the service has one
    assert rest.timeout is None


def test_status_codes_in_retry_on_are_istio_style() -> None:
    config = parse("services:\n  api:\n    retries: {retry_on: [503, reset]}\n")
    retries = svc(config, "api").retries
    assert retries is not None
    assert retries.retry_on == frozenset({"reset", "retriable-status-codes"})
    assert retries.retriable_status_codes == frozenset({503})


def test_status_codes_alone_add_to_the_default_conditions() -> None:
    config = parse("services:\n  api:\n    retries: {attempts: 2, retriable_status_codes: [429]}\n")
    retries = svc(config, "api").retries
    assert retries is not None
    assert retries.retry_on == RetryPolicy().retry_on | {"retriable-status-codes"}
    assert retries.retriable_status_codes == frozenset({429})


def test_policy_paths_and_wildcard_target() -> None:
    config = parse("""
        services: {api: {}, db: {}}
        policies:
          - {name: p, action: deny, to: "*", paths: [/admin/*, /login, {regex: "/x/.*"}],
             methods: [post], from: [client:alice, "web-*", "spiffe://other/svc/api", api]}
    """)
    (p,) = config.policies
    assert p.to == ("api", "db")
    assert p.paths == (
        StringMatch(MatchKind.PREFIX, "/admin/"),
        StringMatch(MatchKind.EXACT, "/login"),
        StringMatch(MatchKind.REGEX, "/x/.*"),
    )
    assert p.methods == ("POST",)
    assert p.sources == (
        "spiffe://localmesh/client/alice",
        "web-*",
        "spiffe://other/svc/api",
        "api",
    )


def test_client_sources_use_the_trust_domain_and_sources_in_routes_are_services() -> None:
    config = parse(
        "mesh: {trust_domain: shop.local}\npolicies: [{to: api, from: client:ci}]\n"
        "services: {api: {}}"
    )
    assert config.policies[0].sources == ("spiffe://shop.local/client/ci",)
    assert problems("services: {api: {routes: [{match: [{sources: [client:ci]}]}]}}") == [
        "1:47: services.api.routes[0].match[0].sources[0]: unknown source 'client:ci' "
        "(a service name)"
    ]


def test_ingress() -> None:
    config = parse("""
        services: {web: {ports: [80]}}
        ingress:
          https_port: 9443
          hosts:
            - host: Shop.Localhost
              client_certs: off
              routes: [{name: all, route: [web]}]
          extra_cert_hosts: ["*.shop.localhost", 127.0.0.1]
    """)
    (host,) = config.ingress.hosts
    assert (host.host, host.client_certs) == ("shop.localhost", ClientCerts.OFF)
    assert host.routes[0].destinations == (Destination("web"),)
    assert config.ingress.https_port == 9443
    assert config.ingress.extra_cert_hosts == ("*.shop.localhost", "127.0.0.1")


def test_consistent_hash() -> None:
    config = parse(
        "services:\n  api:\n    load_balancer: {policy: consistent_hash, hash_on: header,"
        " hash_key: X-User}\n"
    )
    lb = svc(config, "api").load_balancer
    assert (lb.policy, lb.hash_on, lb.hash_key) == (
        LbPolicy.CONSISTENT_HASH,
        HashOn.HEADER,
        "x-user",
    )


def test_compose_services_are_merged_and_ports_inferred(make_project: MakeProject) -> None:
    project = make_project(
        web={"image": "nginx", "ports": [{"target": 80, "protocol": "tcp"}]},
        db={"image": "postgres:15"},
        host={"image": "x", "network_mode": "host"},
    )
    config = parse(
        """
        services:
          web:
            ports: [{port: 9090, protocol: tcp}]
          payments:
            endpoints: ["10.0.0.9:443"]
            ports: [443]
    """,
        project,
    )
    assert config.mesh.name == "shop"
    assert [s.name for s in config.services] == ["db", "host", "web", "payments"]
    assert svc(config, "web").ports == (PortSpec(80, Protocol.HTTP), PortSpec(9090, Protocol.TCP))
    assert svc(config, "db").ports == (PortSpec(5432, Protocol.POSTGRES),)
    assert not svc(config, "host").meshed
    assert svc(config, "web").position is not None  # mesh.yaml position for what it names


def test_a_redeclared_port_overrides_the_inferred_protocol(make_project: MakeProject) -> None:
    project = make_project(cache={"image": "redis", "expose": ["6379"]})
    config = parse("services:\n  cache:\n    ports: ['6379/tcp']\n", project)
    assert svc(config, "cache").ports == (PortSpec(6379, Protocol.TCP),)


def test_every_problem_is_reported_in_file_order() -> None:
    got = problems("""
        services:
          api:
            retries: {attempts: 3, retry_on: []}
            timeout: 1h2h
            connection_pool: {max_connections: 0, connect_timout: 1s}
    """)
    assert got == [
        "4:38: services.api.retries.retry_on: must not be empty (list conditions, e.g. "
        "[5xx, connect-failure], or set attempts: 0)",
        "5:14: services.api.timeout: units must go from largest to smallest, each once: "
        "'1h2h' (a number with a unit: 500ms, 2s, 1.5s, 1m, 1h30m)",
        "6:40: services.api.connection_pool.max_connections: 0 is out of range, expected an "
        "integer >= 1",
        "6:43: services.api.connection_pool.connect_timout: unknown key (did you mean "
        "'connect_timeout'?)",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("services: {api: {ports: [0]}}", "1:26: services.api.ports[0]: 0 is out of range"),
        (
            "services: {api: {ports: [8000, 8000]}}",
            "1:32: services.api.ports[1]: port 8000 is declared twice (first at line 1)",
        ),
        ("services: {'a b': {}}", "1:12: services.a b: invalid service name 'a b'"),
        ("services: {api: {timeout: 0s}}", "1:27: services.api.timeout: duration must be"),
        (
            "services: {api: {subsets: {v1: {}}}}",
            "1:32: services.api.subsets.v1: a subset needs at least one label",
        ),
        (
            "services: {api: {tls: {mode: disable, sni: a.b}}}",
            "1:39: services.api.tls.sni: has no effect with mode: disable",
        ),
        (
            "services: {api: {retries: {backoff_base: 1s, backoff_max: 100ms}}}",
            "1:42: services.api.retries.backoff_base: backoff_base (1s) is longer than",
        ),
        (
            "services: {api: {routes: [{route: [{service: api, weight: 50}]}]}}",
            "1:59: services.api.routes[0].route[0].weight: a single destination takes all traffic",
        ),
        (
            "services: {api: {routes: [{route: [api, api]}]}}",
            "1:41: services.api.routes[0].route[1]: destination api is listed twice",
        ),
        (
            "services: {api: {routes: [{match: [{path: {exact: /a, prefix: /b}}]}]}}",
            "1:43: services.api.routes[0].match[0].path: needs exactly one of exact, prefix, regex",
        ),
        (
            "services: {api: {routes: [{match: [{headers: {x: {present: false}}}]}]}}",
            "1:60: services.api.routes[0].match[0].headers.x.present: present: false is not",
        ),
        (
            'services: {api: {routes: [{headers: {request: {set: {x: "a\\nb"}}}}]}}',
            "1:57: services.api.routes[0].headers.request.set.x: a header value must be one line",
        ),
        (
            "services: {api: {routes: [{fault: {sources: [web]}}]}}",
            "1:35: services.api.routes[0].fault: a fault needs delay, abort or both",
        ),
        (
            "services: {api: {routes: [{match: [{sources: [wbe]}]}]}, web: {}}",
            "1:47: services.api.routes[0].match[0].sources[0]: unknown source 'wbe' (did you mean",
        ),
        (
            "services: {api: {routes: [{mirror: {service: api, subset: v9}}]}}",
            "1:59: services.api.routes[0].mirror.subset: service 'api' has no subset 'v9'",
        ),
        (
            "services: {api: {ports: [8000], routes: [{route: [{service: api, port: 9}]}]}}",
            "1:72: services.api.routes[0].route[0].port: service 'api' has no port 9",
        ),
        (
            "services: {api: {rate_limit: 10/day}}",
            "1:30: services.api.rate_limit: invalid rate '10/day'",
        ),
        (
            "services: {api: {limits: {max_request_body_bytes: 10 parsecs}}}",
            "1:51: services.api.limits.max_request_body_bytes: invalid size '10 parsecs'",
        ),
        (
            "services: {api: {limits: {max_request_headers_count: 0}}}",
            "1:54: services.api.limits.max_request_headers_count: 0 is out of range",
        ),
        (
            "services: {db: {ports: [5432], health_check: {kind: http}}}",
            "1:32: services.db.health_check: an http health check on 'db', which speaks postgres",
        ),
        ("policies: [{to: []}]", "1:17: policies[0].to: needs at least one service"),
        (
            "policies: [{to: api}]\nservices: {api: {}}\npolicies2: 1",
            "3:1: policies2: unknown key (did you mean 'policies'?)",
        ),
        (
            "policies: [{to: api, paths: ['*.js']}]\nservices: {api: {}}",
            "1:30: policies[0].paths[0]: suffix paths like '*.js' are not supported",
        ),
        (
            "policies: [{name: a, to: api}, {name: a, to: api}]\nservices: {api: {}}",
            "1:32: policies[1].name: duplicate policy name 'a' (first at line 1)",
        ),
        ("mesh: {trust_domain: Shop}", "1:22: mesh.trust_domain: invalid trust domain 'Shop'"),
        (
            "mesh: {workload_cert_lifetime: 1m}",
            "1:32: mesh.workload_cert_lifetime: must be at least 10m",
        ),
        ("ingress: {http_port: 8443}", "1:22: ingress.http_port: https_port and http_port"),
        (
            "ingress: {hosts: [{host: a.localhost, routes: [{name: x}]}]}",
            "1:48: ingress.hosts[0].routes[0]: missing required key 'route'",
        ),
        (
            "services:\n  a: {ports: [{port: 1, listen: '127.0.0.1:9'}]}\n"
            "  b: {ports: [{port: 2, listen: '127.0.0.1:9'}]}",
            "3:33: services.b.ports[0].listen: listen address 127.0.0.1:9 is also used by",
        ),
        (
            "services: {api: {meshed: on}}",
            "1:26: services.api.meshed: expected true or false, got 'on' ('on' is text here",
        ),
        (
            "services: {api: {ports: [{port: 0755}]}}",
            "1:33: services.api.ports[0].port: ambiguous number 0755 (YAML 1.1 tools read",
        ),
    ],
)
def test_single_problems(text: str, expected: str) -> None:
    got = problems(text)
    assert len(got) == 1, got
    assert got[0].startswith(expected), got[0]


def test_outside_upstream_must_have_endpoints_when_compose_is_known(
    make_project: MakeProject,
) -> None:
    project = make_project(api={"image": "x"})
    assert problems("services: {ap: {}}", project) == [
        "1:12: services.ap: service 'ap' is not in the compose project and has no endpoints "
        "(did you mean 'api'?)"
    ]
    # without a compose project (host mode) the file stands alone
    assert svc(parse("services: {ap: {}}"), "ap").name == "ap"


def test_a_meshed_service_named_ingress_clashes_with_the_gateway(
    make_project: MakeProject,
) -> None:
    """Same SPIFFE ID, same certificate directory in the mesh container: refused, at the
    service's line, whether mesh.yaml or only compose names it."""
    gateway = "ingress:\n  hosts: [{host: app.localhost, routes: [{route: [web]}]}]\n"
    declared = "services:\n  web: {ports: [80], endpoints: ['127.0.0.1:80']}\n"
    got = problems(declared + "  ingress: {ports: [81], endpoints: ['127.0.0.1:81']}\n" + gateway)
    assert len(got) == 1, got
    assert got[0].startswith("3:3: services.ingress: a service named 'ingress' would be taken")
    project = make_project(web={"image": "nginx"}, ingress={"image": "traefik"})
    with pytest.raises(ConfigError) as err:
        parse(gateway, project)
    (problem,) = err.value.problems
    assert "a service named 'ingress'" in problem.message
    assert problem.hint is not None
    assert "meshed: false" in problem.hint
    # fine without an ingress section, and when the service is left out of the mesh
    assert svc(
        parse(declared + "  ingress: {ports: [81], endpoints: ['127.0.0.1:81']}\n"), "ingress"
    )
    config = parse(gateway + "services:\n  ingress: {meshed: false}\n", project)
    assert not svc(config, "ingress").meshed
