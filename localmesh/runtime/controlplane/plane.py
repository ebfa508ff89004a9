"""The control plane: load, compile, publish, watch, and keep the last known good.

Life of a config change::

    mesh.yaml edited ─▶ FileWatch sees new content (polled, settled)
        ─▶ source.load()          ConfigError ─┐
        ─▶ compile_snapshot()     ConfigError ─┤  rejected: logged with file:line,
        ─▶ apply(snapshot)  RuntimeStartError ─┘  kept in status/events, metric++;
        ─▶ active: persisted as last good, event "snapshot"   traffic stays on the old one

Any other exception from load, compile or apply is a bug, but still only a rejected
reload (logged with its traceback): the watch and discovery never die of it, and the old
snapshot serves.

The data plane's ``apply`` swaps atomically or raises and keeps its old state, so at every
moment exactly one snapshot serves, and a failure anywhere above leaves it in place. A bug
may break that promise half-way through a commit, so after an unexpected exception the
active snapshot is applied again.

At start, a mesh.yaml that does not load or compile (for any reason) falls back to the
inputs persisted by the last run (``LastGoodStore``): the runtime serves them, says so in
``/status`` and the log, and applies the file as soon as an edit makes it valid again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from localmesh.config.model import MeshConfig, MeshSettings
from localmesh.errors import ConfigError, LocalmeshError, Problem, RuntimeStartError
from localmesh.runtime.controlplane.codec import content_hash
from localmesh.runtime.controlplane.compile import Discovered, Inputs, compile_snapshot
from localmesh.runtime.controlplane.events import EventBus
from localmesh.runtime.controlplane.lastgood import LastGoodStore, Persisted
from localmesh.runtime.controlplane.watch import FileWatch, Fingerprint, fingerprint, same_content
from localmesh.runtime.snapshot import Snapshot
from localmesh.runtime.telemetry import MeshMetrics

log = logging.getLogger("localmesh.controlplane")

_DISCOVERY = "discovery"  # the trigger of a discovery update

#: Mesh settings the runtime reads once at start (metrics labels, the admin API's socket,
#: the workload identities' trust domain); every snapshot keeps the start values of these
#: until a restart. The others (access_log, metrics, peer_auth, ...) apply on reload.
START_ONLY = ("name", "trust_domain", "admin_port", "admin_bind")

Apply = Callable[[Snapshot], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Loaded:
    """One successful load: the inputs and every file they were read from."""

    inputs: Inputs
    files: tuple[Path, ...]


class Source(Protocol):
    """Where inputs come from (host mode: one mesh.yaml; container mode adds compose)."""

    label: str

    def paths(self) -> tuple[Path, ...]:
        """Files to watch even when nothing could be loaded yet."""
        ...

    def load(self, *, reloading: bool = False) -> Loaded:
        """Read and validate the inputs; raise ``ConfigError`` (with positions) if bad.

        ``reloading``: an empty mesh.yaml is an error (an editor truncates a file before
        writing it), not an empty mesh; at start it still means what it says.
        """
        ...


def config_files(config: MeshConfig) -> set[Path]:
    """Every file a loaded config has positions in: mesh.yaml and the files it includes."""
    files: set[Path] = set()
    for svc in config.services:
        positions = [svc.position, *(r.position for r in svc.routes)]
        files.update(Path(p.file) for p in positions if p is not None)
    for host in config.ingress.hosts:
        positions = [host.position, *(r.position for r in host.routes)]
        files.update(Path(p.file) for p in positions if p is not None)
    files.update(Path(p.position.file) for p in config.policies if p.position is not None)
    return files


@dataclass(frozen=True, slots=True)
class Initial:
    """What the runtime starts from: freshly loaded inputs, or the persisted ones, or both
    (a fresh load that may still fail to compile falls back to the persisted inputs)."""

    loaded: Loaded | None
    error: LocalmeshError | None
    persisted: Persisted | None
    seen: dict[Path, Fingerprint]

    @property
    def inputs(self) -> Inputs:
        chosen = (
            self.loaded.inputs if self.loaded else self.persisted.inputs if self.persisted else None
        )
        assert chosen is not None
        return chosen


async def load_initial(source: Source, store: LastGoodStore | None) -> Initial:
    """Load the inputs once before anything starts (the runtime needs the mesh settings
    to build metrics and bind the admin API); raise the load's error if there is neither a
    valid config nor a persisted one."""
    persisted = store.load() if store else None
    seen = {p.absolute(): fingerprint(p) for p in source.paths()}
    try:
        loaded = await asyncio.to_thread(source.load)
    except Exception as exc:
        if persisted is None:
            raise
        return Initial(None, _as_rejection(exc, f"loading {source.label}"), persisted, seen)
    return Initial(loaded, None, persisted, seen)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why the latest attempt did not become active."""

    message: str
    problems: tuple[Problem, ...]
    at: float
    trigger: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "problems": [p.as_dict() for p in self.problems],
            "at": self.at,
            "trigger": self.trigger,
        }


