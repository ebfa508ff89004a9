"""File watching, the last-good store and the event bus, on real files and a real loop."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from localmesh.compose.project import ComposeProject
from localmesh.runtime.controlplane.compile import Inputs
from localmesh.runtime.controlplane.events import EventBus
from localmesh.runtime.controlplane.lastgood import LastGoodStore
from localmesh.runtime.controlplane.watch import FileWatch, fingerprint
from tests.unit.controlplane.fixtures import rich_config


def test_watch_reports_content_changes_not_touches(tmp_path: Path) -> None:
    f = tmp_path / "mesh.yaml"
    f.write_text("a: 1\n")
    watch = FileWatch()
    watch.reset([f], {})
    assert watch.changed() == []
    os.utime(f, ns=(1, 1))  # touched: stat differs, bytes do not
    assert watch.changed() == []
    f.write_text("a: 2\n")
    assert watch.changed() == [f]
    assert watch.changed() == [f]  # still unseen until reset
    watch.reset([f], {f: fingerprint(f)})
    assert watch.changed() == []


def test_watch_sees_deletion_and_creation(tmp_path: Path) -> None:
    f = tmp_path / "inc.yaml"
    watch = FileWatch()
    watch.reset([f], {})  # missing now
    assert watch.changed() == []
    f.write_text("x")
    assert watch.changed() == [f]
    watch.reset([f], {f: fingerprint(f)})
    f.unlink()
    assert watch.changed() == [f]


def test_fingerprints_taken_before_a_load_catch_edits_made_during_it(tmp_path: Path) -> None:
    f = tmp_path / "mesh.yaml"
    f.write_text("v1")
    before = {f: fingerprint(f)}
    f.write_text("v2")  # an edit lands while the load (of v1) runs
    watch = FileWatch()
    watch.reset([f], before)
    assert watch.changed() == [f]


def test_store_round_trip_is_private_and_atomic(tmp_path: Path) -> None:
    store = LastGoodStore(tmp_path / "state")
    assert store.load() is None
    project = ComposeProject(
        "shop", tmp_path, (tmp_path / "compose.yaml",), {"services": {"a": {}}}
    )
    inputs = Inputs(rich_config(), project, vips={"api": "10.240.0.10"})
    store.save(inputs, version=4, hash="abc", created=123.0)
    mode = stat.S_IMODE(store.path.stat().st_mode)
    assert mode == 0o600
    assert [p.name for p in store.state_dir.iterdir()] == ["last-good.json"]
    got = store.load()
    assert got is not None
    assert got.inputs.config == rich_config()
    assert got.inputs.project is not None
    assert got.inputs.project.model == {"services": {"a": {}}}
    assert got.inputs.vips == {"api": "10.240.0.10"}
    assert (got.version, got.hash, got.created, got.source) == (4, "abc", 123.0, "/p/mesh.yaml")


def test_store_treats_a_damaged_file_as_absent(tmp_path: Path) -> None:
    store = LastGoodStore(tmp_path)
    for text in ("{not json", '{"format": 99}', '{"format": 1, "version": 1}', "[]"):
        store.path.write_text(text)
        assert store.load() is None


async def test_event_bus_delivers_history_then_live_events() -> None:
    bus = EventBus(history=3)
    for i in range(5):
        bus.emit("tick", n=i)
    assert [e.data["n"] for e in bus.recent()] == [2, 3, 4]
    subscription = bus.subscribe(after=3)
    bus.emit("tick", n=5)
    bus.close()
    assert [e.data["n"] async for e in subscription] == [3, 4, 5]  # ids 4, 5, 6


async def test_next_survives_cancellation_for_keepalives() -> None:
    bus = EventBus()
    subscription = bus.subscribe()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(subscription.next(), 0.01)
    bus.emit("late")
    event = await asyncio.wait_for(subscription.next(), 1)
    assert event is not None
    assert event.type == "late"
    subscription.close()
    bus.emit("unseen")
    assert bus._queues == set()


async def test_a_slow_subscriber_loses_its_oldest_events_only() -> None:
    bus = EventBus(queue_size=2)
    subscription = bus.subscribe()
    for i in range(4):
        bus.emit("e", n=i)
    bus.close()  # the close marker also displaces the oldest queued event
    assert [e.data["n"] async for e in subscription] == [3]
