"""Retries: which outcomes are retried, how long to back off, and the retry budget.

Envoy's semantics for ``retry_on``:

- ``5xx``: any 5xx response, and no response at all (connect failure, reset, per-try timeout)
- ``gateway-error``: 502, 503, 504 responses, and per-try timeouts
- ``connect-failure``: the upstream connection could not be opened (or timed out opening)
- ``reset``: the upstream closed or reset before a response head, or a per-try timeout
- ``retriable-status-codes``: a response status in ``retriable_status_codes``

Backoff is exponential with full jitter: attempt *n* waits a uniform time in
``[0, min(max, base * 2**n))``. The budget caps concurrent retries at ``budget_percent`` of
the cluster's active requests (never below ``min_retry_concurrency``), so retries cannot
multiply load on a struggling upstream (Envoy's ``retry_budget``).
"""

from __future__ import annotations

from enum import IntEnum

from localmesh.config.model import RetryPolicy


class Outcome(IntEnum):
    """How one upstream attempt ended (a response status is passed separately)."""

    RESPONSE = 0
    CONNECT_FAILURE = 1
    RESET = 2
    TIMEOUT = 3


def is_retriable(policy: RetryPolicy, outcome: Outcome, status: int = 0) -> bool:
    on = policy.retry_on
    if outcome is Outcome.RESPONSE:
        if status >= 500 and "5xx" in on:
            return True
        if status in (502, 503, 504) and "gateway-error" in on:
            return True
        return "retriable-status-codes" in on and status in policy.retriable_status_codes
    if "5xx" in on:
        return True
    if outcome is Outcome.CONNECT_FAILURE:
        return "connect-failure" in on
    if outcome is Outcome.RESET:
        return "reset" in on
    return "reset" in on or "gateway-error" in on  # per-try timeout


def backoff(policy: RetryPolicy, retry_number: int, rnd: float) -> float:
    """Seconds to wait before retry ``retry_number`` (0-based), ``rnd`` uniform in [0, 1)."""
    ceiling: float = min(policy.backoff_max, policy.backoff_base * 2.0**retry_number)
    return ceiling * rnd


def budget_allows(policy: RetryPolicy, active_requests: int, active_retries: int) -> bool:
    """May one more retry start while ``active_retries`` are already running?"""
    limit = max(policy.min_retry_concurrency, active_requests * policy.budget_percent / 100.0)
    return active_retries < limit
