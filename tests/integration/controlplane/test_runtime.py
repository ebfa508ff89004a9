"""The seed's failure scenario, end to end in host mode with the real data plane.

A load loop keeps calling through the mesh while mesh.yaml is edited: bad edits are
rejected with file:line while traffic continues, good edits apply in under a second with
zero failed requests, and a restart with a broken file serves the persisted snapshot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path

import aiohttp
import pytest

from localmesh.ca.authority import ROOT_CERT, CertificateAuthority
from localmesh.compose.plan import Client, MeshPlan, PlanPort, PublishedPorts, Upstream
from localmesh.compose.planner import mesh_network
from localmesh.config.model import Protocol
from localmesh.errors import ConfigError, Position, RuntimeStartError
from localmesh.runtime.app import RunOptions, Runtime
from localmesh.runtime.controlplane.sources import ContainerSource
from tests.integration.controlplane.support import (
    Load,
    admin_url,
    listener_url,
    running,
    until,
    write_atomic,
)
from tests.support.services import HttpBackend, free_port, run_http_backend

MESH = """\
mesh:
  name: shop
services:
  api:
    ports: [{{port: 8000, listen: "127.0.0.1:{port}"}}]
    endpoints: [{endpoints}]
    routes:
      - name: all
        route: [{{service: api}}]
        headers: {{response: {{set: {{x-version: "{version}"}}}}}}
"""


@pytest.fixture
def backends() -> Iterator[list[HttpBackend]]:
    with run_http_backend("one") as one, run_http_backend("two") as two:
        yield [one, two]


def mesh_text(port: int, backends: list[HttpBackend], version: str) -> str:
    endpoints = ", ".join(f'"{b.host}:{b.port}"' for b in backends)
    return MESH.format(port=port, endpoints=endpoints, version=version)


async def status(session: aiohttp.ClientSession, base: str) -> dict:  # type: ignore[type-arg]
    async with session.get(base + "/status") as r:
        return await r.json()  # type: ignore[no-any-return]


async def test_good_edits_apply_under_load_with_zero_failures(
    tmp_path: Path, backends: list[HttpBackend]
) -> None:
    mesh = tmp_path / "mesh.yaml"
    port = free_port()
    mesh.write_text(mesh_text(port, backends[:1], "1"))
    async with running(mesh) as runtime:
        load = Load(listener_url(runtime, "api:8000") + "/echo", concurrency=4)
        async with load.running():
            await until(lambda: load.ok > 50, what="load warmed up")
            for version in range(2, 7):
                # alternate the endpoint set too, so clusters are rebuilt on each swap
                chosen = backends if version % 2 else backends[:1]
                edited = time.monotonic()
                write_atomic(mesh, mesh_text(port, chosen, str(version)))

                def applied(v: str = str(version), t: float = edited) -> bool:
                    return any(at > t and h.get("x-version") == v for at, h in load.seen[-50:])

                took = await until(applied, limit=3.0, what=f"version {version} served")
                assert took < 1.0, f"version {version} took {took:.2f}s to apply"
                before = load.ok

                def continues(b: int = before) -> bool:
                    return load.ok > b + 20

                await until(continues, what="traffic continues")
        assert load.failures == []
        assert runtime.plane is not None
        assert runtime.plane.status()["snapshot"]["version"] == 6
        backends_seen = {h.get("x-backend") for _, h in load.seen}
        assert backends_seen == {"one", "two"}


async def test_a_bad_edit_is_rejected_and_traffic_is_unaffected(
    tmp_path: Path, backends: list[HttpBackend]
) -> None:
    mesh = tmp_path / "mesh.yaml"
    port = free_port()
    good = mesh_text(port, backends, "1")
    mesh.write_text(good)
    async with running(mesh) as runtime, aiohttp.ClientSession() as session:
        base = admin_url(runtime)
        load = Load(listener_url(runtime, "api:8000") + "/echo")
        async with load.running():
            await until(lambda: load.ok > 20)
            write_atomic(mesh, good.replace("routes:", "routse:"))
            assert runtime.plane is not None
            await until(lambda: runtime.plane is not None and runtime.plane.last_error is not None)
            before = load.ok
            await until(lambda: load.ok > before + 100, what="traffic after the rejection")
        assert load.failures == []
        doc = await status(session, base)
        assert doc["snapshot"]["version"] == 1
        problem = doc["last_error"]["problems"][0]
        assert (problem["file"], problem["line"]) == (str(mesh), 7)
        assert "routse" in problem["message"]
        assert doc["ready"] is True
        # and the listener still answers with the old config
        async with session.get(listener_url(runtime, "api:8000") + "/echo") as r:
            assert r.status == 200
            assert r.headers["x-version"] == "1"


async def test_restart_with_a_broken_mesh_serves_the_persisted_snapshot(
    tmp_path: Path, backends: list[HttpBackend]
) -> None:
    mesh = tmp_path / "mesh.yaml"
    port = free_port()
    mesh.write_text(mesh_text(port, backends, "persisted"))
    async with running(mesh):
        pass
    mesh.write_text(mesh_text(port, backends, "new").replace("endpoints:", "endpoint:"))
    async with running(mesh) as runtime, aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/echo") as r:
            assert r.status == 200
            assert r.headers["x-version"] == "persisted"
        doc = await status(session, admin_url(runtime))
        assert doc["serving_persisted"] is True
        assert doc["snapshot"]["origin"] == "persisted"
        assert doc["last_error"]["problems"][0]["line"] == 6
        async with session.get(admin_url(runtime) + "/readyz") as r:
            assert r.status == 200
        # fixing the file takes over from the persisted config
        write_atomic(mesh, mesh_text(port, backends, "fixed"))
        await until(lambda: runtime.plane is not None and not runtime.plane.serving_persisted)
        async with session.get(f"http://127.0.0.1:{port}/echo") as r:
            assert r.headers["x-version"] == "fixed"


async def test_a_bug_in_the_data_planes_apply_is_a_rejection_and_the_old_snapshot_serves(
    tmp_path: Path,
    backends: list[HttpBackend],
    local_ca: CertificateAuthority,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception no one expected from ``apply`` (here: a damaged CA file the ingress
    loads when a reload adds it, which cryptography refuses with a ValueError) is logged
    with its traceback and shown in /status; the runtime keeps serving and reloading."""
    (local_ca.directory / ROOT_CERT).write_text(
        "-----BEGIN CERTIFICATE-----\ndamaged\n-----END CERTIFICATE-----\n"
    )
    mesh = tmp_path / "mesh.yaml"
    port = free_port()
    good = mesh_text(port, backends[:1], "1")
    mesh.write_text(good)
    ingress = (
        f"ingress:\n  bind: 127.0.0.1\n  https_port: {free_port()}\n  http_port: {free_port()}\n"
        "  hosts: [{host: shop.localhost, routes: [{name: api, route: [api]}]}]\n"
    )
    async with running(mesh, tmp_path / "state") as runtime, aiohttp.ClientSession() as session:
        plane = runtime.plane
        assert plane is not None
        write_atomic(mesh, good + ingress)
        await until(lambda: plane.last_error is not None, what="a rejection")
        doc = await status(session, admin_url(runtime))
        assert doc["last_error"]["message"].startswith(
            "unexpected error applying snapshot 2: ValueError("
        )
        assert doc["snapshot"]["version"] == 1
        assert doc["ready"] is True
        [logged] = [r for r in caplog.records if r.getMessage().startswith("unexpected error")]
        assert logged.exc_info is not None
        async with session.get(f"http://127.0.0.1:{port}/echo") as r:
            assert r.status == 200
            assert r.headers["x-version"] == "1"
        # still reloading: the watch survived
        write_atomic(mesh, mesh_text(port, backends[:1], "3"))
        await until(lambda: plane.last_error is None, what="the next edit applied")
        async with session.get(f"http://127.0.0.1:{port}/echo") as r:
            assert r.headers["x-version"] == "3"


