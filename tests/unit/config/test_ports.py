"""Port knowledge: declared ports, expose ranges, images, and host:port references."""

from __future__ import annotations

from typing import Any

import pytest

from localmesh.config import ports
from localmesh.config.model import Protocol

pytestmark = pytest.mark.unit


def refs(env: dict[str, Any] | None = None, **svc: Any) -> set[tuple[str, int | None, Any]]:
    found = ports.references("client", {"environment": env or {}, **svc})
    return {(r.host, r.port, r.protocol) for r in found}


def test_urls_give_host_port_and_protocol_with_scheme_defaults() -> None:
    assert refs(
        {
            "DATABASE_URL": "postgresql+psycopg://app:s3cr:t@db:5432/app",
            "REDIS_URL": "redis://cache/0",
            "API": "https://api.internal",
            "JDBC": "jdbc:mysql://legacy-db:3307/x",
        }
    ) == {
        ("db", 5432, Protocol.POSTGRES),
        ("cache", 6379, Protocol.REDIS),
        ("api.internal", 443, Protocol.TCP),  # TLS end to end: opaque to the mesh
        ("legacy-db", 3307, Protocol.TCP),
    }


def test_multi_host_urls_and_bare_lists() -> None:
    assert refs(
        {
            "MONGO": "mongodb://u:p@m1:27017,m2:27018/app?replicaSet=rs0",
            "KAFKA": "kafka:9092,kafka2:9093",
        }
    ) == {
        ("m1", 27017, Protocol.TCP),
        ("m2", 27018, Protocol.TCP),
        ("kafka", 9092, None),
        ("kafka2", 9093, None),
    }


@pytest.mark.parametrize(
    "value",
    ["node:18.04", "redis:7", "postgres:16-alpine", "user:12345@db", "10:30", "a-b:99999x"],
)
def test_things_that_only_look_like_host_port_are_ignored(value: str) -> None:
    assert refs({"X": value}) == set()


def test_host_and_port_variables_pair_up() -> None:
    assert refs({"DB_HOST": "db", "DB_PORT": "5433", "SMTP_HOSTNAME": "mail"}) == {
        ("db", 5433, None)
    }
    assert refs({"HOST": "api", "PORT": "8000"}) == {("api", 8000, None)}


def test_commands_are_scanned_and_dollar_escapes_undone() -> None:
    found = refs(command=["sh", "-c", "wait-for db:5432 -- run http://api:8000/$$PATH"])
    assert found == {("db", 5432, None), ("api", 8000, Protocol.HTTP)}
    assert {r.where for r in ports.references("c", {"entrypoint": "dial cache:6379"})} == {
        "command"
    }


def test_declared_ports_expose_ranges_and_udp() -> None:
    found = ports.Ports()
    ports.declared(
        {
            "ports": [
                {"target": 80, "published": "8080", "protocol": "tcp"},
                {"target": 53, "published": "53", "protocol": "udp"},
            ],
            "expose": ["9000-9002", "5353/udp", "30000-30100", "oops"],
        },
        found,
    )
    assert found.tcp == {
        80: {"ports"},
        9000: {"expose"},
        9001: {"expose"},
        9002: {"expose"},
    }
    assert set(found.udp) == {53, 5353}
    assert found.wide_ranges == [(30000, 30100, "expose")]
    found.add(30050, "mesh-config")  # a port inside a wide range stays on the intercept
    assert 30050 not in found.tcp


def test_a_wide_ports_range_is_left_to_the_intercept() -> None:
    """Compose lists ``"8000-9000:8000-9000"`` port by port: a run longer than MAX_RANGE
    is that range again, whichever way it was written; a shorter run is listed."""
    found = ports.Ports()
    wide = [{"target": p, "published": str(p), "protocol": "tcp"} for p in range(8000, 9001)]
    short = [{"target": p, "protocol": "tcp"} for p in range(7000, 7000 + ports.MAX_RANGE)]
    ports.declared({"ports": [*wide, *short, {"target": 8500, "protocol": "udp"}]}, found)
    assert found.wide_ranges == [(8000, 9000, "ports")]
    assert sorted(found.tcp) == list(range(7000, 7064))
    assert set(found.udp) == {8500}  # any UDP port still unmeshes the service


def test_image_exposed_ports() -> None:
    found = ports.Ports()
    ports.image_exposed(["80/tcp", "443/tcp", "53/udp", "bogus"], found)
    assert set(found.tcp) == {80, 443}
    assert set(found.udp) == {53}


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("postgres:16", (5432,)),
        ("docker.io/library/redis:7-alpine", (6379,)),
        ("docker.elastic.co/elasticsearch/elasticsearch:8.13.0", (9200, 9300)),
        ("mcr.microsoft.com/mssql/server:2022-latest", (1433,)),
        ("ghcr.io/example/app:1", ()),
        (None, ()),
    ],
)
def test_well_known_images(image: str | None, expected: tuple[int, ...]) -> None:
    assert ports.well_known_image(image) == expected


@pytest.mark.parametrize(
    ("image", "name"),
    [
        ("postgres", "postgres"),
        ("postgres:15-alpine", "postgres"),
        ("docker.io/library/redis:7@sha256:abc", "redis"),
        ("bitnami/PostgreSQL:16", "postgresql"),
        ("localhost:5000/team/api:dev", "api"),
    ],
)
def test_image_name(image: str, name: str) -> None:
    assert ports.image_name(image) == name


