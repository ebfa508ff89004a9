"""The plan contract: JSON round trip, stable bytes, clear errors for foreign files."""

from __future__ import annotations

import json
from ipaddress import IPv4Network

import pytest

from localmesh.compose.plan import (
    Client,
    MeshPlan,
    PlanPort,
    PublishedPorts,
    Unmeshed,
    Upstream,
)
from localmesh.compose.planner import mesh_network
from localmesh.config.model import Protocol
from localmesh.errors import ConfigError, Finding, Position

pytestmark = pytest.mark.unit

PLAN = MeshPlan(
    project="shop",
    network=mesh_network("shop_localmesh", IPv4Network("10.213.76.0/22")),
    published=PublishedPorts(admin=15000, https=8443, http=None),
    upstreams=(
        Upstream(
            "api",
            "10.213.77.243",
            ("api", "shop-api-1"),
            (PlanPort(8000, Protocol.HTTP, ("expose", "env:web")),),
        ),
        Upstream("worker", "10.213.77.9", ("worker",), (), unknown_ports=True),
    ),
    clients=(Client("api", ("worker",)), Client("worker", ("api",))),
    unmeshed=(Unmeshed("dns", "UDP ports 53/udp"),),
    warnings=(
        Finding("udp", "dns uses UDP", Position("compose.yaml", 3, 5)),
        Finding("no-engine", "no engine"),
    ),
)


def test_round_trip_is_exact_and_bytes_are_stable() -> None:
    text = PLAN.to_json()
    again = MeshPlan.from_json(text)
    assert again == PLAN
    assert again.to_json() == text
    assert text.endswith("}\n")
    assert list(json.loads(text)) == sorted(json.loads(text))


def test_the_json_shape_the_runtime_reads() -> None:
    data = json.loads(PLAN.to_json())
    assert data["upstreams"]["api"] == {
        "vip": "10.213.77.243",
        "names": ["api", "shop-api-1"],
        "ports": [{"port": 8000, "protocol": "http", "sources": ["expose", "env:web"]}],
        "unknown_ports": False,
    }
    assert data["clients"] == {"api": {"reach": ["worker"]}, "worker": {"reach": ["api"]}}
    assert data["published"] == {"admin": 15000, "https": 8443, "http": None}
    assert data["warnings"][0] == {
        "code": "udp",
        "message": "dns uses UDP",
        "file": "compose.yaml",
        "line": 3,
        "column": 5,
    }


def test_lookups() -> None:
    assert PLAN.may_reach("api", "worker")
    assert not PLAN.may_reach("worker", "dns")
    assert not PLAN.may_reach("nobody", "api")
    api = PLAN.upstream("api")
    assert api is not None
    assert api.port(8000) is not None
    assert api.port(1) is None
    assert PLAN.upstream("dns") is None


def test_another_version_is_refused_with_a_hint() -> None:
    data = json.loads(PLAN.to_json())
    data["version"] = 99
    with pytest.raises(ConfigError, match="plan version 99") as err:
        MeshPlan.from_json(json.dumps(data))
    assert err.value.hint is not None
    assert "generate" in err.value.hint


@pytest.mark.parametrize("text", ["", "[]", '{"version": 1}', "{not json"])
def test_a_broken_file_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="not a localmesh plan"):
        MeshPlan.from_json(text, source="/etc/localmesh/plan.json")
