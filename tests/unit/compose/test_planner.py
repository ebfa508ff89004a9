"""Planning decisions on plain normalised models: who is meshed, names per client, isolation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from localmesh.compose.planner import EngineFacts, Planned, make_plan
from localmesh.compose.project import ComposeProject, KeyPath
from localmesh.config.model import MeshConfig, MeshSettings, PortSpec, Protocol, Service
from localmesh.config.names import replicas
from localmesh.errors import ConfigError, Position

pytestmark = pytest.mark.unit
FILE = "/p/compose.yaml"


def project(services: dict[str, Any], networks: dict[str, Any] | None = None) -> ComposeProject:
    nets = networks if networks is not None else {"default": {"name": "p_default"}}
    for svc in services.values():
        if "network_mode" not in svc:
            svc.setdefault("networks", {"default": None})
    model = {"name": "p", "services": services, "networks": nets}
    positions: dict[KeyPath, Position] = {
        ("services", n): Position(FILE, i + 2, 3) for i, n in enumerate(services)
    }
    return ComposeProject("p", Path("/p"), (Path(FILE),), model, positions)


def plan(proj: ComposeProject, mesh: MeshConfig | None = None, **facts: Any) -> Planned:
    return make_plan(proj, mesh or MeshConfig(), EngineFacts(**facts))


def hosts(planned: Planned, client: str) -> dict[str, str]:
    """name -> upstream service, through the VIPs."""
    by_vip = {u.vip: u.service for u in planned.plan.upstreams}
    return {name: by_vip[vip] for name, vip in planned.hosts[client]}


def codes(planned: Planned) -> list[str]:
    return [w.code for w in planned.plan.warnings]


def test_isolation_follows_shared_networks() -> None:
    proj = project(
        {
            "proxy": {"networks": {"front": None}},
            "app": {"networks": {"front": None, "back": None}},
            "db": {"networks": {"back": None}},
        },
        {"front": {}, "back": {}},
    )
    p = plan(proj).plan
    assert {c.service: c.reach for c in p.clients} == {
        "app": ("db", "proxy"),
        "db": ("app",),
        "proxy": ("app",),
    }
    assert not p.may_reach("proxy", "db")


def test_every_client_maps_every_other_upstream_but_never_itself() -> None:
    proj = project(
        {
            "proxy": {"networks": {"front": None}},
            "db": {"networks": {"back": None}, "container_name": "pg"},
        },
        {"front": {}, "back": {}},
    )
    planned = plan(proj)
    # no shared network, still mapped: on the shared mesh network Docker's DNS would
    # otherwise hand out db's real address and bypass the mesh's isolation check
    assert hosts(planned, "proxy") == {"db": "db", "pg": "db"}
    assert hosts(planned, "db") == {"proxy": "proxy", "p-proxy-1": "proxy"}


def test_aliases_count_only_on_the_clients_networks_and_links_only_in_their_client() -> None:
    proj = project(
        {
            "orders": {"networks": {"o": None}, "links": ["orders-db:store"]},
            "users": {"networks": {"u": None}},
            "orders-db": {"networks": {"o": {"aliases": ["db"]}}},
            "users-db": {"networks": {"u": {"aliases": ["db"]}}},
        },
        {"o": {}, "u": {}},
    )
    planned = plan(proj)
    assert hosts(planned, "orders")["db"] == "orders-db"
    assert hosts(planned, "orders")["store"] == "orders-db"
    assert hosts(planned, "users")["db"] == "users-db"
    assert "store" not in hosts(planned, "users")
    names = {u.service: u.names for u in planned.plan.upstreams}
    assert "store" in names["orders-db"]
    assert "db" in names["users-db"]


def test_a_name_claimed_twice_in_one_client_warns_and_picks_one() -> None:
    proj = project(
        {
            "app": {},
            "a": {"networks": {"default": {"aliases": ["shared"]}}},
            "b": {"networks": {"default": {"aliases": ["shared"]}}},
        }
    )
    planned = plan(proj)
    assert hosts(planned, "app")["shared"] == "a"
    conflict = [w for w in planned.plan.warnings if w.code == "name-conflict"]
    assert conflict
    assert "'a' and 'b'" in conflict[0].message


def test_a_service_name_beats_another_services_alias() -> None:
    proj = project({"app": {}, "api": {}, "x": {"networks": {"default": {"aliases": ["api"]}}}})
    assert hosts(plan(proj), "app")["api"] == "api"


def test_user_extra_hosts_win() -> None:
    proj = project({"app": {"extra_hosts": ["api=10.9.9.9"]}, "api": {}})
    planned = plan(proj)
    assert "api" not in hosts(planned, "app")
    assert "user-extra-host" in codes(planned)


def test_network_mode_and_udp_services_are_left_alone() -> None:
    proj = project(
        {
            "vpn": {},
            "torrent": {"network_mode": "service:vpn", "expose": ["9091"]},
            "agent": {"network_mode": "host"},
            "dns": {"image": "coredns", "expose": ["53/udp"]},
            "stats": {"image": "ghcr.io/x/statsd:1"},
        }
    )
    planned = plan(proj, image_ports={"ghcr.io/x/statsd:1": ("8125/udp",)})
    p = planned.plan
    assert {u.service for u in p.unmeshed} == {"torrent", "agent", "dns", "stats"}
    assert {u.service for u in p.upstreams} == {"vpn"}
    vpn = p.upstream("vpn")
    assert vpn is not None
    assert [port.port for port in vpn.ports] == [9091]
    assert codes(planned).count("network-mode") == 2
    assert codes(planned).count("udp") == 2


def test_ports_from_mesh_config_set_the_protocol() -> None:
    proj = project({"web": {"environment": {"API": "http://api:9000"}}, "api": {}})
    mesh = MeshConfig(services=(Service("api", ports=(PortSpec(9000, Protocol.TCP),)),))
    api = plan(proj, mesh).plan.upstream("api")
    assert api is not None
    assert [(x.port, x.protocol, x.sources) for x in api.ports] == [
        (9000, Protocol.TCP, ("env:web", "mesh-config"))
    ]


def test_meshed_false_leaves_a_service_alone() -> None:
    proj = project({"web": {}, "legacy": {}})
    mesh = MeshConfig(services=(Service("legacy", meshed=False),))
    p = plan(proj, mesh).plan
    assert [u.service for u in p.unmeshed] == ["legacy"]


@pytest.mark.parametrize("section", ["services", "networks"])
def test_localmesh_is_a_reserved_name(section: str) -> None:
    services: dict[str, Any] = {"app": {}}
    networks: dict[str, Any] = {"default": {}}
    (services if section == "services" else networks)["localmesh"] = {}
    with pytest.raises(ConfigError, match="reserved"):
        plan(project(services, networks))


def test_mesh_ports_must_not_collide_with_published_ports() -> None:
    proj = project({"app": {"ports": [{"target": 80, "published": "15000-15001"}]}})
    with pytest.raises(ConfigError, match="admin port 15000 is already published by service"):
        plan(proj)
    ingress_free = MeshConfig(mesh=MeshSettings(admin_port=15500))
    assert plan(proj, ingress_free).plan.published.admin == 15500


def test_no_engine_is_a_warning_not_an_error() -> None:
    planned = make_plan(project({"app": {}}), MeshConfig(), EngineFacts(reachable=False))
    assert "no-engine" in codes(planned)


def test_user_subnets_and_engine_networks_are_avoided() -> None:
    proj = project({"app": {}}, {"default": {"ipam": {"config": [{"subnet": "10.213.0.0/17"}]}}})
    p = plan(proj, networks={"x": ("10.213.128.0/18",)}).plan
    assert p.network.subnet.startswith("10.213.")
    third = int(p.network.subnet.split(".")[2])
    assert third >= 192


@pytest.mark.parametrize(
    ("svc", "count"),
    [({}, 1), ({"scale": 3}, 3), ({"deploy": {"replicas": 2}}, 2), ({"scale": 0}, 1)],
)
def test_replicas(svc: dict[str, Any], count: int) -> None:
    assert replicas(svc) == count


@pytest.mark.parametrize(
    ("networks", "internal", "warned"),
    [
        ({"front": {}, "back": {"internal": True}}, True, False),  # db had no way out
        ({"front": {}, "back": {}}, False, False),  # nobody is confined
        ({"front": {"internal": True}, "back": {"internal": True}}, False, True),
        ({"front": {"driver": "none"}, "back": {"internal": True}}, False, True),
    ],
    ids=["confined", "open", "all-internal", "no-network-to-publish-through"],
)
def test_an_internal_networks_isolation_survives_the_mesh(
    networks: dict[str, Any], internal: bool, warned: bool
) -> None:
    """A service only on internal networks must not reach outside through the mesh network:
    it becomes internal too, unless the mesh container has no other network to publish
    its ports through; then the mesh network stays a bridge and says so."""
    proj = project(
        {
            "app": {"networks": {"front": None, "back": None}},
            "db": {"networks": {"back": None}},
        },
        networks,
    )
    planned = plan(proj)
    assert planned.internal is internal
    assert ("internal-network" in codes(planned)) is warned
    if warned:
        [w] = [w for w in planned.plan.warnings if w.code == "internal-network"]
        assert "(on internal networks only: back" in w.message
