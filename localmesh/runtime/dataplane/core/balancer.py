"""Load balancers: pick one available endpoint of a cluster (or of one of its subsets).

- ``round_robin``: in turn over the available endpoints
- ``random``: uniform
- ``least_request``: power of two choices: the less busy of two random endpoints
  (Envoy's default for ``LEAST_REQUEST``; it avoids herding on one idle endpoint)
- ``consistent_hash``: a ring of 100 points per endpoint over *all* members, walked to the
  first available one, so an ejection moves only that endpoint's keys. A request without
  a hash key (missing header or cookie) falls back to random, like Envoy.

A ``Picker`` caches its subset's available members and its ring, keyed by the cluster's
``version``, so a pick is a few attribute reads and one index.
"""

from __future__ import annotations

import hashlib
import random
from bisect import bisect_left
from collections.abc import Sequence
from typing import Final

from localmesh.config.model import HashOn, LbPolicy, LoadBalancer
from localmesh.runtime.dataplane.core.cluster import ClusterState, EndpointState, subset_members

RING_POINTS: Final = 100
# The policies as compiled constants: ``LbPolicy.X`` is a module-dict lookup and an
# attribute read per pick in compiled code (config.model is not compiled).
_ROUND_ROBIN: Final = LbPolicy.ROUND_ROBIN
_LEAST_REQUEST: Final = LbPolicy.LEAST_REQUEST
_CONSISTENT_HASH: Final = LbPolicy.CONSISTENT_HASH


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class Picker:
    """Endpoint selection for one destination: a cluster, an optional subset, a policy."""

    __slots__ = (
        "_next",
        "_pool",
        "_pool_version",
        "_ring",
        "_ring_hosts",
        "_ring_version",
        "_rng",
        "cluster",
        "labels",
        "policy",
    )

    def __init__(
        self,
        cluster: ClusterState,
        lb: LoadBalancer,
        labels: tuple[tuple[str, str], ...] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.cluster = cluster
        self.labels = labels
        self.policy = lb.policy
        self._rng = rng or random.Random()
        self._next = 0
        self._pool: list[EndpointState] = []
        self._pool_version = -1
        self._ring: list[int] = []
        self._ring_hosts: list[EndpointState] = []
        self._ring_version = -1

    def candidates(self, now: float) -> list[EndpointState]:
        """Available endpoints of this destination."""
        available = self.cluster.available(now)
        if self.labels is None:
            return available
        if self._pool_version != self.cluster.version:
            self._pool = subset_members(available, self.labels)
            self._pool_version = self.cluster.version
        return self._pool

    def pick(self, now: float, hash_key: bytes | None = None) -> EndpointState | None:
        pool = self.candidates(now)
        n = len(pool)
        if n == 0:
            return None
        policy = self.policy
        if n == 1 and policy is not _CONSISTENT_HASH:
            return pool[0]
        if policy is _ROUND_ROBIN:
            self._next = (self._next + 1) % n
            return pool[self._next]
        if policy is _LEAST_REQUEST:
            a = pool[self._rng.randrange(n)]
            b = pool[self._rng.randrange(n)]
            return b if b.active_requests < a.active_requests else a
        if policy is _CONSISTENT_HASH and hash_key is not None:
            return self._ring_pick(hash_key, now)
        return pool[self._rng.randrange(n)]

    def _ring_pick(self, key: bytes, now: float) -> EndpointState | None:
        if self._ring_version != self.cluster.version:
            self._build_ring()
        ring, hosts = self._ring, self._ring_hosts
        if not ring:
            return None
        start = bisect_left(ring, _hash64(key)) % len(ring)
        panic = self.cluster.panic  # current: pick() asked for candidates first
        for i in range(len(ring)):
            host = hosts[(start + i) % len(ring)]
            if panic or (host.healthy and not host.ejected(now)):
                return host
        return None

    def _build_ring(self) -> None:
        members = self.cluster.endpoints
        if self.labels is not None:
            members = subset_members(members, self.labels)
        points = sorted(
            (_hash64(f"{host.address}#{i}".encode()), idx)
            for idx, host in enumerate(members)
            for i in range(RING_POINTS)
        )
        self._ring = [p for p, _ in points]
        self._ring_hosts = [members[idx] for _, idx in points]
        self._ring_version = self.cluster.version


def hash_key(
    lb: LoadBalancer, headers: Sequence[tuple[bytes, bytes]], peer_ip: str
) -> bytes | None:
    """The consistent-hash key of a request: a header, a cookie, or the caller's IP."""
    if lb.hash_on is HashOn.SOURCE_IP:
        return peer_ip.encode()
    if lb.hash_key is None:
        return None
    name = lb.hash_key.lower().encode()
    if lb.hash_on is HashOn.HEADER:
        for key, value in headers:
            if key == name:
                return value
        return None
    if lb.hash_on is HashOn.COOKIE:
        for key, value in headers:
            if key != b"cookie":
                continue
            for part in value.split(b";"):
                cname, sep, cvalue = part.strip().partition(b"=")
                if sep and cname == lb.hash_key.encode():
                    return cvalue
    return None
