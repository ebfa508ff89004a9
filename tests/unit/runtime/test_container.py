"""Container mode decisions with plain values: the commands, the interface, discovery."""

from __future__ import annotations

import asyncio
import socket
from ipaddress import IPv4Network

import pytest

from localmesh.compose.plan import Client, MeshPlan, PlanPort, PublishedPorts, Upstream
from localmesh.compose.planner import mesh_network
from localmesh.config.model import Protocol
from localmesh.errors import RuntimeStartError
from localmesh.runtime.container import (
    DnsDiscovery,
    discovered_from,
    discovery_names,
    mesh_interface,
    network_commands,
)
from localmesh.runtime.snapshot import Endpoint

PLAN = MeshPlan(
    project="shop",
    network=mesh_network("shop_localmesh", IPv4Network("10.213.8.0/22")),
    published=PublishedPorts(admin=15000),
    upstreams=(
        Upstream("db", "10.213.9.7", ("db",), (PlanPort(5432, Protocol.POSTGRES),)),
        Upstream("legacy", "10.213.9.9", ("legacy",), (PlanPort(80, Protocol.HTTP),), True),
        Upstream("opaque", "10.213.9.11", ("opaque",), (), True),
    ),
    clients=(Client("web", ("db", "legacy", "opaque")),),
)


def test_commands_own_every_vip_and_redirect_only_unknown_ports() -> None:
    nat = ["iptables", "-w", "-t", "nat"]
    legacy = [*nat, "-A", "LOCALMESH", "-d", "10.213.9.9/32", "-p", "tcp"]
    opaque = [*nat, "-A", "LOCALMESH", "-d", "10.213.9.11/32", "-p", "tcp"]
    assert network_commands(PLAN, "eth1", 15001) == [
        ["ip", "addr", "replace", "10.213.9.7/32", "dev", "eth1"],
        ["ip", "addr", "replace", "10.213.9.9/32", "dev", "eth1"],
        ["ip", "addr", "replace", "10.213.9.11/32", "dev", "eth1"],
        [*nat, "-F", "LOCALMESH"],
        [*legacy, "--dport", "80", "-j", "RETURN"],
        [*legacy, "-j", "REDIRECT", "--to-ports", "15001"],
        [*opaque, "-j", "REDIRECT", "--to-ports", "15001"],
    ]


def test_mesh_interface_is_the_one_in_the_mesh_subnet() -> None:
    shown = [
        {"ifname": "lo", "addr_info": [{"local": "127.0.0.1"}]},
        {"ifname": "eth0", "addr_info": [{"local": "172.18.0.3"}]},
        {"ifname": "eth1", "addr_info": [{"local": "10.213.8.2"}]},
    ]
    assert mesh_interface(PLAN, shown) == "eth1"
    with pytest.raises(RuntimeStartError, match="no address in the mesh network"):
        mesh_interface(PLAN, shown[:2])


def test_discovery_names_are_qualified_by_the_mesh_network() -> None:
    assert discovery_names(PLAN) == {
        "db": "db.shop_localmesh",
        "legacy": "legacy.shop_localmesh",
        "opaque": "opaque.shop_localmesh",
        "web": "web.shop_localmesh",
    }


def test_answers_become_endpoints_per_known_port_and_sources_per_ip() -> None:
    found = discovered_from(
        PLAN,
        {
            "db": ["10.213.10.9", "10.213.10.10"],
            "legacy": ["10.213.10.6"],
            "opaque": ["10.213.10.4"],
            "web": ["10.213.10.5"],
        },
    )
    assert found.endpoints == {
        "db": (Endpoint("10.213.10.9", 5432), Endpoint("10.213.10.10", 5432)),
        # its known port, and port 0 for the others the intercept listener catches
        "legacy": (Endpoint("10.213.10.6", 80), Endpoint("10.213.10.6", 0)),
        "opaque": (Endpoint("10.213.10.4", 0),),  # port 0: the port the client dialled
    }
    assert found.sources == {
        "10.213.10.9": "db",
        "10.213.10.10": "db",
        "10.213.10.6": "legacy",
        "10.213.10.4": "opaque",
        "10.213.10.5": "web",
    }


async def test_a_failed_lookup_keeps_the_last_answer_and_no_such_name_empties() -> None:
    answers: dict[str, tuple[str, ...] | None] = {"db.shop_localmesh": ("10.213.10.9",)}

    async def resolve(name: str) -> tuple[str, ...]:
        found = answers.get(name, ())
        if found is None:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return found

    discovery = DnsDiscovery(PLAN, resolve=resolve)
    first = await discovery.resolve_once()
    assert first.endpoints["db"] == (Endpoint("10.213.10.9", 5432),)
    assert discovery.failures == {}
    answers["db.shop_localmesh"] = None  # DNS timeout
    assert (await discovery.resolve_once()).endpoints["db"] == (Endpoint("10.213.10.9", 5432),)
    failure = discovery.failures["db"]
    assert failure.message == (
        "looking up db.shop_localmesh failed: Temporary failure in name resolution"
    )
    await discovery.resolve_once()  # failing still: since the first failure
    assert discovery.failures["db"].since == failure.since
    answers["db.shop_localmesh"] = ()  # no replica runs: an answer, not a failure
    assert (await discovery.resolve_once()).endpoints["db"] == ()
    assert discovery.failures == {}


async def test_run_publishes_changes_only_and_trigger_resolves_at_once() -> None:
    answers: dict[str, tuple[str, ...]] = {"db.shop_localmesh": ("10.213.10.9",)}
    lookups = 0

    async def resolve(name: str) -> tuple[str, ...]:
        nonlocal lookups
        lookups += 1 if name.startswith("db.") else 0
        return answers.get(name, ())

    published: list[object] = []
    changed = asyncio.Event()

    async def publish(found: object) -> None:
        published.append(found)
        changed.set()

    discovery = DnsDiscovery(PLAN, interval=60.0, min_interval=0.0, resolve=resolve)
    task = asyncio.create_task(discovery.run(publish))
    try:
        await asyncio.wait_for(changed.wait(), 5)
        changed.clear()
        discovery.trigger()  # same answer: looked up again, nothing published
        answers["db.shop_localmesh"] = ("10.213.10.9", "10.213.10.12")
        discovery.trigger()
        await asyncio.wait_for(changed.wait(), 5)
    finally:
        task.cancel()
    assert len(published) == 2
    assert lookups >= 2


async def test_a_trigger_during_a_lookup_asks_for_another_one() -> None:
    """A failure reported while a lookup is in flight may be about what that lookup has
    already missed: it must not be swallowed until the next interval."""
    lookups = 0
    in_lookup = asyncio.Event()
    release = asyncio.Event()

    async def resolve(name: str) -> tuple[str, ...]:
        nonlocal lookups
        if name.startswith("db."):
            lookups += 1
            if lookups == 2:  # the triggered lookup: hold it while another trigger comes
                in_lookup.set()
                await release.wait()
        return ()

    async def publish(found: object) -> None:
        pass

    discovery = DnsDiscovery(PLAN, interval=60.0, min_interval=0.0, resolve=resolve)
    task = asyncio.create_task(discovery.run(publish))
    try:
        async with asyncio.timeout(5):
            while lookups < 1:  # noqa: ASYNC110 - the first lookup has no event to wait on
                await asyncio.sleep(0.01)
            discovery.trigger("db")
            await in_lookup.wait()
            discovery.trigger("db")
            release.set()
            while lookups < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert lookups == 3
