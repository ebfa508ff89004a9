"""Istio's own Grafana dashboards work on localmesh metrics.

Real HTTP and TCP (Redis) traffic goes through a host-mode runtime from a caller that the
mesh knows as ``web`` (it connects from 127.0.0.2, where web's endpoints live). Then
``/metrics`` is scraped, parsed with prometheus-client's parser, and every query of the
mesh, service and workload dashboards (istio_dashboards.py) is evaluated: with the
dashboard's variables set to values it would offer, each of its selectors must select
series and carry the labels it groups by. mTLS-only panels must stay empty: this traffic
is plaintext, and Istio would show it the same way.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from localmesh.runtime.app import Runtime
from tests.integration.controlplane.support import admin_url, running
from tests.integration.telemetry import promql
from tests.integration.telemetry.istio_dashboards import QUERIES, Query
from tests.support.services import HttpBackend, Redis, free_port, run_http_backend

NAMESPACE = "shop"
CALLER_IP = "127.0.0.2"

# The labels the issue requires on every request/connection series (Istio's names).
REQUIRED = {
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "destination_service",
    "destination_service_name",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
}


def fqdn(service: str) -> str:
    return f"{service}.{NAMESPACE}.svc.cluster.local"


# What each dashboard variable can be set to for this traffic (Grafana's "All" is .*).
CHOICES: dict[str, list[str]] = {
    "qrep": ["source", "destination"],
    "service": [fqdn("api"), fqdn("cache")],
    "namespace": [NAMESPACE],
    "workload": ["web", "api", "cache"],
    "srcwl": [".*"],
    "srcns": [".*"],
    "dstwl": [".*"],
    "dstns": [".*"],
    "dstsvc": [".*"],
    "dstcluster": [".*"],
}


@pytest.fixture
def backend() -> Iterator[HttpBackend]:
    with run_http_backend("api") as b:
        yield b


def mesh_yaml(backend: HttpBackend, redis: Redis, api_port: int, cache_port: int) -> str:
    return f"""\
mesh:
  name: {NAMESPACE}
services:
  web:
    ports: [{{port: 8080, listen: "127.0.0.1:{free_port()}"}}]
    endpoints: ["{CALLER_IP}:8080"]
  api:
    ports: [{{port: 8000, listen: "127.0.0.1:{api_port}"}}]
    endpoints: ["{backend.host}:{backend.port}"]
    retries: false
  cache:
    ports: [{{port: 6379, protocol: redis, listen: "127.0.0.1:{cache_port}"}}]
    endpoints: ["{redis.host}:{redis.port}"]
