"""Per-service traffic numbers for ``/status`` and ``localmesh status``, from our own metrics.

Pure: the admin API samples the metrics registry once a second (``read_counts``) and keeps
a short ring of samples; ``rates`` turns the oldest and newest sample into req/s, error
rate and p99 over that window, the way Prometheus' ``rate()`` and ``histogram_quantile()``
would over the same series. Only ``reporter="destination"`` series are read, so each
request counts once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import Metric


@dataclass
class Counts:
    """Cumulative counts of one destination service at one instant."""

    requests: float = 0.0
    errors: float = 0.0  # 5xx responses
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    connections: float = 0.0  # TCP connections opened
    bytes: float = 0.0  # TCP bytes both ways


@dataclass(frozen=True, slots=True)
class Sample:
    time: float
    services: Mapping[str, Counts]


@dataclass(frozen=True, slots=True)
class Rates:
    requests_per_second: float
    error_rate: float | None  # share of 5xx among requests in the window; None if none
    p99_ms: float | None
    connections_per_second: float
    bytes_per_second: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests_per_second": self.requests_per_second,
            "error_rate": self.error_rate,
            "p99_ms": self.p99_ms,
            "connections_per_second": self.connections_per_second,
            "bytes_per_second": self.bytes_per_second,
        }


def read_counts(families: Iterable[Metric]) -> dict[str, Counts]:
    """Destination-side counts per ``destination_service_name`` from collected families."""
    out: dict[str, Counts] = {}
    for family in families:
        for sample in family.samples:
            labels = sample.labels
            if labels.get("reporter") != "destination":
                continue
            name = labels.get("destination_service_name")
            if name is None:
                continue
            counts = out.setdefault(name, Counts())
            if sample.name == "istio_requests_total":
                counts.requests += sample.value
                if labels.get("response_code", "").startswith("5"):
                    counts.errors += sample.value
            elif sample.name == "istio_request_duration_milliseconds_bucket":
                le = float(labels["le"])
                counts.buckets[le] = counts.buckets.get(le, 0.0) + sample.value
            elif sample.name == "istio_tcp_connections_opened_total":
                counts.connections += sample.value
            elif sample.name in ("istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total"):
                counts.bytes += sample.value
    return out


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' estimate: linear interpolation inside the bucket holding rank q·total."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # Prometheus returns the highest finite bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def rates(old: Sample, new: Sample) -> dict[str, Rates]:
    """Per-service rates between two samples (counters only grow; a reset reads as 0)."""
    span = max(new.time - old.time, 1e-9)
    out: dict[str, Rates] = {}
    for name, now in new.services.items():
        before = old.services.get(name, Counts())
        requests = max(now.requests - before.requests, 0.0)
        errors = max(now.errors - before.errors, 0.0)
        delta = {le: max(c - before.buckets.get(le, 0.0), 0.0) for le, c in now.buckets.items()}
        out[name] = Rates(
            requests_per_second=requests / span,
            error_rate=errors / requests if requests else None,
            p99_ms=histogram_quantile(0.99, delta) if requests else None,
            connections_per_second=max(now.connections - before.connections, 0.0) / span,
            bytes_per_second=max(now.bytes - before.bytes, 0.0) / span,
        )
    return out