@pytest.mark.parametrize(
    ("port", "image", "protocol"),
    [
        (5432, None, Protocol.POSTGRES),
        (6379, "nginx", Protocol.REDIS),
        (3306, None, Protocol.TCP),
        (27017, None, Protocol.TCP),
        (11211, None, Protocol.TCP),
        (8000, None, Protocol.HTTP),
        (5433, "postgres:15", Protocol.POSTGRES),  # an unusual port of a known server
        (6380, "redis", Protocol.REDIS),
        (3307, "mariadb", Protocol.TCP),
        (9093, "bitnami/kafka:3.7", Protocol.TCP),
        (80, "nginx", Protocol.HTTP),
        (9200, "elasticsearch:8", Protocol.HTTP),
        (15672, "rabbitmq:3-management", Protocol.HTTP),  # the image knows that port
        (9000, "clickhouse/clickhouse-server:24", Protocol.TCP),
        (8080, "ghcr.io/example/app:1", Protocol.HTTP),
        (443, "nginx", Protocol.TCP),  # TLS: an HTTP listener would parse it as garbage
        (8443, "traefik:v3", Protocol.TCP),
        (443, None, Protocol.TCP),
    ],
)
def test_protocol_by_image_then_port_then_image_main_port(
    port: int, image: str | None, protocol: Protocol
) -> None:
    assert ports.protocol_for(port, image)[0] is protocol


def test_a_url_or_server_hint_beats_the_guess_for_known_ports_only() -> None:
    found = ports.Ports(image="redis:7")
    found.add(6379, "well-known-image")
    found.hint(6379, Protocol.TCP, "rediss:// in app")
    found.hint(6379, Protocol.REDIS, "redis:// in worker")  # the first one said wins
    found.hint(7000, Protocol.HTTP, "http:// in app")  # not a known port: ignored
    assert found.protocol(6379) == (Protocol.TCP, "rediss:// in app")
    assert found.hints.keys() == {6379}


def test_spans() -> None:
    assert ports.spans([5353, 53, 6000, 6001, 6002, 54]) == ["53-54", "5353", "6000-6002"]
    assert ports.spans([]) == []


def test_a_wide_udp_range_is_still_udp() -> None:
    found = ports.Ports()
    ports.declared({"expose": ["10000-20000/udp"]}, found)
    assert found.wide_ranges == []
    assert ports.spans(found.udp) == ["10000-20000"]


def test_private_ip_literals_are_reported_but_not_loopback_or_any() -> None:
    env = {
        "DB_HOST": "172.28.0.10",
        "URL": "http://10.0.5.7:8080/x",
        "BIND": "0.0.0.0",
        "LOCAL": "127.0.0.1:5432",
        "NET": "10.0.0.0/8",
        "PUBLIC": "8.8.8.8",
        "VERSION": "1.2.3.4.5",
    }
    assert set(ports.ip_literals({"environment": env})) == {
        ("DB_HOST", "172.28.0.10"),
        ("URL", "10.0.5.7"),
    }


def learned(services: dict[str, Any], **kwargs: Any) -> ports.Learned:
    for svc in services.values():
        svc.setdefault("networks", {"default": None})
    return ports.learn("p", services, **kwargs)


def test_learn_order_declared_then_image_then_well_known_then_process() -> None:
    found = learned(
        {
            "a": {"image": "redis:7", "expose": ["7000"]},
            "b": {"image": "ghcr.io/x/b:1"},
            "c": {"image": "redis:7", "command": ["redis-server", "--port", "7001"]},
            "d": {"image": "busybox", "command": ["redis-server", "--port", "7002"]},
        },
        image_ports={"ghcr.io/x/b:1": ("8080/tcp",)},
    ).ports
    assert found["a"].tcp == {7000: {"expose"}}
    assert found["a"].protocol(7000)[0] is Protocol.REDIS
    assert found["b"].tcp == {8080: {"image"}}
    assert found["c"].tcp == {6379: {"well-known-image"}}  # the image said it first
    assert found["d"].tcp == {7002: {"command"}}
    assert found["d"].protocol(7002) == (Protocol.REDIS, "command redis-server")


def test_learn_resolves_references_as_each_client_does() -> None:
    services: dict[str, Any] = {
        "orders": {"networks": {"o": None}, "environment": {"DB": "db:5433"}},
        "users": {"networks": {"u": None}, "environment": {"DB": "db:5434"}},
        "orders-db": {"networks": {"o": {"aliases": ["db"]}}},
        "users-db": {"networks": {"u": {"aliases": ["db"]}}},
    }
    found = ports.learn("p", services).ports
    assert found["orders-db"].tcp == {5433: {"env:orders"}}
    assert found["users-db"].tcp == {5434: {"env:users"}}


def test_learn_leaves_out_network_mode_udp_and_the_configs_choice() -> None:
    result = learned(
        {
            "vpn": {},
            "torrent": {"network_mode": "service:vpn", "expose": ["9091"]},
            "dns": {"expose": ["53/udp", "53"]},
            "legacy": {"environment": {"X": "vpn:9092"}},
        },
        unmeshed={"legacy"},
    )
    assert {n: (e.kind, e.reason) for n, e in result.unmeshed.items()} == {
        "torrent": ("network-mode", "network_mode: service:vpn"),
        "dns": ("udp", "UDP ports 53/udp"),
        "legacy": ("mesh-config", "meshed: false in the mesh config"),
    }
    assert result.upstreams == ["vpn"]
    # a sharer's ports are its owner's; an unmeshed client's references still count
    assert result.ports["vpn"].tcp == {9091: {"expose:torrent"}, 9092: {"env:legacy"}}


def test_references_to_a_left_out_service_are_nobodys() -> None:
    result = learned(
        {"app": {"environment": {"X": "legacy:9000"}}, "legacy": {}}, unmeshed={"legacy"}
    )
    assert result.ports["legacy"].tcp == {}
