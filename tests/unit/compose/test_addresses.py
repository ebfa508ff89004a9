"""Mesh subnet choice, its layout, and VIPs that stay put when the project changes."""

from __future__ import annotations

import ipaddress

import pytest

from localmesh.compose import addresses
from localmesh.errors import ConfigError

pytestmark = pytest.mark.unit
Net = ipaddress.IPv4Network


def test_layout_keeps_vips_out_of_dockers_range() -> None:
    lay = addresses.layout(Net("10.213.8.0/22"))
    assert str(lay.gateway) == "10.213.8.1"
    assert str(lay.mesh_ip) == "10.213.8.2"
    assert str(lay.vip_range) == "10.213.9.0/24"
    assert str(lay.ip_range) == "10.213.10.0/23"
    assert not lay.vip_range.overlaps(lay.ip_range)
    assert lay.mesh_ip not in lay.ip_range
    assert lay.mesh_ip not in lay.vip_range


def test_layout_of_a_larger_subnet_gives_docker_the_upper_half() -> None:
    lay = addresses.layout(Net("10.50.0.0/16"))
    assert str(lay.vip_range) == "10.50.1.0/24"
    assert str(lay.ip_range) == "10.50.128.0/17"


@pytest.mark.parametrize("text", ["10.0.0.0/24", "10.0.0.0/8"])
def test_layout_refuses_subnets_too_small_or_too_big(text: str) -> None:
    with pytest.raises(ConfigError, match="between /16 and /22"):
        addresses.layout(Net(text))


def test_candidates_are_deterministic_per_project_and_differ_between_projects() -> None:
    assert addresses.candidates("shop") == addresses.candidates("shop")
    assert addresses.candidates("shop")[0] != addresses.candidates("billing")[0]
    assert sorted(addresses.candidates("shop")) == sorted(addresses.candidates("billing"))
    assert len(addresses.candidates("shop")) == 64


def test_choose_skips_taken_candidates() -> None:
    first, second = addresses.candidates("shop")[:2]
    assert addresses.choose_subnet("shop", []) == first
    taken = [Net(f"{first.network_address + 256}/24")]  # overlaps only the first
    assert addresses.choose_subnet("shop", taken) == second


def test_choose_reuses_the_projects_previous_subnet_while_it_is_free() -> None:
    previous = Net("10.213.200.0/22")
    assert addresses.choose_subnet("shop", [], previous=previous) == previous
    clash = [Net("10.213.201.0/24")]
    assert (
        addresses.choose_subnet("shop", clash, previous=previous)
        == (addresses.candidates("shop")[0])
    )


def test_requested_subnet_must_be_free() -> None:
    wanted = Net("10.99.0.0/22")
    assert addresses.choose_subnet("shop", [Net("172.17.0.0/16")], requested=wanted) == wanted
    with pytest.raises(ConfigError, match=r"overlaps the existing network 10\.99\.0\.0/16"):
        addresses.choose_subnet("shop", [Net("10.99.0.0/16")], requested=wanted)


def test_no_free_candidate_is_a_clear_error() -> None:
    with pytest.raises(ConfigError) as err:
        addresses.choose_subnet("shop", [Net("10.213.0.0/16")])
    assert err.value.hint is not None
    assert "--subnet" in err.value.hint


@pytest.mark.parametrize(
    ("text", "message"),
    [("nope", "not a network"), ("fd00::/64", "IPv6"), ("10.0.0.1/22", "not a network")],
)
def test_parse_subnet_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        addresses.parse_subnet(text)


def test_vips_are_unique_inside_the_range_and_stable_when_services_come_and_go() -> None:
    vip_range = Net("10.213.9.0/24")
    names = [f"svc{i}" for i in range(40)]
    vips = addresses.assign_vips(names, vip_range)
    assert len(set(vips.values())) == 40
    hosts = {str(h) for h in vip_range.hosts()} - {"10.213.9.255"}
    assert set(vips.values()) <= hosts
    grown = addresses.assign_vips([*names, "newcomer"], vip_range)
    moved = [n for n in names if grown[n] != vips[n]]
    assert len(moved) <= 1  # only a service the newcomer's probe displaced, if any
    assert addresses.assign_vips(list(reversed(names)), vip_range) == vips


def test_vips_fill_the_whole_range_then_refuse() -> None:
    vip_range = Net("10.213.9.0/24")
    full = addresses.assign_vips([f"s{i}" for i in range(254)], vip_range)
    assert len(set(full.values())) == 254
    with pytest.raises(ConfigError, match="at most 254"):
        addresses.assign_vips([f"s{i}" for i in range(255)], vip_range)
