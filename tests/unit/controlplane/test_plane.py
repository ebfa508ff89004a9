"""Reload decisions on real mesh.yaml files: reject bad edits, apply good ones, fall back to
the persisted last good config at start. The data plane here is a recorder of applied
snapshots (its real counterpart is exercised in tests/integration/controlplane)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from localmesh.compose.project import ComposeProject
from localmesh.config.model import MeshConfig, MeshSettings, PortSpec, Service
from localmesh.errors import ConfigError, RuntimeStartError
from localmesh.runtime.controlplane.compile import Discovered, Inputs
from localmesh.runtime.controlplane.events import EventBus
from localmesh.runtime.controlplane.lastgood import LastGoodStore
from localmesh.runtime.controlplane.plane import ControlPlane, Loaded, load_initial
from localmesh.runtime.controlplane.sources import MeshFileSource
from localmesh.runtime.snapshot import Endpoint, Snapshot
from localmesh.runtime.telemetry import MeshMetrics

GOOD = """\
mesh:
  name: shop
services:
  api:
    ports: [{{port: 8000, listen: "127.0.0.1:{port}"}}]
    endpoints: ["127.0.0.1:9001"]
    timeout: {timeout}
"""
BAD = GOOD.replace("timeout: {timeout}", "timeout: {timeout}\n    retires: 3")


class Recorder:
    """Stands in for DataPlane.apply: records snapshots, can be told to refuse one."""

    def __init__(self) -> None:
        self.applied: list[Snapshot] = []
        self.refuse: str | None = None

    async def __call__(self, snapshot: Snapshot) -> None:
        if self.refuse:
            raise RuntimeStartError(self.refuse)
        self.applied.append(snapshot)


def write(path: Path, text: str) -> None:
    """Atomic replace, like most editors; bumps mtime so a same-second edit is seen."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def until(cond: Callable[[], bool], limit: float = 3.0) -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > limit:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


class Env:
    def __init__(self, tmp: Path) -> None:
        self.mesh = tmp / "mesh.yaml"
        self.state = tmp / ".localmesh"
        self.recorder = Recorder()
        self.events = EventBus()
        self.metrics = MeshMetrics("shop", "localmesh")
        self.plane: ControlPlane | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> ControlPlane:
        source = MeshFileSource(self.mesh)
        store = LastGoodStore(self.state)
        initial = await load_initial(source, store)
        plane = ControlPlane(
            source,
            self.recorder,
            store=store,
            metrics=self.metrics,
            events=self.events,
            poll_interval=0.05,
            settle=0.01,
        )
        await plane.start(initial)
        self.plane = plane
        self.task = asyncio.create_task(plane.watch_forever())
        return plane

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = Env(tmp_path)
    yield e
    await e.stop()


async def test_good_edit_applies_bad_edit_is_rejected_and_kept_out(env: Env) -> None:
    write(env.mesh, GOOD.format(port=18001, timeout="5s"))
    plane = await env.start()
    assert [s.version for s in env.recorder.applied] == [1]
    assert plane.status()["snapshot"]["version"] == 1

    write(env.mesh, BAD.format(port=18001, timeout="5s"))
    await until(lambda: plane.last_error is not None)
    assert [s.version for s in env.recorder.applied] == [1]  # nothing applied
    err = plane.status()["last_error"]
    assert err["problems"][0]["file"] == str(env.mesh)
    assert err["problems"][0]["line"] == 8
    assert "retires" in err["message"]
    assert "did you mean 'retries'" in str(err["problems"][0]["hint"])
    assert plane.status()["reloads"]["rejected"] == 1

    write(env.mesh, GOOD.format(port=18001, timeout="7s"))
    took = await until(lambda: len(env.recorder.applied) == 2)
    assert took < 1.0
    assert env.recorder.applied[-1].version == 2
    assert env.recorder.applied[-1].config.services[0].timeout == 7.0
    assert plane.last_error is None
    assert [e.type for e in env.events.recent()] == ["snapshot", "rejected", "snapshot"]


