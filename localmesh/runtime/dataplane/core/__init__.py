"""The data plane's decisions, with no I/O: nothing here imports asyncio, socket or ssl.

Words (Envoy's): the **downstream** is the caller, the **upstream** the instance we forward
to. A **route** picks where a request goes; a **cluster** is a destination service (or a
subset of it) with its **endpoints**; a **listener** owns a route table.

Each module decides one thing from plain values and keeps only plain state:

- ``routing``: compile routes once per snapshot, match a request, pick a weighted destination
- ``policy``: authorization (Istio's AuthorizationPolicy semantics)
- ``retry``: retry-on conditions, the retry budget, jittered backoff
- ``cluster``: endpoint state (health, outlier ejection, active requests), circuit breaking
- ``balancer``: round robin, least request (power of two choices), random, ring hash
- ``ratelimit``: token buckets
- ``fault``: the fault-injection dice
- ``headers``: hop-by-hop rules, header operations, request id and trace context
- ``wire``: flags, reasons and the bytes of locally generated responses

The asyncio layer (``localmesh.runtime.dataplane``) is the one place these decisions turn
into reads and writes.
"""
