"""Runs inside a fresh network namespace (``unshare -n``) for ``test_ports``.

The container-mode shape of a mesh, with real sockets: two replicas (10.98.0.2 and .3),
upstreams on virtual IPs, endpoints as discovery makes them from DNS answers
(``discovered_from``: one per replica and known port, port 0 for intercepted ports), the
intercept listener behind an iptables REDIRECT. Every backend answers with the address it
listens on; the calls made through the VIPs and what answered are printed as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import aiohttp
import uvloop
from aiohttp import web

from localmesh.compose.plan import Client, MeshNetwork, MeshPlan, PlanPort, PublishedPorts, Upstream
from localmesh.config.model import MeshConfig, PortSpec, Protocol, Service
from localmesh.runtime.container import discovered_from
from localmesh.runtime.dataplane import DataPlane
from localmesh.runtime.snapshot import ListenerSpec, Snapshot
from localmesh.runtime.telemetry import AccessLog, MeshMetrics

INTERCEPT_PORT = 15001
HTTP = Protocol.HTTP
REPLICAS = ("10.98.0.2", "10.98.0.3")
VIPS = {"api": "10.99.0.10", "opaque": "10.99.0.11", "legacy": "10.99.0.12"}
SETUP = f"""
ip link set lo up
ip addr add {REPLICAS[0]}/32 dev lo
ip addr add {REPLICAS[1]}/32 dev lo
ip addr add {VIPS["api"]}/32 dev lo
ip addr add {VIPS["legacy"]}/32 dev lo
ip route add local {VIPS["opaque"]}/32 dev lo
iptables -t nat -A OUTPUT -d {VIPS["opaque"]}/32 -p tcp -j REDIRECT --to-ports {INTERCEPT_PORT}
iptables -t nat -A OUTPUT -d {VIPS["legacy"]}/32 -p tcp --dport 8080 -j RETURN
iptables -t nat -A OUTPUT -d {VIPS["legacy"]}/32 -p tcp -j REDIRECT --to-ports {INTERCEPT_PORT}
"""

PLAN = MeshPlan(
    project="shop",
    network=MeshNetwork(
        key="localmesh",
        name="shop_localmesh",
        subnet="10.99.0.0/16",
        gateway="10.99.0.1",
        mesh_ip="10.99.0.2",
        vip_range="10.99.0.0/24",
        ip_range="10.98.0.0/24",
    ),
    published=PublishedPorts(admin=15000),
    upstreams=(
        Upstream("api", VIPS["api"], ("api",), (PlanPort(8000, HTTP), PlanPort(9000, HTTP))),
        Upstream("opaque", VIPS["opaque"], ("opaque",), (), unknown_ports=True),
        Upstream("legacy", VIPS["legacy"], ("legacy",), (PlanPort(8080, HTTP),), True),
    ),
    clients=(Client("web", ("api", "opaque", "legacy")),),
)
SERVICES = (
    Service("api", ports=(PortSpec(8000), PortSpec(9000))),
    Service("opaque"),
    Service("legacy", ports=(PortSpec(8080),)),
)


async def http_backend(host: str, port: int) -> web.AppRunner:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(text=f"{host}:{port}")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def tcp_backend(host: str, port: int) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(f"{host}:{port}\n".encode())
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, host, port)


async def http_answers(url: str, n: int = 20) -> list[str]:
    async with aiohttp.ClientSession() as s:
        answers = []
        for _ in range(n):
            async with s.get(url) as r:
                answers.append(await r.text() if r.status == 200 else str(r.status))
        return sorted(set(answers))


async def tcp_answers(host: str, port: int, n: int = 10) -> list[str]:
    answers = set()
    for _ in range(n):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"hello\n")
        answers.add((await asyncio.wait_for(reader.readline(), 5)).decode().strip() or "closed")
        writer.close()
    return sorted(answers)


async def main() -> dict[str, Any]:
    runners = [await http_backend(ip, port) for ip in REPLICAS for port in (8000, 9000)]
    runners.append(await http_backend(REPLICAS[0], 8080))
    servers = [await tcp_backend(ip, port) for ip in REPLICAS for port in (7001, 7002)]
    servers.append(await tcp_backend(REPLICAS[0], 7003))
    discovered = discovered_from(
        PLAN, {"api": REPLICAS, "opaque": REPLICAS, "legacy": REPLICAS[:1], "web": ("10.98.0.9",)}
    )
    listeners = [
        ListenerSpec(f"{s.name}:{p.port}", s.name, p.port, p.protocol, VIPS[s.name], p.port)
        for s in SERVICES
        for p in s.ports
    ]
    listeners.append(
        ListenerSpec("intercept", "*", 0, Protocol.TCP, "0.0.0.0", INTERCEPT_PORT, intercept=True)
    )
    snap = Snapshot(
        config=MeshConfig(services=SERVICES),
        listeners=tuple(listeners),
        endpoints=discovered.endpoints,
        sources=discovered.sources,
        vips={vip: svc for svc, vip in VIPS.items()},
    )
    plane = DataPlane(MeshMetrics("t", "t"), AccessLog(None))
    await plane.apply(snap)
    api, opaque, legacy = VIPS["api"], VIPS["opaque"], VIPS["legacy"]
    try:
        result: dict[str, Any] = {
            "api:8000": await http_answers(f"http://{api}:8000/"),
            "api:9000": await http_answers(f"http://{api}:9000/"),
            "opaque:7001": await tcp_answers(opaque, 7001),
            "opaque:7002": await tcp_answers(opaque, 7002),
            "legacy:8080": await http_answers(f"http://{legacy}:8080/"),
            "legacy:7003": await tcp_answers(legacy, 7003),
        }
        result["clusters"] = sorted(
            (c["name"], sorted(e["address"] for e in c["endpoints"])) for c in plane.clusters()
        )
    finally:
        await plane.close(1.0)
        for runner in runners:
            await runner.cleanup()
        for server in servers:
            server.close()
    return result


if __name__ == "__main__":
    subprocess.run(SETUP, shell=True, check=True)
    print(json.dumps(uvloop.run(main())), flush=True)
