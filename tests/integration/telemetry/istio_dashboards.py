# ruff: noqa: E501
"""PromQL taken verbatim from Istio's own Grafana dashboards, as test input.

Source: github.com/istio/istio, ``manifests/addons/dashboards/``:
``istio-mesh-dashboard.gen.json`` (commit 0b2b04ffc809), ``istio-service-dashboard.json``
(commit 1272e6d134be) and ``istio-workload-dashboard.json`` (commit 0b5918efa14d).
Panels that repeat a query with only another quantile (P50/P90/P95/P99) keep one
quantile; every distinct metric/label selection of the three dashboards is here, with the
template variables each dashboard defines (``$qrep``, ``$service``, ``$srcwl``, ...).
Queries that select ``connection_security_policy="mutual_tls"`` are marked: plaintext
traffic must leave them empty, as it does in Istio.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    expr: str

    @property
    def mtls_only(self) -> bool:
        return 'connection_security_policy="mutual_tls"' in self.expr


MESH = "mesh"
SERVICE = "service"
WORKLOAD = "workload"

QUERIES: tuple[Query, ...] = (
    # -- Istio Mesh Dashboard ------------------------------------------------------------
    Query(MESH, "Traffic Volume",
          'round(sum (rate(istio_requests_total{reporter=~"source|waypoint"}[$__rate_interval])), 0.01)'),
    Query(MESH, "Success Rate",
          'sum (rate(istio_requests_total{reporter=~"source|waypoint",response_code!~"5.."}[$__rate_interval])) / sum (rate(istio_requests_total{reporter=~"source|waypoint"}[$__rate_interval]))'),
    Query(MESH, "4xxs",
          'round(sum (rate(istio_requests_total{reporter=~"source|waypoint",response_code=~"4.."}[$__rate_interval])), 0.01)or vector(0)'),
    Query(MESH, "5xxs",
          'round(sum (rate(istio_requests_total{reporter=~"source|waypoint",response_code=~"5.."}[$__rate_interval])), 0.01)or vector(0)'),
    Query(MESH, "HTTP/gRPC Workloads: requests",
          'label_join(sum by (destination_workload,destination_workload_namespace,destination_service) (rate(istio_requests_total{reporter=~"source|waypoint"}[$__rate_interval])), "destination_workload_var", ".", "destination_workload", "destination_workload_namespace")'),
    Query(MESH, "HTTP/gRPC Workloads: p99",
          'label_join(histogram_quantile(0.99, sum by (le,destination_workload,destination_workload_namespace) (rate(istio_request_duration_milliseconds_bucket{reporter=~"source|waypoint"}[$__rate_interval]))), "destination_workload_var", ".", "destination_workload", "destination_workload_namespace")'),
    Query(MESH, "HTTP/gRPC Workloads: success",
          'label_join(sum by (destination_workload,destination_workload_namespace) (rate(istio_requests_total{reporter=~"source|waypoint",response_code!~"5.."}[$__rate_interval]))/sum by (destination_workload,destination_workload_namespace) (rate(istio_requests_total{reporter=~"source|waypoint"}[$__rate_interval])), "destination_workload_var", ".", "destination_workload", "destination_workload_namespace")'),
    Query(MESH, "TCP Workloads: recv",
          'label_join(sum by (destination_workload,destination_workload_namespace,destination_service) (rate(istio_tcp_received_bytes_total{reporter=~"source|waypoint"}[$__rate_interval])), "destination_workload_var", ".", "destination_workload", "destination_workload_namespace")'),
    Query(MESH, "TCP Workloads: sent",
          'label_join(sum by (destination_workload,destination_workload_namespace,destination_service) (rate(istio_tcp_sent_bytes_total{reporter=~"source|waypoint"}[$__rate_interval])), "destination_workload_var", ".", "destination_workload", "destination_workload_namespace")'),
    Query(MESH, "Istio Component Versions", "sum by (component,tag) (istio_build)"),
    # -- Istio Service Dashboard ---------------------------------------------------------
    Query(SERVICE, "variable service",
          "query_result(sum(istio_requests_total{}) by (destination_service) or sum(istio_tcp_sent_bytes_total{}) by (destination_service))"),
    Query(SERVICE, "variable srcns",
          'query_result(sum(istio_requests_total{reporter=~"$qrep", destination_service="$service"}) by (source_workload_namespace) or sum(istio_tcp_sent_bytes_total{reporter=~"$qrep", destination_service="$service"}) by (source_workload_namespace))'),
    Query(SERVICE, "variable srcwl",
          'query_result(sum(istio_requests_total{reporter=~"$qrep", destination_service="$service", source_workload_namespace=~"$srcns"}) by (source_workload) or sum(istio_tcp_sent_bytes_total{reporter=~"$qrep", destination_service="$service", source_workload_namespace=~"$srcns"}) by (source_workload))'),
    Query(SERVICE, "variable srccluster",
          'query_result(sum(istio_requests_total{reporter=~"$qrep", destination_service="$service"}) by (source_cluster) or sum(istio_tcp_sent_bytes_total{reporter=~"$qrep", destination_service="$service"}) by (source_cluster))'),
    Query(SERVICE, "variable dstns",
          'query_result(sum(istio_requests_total{reporter="destination", destination_service="$service"}) by (destination_workload_namespace) or sum(istio_tcp_sent_bytes_total{reporter="destination", destination_service="$service"}) by (destination_workload_namespace))'),
    Query(SERVICE, "variable dstwl",
          'query_result( sum(istio_requests_total{reporter="destination", destination_service="$service", destination_cluster=~"$dstcluster", destination_workload_namespace=~"$dstns"}) by (destination_workload) or sum(istio_tcp_sent_bytes_total{reporter="destination", destination_service="$service", destination_cluster=~"$dstcluster", destination_workload_namespace=~"$dstns"}) by (destination_workload))'),
    Query(SERVICE, "Client Request Volume",
          'round(sum(irate(istio_requests_total{reporter=~"$qrep",destination_service="$service"}[$__rate_interval])), 0.001)'),
    Query(SERVICE, "Client Success Rate (non-5xx responses)",
          'sum(irate(istio_requests_total{reporter=~"$qrep",destination_service="$service",response_code!~"5.*"}[$__rate_interval])) / (sum(irate(istio_requests_total{reporter=~"$qrep",destination_service="$service"}[$__rate_interval])) or on () vector(1))'),
    Query(SERVICE, "Client Request Duration",
          '(histogram_quantile(0.99, sum(irate(istio_request_duration_milliseconds_bucket{reporter=~"$qrep",destination_service="$service"}[$__rate_interval])) by (le)) / 1000)'),
    Query(SERVICE, "TCP Received Bytes",
          'sum(irate(istio_tcp_received_bytes_total{reporter=~"$qrep", destination_service="$service"}[$__rate_interval]))'),
    Query(SERVICE, "Server Request Volume",
          'round(sum(irate(istio_requests_total{reporter="destination",destination_service="$service"}[$__rate_interval])), 0.001)'),
    Query(SERVICE, "Server Success Rate (non-5xx responses)",
          'sum(irate(istio_requests_total{reporter="destination",destination_service="$service",response_code!~"5.*"}[$__rate_interval])) / (sum(irate(istio_requests_total{reporter="destination",destination_service="$service"}[$__rate_interval])) or on () vector(1))'),
    Query(SERVICE, "Server Request Duration",
          '(histogram_quantile(0.99, sum(irate(istio_request_duration_milliseconds_bucket{reporter="destination",destination_service="$service"}[$__rate_interval])) by (le)) / 1000)'),
    Query(SERVICE, "TCP Sent Bytes",
          'sum(irate(istio_tcp_sent_bytes_total{reporter=~"$qrep", destination_service="$service"}[$__rate_interval]))'),
    Query(SERVICE, "Incoming Requests By Source And Response Code (mTLS)",
          'round(sum(irate(istio_requests_total{connection_security_policy="mutual_tls",destination_service="$service",reporter=~"$qrep",source_workload=~"$srcwl",source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace, response_code), 0.001)'),
    Query(SERVICE, "Incoming Requests By Source And Response Code",
          'round(sum(irate(istio_requests_total{connection_security_policy!="mutual_tls", destination_service="$service", reporter=~"$qrep", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace, response_code), 0.001)'),
    Query(SERVICE, "Incoming Success Rate (non-5xx responses) By Source",
          'sum(irate(istio_requests_total{reporter=~"$qrep", connection_security_policy!="mutual_tls", destination_service="$service",response_code!~"5.*", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace) / sum(irate(istio_requests_total{reporter=~"$qrep", connection_security_policy!="mutual_tls", destination_service="$service", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace)'),
    Query(SERVICE, "Incoming Request Duration By Source",
          '(histogram_quantile(0.99, sum(irate(istio_request_duration_milliseconds_bucket{reporter=~"$qrep", connection_security_policy!="mutual_tls", destination_service="$service", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace, le)) / 1000)'),
    Query(SERVICE, "Incoming Request Size By Source",
          'histogram_quantile(0.99, sum(irate(istio_request_bytes_bucket{reporter=~"$qrep", connection_security_policy!="mutual_tls", destination_service="$service", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace, le))'),
    Query(SERVICE, "Response Size By Source",
          'histogram_quantile(0.99, sum(irate(istio_response_bytes_bucket{reporter=~"$qrep", connection_security_policy!="mutual_tls", destination_service="$service", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace, le))'),
    Query(SERVICE, "Bytes Received from Incoming TCP Connection",
          'round(sum(irate(istio_tcp_received_bytes_total{reporter=~"$qrep", connection_security_policy!="mutual_tls", destination_service="$service", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace), 0.001)'),
    Query(SERVICE, "Bytes Sent to Incoming TCP Connection",
          'round(sum(irate(istio_tcp_sent_bytes_total{connection_security_policy!="mutual_tls", reporter=~"$qrep", destination_service="$service", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace), 0.001)'),
    Query(SERVICE, "Incoming Requests By Destination Workload And Response Code",
          'round(sum(irate(istio_requests_total{connection_security_policy!="mutual_tls", destination_service="$service", reporter="destination", destination_workload=~"$dstwl", destination_workload_namespace=~"$dstns"}[$__rate_interval])) by (destination_workload, destination_workload_namespace, response_code), 0.001)'),
    Query(SERVICE, "Incoming Success Rate (non-5xx responses) By Destination Workload",
          'sum(irate(istio_requests_total{reporter="destination", connection_security_policy!="mutual_tls", destination_service="$service",response_code!~"5.*", destination_workload=~"$dstwl", destination_workload_namespace=~"$dstns"}[$__rate_interval])) by (destination_workload, destination_workload_namespace) / sum(irate(istio_requests_total{reporter="destination", connection_security_policy!="mutual_tls", destination_service="$service", destination_workload=~"$dstwl", destination_workload_namespace=~"$dstns"}[$__rate_interval])) by (destination_workload, destination_workload_namespace)'),
    Query(SERVICE, "Incoming Request Duration By Destination Workload (mTLS)",
          '(histogram_quantile(0.99, sum(irate(istio_request_duration_milliseconds_bucket{reporter="destination", connection_security_policy="mutual_tls", destination_service="$service", destination_workload=~"$dstwl", destination_workload_namespace=~"$dstns"}[$__rate_interval])) by (destination_workload, destination_workload_namespace, le)) / 1000)'),
    Query(SERVICE, "Bytes Sent to Incoming TCP Connection By Destination Workload",
          'round(sum(irate(istio_tcp_sent_bytes_total{connection_security_policy!="mutual_tls", reporter="destination", destination_service="$service", destination_workload=~"$dstwl", destination_workload_namespace=~"$dstns"}[$__rate_interval])) by (destination_workload, destination_workload_namespace), 0.001)'),
    # -- Istio Workload Dashboard --------------------------------------------------------
    Query(WORKLOAD, "variable namespace",
          "query_result(sum(istio_requests_total) by (destination_workload_namespace) or sum(istio_tcp_sent_bytes_total) by (destination_workload_namespace))"),
    Query(WORKLOAD, "variable workload",
          'query_result((sum(istio_requests_total{destination_workload_namespace=~"$namespace"}) by (destination_workload) or sum(istio_requests_total{source_workload_namespace=~"$namespace"}) by (source_workload)) or (sum(istio_tcp_sent_bytes_total{destination_workload_namespace=~"$namespace"}) by (destination_workload) or sum(istio_tcp_sent_bytes_total{source_workload_namespace=~"$namespace"}) by (source_workload)))'),
    Query(WORKLOAD, "variable srcns",
          'query_result(sum(istio_requests_total{reporter="$qrep", destination_workload="$workload", destination_workload_namespace=~"$namespace"}) by (source_workload_namespace) or sum(istio_tcp_sent_bytes_total{reporter="$qrep", destination_workload="$workload", destination_workload_namespace=~"$namespace"}) by (source_workload_namespace))'),
    Query(WORKLOAD, "variable dstsvc",
          'query_result(sum(istio_requests_total{reporter="source", source_workload=~"$workload", source_workload_namespace=~"$namespace"}) by (destination_service) or sum(istio_tcp_sent_bytes_total{reporter="source", source_workload=~"$workload", source_workload_namespace=~"$namespace"}) by (destination_service))'),
    Query(WORKLOAD, "Incoming Request Volume",
          'round(sum(irate(istio_requests_total{reporter="$qrep",destination_workload_namespace=~"$namespace",destination_workload=~"$workload"}[5m])), 0.001)'),
    Query(WORKLOAD, "Incoming Success Rate (non-5xx responses)",
          'sum(irate(istio_requests_total{reporter="$qrep",destination_workload_namespace=~"$namespace",destination_workload=~"$workload",response_code!~"5.*"}[5m])) / sum(irate(istio_requests_total{reporter="$qrep",destination_workload_namespace=~"$namespace",destination_workload=~"$workload"}[5m]))'),
    Query(WORKLOAD, "Request Duration",
          '(histogram_quantile(0.99, sum(irate(istio_request_duration_milliseconds_bucket{reporter="$qrep",destination_workload=~"$workload", destination_workload_namespace=~"$namespace"}[1m])) by (le)) / 1000)'),
    Query(WORKLOAD, "TCP Server Traffic",
          'sum(irate(istio_tcp_sent_bytes_total{reporter="$qrep", destination_workload_namespace=~"$namespace", destination_workload=~"$workload"}[1m])) + sum(irate(istio_tcp_received_bytes_total{reporter="$qrep", destination_workload_namespace=~"$namespace", destination_workload=~"$workload"}[1m]))'),
    Query(WORKLOAD, "Incoming Request Duration By Source",
          '(histogram_quantile(0.99, sum(irate(istio_request_duration_milliseconds_bucket{reporter="$qrep", connection_security_policy!="mutual_tls", destination_workload=~"$workload", destination_workload_namespace=~"$namespace", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[1m])) by (source_workload, source_workload_namespace, le)) / 1000)'),
    Query(WORKLOAD, "Incoming Request Size By Source (mTLS)",
          'histogram_quantile(0.99, sum(irate(istio_request_bytes_bucket{reporter="$qrep", connection_security_policy="mutual_tls", destination_workload=~"$workload", destination_workload_namespace=~"$namespace", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[1m])) by (source_workload, source_workload_namespace, le))'),
    Query(WORKLOAD, "Incoming Request Size By Source",
          'histogram_quantile(0.99, sum(irate(istio_request_bytes_bucket{reporter="$qrep", connection_security_policy!="mutual_tls", destination_workload=~"$workload", destination_workload_namespace=~"$namespace", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[1m])) by (source_workload, source_workload_namespace, le))'),
    Query(WORKLOAD, "Response Size By Source",
          'histogram_quantile(0.99, sum(irate(istio_response_bytes_bucket{reporter="$qrep", connection_security_policy!="mutual_tls", destination_workload=~"$workload", destination_workload_namespace=~"$namespace", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[1m])) by (source_workload, source_workload_namespace, le))'),
    Query(WORKLOAD, "Outgoing Requests By Destination And Response Code",
          'round(sum(irate(istio_requests_total{connection_security_policy!="mutual_tls", source_workload_namespace=~"$namespace", source_workload=~"$workload", reporter="source", destination_service=~"$dstsvc"}[5m])) by (destination_service, response_code), 0.001)'),
    Query(WORKLOAD, "Outgoing Success Rate (non-5xx responses) By Destination",
          'sum(irate(istio_requests_total{reporter="source", connection_security_policy!="mutual_tls", source_workload_namespace=~"$namespace", source_workload=~"$workload",response_code!~"5.*", destination_service=~"$dstsvc"}[5m])) by (destination_service) / sum(irate(istio_requests_total{reporter="source", connection_security_policy!="mutual_tls", source_workload_namespace=~"$namespace", source_workload=~"$workload", destination_service=~"$dstsvc"}[5m])) by (destination_service)'),
    Query(WORKLOAD, "Outgoing Request Duration By Destination",
          '(histogram_quantile(0.99, sum(irate(istio_request_duration_milliseconds_bucket{reporter="source", connection_security_policy!="mutual_tls", source_workload=~"$workload", source_workload_namespace=~"$namespace", destination_service=~"$dstsvc"}[1m])) by (destination_service, le)) / 1000)'),
    Query(WORKLOAD, "Bytes Sent on Outgoing TCP Connection",
          'round(sum(irate(istio_tcp_received_bytes_total{connection_security_policy!="mutual_tls", reporter="source", source_workload_namespace=~"$namespace", source_workload=~"$workload", destination_service=~"$dstsvc"}[1m])) by (destination_service), 0.001)'),
    Query(WORKLOAD, "Bytes Received from Outgoing TCP Connection",
          'round(sum(irate(istio_tcp_sent_bytes_total{reporter="source", connection_security_policy!="mutual_tls", source_workload_namespace=~"$namespace", source_workload=~"$workload", destination_service=~"$dstsvc"}[1m])) by (destination_service), 0.001)'),
)  # fmt: skip
