"""Active health checks: one task per cluster (service port) with ``health_check`` configured.

Every ``interval`` each endpoint is probed (HTTP: ``GET path`` must answer 2xx within
``timeout``; TCP: a connect must succeed within ``timeout``) and the result goes to the
cluster state, which applies the healthy/unhealthy thresholds (``core.cluster``).
"""

from __future__ import annotations

import asyncio
import contextlib

from localmesh.config.model import HealthCheck, HealthCheckKind
from localmesh.runtime.dataplane.tasks import spawn
from localmesh.runtime.dataplane.upstream import ClusterRuntime, UpstreamHost


async def probe(host: UpstreamHost, check: HealthCheck, service: str) -> bool:
    try:
        async with asyncio.timeout(check.timeout):
            reader, writer = await asyncio.open_connection(host.host, host.port)
            try:
                if check.kind is HealthCheckKind.TCP:
                    return True
                writer.write(
                    f"GET {check.path} HTTP/1.1\r\nhost: {service}\r\n"
                    "user-agent: localmesh-health-check\r\nconnection: close\r\n\r\n".encode()
                )
                line = await reader.readline()
                parts = line.split()
                return len(parts) >= 2 and parts[1][:1] == b"2"
            finally:
                writer.close()
    except (OSError, TimeoutError, ValueError):
        return False


class HealthChecker:
    def __init__(self) -> None:
        # cluster name -> what is checked and the task checking it
        self._tasks: dict[str, tuple[ClusterRuntime, HealthCheck, asyncio.Task[None]]] = {}

    def update(self, clusters: list[ClusterRuntime]) -> None:
        """(Re)start checks for clusters that want them, stop the others."""
        wanted = {c.state.name: c for c in clusters if c.state.health_check is not None}
        for name, (checked, check, task) in list(self._tasks.items()):
            cluster = wanted.get(name)
            if cluster is not checked or cluster.state.health_check != check:
                task.cancel()
                del self._tasks[name]
        for cluster in wanted.values():
            self.add(cluster)

    def add(self, cluster: ClusterRuntime) -> None:
        """Start checking one cluster, if it wants checks and is not checked yet."""
        check = cluster.state.health_check
        name = cluster.state.name
        if check is not None and name not in self._tasks:
            task = spawn(self._run(cluster, check), name=f"health {name}")
            self._tasks[name] = (cluster, check, task)

    async def _run(self, cluster: ClusterRuntime, check: HealthCheck) -> None:
        while True:
            hosts = list(cluster.hosts)
            results = await asyncio.gather(*(probe(h, check, cluster.name) for h in hosts))
            for host, ok in zip(hosts, results, strict=True):
                cluster.state.report_check(host, ok)
            await asyncio.sleep(check.interval)

    async def stop(self) -> None:
        tasks = [task for _, _, task in self._tasks.values()]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