async def test_touching_or_rewriting_the_same_bytes_does_nothing(env: Env) -> None:
    text = GOOD.format(port=18001, timeout="5s")
    write(env.mesh, text)
    plane = await env.start()
    os.utime(env.mesh)
    write(env.mesh, text)
    await asyncio.sleep(0.3)
    assert len(env.recorder.applied) == 1
    assert plane.status()["reloads"] == {"applied": 1, "rejected": 0, "unchanged": 0}


async def test_a_bind_failure_rejects_the_snapshot_and_keeps_the_old_one(env: Env) -> None:
    write(env.mesh, GOOD.format(port=18001, timeout="5s"))
    plane = await env.start()
    env.recorder.refuse = "cannot bind 127.0.0.1:18002: address in use"
    write(env.mesh, GOOD.format(port=18002, timeout="5s"))
    await until(lambda: plane.last_error is not None)
    assert plane.snapshot is not None
    assert plane.snapshot.version == 1
    assert "address in use" in plane.status()["last_error"]["message"]
    # the persisted state is still version 1's inputs
    persisted = LastGoodStore(env.state).load()
    assert persisted is not None
    assert persisted.version == 1


async def test_restart_with_a_broken_file_serves_the_persisted_config(env: Env) -> None:
    write(env.mesh, GOOD.format(port=18001, timeout="5s"))
    await env.start()
    await env.stop()

    write(env.mesh, BAD.format(port=18001, timeout="9s"))
    second = Env(env.mesh.parent)
    plane = await second.start()
    try:
        status = plane.status()
        assert status["serving_persisted"] is True
        assert status["persisted_created"] is not None
        assert status["snapshot"]["origin"] == "persisted"
        assert status["snapshot"]["version"] == 2  # versions keep counting across restarts
        assert status["last_error"]["problems"][0]["line"] == 8
        applied = second.recorder.applied
        assert [s.config.services[0].timeout for s in applied] == [5.0]
        assert [e.type for e in second.events.recent()] == ["rejected", "snapshot", "persisted"]

        write(env.mesh, GOOD.format(port=18001, timeout="9s"))
        await until(lambda: len(applied) == 2)
        assert plane.status()["serving_persisted"] is False
        assert plane.last_error is None
        assert applied[-1].config.services[0].timeout == 9.0
    finally:
        await second.stop()


async def test_restart_fixed_to_the_persisted_content_stops_saying_persisted(env: Env) -> None:
    good = GOOD.format(port=18001, timeout="5s")
    write(env.mesh, good)
    await env.start()
    await env.stop()
    write(env.mesh, BAD.format(port=18001, timeout="5s"))
    second = Env(env.mesh.parent)
    plane = await second.start()
    try:
        write(env.mesh, good)  # same inputs as persisted: same hash, nothing to apply
        await until(lambda: plane.last_error is None)
        status = plane.status()
        assert status["serving_persisted"] is False
        assert status["snapshot"]["origin"] == "mesh.yaml"
        assert status["snapshot"]["version"] == 2
        assert len(second.recorder.applied) == 1
    finally:
        await second.stop()


async def test_no_valid_config_and_nothing_persisted_fails_with_the_config_error(
    env: Env,
) -> None:
    write(env.mesh, BAD.format(port=18001, timeout="5s"))
    with pytest.raises(ConfigError) as info:
        await env.start()
    assert info.value.problems[0].position is not None
    assert info.value.problems[0].position.line == 8


async def test_a_compile_error_at_start_also_falls_back(env: Env) -> None:
    write(env.mesh, GOOD.format(port=18001, timeout="5s"))
    await env.start()
    await env.stop()
    # valid mesh.yaml, but web's default host-mode listener (8001 + 10000) is api's socket
    clash = GOOD.format(port=18001, timeout="5s") + (
        '  web:\n    ports: [8001]\n    endpoints: ["127.0.0.1:9002"]\n'
    )
    write(env.mesh, clash)
    second = Env(env.mesh.parent)
    plane = await second.start()
    try:
        assert plane.serving_persisted
        assert (
            "wants 127.0.0.1:18001, already used by listener api:8000"
            in plane.status()["last_error"]["message"]
        )
    finally:
        await second.stop()