async def test_container_mode_names_a_listener_it_cannot_bind_by_the_host_path(
    tmp_path: Path,
) -> None:
    """The mesh container's inputs outside one: its listeners want their VIPs, which this
    machine does not have, so the first apply fails at the port's line of mesh.yaml, named
    by the path generate says it has on the host, not by where it is mounted."""
    plan = MeshPlan(
        project="shop",
        network=mesh_network("shop_localmesh", IPv4Network("10.213.8.0/22")),
        published=PublishedPorts(admin=15000),
        upstreams=(Upstream("api", "10.213.9.7", ("api",), (PlanPort(8000, Protocol.HTTP),)),),
        clients=(Client("web", ("api",)),),
    )
    (tmp_path / "plan.json").write_text(plan.to_json())
    project = {"name": "shop", "services": {"web": {"image": "web"}, "api": {"image": "api"}}}
    (tmp_path / "project.json").write_text(json.dumps(project))
    mounted = tmp_path / "mesh.d" / "mesh.yaml"
    mounted.parent.mkdir()
    mounted.write_text("services:\n  api:\n    ports: [8000]\n")
    host_path = "/home/dev/shop/mesh.yaml"
    source = ContainerSource(
        tmp_path / "plan.json", tmp_path / "project.json", mounted, 15001, host_path
    )
    options = RunOptions(mesh=mounted, state_dir=tmp_path / "state", admin="127.0.0.1:0")
    runtime = Runtime(options, source=source)
    with pytest.raises(RuntimeStartError) as info:
        await runtime.start()
    assert "listener api:8000: cannot listen on 10.213.9.7:8000" in info.value.message
    assert info.value.position == Position(host_path, 3, 13)


