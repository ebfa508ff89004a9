"""Load-balancer picks over cluster state."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from localmesh.config.model import ConnectionPool, LbPolicy, LoadBalancer, OutlierDetection
from localmesh.runtime.dataplane.core.balancer import Picker
from localmesh.runtime.dataplane.core.cluster import ClusterState, EndpointState

pytestmark = pytest.mark.unit


def make(
    n: int, labels: list[tuple[tuple[str, str], ...]] | None = None, panic_below: float = 0.0
) -> ClusterState:
    od = OutlierDetection(
        consecutive_5xx=1, max_ejection_percent=100, min_health_percent=panic_below
    )
    c = ClusterState("api", ConnectionPool(), od)
    c.set_endpoints(
        EndpointState("10.0.0.1", 9000 + i, labels[i] if labels else ()) for i in range(n)
    )
    return c


def test_round_robin_visits_each_in_turn() -> None:
    c = make(3)
    p = Picker(c, LoadBalancer(LbPolicy.ROUND_ROBIN))
    picks = [p.pick(0.0) for _ in range(6)]
    assert Counter(e.address for e in picks if e) == {e.address: 2 for e in c.endpoints}


def test_least_request_prefers_idle_endpoints() -> None:
    c = make(4)
    for ep in c.endpoints[1:]:
        ep.active_requests = 10
    p = Picker(c, LoadBalancer(LbPolicy.LEAST_REQUEST), rng=random.Random(1))
    picks = Counter(p.pick(0.0) for _ in range(4000))
    # p2c: the idle one wins whenever it is one of the two draws: 1 - (3/4)^2 = 7/16
    assert 0.38 < picks[c.endpoints[0]] / 4000 < 0.5


def test_random_spreads() -> None:
    c = make(2)
    p = Picker(c, LoadBalancer(LbPolicy.RANDOM), rng=random.Random(2))
    picks = Counter(p.pick(0.0) for _ in range(2000))
    assert all(800 < n < 1200 for n in picks.values())


def test_consistent_hash_is_sticky_and_moves_only_ejected_keys() -> None:
    c = make(5)
    p = Picker(c, LoadBalancer(LbPolicy.CONSISTENT_HASH, hash_key="x-user"))
    keys = [f"user-{i}".encode() for i in range(500)]
    before = {k: p.pick(0.0, k) for k in keys}
    assert {k: p.pick(0.0, k) for k in keys} == before
    assert len(set(before.values())) == 5
    victim = c.endpoints[2]
    c.report_failure(victim, now=0.0)
    after = {k: p.pick(1.0, k) for k in keys}
    moved = [k for k in keys if after[k] is not before[k]]
    assert moved
    assert all(before[k] is victim for k in moved)
    assert victim not in after.values()
    # without a key: random among available
    assert p.pick(1.0, None) in c.available(1.0)


def test_subsets_and_no_healthy_endpoint() -> None:
    v1, v2 = (("version", "v1"),), (("version", "v2"),)
    c = make(3, [v1, v2, v2])
    p = Picker(c, LoadBalancer(), labels=v2)
    assert {p.pick(0.0) for _ in range(10)} == set(c.endpoints[1:])
    for ep in c.endpoints[1:]:
        c.report_failure(ep, now=0.0)
    assert p.pick(0.5) is None
    assert Picker(c, LoadBalancer(), labels=v1).pick(0.5) is c.endpoints[0]


def test_a_panicking_cluster_balances_over_every_endpoint() -> None:
    """Below min_health_percent available, ejected endpoints get traffic again (Envoy's
    panic threshold), by every policy, consistent hashing included."""
    c = make(4, panic_below=50.0)
    c.report_failure(c.endpoints[0], now=0.0)
    assert c.describe(0.5)["panic"] is False  # 3 of 4 available
    rr = Picker(c, LoadBalancer(LbPolicy.ROUND_ROBIN))
    assert {rr.pick(0.5) for _ in range(8)} == set(c.endpoints[1:])
    for ep in c.endpoints[1:3]:
        c.report_failure(ep, now=0.5)
    assert {rr.pick(1.0) for _ in range(8)} == set(c.endpoints)  # 1 of 4: below 50%
    assert c.describe(1.0)["panic"] is True
    ring = Picker(c, LoadBalancer(LbPolicy.CONSISTENT_HASH, hash_key="x-user"))
    keys = [f"user-{i}".encode() for i in range(50)]
    assert len({ring.pick(1.0, k) for k in keys}) == 4


def test_hash_keys() -> None:
    from localmesh.config.model import HashOn
    from localmesh.runtime.dataplane.core.balancer import hash_key

    headers = [(b"x-user", b"alice"), (b"cookie", b"a=1; session=abc; z=2")]
    header = LoadBalancer(LbPolicy.CONSISTENT_HASH, HashOn.HEADER, "X-User")
    cookie = LoadBalancer(LbPolicy.CONSISTENT_HASH, HashOn.COOKIE, "session")
    source = LoadBalancer(LbPolicy.CONSISTENT_HASH, HashOn.SOURCE_IP)
    assert hash_key(header, headers, "10.0.0.7") == b"alice"
    assert hash_key(cookie, headers, "10.0.0.7") == b"abc"
    assert hash_key(source, headers, "10.0.0.7") == b"10.0.0.7"
    assert hash_key(header, [], "10.0.0.7") is None
