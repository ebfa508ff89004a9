"""The runtime wires upstream failures to discovery, with the real data plane and no Docker.

A host-mode runtime gets a ``DnsDiscovery`` whose resolver is a function counting lookups
(inside the mesh container it is Docker's DNS): a call to an upstream that refuses
connections must make discovery look again at once, not at its next interval. The same
runtime serves a two-port service, whose ``/status`` lists the endpoints of both clusters.
A resolver that times out for one service shows in that service's ``/status`` entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import aiohttp

from localmesh.compose.plan import Client, MeshPlan, PublishedPorts, Upstream
from localmesh.compose.planner import mesh_network
from localmesh.runtime.app import RunOptions, Runtime
from localmesh.runtime.container import DnsDiscovery
from tests.integration.controlplane.support import admin_url, listener_url, until
from tests.support.services import free_port, run_http_backend

PLAN = MeshPlan(
    project="shop",
    network=mesh_network("shop_localmesh", IPv4Network("10.213.8.0/22")),
    published=PublishedPorts(admin=15000),
    upstreams=(Upstream("db", "10.213.9.7", ("db",), unknown_ports=True),),
    clients=(Client("api", ("db",)),),
)

MESH = """\
mesh:
  name: shop
services:
  api:
    ports:
      - {{port: {a}, listen: "127.0.0.1:{listen_a}"}}
      - {{port: {b}, listen: "127.0.0.1:{listen_b}"}}
    endpoints: ["127.0.0.1:{a}", "127.0.0.1:{b}"]
  db:
    ports: [{{port: 8000, listen: "127.0.0.1:{listen_db}"}}]
    endpoints: ["127.0.0.1:{dead}"]
"""


@contextlib.asynccontextmanager
async def running(
    discovery: DnsDiscovery, tmp_path: Path
) -> AsyncIterator[tuple[Runtime, int, int]]:
    """A runtime on ``MESH`` with ``discovery``: api's two live backends (their ports are
    yielded after the runtime), db's endpoint a dead port."""
    with run_http_backend("a") as a, run_http_backend("b") as b:
        mesh = tmp_path / "mesh.yaml"
        listens = {f"listen_{n}": free_port() for n in ("a", "b", "db")}
        mesh.write_text(MESH.format(a=a.port, b=b.port, dead=free_port(), **listens))
        options = RunOptions(mesh=mesh, admin="127.0.0.1:0", access_log="off", drain_timeout=1.0)
        runtime = Runtime(options, discovery=discovery)
        await runtime.start()
        try:
            yield runtime, a.port, b.port
        finally:
            await runtime.stop()


async def test_a_refused_upstream_makes_discovery_look_again_now(tmp_path: Path) -> None:
    lookups: list[str] = []

    async def resolve(name: str) -> tuple[str, ...]:
        lookups.append(name)
        return ()

    # an interval far beyond the test: only a trigger can cause another lookup
    discovery = DnsDiscovery(PLAN, interval=3600.0, min_interval=0.0, resolve=resolve)
    async with running(discovery, tmp_path) as (runtime, a, b):
        db = "db.shop_localmesh"
        await until(lambda: lookups.count(db) == 2, what="start-up lookups")  # start, run
        async with aiohttp.ClientSession() as s:
            async with s.get(listener_url(runtime, "db:8000") + "/") as r:
                assert r.status == 503
            await until(lambda: lookups.count(db) == 3, what="a lookup after the failure")
            for port, name in ((a, "a"), (b, "b")):
                async with s.get(listener_url(runtime, f"api:{port}") + "/") as r:
                    assert r.headers["x-backend"] == name
            async with s.get(admin_url(runtime) + "/status") as r:
                services = {svc["name"]: svc for svc in (await r.json())["services"]}
    endpoints = sorted(e["address"] for e in services["api"]["endpoints"])
    assert endpoints == sorted([f"127.0.0.1:{a}", f"127.0.0.1:{b}"])


async def test_a_failing_lookup_is_in_status_until_it_answers_again(tmp_path: Path) -> None:
    """Docker's DNS timing out for one service: /status says which, what and since when,
    the endpoints known before stay, and the next lookup that answers clears it."""
    failing = True

    async def resolve(name: str) -> tuple[str, ...]:
        if failing and name.startswith("db."):
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return ()

    discovery = DnsDiscovery(PLAN, interval=0.05, min_interval=0.0, resolve=resolve)
    started = time.time()
    async with running(discovery, tmp_path) as (runtime, _, _), aiohttp.ClientSession() as s:

        async def services() -> dict[str, dict[str, Any]]:
            async with s.get(admin_url(runtime) + "/status") as r:
                return {svc["name"]: svc for svc in (await r.json())["services"]}

        found = await services()
        assert found["api"]["discovery_error"] is None
        error = found["db"]["discovery_error"]
        assert error["message"] == (
            "looking up db.shop_localmesh failed: Temporary failure in name resolution"
        )
        assert started <= error["since"] <= time.time()
        await asyncio.sleep(0.2)  # failing on: still since the first failure
        assert (await services())["db"]["discovery_error"]["since"] == error["since"]
        failing = False
        await until(lambda: "db" not in discovery.failures, what="a lookup that answers")
        assert (await services())["db"]["discovery_error"] is None
