"""Fault injection: roll the dice for one upstream attempt.

Faults are decided per *attempt*, inside the retry loop: an injected abort is an upstream
answer like any other, so the route's retry policy sees it and may retry (what Istio cannot
do, istio#13705). ``sources`` limits a fault to calls from some services.
"""

from __future__ import annotations

from localmesh.config.model import Fault


def decide(fault: Fault, source: str, rnd_delay: float, rnd_abort: float) -> tuple[float, int]:
    """``(delay seconds, abort status)`` for one attempt; ``(0.0, 0)`` means no fault.

    ``rnd_*`` are uniform in [0, 1); a percentage ``p`` fires when ``rnd * 100 < p``.
    """
    if fault.sources and source not in fault.sources:
        return 0.0, 0
    delay = 0.0
    if fault.delay is not None and rnd_delay * 100.0 < fault.delay.percent:
        delay = fault.delay.fixed
    status = 0
    if fault.abort is not None and rnd_abort * 100.0 < fault.abort.percent:
        status = fault.abort.status
    return delay, status