@dataclass
class Counters:
    applied: int = 0
    rejected: int = 0
    unchanged: int = 0


@dataclass
class _Active:
    snapshot: Snapshot
    inputs: Inputs
    since: float
    from_persisted: bool
    persisted_created: float | None = None


class ControlPlane:
    def __init__(
        self,
        source: Source,
        apply: Apply,
        *,
        store: LastGoodStore | None,
        metrics: MeshMetrics,
        events: EventBus,
        reserved: Iterable[tuple[str, int]] = (),
        poll_interval: float = 0.25,
        settle: float = 0.05,
    ) -> None:
        self.source = source
        self._apply = apply
        self.store = store
        self.metrics = metrics
        self.events = events
        self.reserved = tuple(reserved)
        self.poll_interval = poll_interval
        self.settle = settle
        self.discovered = Discovered()
        self.counters = Counters()
        # the latest rejection of the files (load, compile, bind) and of discovery, apart:
        # a discovery update fixes only its own, the file stays as broken as it was
        self._errors: dict[str, Rejection] = {}
        self._start_settings: MeshSettings | None = None
        self.restart_required: tuple[str, ...] = ()  # START_ONLY settings edited since
        self.started = time.time()
        self._active: _Active | None = None
        self._watch = FileWatch()
        self._lock = asyncio.Lock()

    # -- state --------------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot | None:
        return self._active.snapshot if self._active else None

    @property
    def last_error(self) -> Rejection | None:
        """The most recent rejection still unresolved."""
        return max(self._errors.values(), key=lambda r: r.at, default=None)

    @property
    def serving_persisted(self) -> bool:
        return bool(self._active and self._active.from_persisted)

    @property
    def watched(self) -> tuple[Path, ...]:
        return self._watch.paths

    def status(self) -> dict[str, Any]:
        active = self._active
        snap = active.snapshot if active else None
        return {
            "source": self.source.label,
            "mode": "host" if active is None or active.inputs.host_mode else "container",
            "snapshot": None
            if snap is None or active is None
            else {
                "version": snap.version,
                "hash": content_hash(snap),
                "origin": snap.origin,
                "created": snap.created,
                "active_since": active.since,
            },
            "serving_persisted": self.serving_persisted,
            "persisted_created": active.persisted_created if active else None,
            "last_error": self.last_error.as_dict() if self.last_error else None,
            "restart_required": [f"mesh.{name}" for name in self.restart_required],
            "reloads": {
                "applied": self.counters.applied,
                "rejected": self.counters.rejected,
                "unchanged": self.counters.unchanged,
            },
            "watching": [str(p) for p in self.watched],
            "uptime": time.time() - self.started,
        }

    # -- start ----------------------------------------------------------------------------

    async def start(self, initial: Initial) -> Snapshot:
        """Serve the loaded config, or the persisted one when it is broken.

        Raises ``ConfigError`` when the config is broken and nothing was persisted, and
        ``RuntimeStartError`` when the data plane cannot bind.
        """
        self._start_settings = initial.inputs.config.mesh  # what the runtime was built with
        persisted = initial.persisted
        version = (persisted.version if persisted else 0) + 1
        seen = initial.seen
        error = initial.error
        if initial.loaded is not None:
            try:
                snapshot = self._compile(initial.loaded.inputs, version, self.source.label)
            except ConfigError as exc:
                if persisted is None:  # nothing stays active: not the reload's hint
                    raise ConfigError(exc.problems, "fix it and start again") from None
                error = exc
            except Exception as exc:
                if persisted is None:
                    raise
                error = _as_rejection(exc, f"loading {self.source.label}")
            else:
                await self._apply(snapshot)
                self._watch.reset([*seen, *initial.loaded.files], seen)
                self._activate(snapshot, initial.loaded.inputs, from_persisted=False)
                return snapshot
        assert error is not None
        assert persisted is not None
        self._reject(error, "start")
        self._watch.reset([*seen, *_problem_files(error)], seen)
        snapshot = self._compile(persisted.inputs, version, "persisted")
        await self._apply(snapshot)
        self._activate(snapshot, persisted.inputs, from_persisted=True)
        assert self._active is not None
        self._active.persisted_created = persisted.created
        log.warning(
            "%s is invalid; serving the last good configuration persisted at %s "
            "(version %d) until it is fixed",
            self.source.label,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(persisted.created)),
            persisted.version,
        )
        self.events.emit(
            "persisted",
            version=snapshot.version,
            persisted_version=persisted.version,
            persisted_created=persisted.created,
            error=str(error),
        )
        return snapshot

    # -- reload ---------------------------------------------------------------------------

    async def reload(self, trigger: str = "manual") -> bool:
        """Load, compile and apply the current files; False (and nothing changes) if bad."""
        async with self._lock:
            paths = {*self.watched, *(p.absolute() for p in self.source.paths())}
            seen = {p: fingerprint(p) for p in paths}
            try:
                loaded = await asyncio.to_thread(self.source.load, reloading=True)
                version = self._next_version()
                snapshot = self._compile(loaded.inputs, version, self.source.label)
            except Exception as exc:
                self._watch.reset([*paths, *_problem_files(exc)], seen)
                self._reject(_as_rejection(exc, f"loading {self.source.label}"), trigger)
                return False
            self._watch.reset([*(p.absolute() for p in self.source.paths()), *loaded.files], seen)
            published = await self._publish(snapshot, loaded.inputs, trigger)
            if published:
                self._check_start_only(loaded.inputs.config.mesh)
            return published

    async def update_discovered(self, discovered: Discovered) -> bool:
        """Recompile the active inputs with new endpoints/sources (scale up or down)."""
        async with self._lock:
            self.discovered = discovered
            if self._active is None:
                return False
            inputs = self._active.inputs
            try:
                snapshot = self._compile(inputs, self._next_version(), "discovery")
            except Exception as exc:
                self._reject(_as_rejection(exc, f"compiling the {_DISCOVERY} update"), _DISCOVERY)
                return False
            return await self._publish(snapshot, inputs, _DISCOVERY, from_discovery=True)

    async def watch_forever(self) -> None:
        """Poll the watched files; reload once a change has settled. Cancel to stop."""
        while True:
            await asyncio.sleep(self.poll_interval)
            changed = self._watch.changed()
            if not changed:
                continue
            before = {p: fingerprint(p) for p in changed}
            await asyncio.sleep(self.settle)
            if not same_content(before, {p: fingerprint(p) for p in changed}):
                continue  # still being written: look again next poll
            names = ", ".join(p.name for p in changed)
            await self.reload(f"changed: {names}")

    # -- internals ------------------------------------------------------------------------

    def _next_version(self) -> int:
        return (self._active.snapshot.version if self._active else 0) + 1

    def _compile(self, inputs: Inputs, version: int, origin: str) -> Snapshot:
        return compile_snapshot(
            self._pinned(inputs),
            self.discovered,
            version=version,
            origin=origin,
            reserved=self.reserved,
        )

    def _pinned(self, inputs: Inputs) -> Inputs:
        """``inputs`` with the start-only settings the runtime started with, so the data
        plane (caller identities, TLS origination), ``/config`` and the metrics' labels all
        use one trust domain and name: the one its workload certificates and, in the mesh
        container, its signer (name-constrained to that domain) were made for."""
        started = self._start_settings
        settings = inputs.config.mesh
        if started is None:
            return inputs
        pinned = dataclasses.replace(settings, **{n: getattr(started, n) for n in START_ONLY})
        if pinned == settings:
            return inputs
        return dataclasses.replace(inputs, config=dataclasses.replace(inputs.config, mesh=pinned))

    async def _publish(
        self, snapshot: Snapshot, inputs: Inputs, trigger: str, from_discovery: bool = False
    ) -> bool:
        """Apply ``snapshot`` unless it is the active one. A discovery update recompiles the
        active inputs: it keeps their persisted state and does not clear a file's error."""
        active = self._active
        if active is not None and content_hash(snapshot) == content_hash(active.snapshot):
            self.counters.unchanged += 1
            if not from_discovery and active.from_persisted:
                # fixed back to the persisted content: nothing to apply, but it now comes
                # from the file (status must not say "from persisted" any more)
                active.snapshot = dataclasses.replace(active.snapshot, origin=snapshot.origin)
                active.inputs = inputs
                active.from_persisted = False
                active.persisted_created = None
                log.info(
                    "%s is valid again, the same config as the persisted one: snapshot %d "
                    "now from %s",
                    self.source.label,
                    active.snapshot.version,
                    snapshot.origin,
                )
            self._succeeded(from_discovery)
            return True
        try:
            await self._apply(snapshot)
        except RuntimeStartError as exc:
            self._reject(exc, trigger)
            return False
        except Exception as exc:
            self._reject(_as_rejection(exc, f"applying snapshot {snapshot.version}"), trigger)
            await self._restore()
            return False
        from_persisted = from_discovery and active is not None and active.from_persisted
        self._activate(snapshot, inputs, from_persisted=from_persisted)
        self._succeeded(from_discovery)
        if from_persisted and active is not None:
            assert self._active is not None
            self._active.persisted_created = active.persisted_created
        return True

    async def _restore(self) -> None:
        """Apply the active snapshot again after a failed apply that was a bug: an apply
        raises before it commits, but a bug may have struck half-way through the commit."""
        if self._active is None:
            return
        try:
            await self._apply(self._active.snapshot)
        except Exception:
            log.exception("could not apply snapshot %d again", self._active.snapshot.version)

    def _activate(self, snapshot: Snapshot, inputs: Inputs, *, from_persisted: bool) -> None:
        self._active = _Active(snapshot, inputs, time.time(), from_persisted)
        self.counters.applied += 1
        self.metrics.config_reload(True, snapshot.version)
        if self.store is not None:
            try:
                self.store.save(
                    inputs,
                    version=snapshot.version,
                    hash=content_hash(snapshot),
                    created=snapshot.created,
                )
            except OSError as exc:
                log.error("could not persist the last good config to %s: %s", self.store.path, exc)
        log.info(
            "snapshot %d (%s) active from %s: %d listeners, %d clusters",
            snapshot.version,
            content_hash(snapshot),
            snapshot.origin,
            len(snapshot.listeners),
            len(snapshot.endpoints),
        )
        self.events.emit(
            "snapshot",
            version=snapshot.version,
            hash=content_hash(snapshot),
            origin=snapshot.origin,
            serving_persisted=from_persisted,
            endpoints={k: [e.address for e in v] for k, v in snapshot.endpoints.items()},
        )

    def _check_start_only(self, settings: MeshSettings) -> None:
        """Warn (log and status) when an applied reload changed a setting read at start:
        the rest of the edit serves, that part only after a restart."""
        started = self._start_settings
        assert started is not None
        changed = tuple(n for n in START_ONLY if getattr(settings, n) != getattr(started, n))
        for name in changed:
            if name not in self.restart_required:
                log.warning(
                    "mesh.%s changed from %r to %r: it is read only at start; the runtime "
                    "keeps %r until restarted (localmesh run again; container mode: "
                    "localmesh up)",
                    name,
                    getattr(started, name),
                    getattr(settings, name),
                    getattr(started, name),
                )
        self.restart_required = changed

    def _succeeded(self, from_discovery: bool) -> None:
        """Clear the errors this success answers: a reload compiles the files with the
        current discovery (both fine now); a discovery update only its own."""
        if from_discovery:
            self._errors.pop(_DISCOVERY, None)
        else:
            self._errors.clear()

    def _reject(self, exc: LocalmeshError, trigger: str) -> None:
        problems = tuple(_problems(exc))
        kind = _DISCOVERY if trigger == _DISCOVERY else "files"
        self._errors[kind] = Rejection(exc.message, problems, time.time(), trigger)
        self.counters.rejected += 1
        self.metrics.config_reload(False)
        current = self._active.snapshot.version if self._active else None
        keep = f"still serving version {current}" if current else "nothing active yet"
        for problem in problems or (Problem(exc.message, hint=exc.hint),):
            log.error("config rejected (%s; %s): %s", trigger, keep, problem)
        self.events.emit("rejected", trigger=trigger, active_version=current, **_error(exc))


def _problem_files(exc: BaseException) -> list[Path]:
    problems = exc.problems if isinstance(exc, ConfigError) else []
    return [Path(p.position.file).absolute() for p in problems if p.position is not None]


def _as_rejection(exc: Exception, doing: str) -> LocalmeshError:
    """A load, compile or apply failure as a rejection; a bug's traceback goes to the log."""
    if isinstance(exc, LocalmeshError):
        return exc
    log.error("unexpected error %s", doing, exc_info=exc)
    return LocalmeshError(
        f"unexpected error {doing}: {exc!r}",
        hint="a bug in localmesh (traceback in the log); the last good config keeps serving",
    )


def _problems(exc: LocalmeshError) -> list[Problem]:
    """A rejection's problems: a config error's, or a bind failure at its listen: line."""
    if isinstance(exc, ConfigError):
        return exc.problems
    if isinstance(exc, RuntimeStartError) and exc.position is not None:
        return [Problem(exc.message, exc.position, hint=exc.hint)]
    return []


def _error(exc: LocalmeshError) -> dict[str, Any]:
    return {"message": exc.message, "problems": [p.as_dict() for p in _problems(exc)]}
