"""Retry conditions and budget, outlier ejection, health thresholds, circuit breaking,
rate limits and faults, with plain values and a hand-driven clock."""

from __future__ import annotations

import math
import random

import pytest

from localmesh.config.model import (
    ConnectionPool,
    Fault,
    FaultAbort,
    FaultDelay,
    HealthCheck,
    HealthCheckKind,
    OutlierDetection,
    RateLimit,
    RetryPolicy,
)
from localmesh.runtime.dataplane.core.cluster import ClusterState, EndpointState
from localmesh.runtime.dataplane.core.fault import decide
from localmesh.runtime.dataplane.core.ratelimit import RateLimiter, TokenBucket
from localmesh.runtime.dataplane.core.retry import Outcome, backoff, budget_allows, is_retriable

pytestmark = pytest.mark.unit


def test_retry_on_semantics() -> None:
    five = RetryPolicy(retry_on=frozenset({"5xx"}))
    gw = RetryPolicy(retry_on=frozenset({"gateway-error"}))
    cf = RetryPolicy(retry_on=frozenset({"connect-failure"}))
    codes = RetryPolicy(
        retry_on=frozenset({"retriable-status-codes"}), retriable_status_codes=frozenset({409})
    )
    assert is_retriable(five, Outcome.RESPONSE, 500)
    assert is_retriable(five, Outcome.RESET)
    assert is_retriable(five, Outcome.TIMEOUT)
    assert not is_retriable(five, Outcome.RESPONSE, 404)
    assert is_retriable(gw, Outcome.RESPONSE, 503)
    assert not is_retriable(gw, Outcome.RESPONSE, 500)
    assert is_retriable(gw, Outcome.TIMEOUT)
    assert not is_retriable(gw, Outcome.CONNECT_FAILURE)
    assert is_retriable(cf, Outcome.CONNECT_FAILURE)
    assert not is_retriable(cf, Outcome.RESET)
    assert is_retriable(codes, Outcome.RESPONSE, 409)
    assert not is_retriable(codes, Outcome.RESPONSE, 503)


def test_backoff_is_jittered_exponential_and_capped() -> None:
    p = RetryPolicy(backoff_base=0.025, backoff_max=0.25)
    assert backoff(p, 0, 0.999) < 0.025
    assert backoff(p, 2, 0.5) == pytest.approx(0.05)
    assert backoff(p, 10, 0.999) <= 0.25
    assert backoff(p, 3, 0.0) == 0.0


def test_retry_budget() -> None:
    p = RetryPolicy(budget_percent=20.0, min_retry_concurrency=3)
    assert budget_allows(p, active_requests=1, active_retries=2)
    assert not budget_allows(p, active_requests=1, active_retries=3)
    assert budget_allows(p, active_requests=100, active_retries=19)
    assert not budget_allows(p, active_requests=100, active_retries=20)


def cluster(
    n: int, od: OutlierDetection | None = None, hc: HealthCheck | None = None
) -> ClusterState:
    c = ClusterState("api", ConnectionPool(max_connections=2, max_pending_requests=1), od, hc)
    c.set_endpoints(EndpointState("10.0.0.1", 8000 + i) for i in range(n))
    return c


def test_outlier_ejects_after_consecutive_errors_and_returns() -> None:
    od = OutlierDetection(consecutive_5xx=3, base_ejection_time=30, max_ejection_percent=50)
    c = cluster(4, od)
    ep = c.endpoints[0]
    assert not c.report_status(ep, 500, now=1)
    assert not c.report_status(ep, 200, now=1)  # a success resets the streak
    assert not c.report_status(ep, 500, now=2)
    assert not c.report_status(ep, 500, now=2)
    assert c.report_status(ep, 500, now=2)
    assert ep not in c.available(3)
    assert len(c.available(3)) == 3
    assert ep in c.available(32.0)  # back after base_ejection_time
    # a second ejection lasts twice as long
    for _ in range(3):
        c.report_failure(ep, now=33)
    assert ep.ejected(33 + 59)
    assert not ep.ejected(33 + 61)


def test_gateway_errors_count_separately() -> None:
    od = OutlierDetection(
        consecutive_5xx=100,
        consecutive_gateway_errors=2,
        max_ejection_percent=100,
        min_health_percent=0,  # Istio's default: an ejected last endpoint takes no traffic
    )
    c = cluster(1, od)
    ep = c.endpoints[0]
    c.report_status(ep, 502, now=0)
    c.report_status(ep, 500, now=0)  # a non-gateway 5xx breaks the gateway streak
    assert not c.report_status(ep, 503, now=0)
    assert c.report_status(ep, 504, now=0)
    assert c.available(1) == []


