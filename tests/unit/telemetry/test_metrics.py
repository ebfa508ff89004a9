"""The exported series parse as Prometheus text and carry Istio's names, labels and values."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from localmesh.runtime.telemetry import MeshMetrics
from localmesh.runtime.telemetry.metrics import (
    HTTP_LABELS,
    SIZE_BUCKETS,
    TCP_LABELS,
    _bucket,
    _size_bucket,
)


def scrape(metrics: MeshMetrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    text = generate_latest(metrics.registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def test_http_edge_exports_istio_series_for_both_reporters() -> None:
    metrics = MeshMetrics(namespace="shop", trust_domain="localmesh")
    edge = metrics.http_edge("web", "api")
    edge.observe(200, "-", 0.003, 10, 1200)
    edge.observe(200, "-", 0.040, 0, 50)
    edge.observe(503, "UF", 0.001, 0, 19)
    samples = scrape(metrics)

    totals = samples["istio_requests_total"]
    assert {s[0]["reporter"] for s in totals} == {"source", "destination"}
    ok = [
        v
        for labels, v in totals
        if labels["response_code"] == "200" and labels["reporter"] == "source"
    ]
    assert ok == [2.0]
    labels = next(lbl for lbl, _ in totals if lbl["response_code"] == "503")
    assert set(labels) == set(HTTP_LABELS)
    assert labels["response_flags"] == "UF"
    assert labels["source_workload"] == "web"
    assert labels["destination_service"] == "api.shop.svc.cluster.local"
    assert labels["destination_principal"] == "spiffe://localmesh/svc/api"
    assert labels["destination_workload_namespace"] == "shop"

    buckets = {
        lbl["le"]: v
        for lbl, v in samples["istio_request_duration_milliseconds_bucket"]
        if lbl["response_code"] == "200" and lbl["reporter"] == "source"
    }
    assert buckets["1"] == 0  # 3 ms and 40 ms are both above 1 ms
    assert buckets["5"] == 1
    assert buckets["50"] == 2
    assert buckets["+Inf"] == 2
    sums = samples["istio_request_duration_milliseconds_sum"]
    assert any(abs(v - 43.0) < 1e-6 for _, v in sums)


def test_tcp_edge_counts_connections_and_bytes() -> None:
    metrics = MeshMetrics(namespace="shop", trust_domain="td")
    edge = metrics.tcp_edge("api", "db")
    edge.opened()
    edge.add_received(100)
    edge.add_sent(2000)
    edge.closed("-")
    edge.opened()
    edge.closed("UF")
    samples = scrape(metrics)
    src = [
        (lbl, v)
        for lbl, v in samples["istio_tcp_connections_opened_total"]
        if lbl["reporter"] == "source"
    ]
    assert sum(v for _, v in src) == 2
    assert set(src[0][0]) == set(TCP_LABELS)
    closed = {lbl["response_flags"]: v for lbl, v in samples["istio_tcp_connections_closed_total"]}
    assert closed == {"-": 1, "UF": 1}
    sent = [v for lbl, v in samples["istio_tcp_sent_bytes_total"] if lbl["response_flags"] == "-"]
    assert sent == [2000, 2000]


def test_local_counters_and_build_info() -> None:
    metrics = MeshMetrics(namespace="shop", trust_domain="td")
    metrics.retry("api")
    metrics.retry("api")
    metrics.config_reload(ok=True, version=7)
    metrics.config_reload(ok=False)
    samples = scrape(metrics)
    assert samples["localmesh_retries_total"] == [({"cluster": "api"}, 2.0)]
    reloads = {lbl["result"]: v for lbl, v in samples["localmesh_config_reloads_total"]}
    assert reloads == {"applied": 1, "rejected": 1}
    assert samples["localmesh_config_version"] == [({}, 7.0)]
    assert samples["istio_build"][0][0]["component"] == "proxy"


def test_size_buckets_by_integers_match_the_bounds() -> None:
    for size in (0, 1, 2, 9, 10, 11, 99, 100, 101, 10**7, 10**7 + 1, 10**9):
        assert _size_bucket(size) == _bucket(SIZE_BUCKETS, size)