class ContainerLikeSource:
    """Container-mode inputs (a compose project, VIPs, no static endpoints), no files."""

    label = "compose"

    def paths(self) -> tuple[Path, ...]:
        return ()

    def load(self, *, reloading: bool = False) -> Loaded:
        config = MeshConfig(
            mesh=MeshSettings(name="shop"), services=(Service("api", ports=(PortSpec(8000),)),)
        )
        project = ComposeProject("shop", Path("/p"), (), {"services": {"api": {}}})
        return Loaded(Inputs(config, project, vips={"api": "10.240.0.10"}), ())


async def test_discovery_changes_recompile_without_touching_files(tmp_path: Path) -> None:
    """Scale up/down: new endpoints become a new snapshot; the same answer is no change."""
    recorder = Recorder()
    source = ContainerLikeSource()
    plane = ControlPlane(
        source, recorder, store=None, metrics=MeshMetrics("shop", "localmesh"), events=EventBus()
    )
    await plane.start(await load_initial(source, None))
    assert recorder.applied[0].endpoints["api"] == ()

    def found(*hosts: int) -> Discovered:
        eps = tuple(Endpoint(f"172.20.0.{i}", 8000) for i in hosts)
        return Discovered(endpoints={"api": eps}, sources={e.host: "api" for e in eps})

    assert await plane.update_discovered(found(3, 4, 5))  # --scale api=3
    latest = recorder.applied[-1]
    assert (latest.version, latest.origin) == (2, "discovery")
    assert [e.host for e in latest.endpoints["api"]] == ["172.20.0.3", "172.20.0.4", "172.20.0.5"]
    assert await plane.update_discovered(found(5, 4, 3))  # same set, other order: no change
    assert len(recorder.applied) == 2
    assert await plane.update_discovered(found(3))  # --scale api=1
    assert [e.host for e in recorder.applied[-1].endpoints["api"]] == ["172.20.0.3"]
    bad = Discovered(sources={"172.20.0.9": "ghost"})
    assert not await plane.update_discovered(bad)
    assert len(recorder.applied) == 3
    assert "unknown service 'ghost'" in plane.status()["last_error"]["message"]


class Flaky(MeshFileSource):
    """mesh.yaml, but ``load`` raises whatever ``fail`` is set to (a loader bug)."""

    fail: Exception | None = None

    def load(self, *, reloading: bool = False) -> Loaded:
        if self.fail is not None:
            raise self.fail
        return super().load(reloading=reloading)


