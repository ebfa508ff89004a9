"""Port knowledge: declared ports, expose ranges, images, and host:port references."""

from __future__ import annotations

from typing import Any

import pytest

from localmesh.compose import ports
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
    assert found.wide_ranges == [(30000, 30100)]
    found.add(30050, "mesh-config")  # a port inside a wide range stays on the intercept
    assert 30050 not in found.tcp


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


def test_protocol_of_a_non_http_servers_other_port_is_not_http() -> None:
    assert ports.protocol_for(9093, "bitnami/kafka:3.7") is Protocol.TCP
    assert ports.protocol_for(5432, None) is Protocol.POSTGRES
    assert ports.protocol_for(8080, "ghcr.io/example/app:1") is Protocol.HTTP
    assert ports.protocol_for(9200, "elasticsearch:8") is Protocol.HTTP


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
