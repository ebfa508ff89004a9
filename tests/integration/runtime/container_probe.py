"""Runs INSIDE the mesh container (test_container.py starts it): the real setup, tiny servers.

Owns the plan's VIPs with ``setup_network`` (twice: a restart must not stack rules), serves
every known port of every VIP with a one-line answer naming the upstream and the caller,
serves the intercept port answering with ``SO_ORIGINAL_DST``, then prints what discovery
found and ``READY``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from localmesh.runtime.container import (
    INTERCEPT_PORT,
    NAT_CHAIN,
    DnsDiscovery,
    load_plan,
    setup_network,
)

SO_ORIGINAL_DST = 80


def original_dst(conn: socket.socket) -> str:
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack("!H", raw[2:4])[0]
    return f"{socket.inet_ntoa(raw[4:8])}:{port}"


def serve(host: str, port: int, answer: Callable[[socket.socket], str]) -> None:
    server = socket.create_server((host, port))

    def loop() -> None:
        while True:
            conn, peer = server.accept()
            with conn:
                conn.sendall(f"{answer(conn)} from {peer[0]}\n".encode())

    threading.Thread(target=loop, daemon=True).start()


def main() -> None:
    plan = load_plan(Path(sys.argv[1]))
    setup_network(plan)
    setup_network(plan)
    rules = subprocess.run(
        ["iptables", "-t", "nat", "-S", NAT_CHAIN], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for u in plan.upstreams:
        for p in u.ports:

            def named(_c: socket.socket, s: str = u.service, n: int = p.port) -> str:
                return f"{s}:{n}"

            serve(u.vip, p.port, named)
    serve("0.0.0.0", INTERCEPT_PORT, lambda c: f"intercept {original_dst(c)}")
    found = asyncio.run(DnsDiscovery(plan).resolve_once())
    report = {
        "rules": [r for r in rules if not r.startswith("-N")],
        "endpoints": {k: [e.address for e in v] for k, v in found.endpoints.items()},
        "sources": dict(found.sources),
    }
    print(json.dumps(report), flush=True)
    print("READY", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
