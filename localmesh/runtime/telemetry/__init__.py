"""Telemetry: Istio-named Prometheus metrics and the JSON access log.

The hot path only increments plain ints on objects resolved once per snapshot
(``HttpEdge``, ``TcpEdge``); a custom collector turns them into metric families
when ``/metrics`` is scraped. That keeps per-request cost to a few attribute
updates instead of prometheus-client's locked children.
"""

from localmesh.runtime.telemetry.accesslog import AccessLog
from localmesh.runtime.telemetry.metrics import HttpEdge, MeshMetrics, TcpEdge

__all__ = ["AccessLog", "HttpEdge", "MeshMetrics", "TcpEdge"]