async def test_no_valid_config_and_nothing_persisted_does_not_start(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("services:\n  api:\n    portz: [80]\n")
    with pytest.raises(ConfigError):
        async with running(mesh):
            pass


async def test_a_port_taken_by_another_process_is_rejected_on_reload(
    tmp_path: Path, backends: list[HttpBackend]
) -> None:
    mesh = tmp_path / "mesh.yaml"
    port = free_port()
    mesh.write_text(mesh_text(port, backends, "1"))
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    taken = blocker.sockets[0].getsockname()[1]
    try:
        async with running(mesh) as runtime:
            write_atomic(mesh, mesh_text(taken, backends, "2"))
            assert runtime.plane is not None
            await until(lambda: runtime.plane is not None and runtime.plane.last_error is not None)
            error = runtime.plane.status()["last_error"]
            assert str(taken) in error["message"]
            # at the port's listen: value, like every other rejection
            [problem] = error["problems"]
            assert (problem["file"], problem["line"], problem["column"]) == (str(mesh), 5, 34)
            assert "address already in use" in problem["message"].lower()
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/echo") as r,
            ):
                assert r.status == 200
                assert r.headers["x-version"] == "1"
    finally:
        blocker.close()
        await blocker.wait_closed()


async def test_status_answers_while_listeners_close_for_the_drain(
    tmp_path: Path, backends: list[HttpBackend]
) -> None:
    mesh = tmp_path / "mesh.yaml"
    port = free_port()
    mesh.write_text(mesh_text(port, backends[:1], "1"))
    async with running(mesh) as runtime, aiohttp.ClientSession() as session:
        base = admin_url(runtime)
        slow = asyncio.create_task(session.get(f"http://127.0.0.1:{port}/delay/800"))
        await asyncio.sleep(0.2)  # in flight: the drain waits for it
        stopping = asyncio.create_task(runtime.stop())
        assert runtime.admin is not None
        await until(lambda: runtime.admin is not None and runtime.admin.draining)
        await asyncio.sleep(0.1)
        async with session.get(base + "/status") as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["ready"] is False
        (await slow).release()
        await stopping


async def test_access_log_turned_on_by_a_reload_logs(
    tmp_path: Path, backends: list[HttpBackend]
) -> None:
    mesh = tmp_path / "mesh.yaml"
    port = free_port()
    text = mesh_text(port, backends[:1], "1")
    mesh.write_text(text.replace("name: shop", "name: shop\n  access_log: false"))
    async with running(mesh) as runtime, aiohttp.ClientSession() as session:
        log = runtime.access_log
        assert log is not None
        async with session.get(f"http://127.0.0.1:{port}/echo") as r:
            assert r.status == 200
        assert log.recent() == []
        write_atomic(mesh, text)
        await until(lambda: runtime.plane is not None and runtime.plane.counters.applied == 2)
        async with session.get(f"http://127.0.0.1:{port}/echo") as r:
            assert r.status == 200
        assert len(log.recent()) == 1
        assert runtime.plane is not None
        assert runtime.plane.status()["restart_required"] == []


async def test_a_reload_changing_the_trust_domain_keeps_the_started_one_everywhere(
    tmp_path: Path, backends: list[HttpBackend]
) -> None:
    """trust_domain is read at start: the rest of the edit applies, and /status,
    /config (what the data plane uses) and the metrics agree on the domain it started with."""
    mesh = tmp_path / "mesh.yaml"
    port = free_port()

    def text(domain: str, version: str) -> str:
        return mesh_text(port, backends[:1], version).replace(
            "name: shop", f"name: shop\n  trust_domain: {domain}"
        )

    mesh.write_text(text("one.test", "1"))
    async with running(mesh) as runtime, aiohttp.ClientSession() as session:
        base = admin_url(runtime)
        write_atomic(mesh, text("two.test", "2"))
        await until(lambda: runtime.plane is not None and runtime.plane.counters.applied == 2)
        async with session.get(f"http://127.0.0.1:{port}/echo") as r:
            assert r.headers["x-version"] == "2"  # the rest of the edit applied
        assert (await status(session, base))["restart_required"] == ["mesh.trust_domain"]
        async with session.get(base + "/config") as r:
            assert (await r.json())["config"]["mesh"]["trust_domain"] == "one.test"
        async with session.get(base + "/metrics") as r:
            metrics = await r.text()
        assert 'destination_principal="spiffe://one.test/svc/api"' in metrics
        assert "two.test" not in metrics


async def test_a_graceful_stop_logs_when_the_drain_starts_and_ends(
    tmp_path: Path, backends: list[HttpBackend], caplog: pytest.LogCaptureFixture
) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(mesh_text(free_port(), backends[:1], "1"))
    caplog.set_level(logging.INFO, "localmesh.runtime")
    async with running(mesh):
        pass
    said = [r.getMessage() for r in caplog.records if r.name == "localmesh.runtime"]
    assert any(m.startswith("stopping: draining in-flight requests for up to 1s") for m in said)
    assert any(m.startswith("stopped after a ") for m in said)