"""


async def drive_traffic(api_port: int, cache_port: int) -> None:
    connector = aiohttp.TCPConnector(local_addr=(CALLER_IP, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        base = f"http://127.0.0.1:{api_port}"
        for _ in range(20):
            async with session.post(base + "/echo", data=b"x" * 100) as r:
                await r.read()
                assert r.status == 200
        for code in (404, 503):
            async with session.get(f"{base}/status/{code}") as r:
                await r.read()
                assert r.status == code
    for _ in range(3):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", cache_port, local_addr=(CALLER_IP, 0)
        )
        writer.write(b"PING\r\n")
        assert await reader.readline() == b"+PONG\r\n"
        writer.close()
        await writer.wait_closed()


async def scrape(runtime: Runtime) -> list[promql.Sample]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(admin_url(runtime) + "/metrics") as r,
    ):
        text = await r.text()
    return [
        (s.name, s.labels)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def family(metric: str) -> str:
    return (
        "tcp" if metric.startswith("istio_tcp_") else "build" if metric == "istio_build" else "http"
    )


def satisfiable(query: Query, samples: list[promql.Sample]) -> tuple[bool, str]:
    """Whether some choice of the dashboard's variables makes every selector of each
    protocol family in the query select series that carry the grouped-by labels."""
    names = sorted(promql.variables(query.expr))
    groups: dict[str, list[int]] = {}
    for i, sel in enumerate(promql.selectors(query.expr)):
        groups.setdefault(family(sel.metric), []).append(i)
    assert groups, f"no selector found in {query.expr}"
    for fam, indexes in groups.items():
        found = False
        for combo in itertools.product(*(CHOICES[n] for n in names)):
            expr = promql.substitute(query.expr, dict(zip(names, combo, strict=True)))
            sels = promql.selectors(expr)
            needed = promql.grouping_labels(expr) - {"le"}
            selected = [sels[i].select(samples) for i in indexes]
            if all(rows and all(needed <= set(r) for r in rows) for rows in selected):
                found = True
                break
        if not found:
            return False, f"{fam} selectors of {query.dashboard}/{query.panel!r} select nothing"
    return True, ""


def selects_anything(query: Query, samples: list[promql.Sample]) -> bool:
    names = sorted(promql.variables(query.expr))
    for combo in itertools.product(*(CHOICES[n] for n in names)):
        expr = promql.substitute(query.expr, dict(zip(names, combo, strict=True)))
        if any(sel.select(samples) for sel in promql.selectors(expr)):
            return True
    return False


def test_the_selector_helper_reads_dashboard_queries() -> None:
    """Guard against a helper that silently finds nothing (and so proves nothing)."""
    expr = (
        'sum(irate(istio_requests_total{reporter=~"$qrep", '
        'connection_security_policy!="mutual_tls", destination_service="$service"}[5m]))'
        " by (source_workload, le)"
    )
    (sel,) = promql.selectors(promql.substitute(expr, {"qrep": "source", "service": "a"}))
    assert sel.metric == "istio_requests_total"
    assert [(m.label, m.op, m.value) for m in sel.matchers] == [
        ("reporter", "=~", "source"),
        ("connection_security_policy", "!=", "mutual_tls"),
        ("destination_service", "=", "a"),
    ]
    assert promql.grouping_labels(expr) == {"source_workload", "le"}
    rows = sel.select(
        [
            ("istio_requests_total", {"reporter": "source", "destination_service": "a"}),
            ("istio_requests_total", {"reporter": "sourcex", "destination_service": "a"}),
        ]
    )
    assert len(rows) == 1
    assert len(QUERIES) > 40


async def test_istio_dashboards_return_data_for_http_and_tcp_traffic(
    tmp_path: Path, backend: HttpBackend, redis_server: Redis
) -> None:
    api_port, cache_port = free_port(), free_port()
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(mesh_yaml(backend, redis_server, api_port, cache_port))
    async with running(mesh) as runtime:
        await drive_traffic(api_port, cache_port)
        samples: list[promql.Sample] = []

        def tcp_closed() -> bool:
            return any(
                n == "istio_tcp_connections_closed_total" and lbl.get("reporter") == "destination"
                for n, lbl in samples
            )

        for _ in range(100):  # TCP counters land when connections close: poll a scrape
            samples = await scrape(runtime)
            if tcp_closed():
                break
            await asyncio.sleep(0.05)
        assert tcp_closed(), "no TCP series after the connections closed"

    requests = [lbl for n, lbl in samples if n == "istio_requests_total"]
    assert requests, "no istio_requests_total series"
    for labels in requests:
        assert labels.keys() >= REQUIRED | {"response_code"}
    web_to_api = [
        lbl
        for lbl in requests
        if lbl["source_workload"] == "web" and lbl["destination_service_name"] == "api"
    ]
    assert {lbl["response_code"] for lbl in web_to_api} >= {"200", "404", "503"}
    sample = web_to_api[0]
    assert sample["source_principal"] == "spiffe://localmesh/svc/web"
    assert sample["destination_principal"] == "spiffe://localmesh/svc/api"
    assert sample["destination_workload_namespace"] == NAMESPACE
    assert sample["request_protocol"] == "http"
    tcp = [lbl for n, lbl in samples if n == "istio_tcp_sent_bytes_total"]
    assert any(
        lbl["source_workload"] == "web" and lbl["destination_service"] == fqdn("cache")
        for lbl in tcp
    )
    for labels in tcp:
        assert labels.keys() >= REQUIRED
    build = [lbl for n, lbl in samples if n == "istio_build"]
    assert build
    assert build[0].keys() >= {"component", "tag"}

    failures = []
    for query in QUERIES:
        if query.mtls_only:
            if selects_anything(query, samples):
                failures.append(f"mTLS panel shows plaintext traffic: {query.panel}")
            continue
        ok, why = satisfiable(query, samples)
        if not ok:
            failures.append(why)
    assert failures == []