def test_max_ejection_percent_but_always_one() -> None:
    od = OutlierDetection(consecutive_5xx=1, max_ejection_percent=10)
    c = cluster(3, od)
    assert c.report_failure(c.endpoints[0], now=0)  # 10% of 3 < 1, but one is allowed
    assert not c.report_failure(c.endpoints[1], now=0)
    assert len(c.available(0)) == 2


def test_ejection_multiplier_decays_while_quiet() -> None:
    od = OutlierDetection(
        consecutive_5xx=1, interval=10, base_ejection_time=30, max_ejection_percent=100
    )
    c = cluster(1, od)
    ep = c.endpoints[0]
    c.report_failure(ep, now=0)  # 1st ejection until 30
    c.report_failure(ep, now=31)  # 2nd until 91
    assert ep.ejections == 2
    c.report_failure(ep, now=91 + 25)  # quiet for 2 intervals: back to 1st-time length
    assert ep.ejections == 1
    assert math.isclose(ep.ejected_until, 116 + 30)


def test_the_only_endpoint_ejected_still_gets_traffic_by_default() -> None:
    """min_health_percent 50 (Envoy's panic threshold): with 0 of 1 available the cluster
    panics and balances over all; with 1 of 2 it does not."""
    od = OutlierDetection(consecutive_5xx=1)
    single = cluster(1, od)
    assert single.report_failure(single.endpoints[0], now=0)
    assert single.available(1) == single.endpoints
    assert single.describe(1)["panic"] is True
    assert single.available(31) == single.endpoints  # the ejection is over
    assert single.describe(31)["panic"] is False
    pair = cluster(2, OutlierDetection(consecutive_5xx=1, max_ejection_percent=50))
    assert pair.report_failure(pair.endpoints[0], now=0)
    assert pair.available(1) == [pair.endpoints[1]]
    assert not pair.panic


def test_no_outlier_detection_never_ejects() -> None:
    c = cluster(1, None)
    for _ in range(50):
        assert not c.report_failure(c.endpoints[0], now=0)


def test_health_thresholds() -> None:
    hc = HealthCheck(HealthCheckKind.TCP, unhealthy_threshold=2, healthy_threshold=2)
    c = cluster(2, hc=hc)
    ep = c.endpoints[0]
    assert not c.report_check(ep, False)
    assert c.report_check(ep, False)
    assert ep not in c.available(0)
    assert not c.report_check(ep, True)
    assert c.report_check(ep, True)
    assert ep in c.available(0)


def test_membership_keeps_state_of_staying_endpoints() -> None:
    c = cluster(2)
    kept = c.endpoints[1]
    kept.active_requests = 7
    removed = c.set_endpoints([EndpointState("10.0.0.1", 8001), EndpointState("10.0.0.9", 1)])
    assert [e.address for e in removed] == ["10.0.0.1:8000"]
    assert c.endpoints[0] is kept
    assert kept.active_requests == 7


def test_circuit_breaker_thresholds() -> None:
    c = cluster(1)
    assert c.can_connect()
    c.connections = 2
    assert not c.can_connect()
    assert c.can_queue()
    c.pending = 1
    assert not c.can_queue()


def test_token_bucket() -> None:
    b = TokenBucket(rate=2.0, burst=2, now=0)
    assert b.take(0) == 0.0
    assert b.take(0) == 0.0
    assert b.take(0) == pytest.approx(0.5)
    assert b.take(0.5) == 0.0
    assert b.take(10) == 0.0
    assert b.take(10) == 0.0
    assert b.take(10) > 0


def test_rate_limiter_per_source() -> None:
    rl = RateLimiter(RateLimit(1.0, 1, per_source=True), now=0)
    assert rl.take("web", 0) == 0.0
    assert rl.take("web", 0) > 0
    assert rl.take("worker", 0) == 0.0
    shared = RateLimiter(RateLimit(1.0, 1), now=0)
    assert shared.take("web", 0) == 0.0
    assert shared.take("worker", 0) > 0


def test_fault_decisions() -> None:
    f = Fault(delay=FaultDelay(0.2, percent=50), abort=FaultAbort(503, percent=10))
    assert decide(f, "web", 0.3, 0.05) == (0.2, 503)
    assert decide(f, "web", 0.6, 0.5) == (0.0, 0)
    only = Fault(abort=FaultAbort(500), sources=("web",))
    assert decide(only, "web", 0.9, 0.99) == (0.0, 500)
    assert decide(only, "worker", 0.0, 0.0) == (0.0, 0)
    rng = random.Random(3)
    hits = sum(decide(f, "x", 1.0, rng.random())[1] == 503 for _ in range(10_000))
    assert 800 < hits < 1200
