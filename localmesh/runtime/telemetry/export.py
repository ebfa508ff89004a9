"""The prometheus-client side of ``MeshMetrics``: a collector that asks it at scrape.

Not compiled with the hot path (setup.py): a compiled class cannot safely subclass one the
compiler cannot see, and prometheus-client is not in the build environment (its instances
came out with a broken layout).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector


class MeshCollector(Collector):
    def __init__(self, collect: Callable[[], Iterator[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        return self._collect()
