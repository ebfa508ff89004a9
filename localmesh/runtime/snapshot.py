"""The compiled, versioned config snapshot: the only thing the data plane reads.

The control plane compiles mesh.yaml + the compose project + discovered endpoints into a
``Snapshot`` and publishes it atomically (see go-control-plane's ``Snapshot``:
versioned, checked for consistency before it is published). The data plane reads the
current snapshot once per accepted connection / request and precompiles whatever it needs
from it (route tables, regexes, metric label children) once per snapshot version.

Words: a **listener** is a bound socket that serves one destination service on one port;
its **cluster** is that service's set of **endpoints** (host:port of real instances).
The **downstream** is the caller, the **upstream** the endpoint we forward to.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from localmesh.config.model import MeshConfig, Protocol


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One upstream instance of a cluster."""

    host: str
    port: int
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    """A socket to bind and what it serves.

    ``port`` is the destination service's port (selects the cluster endpoints' port);
    ``bind_host:bind_port`` is where we listen: the service's VIP and its own port in
    container mode, a chosen loopback port in host mode (``bind_port`` 0 = pick one).
    ``source`` pins the caller identity (host mode: one listener per caller emulates its
    sidecar); otherwise the caller is found by source IP in ``Snapshot.sources``.
    ``intercept`` marks the catch-all listener that receives redirected traffic for VIPs
    with unknown ports; it reads the original destination with ``SO_ORIGINAL_DST``.
    """

    name: str
    service: str
    port: int
    protocol: Protocol
    bind_host: str
    bind_port: int
    source: str | None = None
    intercept: bool = False


K = TypeVar("K")
V = TypeVar("V")


def _frozen_map(m: Mapping[K, V] | None) -> Mapping[K, V]:
    return MappingProxyType(dict(m or {}))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One consistent view of the mesh. Never mutated; a change is a new snapshot.

    Its content hash is ``controlplane.codec.content_hash``: canonical JSON, stable
    across processes (a ``repr()`` of frozensets is not) and blind to source positions.
    """

    config: MeshConfig
    listeners: tuple[ListenerSpec, ...]
    endpoints: Mapping[str, tuple[Endpoint, ...]]  # cluster (service) name -> endpoints
    sources: Mapping[str, str] = field(default_factory=dict)  # caller IP -> service name
    vips: Mapping[str, str] = field(default_factory=dict)  # VIP -> service name (intercept)
    version: int = 0
    created: float = field(default_factory=time.time)
    origin: str = ""  # what produced it: "mesh.yaml", "persisted", "test"

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoints", _frozen_map(self.endpoints))
        object.__setattr__(self, "sources", _frozen_map(self.sources))
        object.__setattr__(self, "vips", _frozen_map(self.vips))
