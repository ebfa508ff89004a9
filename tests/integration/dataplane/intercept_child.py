"""Runs inside a fresh network namespace (``unshare -n``) for ``test_intercept``.

Sets up what the mesh container does in container mode: VIPs routed locally and one
iptables REDIRECT sending every port of every VIP to the intercept listener. Then it calls
through the VIPs and prints what happened as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import subprocess

import aiohttp
import uvloop

from localmesh.config.model import MeshConfig, PortSpec, Protocol, Service, StaticEndpoint
from localmesh.runtime.dataplane import DataPlane
from localmesh.runtime.snapshot import Endpoint, ListenerSpec, Snapshot
from localmesh.runtime.telemetry import AccessLog, MeshMetrics
from tests.support.services import run_http_backend

INTERCEPT_PORT = 15001
SETUP = f"""
ip link set lo up
ip addr add 10.99.0.1/24 dev lo
iptables -t nat -A OUTPUT -d 10.99.0.0/24 -p tcp -j REDIRECT --to-ports {INTERCEPT_PORT}
"""


async def upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write((await reader.readline()).upper())
    await writer.drain()
    writer.close()


async def main() -> dict[str, object]:
    result: dict[str, object] = {}
    echo = await asyncio.start_server(upper, "127.0.0.1", 0)
    echo_port = echo.sockets[0].getsockname()[1]
    with run_http_backend("api-backend") as backend:
        api = Service(
            "api",
            ports=(PortSpec(8000, Protocol.HTTP),),
            endpoints=(StaticEndpoint(backend.host, backend.port),),
        )
        cache = Service(
            "cache",
            ports=(PortSpec(6379, Protocol.REDIS),),
            endpoints=(StaticEndpoint("127.0.0.1", echo_port),),
        )
        snap = Snapshot(
            config=MeshConfig(services=(api, cache)),
            listeners=(
                ListenerSpec(
                    "intercept", "*", 0, Protocol.TCP, "0.0.0.0", INTERCEPT_PORT, intercept=True
                ),
            ),
            endpoints={
                "api": (Endpoint(backend.host, backend.port),),
                "cache": (Endpoint("127.0.0.1", echo_port),),
            },
            sources={"127.0.0.1": "web", "10.99.0.1": "web"},
            vips={"10.99.0.10": "api", "10.99.0.11": "cache"},
        )
        log = AccessLog(None)
        plane = DataPlane(MeshMetrics("t", "t"), log)
        await plane.apply(snap)
        try:
            async with aiohttp.ClientSession() as s, s.get("http://10.99.0.10:8000/echo") as r:
                body = await r.json()
                result["http"] = [r.status, body["backend"], body["headers"].get("x-request-id")]
            reader, writer = await asyncio.open_connection("10.99.0.11", 6379)
            writer.write(b"ping\n")
            result["tcp"] = (await asyncio.wait_for(reader.readline(), 5)).decode()
            writer.close()
            reader, writer = await asyncio.open_connection("10.99.0.12", 80)  # unknown VIP
            try:
                result["unknown"] = (await asyncio.wait_for(reader.read(), 5)).decode()
            except ConnectionResetError:
                result["unknown"] = "reset"
            writer.close()
        finally:
            await plane.close(1.0)
            echo.close()
        result["log"] = [(r["destination"], r.get("status"), r["source"]) for r in log.recent()]
    return result


if __name__ == "__main__":
    subprocess.run(SETUP, shell=True, check=True)
    print(json.dumps(uvloop.run(main())), flush=True)
