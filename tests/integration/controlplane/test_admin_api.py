"""The admin API over real HTTP: every endpoint, readiness, redaction, SSE, log filters.

The data plane here only reports which listeners it bound (``FakeBindings``); the runtime
tests in test_runtime.py run the same API over the real data plane.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from localmesh.runtime.controlplane.admin import AdminApi, record_filter
from localmesh.runtime.controlplane.events import EventBus
from localmesh.runtime.controlplane.lastgood import LastGoodStore
from localmesh.runtime.controlplane.plane import ControlPlane, load_initial
from localmesh.runtime.controlplane.sources import MeshFileSource
from localmesh.runtime.snapshot import Snapshot
from localmesh.runtime.telemetry import AccessLog, MeshMetrics

MESH = """\
mesh:
  name: shop
services:
  api:
    ports: [{port: 8000, listen: "127.0.0.1:18700"}]
    endpoints: ["127.0.0.1:9001", "127.0.0.1:9002"]
    routes:
      - name: tagged
        route: [{service: api}]
        headers: {request: {set: {authorization: "Bearer top-secret", x-env: dev}}}
  db:
    ports: ["5432/postgres"]
    endpoints: ["127.0.0.1:5432"]
"""


class FakeBindings:
    """Records applied snapshots and claims their listeners bound (or not)."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None
        self.bound = True

    async def apply(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def addresses(self) -> dict[str, tuple[str, int]]:
        if not self.bound or self.snapshot is None:
            return {}
        return {lst.name: (lst.bind_host, lst.bind_port) for lst in self.snapshot.listeners}

    def clusters(self) -> list[dict[str, Any]]:
        if self.snapshot is None:
            return []
        return [
            {"name": name, "endpoints": [{"address": e.address, "health": "healthy"} for e in eps]}
            for name, eps in self.snapshot.endpoints.items()
        ]


class Harness:
    def __init__(  # noqa: PLR0917 - a test bundle
        self,
        admin: AdminApi,
        plane: ControlPlane,
        bindings: FakeBindings,
        log: AccessLog,
        mesh: Path,
        session: aiohttp.ClientSession,
    ) -> None:
        self.admin, self.plane, self.bindings, self.log = admin, plane, bindings, log
        self.mesh, self.session = mesh, session
        host, port = admin.address or ("", 0)
        self.base = f"http://{host}:{port}"

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.session.get(self.base + path) as r:
            body = await r.text()
            ctype = r.headers.get("Content-Type", "")
            return r.status, json.loads(body) if "json" in ctype else body


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(MESH)
    source = MeshFileSource(mesh)
    store = LastGoodStore(tmp_path / ".localmesh")
    metrics = MeshMetrics("shop", "localmesh")
    log = AccessLog(None)
    bindings = FakeBindings()
    plane = ControlPlane(source, bindings.apply, store=store, metrics=metrics, events=EventBus())
    admin = AdminApi(plane, bindings, metrics, log)
    await admin.start("127.0.0.1", 0)
    await plane.start(await load_initial(source, store))
    async with aiohttp.ClientSession() as session:
        yield Harness(admin, plane, bindings, log, mesh, session)
    await admin.stop()


async def test_health_and_readiness(harness: Harness) -> None:
    assert await harness.get("/healthz") == (200, "ok\n")
    status, body = await harness.get("/readyz")
    assert status == 200
    assert body["ready"] is True
    harness.bindings.bound = False
    status, body = await harness.get("/readyz")
    assert status == 503
    assert body["reason"] == "listeners not bound: api:8000, db:5432"
    harness.bindings.bound = True
    harness.admin.draining = True
    status, body = await harness.get("/readyz")
    assert status == 503
    assert "draining" in body["reason"]


async def test_status_reports_snapshot_listeners_services_and_errors(harness: Harness) -> None:
    status, doc = await harness.get("/status")
    assert status == 200
    assert doc["snapshot"]["version"] == 1
    assert doc["mode"] == "host"
    assert doc["last_error"] is None
    assert {(lst["name"], lst["bind"], lst["address"]) for lst in doc["listeners"]} == {
        ("api:8000", "127.0.0.1:18700", "127.0.0.1:18700"),
        ("db:5432", "127.0.0.1:15432", "127.0.0.1:15432"),
    }
    api = next(s for s in doc["services"] if s["name"] == "api")
    assert [e["address"] for e in api["endpoints"]] == ["127.0.0.1:9001", "127.0.0.1:9002"]

    harness.mesh.write_text(MESH.replace("routes:", "routez:"))
    async with harness.session.post(harness.base + "/reload") as r:
        assert r.status == 409
        body = await r.json()
    assert body["applied"] is False
    assert body["last_error"]["problems"][0]["line"] == 7
    _, doc = await harness.get("/status")
    assert doc["snapshot"]["version"] == 1
    assert doc["last_error"]["problems"][0]["file"] == str(harness.mesh)
    assert doc["reloads"]["rejected"] == 1


async def test_config_is_the_snapshot_with_secrets_redacted(harness: Harness) -> None:
    status, doc = await harness.get("/config")
    assert status == 200
    text = json.dumps(doc)
    assert "top-secret" not in text
    route = doc["config"]["services"][0]["routes"][0]
    assert ["authorization", "<redacted>"] in route["request_headers"]["set"]
    assert ["x-env", "dev"] in route["request_headers"]["set"]
    assert doc["endpoints"]["db"] == [{"host": "127.0.0.1", "port": 5432, "labels": []}]
    assert doc["listeners"][1]["protocol"] == "postgres"


async def test_metrics_parse_and_carry_the_reload_counters(harness: Harness) -> None:
    status, text = await harness.get("/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "istio_build" in families
    reloads = {s.labels["result"]: s.value for s in families["localmesh_config_reloads"].samples}
    assert reloads == {"applied": 1.0}
    version = families["localmesh_config_version"].samples[0].value
    assert version == 1.0


async def test_events_stream_replays_history_and_follows_changes(harness: Harness) -> None:
    async with harness.session.get(harness.base + "/events?after=0") as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        events: list[dict[str, Any]] = []

        async def read() -> None:
            current: dict[str, str] = {}
            async for raw in r.content:
                line = raw.decode().rstrip("\n")
                if not line:
                    if "data" in current:
                        events.append({"type": current["event"], **json.loads(current["data"])})
                        if len(events) == 2:
                            return
                    current = {}
                elif not line.startswith(":"):
                    key, _, value = line.partition(": ")
                    current[key] = value

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.05)
        harness.mesh.write_text(MESH.replace('"127.0.0.1:9002"', '"127.0.0.1:9003"'))
        assert await harness.plane.reload("test")
        await asyncio.wait_for(reader, 5)
    assert [e["type"] for e in events] == ["snapshot", "snapshot"]
    assert events[1]["data"]["version"] == 2
    assert events[1]["data"]["endpoints"]["api"] == ["127.0.0.1:9001", "127.0.0.1:9003"]


async def test_logs_filter_by_service_and_status_and_follow(harness: Harness) -> None:
    records = [
        {"source": "web", "destination": "api", "status": 200, "path": "/a"},
        {"source": "web", "destination": "api", "status": 503, "path": "/b"},
        {"source": "api", "destination": "db", "bytes_sent": 10},
        {"source": "web", "destination": "shop", "status": 404, "path": "/c"},
    ]
    for rec in records:
        harness.log.log(rec)
    _, doc = await harness.get("/logs?service=api")
    assert [r.get("path") for r in doc["records"]] == ["/a", "/b", None]
    _, doc = await harness.get("/logs?status=5xx,404")
    assert [r["path"] for r in doc["records"]] == ["/b", "/c"]
    _, doc = await harness.get("/logs?limit=1")
    assert [r["path"] for r in doc["records"]] == ["/c"]
    status, _ = await harness.get("/logs?limit=x")
    assert status == 400
    # a name no config service has but a record does (a client certificate's caller)
    _, doc = await harness.get("/logs?service=shop")
    assert [r["path"] for r in doc["records"]] == ["/c"]
    for follow in ("", "&follow=1"):
        async with asyncio.timeout(5):
            status, doc = await harness.get(f"/logs?service=nope{follow}")
        assert status == 404
        validate(doc, "Error")
        assert doc["error"] == "no service 'nope' in the mesh, and no call from or to it is logged"
        assert doc["hint"].startswith("services: api, ")
        assert doc["hint"].endswith(", unknown")

    async with harness.session.get(harness.base + "/logs?follow=1&status=503&limit=0") as r:
        harness.log.log({"source": "web", "destination": "api", "status": 200, "path": "/ok"})
        harness.log.log({"source": "web", "destination": "api", "status": 503, "path": "/bad"})
        harness.log.flush()
        line = await asyncio.wait_for(r.content.readline(), 5)
    assert json.loads(line)["path"] == "/bad"


def test_record_filter_rules() -> None:
    assert record_filter() is None
    match = record_filter(status="5xx")
    assert match is not None
    assert match({"status": 502})
    assert not match({"status": 404})
    assert not match({"bytes_sent": 1})  # TCP records have no status
    match = record_filter(service="db", status="200,4xx")
    assert match is not None
    assert match({"source": "db", "status": 418})
    assert not match({"destination": "api", "status": 200})
    for bad in ("6xx", "abc", "5x", "50", "1000"):
        with pytest.raises(ValueError, match=r"a code \(503\) or a class \(5xx\)"):
            record_filter(status=bad)


async def test_admin_bind_failure_is_a_runtime_start_error(harness: Harness) -> None:
    from localmesh.errors import RuntimeStartError

    assert harness.admin.address is not None
    other = AdminApi(harness.plane, harness.bindings, harness.plane.metrics, harness.log)
    with pytest.raises(RuntimeStartError, match="cannot bind the admin API"):
        await other.start(*harness.admin.address)


OPENAPI = Path(__file__).resolve().parents[3] / "docs" / "openapi.yaml"


def validate(doc: Any, schema_name: str) -> None:
    spec = yaml.safe_load(OPENAPI.read_text())
    schema = {**spec, "$ref": f"#/components/schemas/{schema_name}"}
    jsonschema.Draft202012Validator(schema).validate(doc)


async def test_answers_match_the_openapi_description(harness: Harness) -> None:
    spec = yaml.safe_load(OPENAPI.read_text())
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in harness.admin.app().router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    documented = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert routes == documented
    harness.log.log({"source": "web", "destination": "api", "status": 200})
    for path, schema in (
        ("/status", "Status"),
        ("/readyz", "Readiness"),
        ("/config", "SnapshotDump"),
    ):
        _, doc = await harness.get(path)
        validate(doc, schema)
    harness.mesh.write_text("services: 3\n")
    async with harness.session.post(harness.base + "/reload") as r:
        validate(await r.json(), "ReloadResult")
    _, doc = await harness.get("/status")
    validate(doc, "Status")
    assert doc["last_error"] is not None
    with pytest.raises(jsonschema.ValidationError):
        validate({"ready": "yes"}, "Readiness")
