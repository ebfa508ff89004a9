"""The data plane: per-service listeners and the HTTP/TCP proxy engine behind them.

``DataPlane`` is the whole API the control plane uses (``apply``, ``addresses``,
``clusters``, ``close``) plus the seam the ingress gateway plugs into (``serve_http``,
``http_protocol_factory``). Decisions live in ``core/`` (sans-IO); the modules here move
bytes: ``http`` (downstream connections and exchanges), ``upstream`` (clusters, pools,
response parsing), ``tcp`` (the L4 relay), ``listeners`` (sockets, intercept),
``compiled`` (a snapshot prepared for serving), ``plane`` (apply/swap/drain, the sweeper).
"""

from localmesh.runtime.dataplane.compiled import CompiledSnapshot, HostRouter, RouteSource
from localmesh.runtime.dataplane.context import DownstreamIdentity, IdentifyHook
from localmesh.runtime.dataplane.core.policy import Caller
from localmesh.runtime.dataplane.plane import DataPlane, UpstreamFailureHook
from localmesh.runtime.dataplane.upstream import UpstreamTLS

__all__ = [
    "Caller",
    "CompiledSnapshot",
    "DataPlane",
    "DownstreamIdentity",
    "HostRouter",
    "IdentifyHook",
    "RouteSource",
    "UpstreamFailureHook",
    "UpstreamTLS",
]
