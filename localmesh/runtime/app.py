"""The one runtime process (``localmesh run``): control plane + data plane + admin API.

Host mode serves one mesh.yaml with static endpoints. Container mode (``--plan``, inside
the mesh container ``localmesh up`` adds) first takes over the plan's VIPs
(``runtime/container.py``), then discovers endpoints and callers through Docker's DNS,
every few seconds and at once when the data plane reports a failed upstream.

Start order: load the inputs (or the persisted last good ones) → build metrics and the
access log from the mesh settings → bind the admin API (``/readyz`` says "not ready" until
listeners are up) → the control plane applies the first snapshot to the data plane →
background tasks: file watch, access-log flush, traffic sampling.

Stop order (uvicorn's): refuse readiness, stop the file watch, let the data plane stop
accepting and drain in-flight requests for ``drain_timeout`` (then close what is left; a
reload drains the listeners it replaces for as long), flush the access log, close the
admin API last so ``/readyz`` reports the drain.
SIGTERM/SIGINT stop, a second one skips the drain; SIGHUP reloads mesh.yaml now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

from localmesh.ca.containers import MountedCertificates, keep_identity_files
from localmesh.compose.rewrite import CONTAINER_CERTS
from localmesh.errors import RuntimeStartError
from localmesh.runtime.container import INTERCEPT_PORT, DnsDiscovery, load_plan, setup_network
from localmesh.runtime.controlplane.admin import AdminApi
from localmesh.runtime.controlplane.compile import parse_listen
from localmesh.runtime.controlplane.events import EventBus
from localmesh.runtime.controlplane.lastgood import LastGoodStore
from localmesh.runtime.controlplane.plane import ControlPlane, Source, load_initial
from localmesh.runtime.controlplane.sources import ContainerSource, MeshFileSource
from localmesh.runtime.snapshot import Snapshot
from localmesh.runtime.telemetry import AccessLog, MeshMetrics

log = logging.getLogger("localmesh.runtime")


class DataPlane(Protocol):
    """What the runtime needs from ``localmesh.runtime.dataplane.DataPlane``."""

    async def apply(self, snapshot: Snapshot) -> None: ...

    def addresses(self) -> dict[str, tuple[str, int]]: ...

    def clusters(self) -> list[dict[str, Any]]: ...

    async def close(self, drain_timeout: float) -> None: ...


#: Told the service whose upstream failed (connect refused, reset), rate-limited.
UpstreamFailureHook = Callable[[str], None]
#: (metrics, access log, upstream failure hook, drain timeout) -> the data plane
DataPlaneFactory = Callable[[MeshMetrics, AccessLog, UpstreamFailureHook | None, float], DataPlane]


def default_dataplane(
    metrics: MeshMetrics,
    access_log: AccessLog,
    on_upstream_failure: UpstreamFailureHook | None,
    drain_timeout: float,
) -> DataPlane:
    """The real data plane inside the ingress gateway, which mirrors its API and adds the
    edge listeners; imported here so CLI commands that only talk to the admin API do not
    load the hot path (uvloop, httptools)."""
    from localmesh.runtime.ingress.gateway import IngressGateway

    return IngressGateway(
        metrics,
        access_log,
        on_upstream_failure=on_upstream_failure,
        drain_timeout=drain_timeout,
    )


CONTAINER_STATE_DIR = Path("/var/lib/localmesh")


@dataclass(frozen=True, slots=True)
class RunOptions:
    """``localmesh run``'s flags. Host mode: ``mesh``. Container mode: ``plan`` (and
    ``project``, default beside it; ``mesh`` optional: inferred from the project)."""

    mesh: Path | None
    state_dir: Path | None = None  # default: .localmesh/ beside mesh.yaml
    admin: str | None = None  # "host:port"; default: mesh.admin_bind:admin_port
    access_log: str = "-"  # "-" stdout, "off" (ring buffer only), or a file (appended)
    drain_timeout: float = 5.0
    poll_interval: float = 0.25
    plan: Path | None = None  # container mode when set
    project: Path | None = None
    mesh_host_path: str | None = None  # container mode: mesh.yaml as the user knows it

    @property
    def container(self) -> bool:
        return self.plan is not None

    @property
    def resolved_state_dir(self) -> Path:
        if self.state_dir is not None:
            return self.state_dir
        if self.container or self.mesh is None:
            return CONTAINER_STATE_DIR
        return self.mesh.absolute().parent / ".localmesh"

    def source(self) -> Source:
        if self.plan is not None:
            project = self.project or self.plan.parent / "project.json"
            return ContainerSource(
                self.plan, project, self.mesh, INTERCEPT_PORT, self.mesh_host_path
            )
        if self.mesh is None:
            raise RuntimeStartError("host mode needs --mesh PATH", hint="or pass --plan")
        return MeshFileSource(self.mesh)


class Runtime:
    def __init__(
        self,
        options: RunOptions,
        *,
        dataplane_factory: DataPlaneFactory = default_dataplane,
        source: Source | None = None,
        discovery: DnsDiscovery | None = None,
    ) -> None:
        """``discovery`` replaces the one container mode makes from the plan (tests)."""
        self.options = options
        self.source = source or options.source()
        self.events = EventBus()
        self.store = LastGoodStore(options.resolved_state_dir)
        self._dataplane_factory = dataplane_factory
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._sink: TextIO | None = None
        self.discovery = discovery
        self.metrics: MeshMetrics | None = None
        self.access_log: AccessLog | None = None
        self.dataplane: DataPlane | None = None
        self.plane: ControlPlane | None = None
        self.admin: AdminApi | None = None

    async def start(self) -> None:
        """Bring everything up; on failure, undo what was started and re-raise."""
        initial = await load_initial(self.source, self.store)
        settings = initial.inputs.config.mesh
        self.metrics = MeshMetrics(settings.name, settings.trust_domain)
        # "--access-log off" silences the output only: `localmesh logs` still has records;
        # mesh.access_log is each snapshot's (compiled.access_log), so a reload can turn it on
        self.access_log = AccessLog(self._open_sink())
        plan = load_plan(self.options.plan) if self.options.plan is not None else None
        if plan is not None:
            # VIPs before listeners: the data plane binds VIP:port
            await asyncio.to_thread(setup_network, plan, INTERCEPT_PORT)
            self.discovery = self.discovery or DnsDiscovery(plan)
        # a failed upstream may have moved (restarted, rescheduled): look again now
        on_failure = self.discovery.trigger if self.discovery is not None else None
        self.dataplane = self._dataplane_factory(
            self.metrics, self.access_log, on_failure, self.options.drain_timeout
        )
        default_admin = (
            f"0.0.0.0:{plan.published.admin}"  # published on the host's 127.0.0.1 by compose
            if plan is not None
            else f"{settings.admin_bind}:{settings.admin_port}"
        )
        admin_text = self.options.admin or default_admin
        try:
            admin_host, admin_port = parse_listen(admin_text)
        except ValueError as exc:
            raise RuntimeStartError(
                f"--admin: {exc}", hint="e.g. --admin 127.0.0.1:15000"
            ) from None
        self.plane = ControlPlane(
            self.source,
            self.dataplane.apply,
            store=self.store,
            metrics=self.metrics,
            events=self.events,
            reserved=[(admin_host, admin_port)] if admin_port else [],
            poll_interval=self.options.poll_interval,
        )
        self.admin = AdminApi(
            self.plane, self.dataplane, self.metrics, self.access_log, discovery=self.discovery
        )
        try:
            await self.admin.start(admin_host, admin_port)
            if self.discovery is not None:
                self.plane.discovered = await self.discovery.resolve_once()
            await self.plane.start(initial)
        except BaseException:
            await self._teardown(drain_timeout=0)
            raise
        self._spawn(self.plane.watch_forever(), "watch")
        if self.discovery is not None:
            self._spawn(self.discovery.run(self.plane.update_discovered), "discovery")
        self._spawn(self.access_log.run(), "access-log")
        self._spawn(self.admin.sampler.run(), "sampler")
        if plan is not None:
            apps = [c.service for c in plan.clients]
            files = keep_identity_files(
                MountedCertificates(Path(CONTAINER_CERTS)),
                settings.trust_domain,
                apps,
                settings.workload_cert_lifetime,
            )
            self._spawn(files.run(), "identity-files")

    def _open_sink(self) -> TextIO | None:
        target = self.options.access_log
        if target == "off":
            return None
        if target == "-":
            self._sink = sys.stdout
        else:
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._sink = path.open("a", encoding="utf-8")
        return self._sink

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=f"localmesh-{name}")
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("background task %s failed: %r; stopping", task.get_name(), exc)
            self._stop.set()

    def request_stop(self) -> None:
        """First call: graceful stop. Second call: skip the drain."""
        if self._stop.is_set():
            self._force.set()
        self._stop.set()

    def request_reload(self) -> None:
        if self.plane is not None:
            self._spawn(self._reload("SIGHUP"), "reload")

    async def _reload(self, trigger: str) -> None:
        assert self.plane is not None
        await self.plane.reload(trigger)

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """Drain and close; the log says when the drain starts and ends (an operator who
        sent SIGTERM sees the runtime is waiting on in-flight requests, not stuck)."""
        timeout = self.options.drain_timeout
        log.info(
            "stopping: draining in-flight requests for up to %gs (a second signal skips the wait)",
            timeout,
        )
        self.events.emit("stopping", drain_timeout=timeout)
        started = time.monotonic()
        drain = asyncio.ensure_future(self._teardown(timeout))
        force = asyncio.ensure_future(self._force.wait())
        await asyncio.wait({drain, force}, return_when=asyncio.FIRST_COMPLETED)
        if not drain.done():
            log.warning("second signal: closing without waiting for in-flight requests")
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
            if self.dataplane is not None:
                await self.dataplane.close(0)
        else:
            log.info("stopped after a %.1fs drain", time.monotonic() - started)
        force.cancel()

    async def _teardown(self, drain_timeout: float) -> None:
        if self.admin is not None:
            self.admin.draining = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.dataplane is not None:
            await self.dataplane.close(drain_timeout)
        if self.access_log is not None:
            self.access_log.flush()
        self.events.close()
        if self.admin is not None:
            await self.admin.stop()
        if self._sink is not None and self._sink is not sys.stdout:
            self._sink.close()

    def banner(self) -> list[str]:
        """What ``localmesh run`` prints once serving: where things are."""
        assert self.admin is not None
        assert self.plane is not None
        assert self.dataplane is not None
        lines = [f"admin API   http://{_fmt(self.admin.address)}"]
        snapshot = self.plane.snapshot
        bound = self.dataplane.addresses()
        if snapshot is not None:
            for lst in snapshot.listeners:
                lines.append(
                    f"listener    {lst.name:<24} {lst.protocol!s:<9} {_fmt(bound.get(lst.name))}"
                )
        if self.plane.serving_persisted:
            lines.append("WARNING     serving the persisted last good config: mesh.yaml is invalid")
        return lines


def _fmt(addr: tuple[str, int] | None) -> str:
    return "-" if addr is None else f"{addr[0]}:{addr[1]}"


async def serve(runtime: Runtime, ready: Callable[[Runtime], None] | None = None) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP reloads. Signals are handled on the loop."""
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig, handler in (
        (signal.SIGTERM, runtime.request_stop),
        (signal.SIGINT, runtime.request_stop),
        (signal.SIGHUP, runtime.request_reload),
    ):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, handler)
            handled.append(sig)
    try:
        await runtime.start()
        if ready is not None:
            ready(runtime)
        await runtime.wait()
        await runtime.stop()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


def run(options: RunOptions, ready: Callable[[Runtime], None] | None = None) -> None:
    """The blocking entry point: uvloop when available (the hot path is 3-5x faster)."""
    runtime = Runtime(options)
    factory = _loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(runtime, ready))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