async def test_an_unexpected_load_failure_is_a_rejected_reload_not_a_dead_watch(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    write(env.mesh, GOOD.format(port=18001, timeout="5s"))
    source = Flaky(env.mesh)
    plane = ControlPlane(
        source, env.recorder, store=None, metrics=env.metrics, events=env.events, settle=0.01
    )
    await plane.start(await load_initial(source, None))
    source.fail = RecursionError("maximum recursion depth exceeded")
    assert await plane.reload("test") is False
    assert plane.snapshot is not None
    assert plane.snapshot.version == 1
    assert "RecursionError" in plane.status()["last_error"]["message"]
    logged = [r for r in caplog.records if r.exc_info and r.levelname == "ERROR"]
    assert logged, "the traceback is logged at error level"
    source.fail = None
    write(env.mesh, GOOD.format(port=18001, timeout="6s"))
    assert await plane.reload("test") is True
    assert plane.last_error is None


async def test_any_load_failure_at_start_falls_back_to_the_persisted_config(env: Env) -> None:
    write(env.mesh, GOOD.format(port=18001, timeout="5s"))
    await env.start()
    await env.stop()
    source = Flaky(env.mesh)
    source.fail = RecursionError("maximum recursion depth exceeded")
    store = LastGoodStore(env.state)
    plane = ControlPlane(source, env.recorder, store=store, metrics=env.metrics, events=env.events)
    await plane.start(await load_initial(source, store))
    assert plane.serving_persisted
    assert "RecursionError" in plane.status()["last_error"]["message"]


async def test_deeply_nested_yaml_is_rejected_with_a_position_and_the_watch_goes_on(
    env: Env,
) -> None:
    good = GOOD.format(port=18001, timeout="5s")
    write(env.mesh, good)
    plane = await env.start()
    write(env.mesh, good + "x-deep: " + "[" * 600 + "]" * 600 + "\n")
    await until(lambda: plane.last_error is not None)
    problem = plane.status()["last_error"]["problems"][0]
    assert (problem["line"], problem["column"]) == (8, 108)
    write(env.mesh, GOOD.format(port=18001, timeout="6s"))
    await until(lambda: plane.last_error is None)
    assert env.task is not None
    assert not env.task.done()
    assert [s.version for s in env.recorder.applied] == [1, 2]


@pytest.mark.parametrize("blank", ["", "  \n\n", "# saving...\n"])
async def test_an_empty_mesh_yaml_on_reload_is_rejected_and_the_last_good_serves(
    env: Env, blank: str
) -> None:
    write(env.mesh, GOOD.format(port=18001, timeout="5s"))
    plane = await env.start()
    env.mesh.write_text(blank)  # truncated in place, as a truncating editor leaves it
    await until(lambda: plane.last_error is not None)
    problem = plane.status()["last_error"]["problems"][0]
    assert (problem["file"], problem["line"], problem["column"]) == (str(env.mesh), 1, 1)
    assert problem["message"] == "mesh.yaml is empty"
    assert [s.version for s in env.recorder.applied] == [1]
    write(env.mesh, GOOD.format(port=18001, timeout="6s"))
    await until(lambda: plane.last_error is None)


async def test_an_empty_mesh_yaml_at_start_is_an_empty_mesh(env: Env) -> None:
    env.mesh.write_text("")
    plane = await env.start()
    assert plane.snapshot is not None
    assert plane.snapshot.listeners == ()
    assert plane.last_error is None


async def test_a_discovery_update_keeps_the_error_of_a_still_broken_mesh_yaml(env: Env) -> None:
    write(env.mesh, GOOD.format(port=18001, timeout="5s"))
    plane = await env.start()
    write(env.mesh, BAD.format(port=18001, timeout="5s"))
    await until(lambda: plane.last_error is not None)
    # a container started: the discovery update applies on top of the last good mesh.yaml
    assert await plane.update_discovered(Discovered(sources={"127.0.0.9": "api"}))
    assert [s.version for s in env.recorder.applied] == [1, 2]
    assert "retires" in plane.status()["last_error"]["message"]
    # a discovery failure is the latest error; once discovery is fine, the file's is back
    assert not await plane.update_discovered(Discovered(sources={"127.0.0.9": "ghost"}))
    assert "ghost" in plane.status()["last_error"]["message"]
    assert await plane.update_discovered(Discovered())
    assert "retires" in plane.status()["last_error"]["message"]
    write(env.mesh, GOOD.format(port=18001, timeout="6s"))
    await until(lambda: plane.last_error is None)


async def test_a_reload_changing_a_start_only_setting_warns_and_keeps_serving(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    good = GOOD.format(port=18001, timeout="5s")
    write(env.mesh, good)
    plane = await env.start()
    assert plane.status()["restart_required"] == []
    edited = good.replace("timeout: 5s", "timeout: 6s")
    write(env.mesh, edited.replace("name: shop", "name: shop\n  admin_port: 15401"))
    await until(lambda: len(env.recorder.applied) == 2)  # the rest of the edit applies
    assert plane.status()["restart_required"] == ["mesh.admin_port"]
    assert env.recorder.applied[-1].config.mesh.admin_port == 15000  # the started one
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("mesh.admin_port" in m and "restart" in m for m in warned)
    # only a start-only setting differs from what serves: nothing to apply
    write(env.mesh, edited.replace("name: shop", "name: shop\n  admin_port: 15402"))
    await until(lambda: plane.counters.unchanged == 1)
    assert plane.status()["restart_required"] == ["mesh.admin_port"]
    write(env.mesh, good)
    await until(lambda: plane.counters.applied == 3)
    assert plane.status()["restart_required"] == []
